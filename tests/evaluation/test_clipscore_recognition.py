import numpy as np
import pytest

from ramm.corpus.document import Document
from ramm.evaluation.clipscore import clip_score, clip_scores
from ramm.evaluation.recognition import Recognizer, nearest_labels

KEYS = {"label_key": "concept", "group_key": "style"}  # the fixtures' label and group


def test_clip_score_is_100_times_clamped_cosine(colour_encoder, solid):
    images = np.concatenate([solid((255, 0, 0)), solid((0, 255, 0)), solid((0, 0, 255)), solid((0, 255, 255))])
    scores = clip_scores(colour_encoder, images, ["a red", "a red", "a black", "a cyan"])
    assert scores == pytest.approx([100.0, 0.0, 0.0, 100.0], abs=0.2)  # orthogonal -> 0, negative -> clamped to 0
    half = clip_scores(colour_encoder, solid((0, 255, 0)), ["a cyan"])
    assert half[0] == pytest.approx(100 / np.sqrt(2), abs=0.2)
    assert clip_score(colour_encoder, images, ["a red", "a red", "a black", "a cyan"]) == pytest.approx(50.0, abs=0.1)


def test_clip_score_rejects_mismatched_input(colour_encoder, solid):
    with pytest.raises(ValueError, match="2 images and 1 texts"):
        clip_scores(colour_encoder, solid((1, 2, 3), n=2), ["red"])
    with pytest.raises(ValueError, match="list of strings"):
        clip_scores(colour_encoder, solid((1, 2, 3)), "red")


def _doc(concept, style, rgb):
    return Document.from_pair(f"{style}-{concept}", f"{style} emoji: {concept}", np.full((8, 8, 3), rgb, np.uint8),
                              metadata={"concept": concept, "style": style})


def test_recognition_compares_only_against_the_requested_style(colour_encoder, solid):
    # style "a" draws concepts in their own colour; style "b" swaps red and blue
    gallery = [_doc("red", "a", (250, 0, 0)), _doc("blue", "a", (0, 0, 250)), _doc("green", "a", (0, 250, 0)),
               _doc("red", "b", (0, 0, 250)), _doc("blue", "b", (250, 0, 0)), _doc("green", "b", (0, 250, 0))]
    rec = Recognizer(colour_encoder, gallery, **KEYS)
    images = np.concatenate([solid((240, 10, 10)), solid((240, 10, 10)), solid((10, 10, 240)), solid((10, 240, 10))])
    out = rec(images, ["red", "red", "red", "blue"], ["a", "b", "b", "b"])
    assert out.predicted == ["red", "blue", "red", "green"]
    assert out.hits == [True, False, True, False]
    assert out.rate == 0.5


def test_recognition_rejects_bad_input(colour_encoder, solid):
    rec = Recognizer(colour_encoder, [_doc("red", "a", (250, 0, 0))], **KEYS)
    with pytest.raises(ValueError, match="group 'z'"):
        rec(solid((1, 2, 3)), ["red"], ["z"])
    with pytest.raises(ValueError, match="1 images, 2 labels"):
        rec(solid((1, 2, 3)), ["red", "red"], ["a"])
    with pytest.raises(ValueError, match="gallery document x needs an image and metadata 'concept' and metadata 'style'"):
        Recognizer(colour_encoder, [Document.from_pair("x", "t", solid((1, 1, 1))[0])], **KEYS)
    with pytest.raises(ValueError, match="must be"):
        nearest_labels(np.zeros((2, 3)), np.zeros((2, 4)), ["a", "b"])


def test_exact_recognition_needs_the_document_itself(colour_encoder, solid):
    # style "b" draws red in blue and blue in red: only the exact rule tells the styles apart
    gallery = [_doc("red", "a", (250, 0, 0)), _doc("blue", "a", (0, 0, 250)),
               _doc("red", "b", (0, 0, 250)), _doc("green", "b", (0, 250, 0))]
    images = np.concatenate([solid((240, 10, 10)), solid((10, 10, 240)), solid((10, 240, 10))])
    old = Recognizer(colour_encoder, gallery, **KEYS)  # the default is the group-restricted rule
    assert old.mode == "group" and old(images, ["red", "red", "green"], ["a", "b", "b"]).hits == [True, True, True]
    exact = Recognizer(colour_encoder, gallery, mode="exact", **KEYS)
    # the blue image is nearest to both blue "a" and red "b" (same pixels): a tie counts for either
    assert exact(images, ["red", "red", "green"], ["a", "b", "b"]).hits == [True, True, True]
    # red "b" is drawn in blue: the red image (red "a"'s drawing) is a miss for it
    out = exact(images, ["red", "blue", "green"], ["b", "a", "b"])
    assert out.hits == [False, True, True] and (out.predicted[0], out.predicted_groups[0]) == ("red", "a")
    assert out.rate == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="label 'green' in group 'a'"):
        exact(solid((1, 2, 3)), ["green"], ["a"])
    with pytest.raises(ValueError, match="mode"):
        Recognizer(colour_encoder, gallery, mode="fuzzy")


def test_recognition_by_default_labels_documents_by_id_in_one_group(colour_encoder, solid):
    gallery = [Document.from_pair(i, "t", solid(rgb)[0]) for i, rgb in (("r", (250, 0, 0)), ("b", (0, 0, 250)))]
    images = np.concatenate([solid((240, 10, 10)), solid((10, 10, 240))])
    for mode in ("group", "exact"):
        out = Recognizer(colour_encoder, gallery, mode=mode)(images, ["r", "r"])
        assert out.hits == [True, False] and out.predicted == ["r", "b"], mode
