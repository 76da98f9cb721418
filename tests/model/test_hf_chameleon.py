"""The transformers Chameleon backend: its logits are the HF model's, ramm's decoder over it equals HF
`generate`, and the RA-CM3 layout, CFG and image generation work in the checkpoint's own tokens."""
import json

import pytest
import torch
from chameleon_fixture import make_checkpoint

from ramm.config import DecodeConfig
from ramm.corpus.document import Document, ImageSegment, TextSegment
from ramm.decoding.decoder import generate
from ramm.model.hf_chameleon import load_chameleon
from ramm.pipeline import RAMM

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("chameleon"))


@pytest.fixture(scope="module")
def loaded(ckpt):
    return load_chameleon(ckpt, device="cpu")


def _doc(i, text, codes):
    import numpy as np
    return Document(f"d{i}", [TextSegment(text), ImageSegment(tokens=np.asarray(codes))])


def test_logits_equal_the_hf_forward_and_image_logits_are_not_masked(loaded):
    model, fmt, _ = loaded
    v = fmt.vocab
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, v.size, (2, 9), generator=g)
    with torch.no_grad():
        ours, _ = model(idx)
        hf_ids = model.to_hf[idx]
        theirs = model.hf(input_ids=hf_ids).logits  # image columns set to the dtype's minimum
        head = model.hf.lm_head(model.hf.model(input_ids=hf_ids).last_hidden_state)
    assert ours.shape == (2, 9, v.size)
    not_image = torch.as_tensor(~v.is_image(range(v.size)))
    torch.testing.assert_close(ours[..., not_image], theirs[..., model.to_hf[not_image]])
    torch.testing.assert_close(ours, head[..., model.to_hf])
    image = slice(v.image_offset, v.special_offset)
    assert (theirs[..., model.to_hf[image]] == torch.finfo(theirs.dtype).min).all()
    assert (ours[..., image] > torch.finfo(ours.dtype).min).all()


def test_cached_padded_decoding_equals_full_recompute_and_each_row_alone(loaded):
    model, fmt, _ = loaded
    prompts = [fmt.image_prompt("a red cat"), fmt.image_prompt("the flag of japan with a hat")]
    kw = dict(tokens_per_image=fmt.tokens_per_image, max_new_tokens=fmt.tokens_per_image + 1,
              config=DecodeConfig(method="greedy"), stop_after_image=True)
    batched = generate(model, fmt.vocab, prompts, **kw)
    assert batched == generate(model, fmt.vocab, prompts, use_cache=False, **kw)
    assert batched[0] == generate(model, fmt.vocab, prompts[:1], **kw)[0]  # left padding changes nothing
    assert len(set(batched[0])) > 2  # a real decode, not one repeated id


def test_greedy_text_decoding_equals_hf_generate(loaded):
    model, fmt, _ = loaded
    v = fmt.vocab
    prompt = fmt.encode_document(Document("p", [TextSegment("a smiling dog")]))[:-1]
    ours = generate(model, v, [prompt], tokens_per_image=fmt.tokens_per_image, max_new_tokens=12,
                    config=DecodeConfig(method="greedy"), allow_images=False)[0]
    # HF over the same legal set: text ids and <break> (ramm's text grammar with images off)
    legal = set(model.cv.to_hf[:v.text_size].tolist()) | {int(model.cv.to_hf[v.brk])}
    suppress = [i for i in range(model.hf.config.vocab_size) if i not in legal]
    hf_prompt = model.to_hf[torch.tensor([prompt])]
    out = model.hf.generate(hf_prompt, max_new_tokens=12, do_sample=False, suppress_tokens=suppress,
                            eos_token_id=None, pad_token_id=1)
    assert model.to_hf[torch.tensor(ours)].tolist() == out[0, hf_prompt.size(1):].tolist()


def test_cfg_at_scale_one_equals_conditional_decoding(loaded):
    model, fmt, _ = loaded
    prompts = [fmt.image_prompt("a blue dog", [_doc(0, "a red cat", range(16))])]
    uncond = [fmt.unconditional_image_prompt()]  # shorter: the two streams are left-padded together
    kw = dict(tokens_per_image=fmt.tokens_per_image, max_new_tokens=fmt.tokens_per_image + 1, stop_after_image=True)
    cfg = generate(model, fmt.vocab, prompts, uncond_prompts=uncond,
                   config=DecodeConfig(method="cfg", guidance_scale=1.0, temperature=0.0), **kw)
    assert cfg == generate(model, fmt.vocab, prompts, config=DecodeConfig(method="greedy"), **kw)


