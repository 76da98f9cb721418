import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from ramm.evaluation.captioning import bleu4, cider, tokenize
from ramm_lab.emojibench import strip_style_prefix

REFS = {"jp": ["Japan Flag", "flag-jp", "jp"], "fr": ["France Flag", "flag-fr", "fr"],
        "smile": ["Smiling Face", "smiling_face", "smile"], "cat": ["Cat Face", "cat"]}


def test_tokenize_lowercases_and_splits_punctuation_hyphens_and_underscores():
    assert tokenize("Flag: Japan!") == "flag japan"
    assert tokenize("flag-jp") == "flag jp"
    assert tokenize("smiling_face  ,  +1") == "smiling face 1"
    assert tokenize("Café") == "café"


def test_cider_of_identical_captions_equals_the_toolkit_value():
    cands = {k: v[0] for k, v in REFS.items()}
    score, per_item = cider(cands, REFS)
    gts = {k: [tokenize(r) for r in v] for k, v in REFS.items()}
    expected, expected_items = Cider().compute_score(gts, {k: [tokenize(v[0])] for k, v in REFS.items()})
    assert score == pytest.approx(expected)
    assert list(per_item.values()) == pytest.approx(list(expected_items))
    assert score > 1.0


def test_cider_ranks_right_captions_above_wrong_ones():
    right, _ = cider({k: v[0] for k, v in REFS.items()}, REFS)
    shuffled = dict(zip(REFS, ["France Flag", "Japan Flag", "Cat Face", "Smiling Face"]))
    wrong, _ = cider(shuffled, REFS)
    partial, _ = cider({"jp": "japan", "fr": "france", "smile": "smiling", "cat": "cat"}, REFS)
    assert right > partial > wrong


def test_single_item_cider_is_zero_because_idf_comes_from_the_set():
    assert cider({"jp": "japan flag"}, {"jp": REFS["jp"]})[0] == 0.0


def test_bleu4_is_one_for_exact_long_captions_and_lower_otherwise():
    refs = {"a": ["a red apple on a white table"], "b": ["two black cats sleep on the sofa"]}
    assert bleu4({"a": "A red apple on a white table.", "b": "two black cats sleep on the sofa"}, refs) == pytest.approx(1.0)
    cands = {"a": "a red apple on a table", "b": "two cats on the sofa"}
    ours = bleu4(cands, refs)
    theirs, _ = Bleu(4).compute_score({k: v for k, v in refs.items()}, {k: [v] for k, v in cands.items()}, verbose=0)
    assert 0 < ours < 1 and ours == pytest.approx(theirs[3])



def test_caption_metrics_reject_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="same ids"):
        cider({"jp": "japan"}, {"fr": ["france"]})
    with pytest.raises(ValueError, match="no captions"):
        bleu4({}, {})
    with pytest.raises(ValueError, match="item jp has no non-empty reference"):
        cider({"jp": "japan"}, {"jp": ["!!"]})


def test_exact_match_needs_the_whole_name_with_its_tone():
    from ramm.evaluation.captioning import exact_match
    names = {"a": "waving hand sign, dark skin tone", "b": "japan flag", "c": "ok hand"}
    cands = {"a": "google emoji: waving hand sign, light skin tone", "b": "twitter emoji: Japan Flag", "c": "ok"}
    assert exact_match({k: strip_style_prefix(c) for k, c in cands.items()}, names) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="same ids"):
        exact_match({"a": "x"}, names)
