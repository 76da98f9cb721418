import logging

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ramm.corpus.document import Document, ImageSegment, TextSegment
from ramm.tokenizers.cm3_format import CM3Format, MaskingConfig
from ramm.tokenizers.text_tokenizer import ByteTokenizer
from ramm.tokenizers.vocab import SPECIALS, Vocabulary

N_CODES, TPI = 16, 4


def make_format(**kw):
    vocab = Vocabulary(text_size=256, image_size=N_CODES, n_sentinels=4)
    return CM3Format(vocab, ByteTokenizer(), tokens_per_image=TPI, **kw)


text_seg = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12).map(TextSegment)
image_seg = st.lists(st.integers(0, N_CODES - 1), min_size=TPI, max_size=TPI).map(
    lambda c: ImageSegment(tokens=np.asarray(c, dtype=np.int64)))
documents = st.lists(st.one_of(text_seg, image_seg), min_size=0, max_size=5).map(
    lambda segs: Document(id="d", segments=segs))


@settings(max_examples=200, deadline=None)
@given(documents)
def test_serialise_then_parse_round_trips(doc):
    fmt = make_format()
    back = fmt.parse(fmt.encode_document(doc), doc_id="d")
    assert back.segments == doc.segments


@settings(max_examples=200, deadline=None)
@given(documents, st.integers(0, 2**32 - 1))
def test_masking_then_unmasking_restores_the_sequence(doc, seed):
    fmt = make_format(masking=MaskingConfig(rate=2.0, max_spans=3, text_subspan_prob=0.5))
    plain = fmt.encode_document(doc)
    masked = fmt.causal_mask(fmt.segment_chunks(doc), np.random.default_rng(seed))
    assert fmt.unmask(masked) == plain
    assert fmt.parse(masked, doc_id="d").segments == doc.segments


@settings(max_examples=100, deadline=None)
@given(documents, st.integers(0, 2**32 - 1))
def test_masked_spans_never_cut_an_image(doc, seed):
    fmt = make_format(masking=MaskingConfig(rate=3.0, max_spans=4))
    v = fmt.vocab
    ids = fmt.causal_mask(fmt.segment_chunks(doc), np.random.default_rng(seed))
    # every image code sits in a complete <img> c1..cN </img> group, in the body and in the infill tail
    i = 0
    while i < len(ids):
        if ids[i] == v.img:
            assert all(v.is_image(ids[i + 1:i + 1 + TPI])) and ids[i + 1 + TPI] == v.img_end
            i += TPI + 2
            continue
        assert not v.is_image(ids[i]), "image code outside an image group: a span cut an image"
        i += 1


def test_id_ranges_never_collide():
    v = Vocabulary(text_size=1000, image_size=512, n_sentinels=8)
    text = set(range(v.text_size))
    image = set(v.image_id(np.arange(v.image_size)).tolist())
    special = {v.special(s) for s in SPECIALS} | {v.sentinel(i) for i in range(v.n_sentinels)}
    assert not (text & image) and not (text & special) and not (image & special)
    assert len(special) == len(SPECIALS) + v.n_sentinels
    assert max(text | image | special) == v.size - 1
    assert v.is_image(v.image_id(0)) and not v.is_image(v.text_size - 1) and not v.is_image(v.pad)


def test_ra_input_puts_retrieved_first_with_alpha_weights():
    fmt = make_format(alpha=0.1)
    img = ImageSegment(tokens=np.arange(TPI))
    main = Document("m", [TextSegment("cat"), img])
    mem = [Document("r1", [TextSegment("dog"), img]), Document("r2", [TextSegment("cow"), img])]
    seq = fmt.encode_ra(main, mem, mask=False)
    sep = seq.ids.index(fmt.vocab.sep)
    assert seq.ids[:sep] == fmt.encode_document(mem[0]) + fmt.encode_document(mem[1])
    assert seq.ids[sep + 1:] == fmt.encode_document(main)
    assert set(seq.weights[:sep]) == {0.1} and set(seq.weights[sep:]) == {1.0}
    assert len(seq.weights) == len(seq.ids)
    assert fmt.parse(seq.ids, doc_id="m").segments == main.segments
    assert fmt.encode_ra(main, [], mask=False).ids == fmt.encode_document(main)


def test_poisson_zero_rate_never_masks_and_high_rate_masks():
    doc = Document("d", [TextSegment("hello"), ImageSegment(tokens=np.zeros(TPI, dtype=np.int64))])
    rng = np.random.default_rng(0)
    fmt0 = make_format(masking=MaskingConfig(rate=0.0))
    assert all(fmt0.vocab.infill not in fmt0.encode_ra(doc, rng=rng).ids for _ in range(20))
    fmt = make_format(masking=MaskingConfig(rate=5.0, max_spans=1))
    assert all(fmt.encode_ra(doc, rng=rng).ids.count(fmt.vocab.infill) == 1 for _ in range(20))


def test_caption_prompt_is_a_masked_text_infill():
    fmt = make_format()
    codes = np.arange(TPI)
    doc = Document("d", [TextSegment("a red flag"), ImageSegment(tokens=codes)])
    prompt = fmt.caption_prompt(codes)
    completed = prompt + fmt.text.encode("a red flag") + [fmt.vocab.eos]
    assert fmt.parse(completed, doc_id="d").segments == doc.segments
    ip, kinds = fmt.infill_prompt(doc, [0])
    assert ip == prompt and kinds == ["text"]


def test_image_prompt_rejects_empty_caption():
    with pytest.raises(ValueError, match="caption is empty"):
        make_format().image_prompt("  ")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, Vocabulary(256, N_CODES, 4).size - 1), max_size=40))
def test_malformed_streams_parse_without_exceptions(ids):
    make_format().parse(ids)


def test_truncated_image_keeps_the_valid_prefix_and_warns(caplog):
    fmt = make_format()
    doc = Document("d", [TextSegment("hi"), ImageSegment(tokens=np.arange(TPI))])
    ids = fmt.encode_document(doc)[:-3]  # cut inside the image
    with caplog.at_level(logging.WARNING):
        back = fmt.parse(ids)
    assert back.segments == [TextSegment("hi")]
    assert "malformed" in caplog.text


def test_out_of_range_image_codes_are_rejected():
    fmt = make_format()
    with pytest.raises(ValueError, match="out of range"):
        fmt.encode_document(Document("d", [ImageSegment(tokens=np.full(TPI, N_CODES))]))
    with pytest.raises(ValueError, match="expected"):
        fmt.encode_document(Document("d", [ImageSegment(tokens=np.zeros(TPI + 1, dtype=np.int64))]))
