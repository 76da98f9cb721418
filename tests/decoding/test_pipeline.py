"""The RAMM facade on a tiny random bundle: shapes, evidence, determinism, bad input."""
import json

import numpy as np
import pytest
import torch

from ramm.corpus.document import Document, ImageSegment, TextSegment, encode_png
from ramm.pipeline import RAMM

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230), "yellow": (240, 220, 20)}
SIZE = 16


def square(rgb, size=SIZE):
    img = np.full((size, size, 3), 255, np.uint8)
    img[3:-3, 3:-3] = rgb
    return img


def make_docs():
    return [Document.from_pair(f"{style}-{name}", f"{style} emoji: {name} square", square(rgb if style == "a" else rgb[::-1]))
            for style in ("a", "b") for name, rgb in COLOURS.items()]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A generator bundle (random weights), its tokenizers and a memory, written as `ramm` would."""
    from ramm.model.bundle import save_generator
    from ramm.model.transformer import Transformer, TransformerConfig
    from ramm.retrieval.dual_encoder import DualEncoder, DualEncoderConfig, train_text_tokenizer
    from ramm.retrieval.memory import Memory
    from ramm.tokenizers.image_tokenizer import ImageTokenizer, ImageTokenizerConfig
    from ramm.tokenizers.text_tokenizer import TextTokenizer
    from ramm.tokenizers.vocab import Vocabulary

    torch.set_num_threads(1)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("bundle")
    docs = make_docs()
    text_tok = TextTokenizer.train([d.text for d in docs] * 3, vocab_size=300)
    text_tok.save_pretrained(root / "text-tok")
    image_tok = ImageTokenizer(ImageTokenizerConfig(image_size=SIZE, grid=4, patch=2, channels=8, latent_dim=8))
    image_tok.save_pretrained(root / "image-tok")
    vocab = Vocabulary(text_tok.vocab_size, image_tok.codebook_size)
    gen = Transformer(TransformerConfig.preset("tiny", vocab_size=vocab.size, max_seq_len=160))
    save_generator(gen, root / "gen", text_tokenizer=root / "text-tok", image_tokenizer=root / "image-tok")
    cfg = DualEncoderConfig(image_size=SIZE, channels=(8, 16), text_vocab_size=300, text_max_len=16,
                            text_width=32, text_layers=1, text_heads=2, embed_dim=32)
    enc = DualEncoder(cfg, train_text_tokenizer([d.text for d in docs], 300))
    enc.save_pretrained(root / "encoder")
    Memory.build(docs, enc, root / "memory", encoder_path=root / "encoder", progress=False)
    return root


@pytest.fixture(scope="module")
def ramm(bundle):
    return RAMM.load(bundle / "gen", memory_dir=bundle / "memory", device="cpu")


def test_generate_image_returns_n_images_and_the_retrieved_evidence(ramm):
    out = ramm.generate_image("a emoji: red square", n=5, k=2, batch_size=2, exclude_ids=["a-red"])
    assert len(out.outputs) == 5 and all(im.shape == (SIZE, SIZE, 3) and im.dtype == np.uint8 for im in out.outputs)
    assert len(out.retrieved) == 2 and "a-red" not in [d.id for d in out.retrieved]
    assert out.scores == sorted(out.scores, reverse=True) and len(out.scores) == 5
    for row in out.tokens:
        assert len(row) == ramm.format.tokens_per_image + 1 and row[-1] == ramm.vocab.img_end


def test_guided_decoding_serves_images_and_captions(ramm):
    for method in ("cfg", "cd"):
        assert len(ramm.generate_image("b emoji: blue square", n=2, method=method).outputs) == 2
    seen = []
    mix = ramm.generate_image("b emoji: blue square", n=5, method="mix", top_p=0.9, rerank=False, batch_size=2,
                              progress=seen.append)
    sampled = ramm.generate_image("b emoji: blue square", n=3, top_p=0.9, rerank=False, batch_size=2)
    assert len(mix.outputs) == 5 and mix.tokens[:3] == sampled.tokens and seen == [2, 3, 5]
    image, kw = square(COLOURS["blue"]), dict(n=2, max_new_tokens=6, seed=3, rerank=False)
    # CFG at scale 1 is the conditional model; CD-K with one candidate is greedy
    assert ramm.caption_image(image, method="cfg", guidance_scale=1.0, **kw).tokens == \
        ramm.caption_image(image, method="sample", **kw).tokens
    assert ramm.caption_image(image, method="cd", cd_alpha=1.0, cd_k=1, **kw).tokens == \
        ramm.caption_image(image, method="greedy", **kw).tokens


def test_same_seed_same_images_and_progress_counts_samples(ramm):
    seen = []
    a = ramm.generate_image("a emoji: green square", n=4, seed=7, batch_size=3, progress=seen.append)
    b = ramm.generate_image("a emoji: green square", n=4, seed=7, batch_size=3)
    c = ramm.generate_image("a emoji: green square", n=4, seed=8, batch_size=3)
    assert a.tokens == b.tokens and a.tokens != c.tokens
    assert seen == [3, 4]


def test_the_facade_keeps_packed_weights_and_samples_as_an_unpacked_one(ramm, bundle):
    from ramm.model.packing import Linear

    linears = [m for m in ramm.model.modules() if isinstance(m, Linear)]
    assert linears and all(m._packed is not None for m in linears)  # packed once at load, on CPU
    plain = RAMM.load(bundle / "gen", memory_dir=bundle / "memory", device="cpu", pack=False)
    assert all(m._packed is None for m in plain.model.modules() if isinstance(m, Linear))
    kw = dict(n=3, method="greedy", batch_size=3, rerank=False)  # sampled draws can flip on a last-bit logit change
    assert ramm.generate_image("b emoji: red square", **kw).tokens == plain.generate_image("b emoji: red square", **kw).tokens
    assert all(m._packed is not None for m in linears)  # generate's own packing leaves the facade's in place


def test_retrieval_can_be_turned_off_or_given(ramm):
    assert ramm.generate_image("a emoji: red square", n=1, retrieve=False).retrieved == []
    given = [make_docs()[3]]
    out = ramm.generate_image("a emoji: red square", n=1, retrieved=given)
    assert [d.id for d in out.retrieved] == [given[0].id]


def test_caption_image_from_array_and_file(ramm, tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(square(COLOURS["red"], 32)))  # resized to the tokenizer's 16x16
    for image in (square(COLOURS["red"]), path):
        out = ramm.caption_image(image, n=3, max_new_tokens=8)
        assert len(out.outputs) == 3 and all(isinstance(t, str) for t in out.outputs)
        assert len(out.retrieved) == 2 and out.scores == sorted(out.scores, reverse=True)
        for row in out.tokens:
            assert not ramm.vocab.is_image(row).any() and len(row) <= 8


def test_infill_regenerates_an_image_span_and_keeps_the_text(ramm):
    doc = Document("q", [TextSegment("a emoji: red square"), ImageSegment(pixels=square(COLOURS["red"]))])
    out = ramm.infill(doc, masked=[1], n=2, k=1)
    assert len(out.outputs) == 2 and len(out.retrieved) == 1
    for d in out.outputs:
        assert d.text == "a emoji: red square"
        assert d.image is not None and d.image.shape == (SIZE, SIZE, 3)


def test_generate_continues_the_prompt_after_demonstrations(ramm):
    demos = make_docs()[:2]
    out = ramm.generate(Document("p", [TextSegment("a emoji:")]), demonstrations=demos, retrieve=False,
                        max_new_tokens=40, seed=1)
    assert out.retrieved == []
    assert out.outputs[0].text.startswith("a emoji:")
    for seg in out.outputs[0].images:
        assert len(seg.tokens) == ramm.format.tokens_per_image


def test_bad_input_gives_clear_errors(ramm, bundle, tmp_path):
    with pytest.raises(ValueError, match="caption is empty"):
        ramm.generate_image("   ")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        ramm.caption_image(bad)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ramm.caption_image(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RAMM.load(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError, match="generator.json"):
        RAMM.load(bundle / "image-tok")
    with pytest.raises(ValueError, match="method"):
        ramm.generate_image("a emoji: red square", n=1, method="beam")
    with pytest.raises(ValueError, match="infill"):
        ramm.infill(make_docs()[0], masked=[1], method="cfg")


def test_retrieval_without_a_memory_is_a_clear_error(bundle):
    no_memory = RAMM.load(bundle / "gen", device="cpu")
    with pytest.raises(ValueError, match="memory"):
        no_memory.generate_image("a emoji: red square", n=1)
    assert len(no_memory.generate_image("a emoji: red square", n=2, retrieve=False).outputs) == 2


def cli(*argv):
    from ramm.__main__ import main
    return main([str(a) for a in argv])


def test_cli_generate_image_writes_samples_grid_and_page(bundle, tmp_path, capsys):
    out = tmp_path / "img"
    rc = cli("generate", "image", "a emoji: red square", "--model", bundle / "gen", "--memory", bundle / "memory",
             "--n", 3, "--out", out, "--device", "cpu", "--method", "cfg", "--exclude", "[a-red]")
    assert rc == 0
    from PIL import Image
    assert sorted(p.name for p in out.glob("sample_*.png")) == ["sample_00.png", "sample_01.png", "sample_02.png"]
    assert Image.open(out / "sample_00.png").size == (SIZE, SIZE)
    scale = 128 // SIZE  # small images are shown at least 128 px a side (ramm.cli.generate.GRID_MIN_SIDE)
    assert Image.open(out / "grid.png").size == (scale * (3 * (SIZE + 2) + 2), scale * (SIZE + 4))
    page = (out / "index.html").read_text()
    assert "a emoji: red square" in page and "retrieved_0.png" in page and "sample_02.png" in page
    result = json.loads((out / "result.json").read_text())
    assert len(result["retrieved"]) == 2 and "a-red" not in result["retrieved"]


def test_cli_caption_and_infill(bundle, tmp_path, capsys):
    img = tmp_path / "q.png"
    img.write_bytes(encode_png(square(COLOURS["blue"])))
    common = ["--model", bundle / "gen", "--memory", bundle / "memory", "--device", "cpu", "--n", 2]
    assert cli("generate", "caption", img, "--out", tmp_path / "cap", "--max-tokens", 6, *common) == 0
    assert (tmp_path / "cap" / "index.html").exists() and (tmp_path / "cap" / "query.png").exists()
    assert cli("generate", "infill", "--caption", "b emoji: blue square", "--mask", "image",
               "--out", tmp_path / "inf", *common) == 0
    assert len(list((tmp_path / "inf").glob("sample_*.png"))) == 2
    assert cli("generate", "infill", "--image", img, "--mask", "caption", "--out", tmp_path / "inf2", *common) == 0


def test_cli_reports_bad_input_cleanly(bundle, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    assert cli("generate", "caption", bad, "--model", bundle / "gen", "--out", tmp_path / "o", "--no-retrieve") == 1
    assert "bad.png" in capsys.readouterr().err
    assert cli("generate", "image", "x", "--model", tmp_path / "nope", "--out", tmp_path / "o") == 1
    assert "does not exist" in capsys.readouterr().err
