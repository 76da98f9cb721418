import json
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ramm.corpus.document import Document, TextSegment
from ramm.tokenizers.image_tokenizer import ImageTokenizer, ImageTokenizerConfig
from ramm.training.tokenizer_recipe import ImageDataset, evaluate, tokenizer_step, train_image_tokenizer
from ramm.training.trainer import Trainer, TrainerConfig

torch.set_num_threads(1)
TINY = dict(image_size=16, grid=4, channels=16, latent_dim=16, codebook_size=32)


def _docs(n=24, size=16, seed=0):
    """Coloured rectangles on white: structure a tokenizer can learn in a few dozen steps."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        img = np.full((size, size, 3), 255, np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        h, w = rng.integers(3, size // 2, 2)
        img[y:y + h, x:x + w] = rng.integers(0, 256, 3)
        docs.append(Document.from_pair(f"d{i}", f"shape {i}", img, metadata={"split": "train"}))
    return docs


def _images(docs):
    return ImageDataset(docs, 16).images.float() / 255


def _tcfg(tmp_path, **kw):
    return TrainerConfig(out_dir=str(tmp_path), **{**dict(steps=60, batch_size=8, lr=3e-3, warmup_steps=5,
                                                         weight_decay=0.0, progress=False, device="cpu"), **kw})


def test_encode_decode_shapes_and_range():
    tok = ImageTokenizer(ImageTokenizerConfig(**TINY))
    codes = tok.encode(_images(_docs(3)))
    assert codes.shape == (3, 16) and codes.dtype == torch.long
    assert 0 <= codes.min() and codes.max() < tok.codebook_size
    out = tok.decode(codes)
    assert out.shape == (3, 3, 16, 16) and 0 <= out.min() and out.max() <= 1
    assert tok.tokens_per_image == 16 and tok.grid == 4


def test_a_local_encoder_gives_a_cell_the_same_code_whatever_its_neighbours(tmp_path):
    """Patch-local codes: change one 4x4 cell's pixels and only that cell's code may change; the same patch
    at another image gets the same code. The convolutional encoder leaks the change into its neighbours."""
    docs = _docs()
    cfg = ImageTokenizerConfig(**TINY, local=True)
    tok, _ = train_image_tokenizer(docs, cfg, _tcfg(tmp_path, steps=30), eval_docs=docs)
    tok.eval()
    x = _images(docs[:8])
    y = x.clone()
    y[:, :, 0:4, 0:4] = torch.rand(8, 3, 4, 4)  # cell 0 of every image repainted
    a, b = tok.encode(x), tok.encode(y)
    assert torch.equal(a[:, 1:], b[:, 1:]) and not torch.equal(a[:, 0], b[:, 0])
    z = x.clone()
    z[:, :, 4:8, 8:12] = x[0, :, 0:4, 0:4]  # image 0's first patch pasted at cell (1, 2) of every image
    assert (tok.encode(z)[:, 6] == a[0, 0]).all()
    conv = ImageTokenizer(ImageTokenizerConfig(**TINY))
    assert not torch.equal(conv.encode(x)[:, 1:], conv.encode(y)[:, 1:])
    again = ImageTokenizer.from_pretrained(tmp_path)
    assert again.cfg.local and torch.equal(again.encode(x), a)


def test_paper_scale_256_images_give_32x32_grid():
    cfg = ImageTokenizerConfig(image_size=256, grid=32, channels=8, latent_dim=8)
    tok = ImageTokenizer(cfg)
    assert tok.encode(torch.rand(1, 3, 256, 256)).shape == (1, 1024)


def test_training_reduces_reconstruction_error(tmp_path):
    docs = _docs()
    cfg = ImageTokenizerConfig(**TINY)
    before = evaluate(ImageTokenizer(cfg), _images(docs))["psnr"]
    tok, metrics = train_image_tokenizer(docs, cfg, _tcfg(tmp_path), eval_docs=docs)
    assert metrics["psnr"] > before + 3, (before, metrics)
    assert 0 < metrics["usage"] <= 1 and metrics["perplexity"] >= 1
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()


def test_save_load_gives_identical_codes(tmp_path):
    torch.manual_seed(0)
    tok = ImageTokenizer(ImageTokenizerConfig(**TINY))
    x = _images(_docs(6))
    tok.train()
    tok(x)  # VQ: k-means init + an EMA update, so the saved codebook is not the initial one
    tok.eval()
    tok.save_pretrained(tmp_path)
    loaded = ImageTokenizer.from_pretrained(tmp_path)
    assert loaded.cfg == tok.cfg
    assert torch.equal(loaded.encode(x), tok.encode(x))
    assert torch.allclose(loaded.decode(tok.encode(x)), tok.decode(tok.encode(x)))


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    docs = _docs(16)
    cfg = ImageTokenizerConfig(**TINY)
    torch.manual_seed(0)
    full, _ = train_image_tokenizer(docs, cfg, _tcfg(tmp_path / "full", steps=12))
    torch.manual_seed(0)
    Trainer(ImageTokenizer(cfg), ImageDataset(docs, 16), _tcfg(tmp_path / "cut", steps=12, ckpt_every=6),
            step_fn=tokenizer_step).fit(until_step=6)
    torch.manual_seed(1)  # resuming must not depend on the fresh model's initialisation
    resumed, metrics = train_image_tokenizer(docs, cfg, _tcfg(tmp_path / "cut", steps=12, resume=True))
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def test_bad_inputs_raise_value_error():
    tok = ImageTokenizer(ImageTokenizerConfig(**TINY))
    with pytest.raises(ValueError, match="images must be"):
        tok.encode(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="images must be"):
        tok.encode(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="dtype"):
        tok.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="tokens must be"):
        tok.decode(torch.zeros(1, 15, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens must lie"):
        tok.decode(torch.full((1, 16), tok.codebook_size))
    with pytest.raises(ValueError, match="multiple of grid"):
        ImageTokenizerConfig(image_size=30, grid=8)
    with pytest.raises(TypeError, match="quantizer"):  # FSQ was removed: VQ is the only quantizer
        ImageTokenizerConfig(quantizer="fsq")
    with pytest.raises(ValueError, match="must be 16x16"):
        ImageDataset(_docs(2, size=32), 16)


def test_text_only_corpus_raises(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        train_image_tokenizer([Document(id="a", segments=[TextSegment("only text")])],
                              ImageTokenizerConfig(**TINY), _tcfg(tmp_path))


def _jsonl_corpus(tmp_path, docs):
    from ramm.corpus.document import encode_png
    rows = []
    for d in docs:
        (tmp_path / f"{d.id}.png").write_bytes(encode_png(d.image))
        rows.append(json.dumps({"id": d.id, "image": f"{d.id}.png", "caption": d.text}))
    (tmp_path / "corpus.jsonl").write_text("\n".join(rows) + "\n")
    return tmp_path / "corpus.jsonl"


def test_cli_trains_saves_and_resumes(tmp_path, capsys):
    from ramm.__main__ import main

    corpus = _jsonl_corpus(tmp_path, _docs(8))
    argv = ["train", "tokenizer", "--corpus", str(corpus), "--out", str(tmp_path / "tok"), "--trainer.steps", "4",
            "--trainer.batch-size", "4", "--model.image-size", "16", "--model.grid", "4", "--model.channels", "16",
            "--model.codebook-size", "32", "--trainer.device", "cpu", "--split.fractions", '{"train": 1.0}']
    assert main(argv) == 0
    assert "training on 8 train documents" in capsys.readouterr().out
    tok = ImageTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.tokens_per_image == 16
    assert json.loads((tmp_path / "tok" / "checkpoint" / "trainer_state.json").read_text())["step"] == 4
    argv[argv.index("--trainer.steps") + 1] = "6"
    assert main([*argv, "--trainer.resume"]) == 0
    assert json.loads((tmp_path / "tok" / "checkpoint" / "trainer_state.json").read_text())["step"] == 6
    rows = [json.loads(r) for r in (tmp_path / "tok" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [4, 6]  # continued from step 4, not restarted


def test_a_tokenizer_saved_with_the_old_quantizer_fields_still_loads(tmp_path):
    tok = ImageTokenizer(ImageTokenizerConfig(**TINY))
    tok.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "quantizer": "vq", "fsq_levels": [8, 8, 8]}))
    assert ImageTokenizer.from_pretrained(tmp_path).cfg == tok.cfg
    (tmp_path / "config.json").write_text(json.dumps({**raw, "quantizer": "fsq"}))
    with pytest.raises(ValueError, match="FSQ was removed"):
        ImageTokenizer.from_pretrained(tmp_path)