def test_ra_prompt_is_laid_out_in_reserved_tokens_and_round_trips(loaded):
    model, fmt, info = loaded
    main, retrieved = _doc(1, "the flag of japan", [3] * 16), [_doc(2, "a red cat", range(16))]
    seq = fmt.encode_ra(main, retrieved, mask=False)
    names = info["tokenizer"].convert_ids_to_tokens(model.cv.to_hf[seq.ids].tolist())
    assert names[0].startswith("<reserved") and "<racm3:break>" in names and "<eoss>" in names
    assert names[names.index("<racm3:break>") + 1] == "IMGIMGAZ"  # code 0: Chameleon's own image token
    parsed = fmt.parse(seq.ids, decode_images=False)
    assert parsed.segments[0].text == "the flag of japan"
    assert parsed.segments[1].tokens.tolist() == [3] * 16
    assert seq.weights[:len(fmt.encode_document(retrieved[0]))] == [fmt.alpha] * len(fmt.encode_document(retrieved[0]))


def test_facade_loads_the_checkpoint_and_generates_one_image_between_the_markers(ckpt):
    ramm = RAMM.load(ckpt, device="cpu")
    res = ramm.generate_image("a red cat", n=2, retrieve=False, method="cfg", guidance_scale=2.0, seed=1)
    v, tpi = ramm.vocab, ramm.format.tokens_per_image
    assert [im.shape for im in res.outputs] == [(16, 16, 3)] * 2
    for row in res.tokens:
        assert len(row) == tpi + 1 and row[-1] == v.img_end and v.is_image(row[:tpi]).all()
    caps = ramm.caption_image(res.outputs[0], n=2, retrieve=False, max_new_tokens=6)
    assert all(isinstance(c, str) and c for c in caps.outputs) and len(caps.scores) == 2
    with pytest.raises(ValueError, match="context"):
        ramm.generate_image("a red cat " * 200, n=1, retrieve=False)


def test_not_a_chameleon_checkpoint_is_refused_naming_the_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not a Chameleon checkpoint.*llama"):
        RAMM.load(tmp_path, device="cpu")


def test_without_vqgan_decoder_image_tasks_are_refused_and_text_still_decodes(tmp_path):
    ramm = RAMM.load(make_checkpoint(tmp_path, decoder=False), device="cpu")
    with pytest.raises(ValueError, match="no VQGAN decoder weights.*decoder.safetensors"):
        ramm.generate_image("a red cat", n=1, retrieve=False)
    out = ramm.generate(Document("p", [TextSegment("a red")]), retrieve=False, method="greedy", max_new_tokens=4)
    assert isinstance(out.outputs[0], Document)


def test_vocabulary_without_image_tokens_is_refused_for_image_tasks(tmp_path):
    ramm = RAMM.load(make_checkpoint(tmp_path, images=False, decoder=False), device="cpu")
    for call in (lambda: ramm.generate_image("a red cat", n=1, retrieve=False),
                 lambda: ramm.caption_image(torch.zeros(16, 16, 3, dtype=torch.uint8).numpy(), retrieve=False)):
        with pytest.raises(ValueError, match="no image tokens"):
            call()


def test_vocab_maps_every_ramm_id_to_a_distinct_checkpoint_id_and_needs_reserved_tokens():
    from chameleon_fixture import N_CODES, build_tokenizer

    from ramm.model.hf_chameleon import ChameleonVocab

    tok = build_tokenizer()
    vmap = tok.get_vocab()
    cv = ChameleonVocab.from_checkpoint(vmap, tok)
    assert len(set(cv.to_hf.tolist())) == cv.vocab.size and cv.vocab.image_size == N_CODES
    name = {i: n for n, i in vmap.items()}
    assert [name[int(cv.to_hf[cv.vocab.image_id(c)])] for c in (0, 12)] == ["IMGIMGAZ", "IMGIMGBCZ"]
    assert (name[int(cv.to_hf[cv.vocab.img])], name[int(cv.to_hf[cv.vocab.img_end])]) == ("<racm3:break>", "<eoss>")
    few = {n: i for n, i in vmap.items() if not n.startswith("<reserved") or n < "<reserved08710>"}
    with pytest.raises(ValueError, match="too few <reserved#####> tokens"):
        ChameleonVocab.from_checkpoint(few, tok)
