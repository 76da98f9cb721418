import numpy as np
import pytest
import torch

from ramm.config import RetrieverRecipeConfig
from ramm.retrieval.dual_encoder import DualEncoder, DualEncoderConfig, train_text_tokenizer
from ramm.retrieval.encoder import load_encoder
from ramm.retrieval.loss import clip_loss, memory_loss

from ramm_lab.emojibench import name_query
from tests.retrieval.conftest import TINY  # by package: a bare `conftest` is another folder's too

CONCEPT = RetrieverRecipeConfig(match="concept")  # the fixture's answer key: a concept's two styles pair up


def test_clip_loss_low_for_matched_pairs_high_for_shuffled():
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1)
    scale = torch.tensor(np.log(50.0))
    assert clip_loss(a, a, scale) < 0.1 < clip_loss(a, a.roll(1, 0), scale)
    with pytest.raises(ValueError):
        clip_loss(a, a[:4], scale)


def test_memory_loss_ranks_the_partner_and_ignores_the_own_document():
    torch.manual_seed(0)
    scale = torch.tensor(np.log(20.0))
    docs = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    q = docs[[0, 1]]  # queries identical to docs 0 and 1 (their own documents)
    own, near = torch.tensor([0, 1]), torch.tensor([3, 4])
    # the own document is left out: changing it cannot change the query's loss
    moved = docs.clone()
    moved[0] = -moved[0]
    assert torch.allclose(memory_loss(q[:1], docs, near[:1], own[:1], scale), memory_loss(q[:1], moved, near[:1], own[:1], scale))
    # a positive that equals the query scores lower loss than a random one
    close = docs.clone()
    close[3], close[4] = docs[0], docs[1]
    assert memory_loss(q, close, near, own, scale) < memory_loss(q, docs, near, own, scale) - 0.5
    with pytest.raises(ValueError):
        memory_loss(q, docs[:, :4], near, own, scale)


def test_training_loss_drops_and_retrieval_beats_chance(tmp_path, docs):
    from ramm.training.retriever_recipe import leave_one_out_recall, train_retriever
    from ramm.training.trainer import TrainerConfig
    cfg = TrainerConfig(out_dir=str(tmp_path), steps=40, batch_size=30, lr=3e-3, warmup_steps=5, log_every=5,
                        progress=False, amp=False)
    train_retriever(docs, tmp_path, cfg, DualEncoderConfig(**TINY), CONCEPT, alt_text=name_query)
    import json
    losses = [json.loads(l)["loss"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert losses[-1] < 0.7 * losses[0]
    recall = leave_one_out_recall(DualEncoder.from_pretrained(tmp_path), docs, docs, match="concept")
    assert recall["t2i_r1"] > 0.3 and recall["i2t_r5"] > 5 * 5 / len(docs)  # chance is 1/30 per concept


def test_embeddings_are_normalised_float32_and_reload_identically(encoder_dir, docs):
    enc = load_encoder(encoder_dir)
    assert isinstance(enc, DualEncoder)
    t = enc.embed_text([d.text for d in docs[:5]])
    i = enc.embed_image(np.stack([d.image for d in docs[:5]]))
    m = enc.embed_documents(docs[:5])
    for x in (t, i, m):
        assert x.dtype == np.float32 and x.shape == (5, enc.dim)
        assert np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert np.allclose(m, (t + i) / np.linalg.norm(t + i, axis=1, keepdims=True), atol=1e-5)
    assert np.allclose(DualEncoder.from_pretrained(encoder_dir).embed_text([docs[0].text]), t[:1], atol=1e-6)
    # float tensor input and other sizes are accepted (resized to the configured size)
    big = torch.from_numpy(np.stack([d.image for d in docs[:2]])).permute(0, 3, 1, 2).float() / 255
    assert enc.embed_image(torch.nn.functional.interpolate(big, size=32)).shape == (2, enc.dim)


def test_bad_inputs_raise_value_errors(encoder_dir):
    enc = load_encoder(encoder_dir)
    with pytest.raises(ValueError, match="uint8"):
        enc.embed_image(np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(ValueError):
        enc.embed_text("not a list")
    with pytest.raises(ValueError, match="text_width"):
        DualEncoderConfig(text_width=30, text_heads=4)
    with pytest.raises(FileNotFoundError):
        load_encoder(encoder_dir / "nope")


def test_hf_clip_adapter_loads_a_local_tiny_clip(tmp_path, docs):
    from tokenizers import Tokenizer
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    from ramm.retrieval.hf_clip import HFClipEncoder
    torch.manual_seed(0)
    tok: Tokenizer = train_text_tokenizer([d.text for d in docs], 400)
    cfg = CLIPConfig(text_config=dict(vocab_size=tok.get_vocab_size(), eos_token_id=2, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=32),
                     vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=2), projection_dim=16)
    CLIPModel(cfg).save_pretrained(tmp_path)
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>").save_pretrained(tmp_path)
    enc = load_encoder(tmp_path)
    assert isinstance(enc, HFClipEncoder) and enc.dim == 16
    t, i, m = enc.embed_text([docs[0].text, docs[1].text]), enc.embed_image(docs[0].image), enc.embed_documents(docs[:3])
    assert t.shape == (2, 16) and i.shape == (1, 16) and m.shape == (3, 16)
    assert np.allclose(np.linalg.norm(m, axis=1), 1, atol=1e-5)
    assert not np.allclose(t[0], t[1])


def test_concept_views_mirror_images_with_flip_prob(docs):
    from ramm.training.retriever_recipe import ConceptViews, RetrieverRecipeConfig
    model = DualEncoder(DualEncoderConfig(**TINY), train_text_tokenizer([d.text for d in docs], 300))
    plain = ConceptViews(docs, model, RetrieverRecipeConfig(max_shift=0, flip_prob=0.0))
    flipped = ConceptViews(docs, model, RetrieverRecipeConfig(max_shift=0, flip_prob=1.0))
    pairs = [(plain[i], flipped[i]) for i in range(len(plain))]
    assert all(torch.equal(a[k].flip(-1), b[k]) for a, b in pairs for k in ("image", "image_b"))
    assert any(not torch.equal(a["image"], b["image"]) for a, b in pairs)  # some shapes are not symmetric
    with pytest.raises(ValueError):
        RetrieverRecipeConfig(flip_prob=1.5)


def test_private_subspaces_keep_image_text_similarity_in_the_shared_part(docs):
    torch.manual_seed(0)
    cfg = DualEncoderConfig(**{**TINY, "private_dim": 8, "shared_weight": 0.25, "pool": "flatten"})
    enc = DualEncoder(cfg, train_text_tokenizer([d.text for d in docs], 300)).eval()
    D, P = cfg.embed_dim, cfg.private_dim
    t = enc.embed_text([d.text for d in docs[:4]])
    i = enc.embed_image(np.stack([d.image for d in docs[:4]]))
    assert enc.dim == D + 2 * P and t.shape == i.shape == (4, D + 2 * P)
    assert np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5) and np.allclose(np.linalg.norm(i, axis=1), 1, atol=1e-5)
    # shared part holds shared_weight of the squared norm; each modality leaves the other's private part zero
    assert np.allclose((t[:, :D] ** 2).sum(1), 0.25, atol=1e-5) and np.allclose((i[:, :D] ** 2).sum(1), 0.25, atol=1e-5)
    assert not i[:, D + P:].any() and not t[:, D:D + P].any()
    assert np.allclose(i @ t.T, i[:, :D] @ t[:, :D].T, atol=1e-6)  # image-text: shared part only
    # the training loss with every extra term is finite and backpropagates into both towers
    x = torch.from_numpy(np.stack([d.image for d in docs[:6]])).permute(0, 3, 1, 2).float() / 255
    ids = enc.tokenize([d.text for d in docs[:6]])
    cfg.image_loss_weight = 1.0
    enc.train()
    _, loss = enc(x, ids, x.flip(-1), ids)
    loss.backward()
    assert torch.isfinite(loss) and enc.image_tower.proj.weight.grad.abs().sum() > 0
    assert enc.text_tower.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [dict(pool="max"), dict(private_dim=-1), dict(shared_weight=0.0), dict(shared_weight=1.5),
                                 dict(memory_loss_weight=-1.0), dict(image_loss_weight=-0.5)])
def test_bad_subspace_options_are_rejected(bad):
    with pytest.raises(ValueError):
        DualEncoderConfig(**{**TINY, **bad})


def test_private_subspace_encoder_trains_and_reloads(tmp_path, docs):
    from ramm.training.retriever_recipe import leave_one_out_recall, train_retriever
    from ramm.training.trainer import TrainerConfig
    cfg = TrainerConfig(out_dir=str(tmp_path), steps=40, batch_size=30, lr=3e-3, warmup_steps=5, progress=False, amp=False)
    model_cfg = DualEncoderConfig(**{**TINY, "private_dim": 16, "shared_weight": 0.3, "pool": "flatten",
                                     "image_loss_weight": 1.0})
    train_retriever(docs, tmp_path, cfg, model_cfg, CONCEPT, alt_text=name_query)
    enc = load_encoder(tmp_path)
    assert enc.dim == 32 + 2 * 16 and enc.cfg.pool == "flatten"
    recall = leave_one_out_recall(enc, docs, docs, match="concept")
    assert recall["t2i_r1"] > 0.3 and recall["i2t_r1"] > 3 / len(docs)


def test_embed_shared_weight_reweights_retrieval_vectors_and_clip_score_reads_the_shared_part(docs):
    from ramm.evaluation.clipscore import clip_scores
    torch.manual_seed(0)
    cfg = DualEncoderConfig(**{**TINY, "private_dim": 8, "shared_weight": 0.3, "embed_shared_weight": 0.01})
    enc = DualEncoder(cfg, train_text_tokenizer([d.text for d in docs], 300)).eval()
    images, texts = np.stack([d.image for d in docs[:6]]), [d.text for d in docs[:6]]
    i, t = enc.embed_image(images), enc.embed_text(texts)
    assert np.allclose((i[:, :32] ** 2).sum(1), 0.01, atol=1e-5) and enc.image_text_scale == 0.01
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():  # training vectors keep the training weight
        assert torch.allclose((enc.encode_image(x)[:, :32] ** 2).sum(1), torch.tensor(0.3), atol=1e-5)
    shared_cos = (i[:, :32] * t[:, :32]).sum(1) / 0.01
    assert np.allclose(clip_scores(enc, images, texts), 100 * np.clip(shared_cos, 0, 1), atol=1e-3)
    # the same model with another retrieval weight: same CLIPScores, same image->text ranking
    enc.cfg.embed_shared_weight = 0.5
    assert np.allclose(clip_scores(enc, images, texts), 100 * np.clip(shared_cos, 0, 1), atol=1e-3)
    with pytest.raises(ValueError, match="embed_shared_weight"):
        DualEncoderConfig(**{**TINY, "embed_shared_weight": 0.0})


# ---- a tampered or mismatched encoder folder is a clear error naming the file ----
def _tampered(src, dst, change):
    import shutil
    shutil.copytree(src, dst)
    change(dst)
    return dst


@pytest.mark.parametrize("change, message", [
    (lambda d: (d / "config.json").write_text((d / "config.json").read_text().replace('"pool"', '"pol"')),
     r"config.json: unknown field pol"),
    (lambda d: (d / "config.json").write_text("{not json"), r"config.json: not a readable encoder config"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]),
     r"model.safetensors: not a readable safetensors file"),
    (lambda d: (d / "model.safetensors").write_bytes(b"PK\x03\x04 a zip, not safetensors"),
     r"model.safetensors: not a readable safetensors file"),
    (lambda d: (d / "config.json").write_text((d / "config.json").read_text().replace('"embed_dim": 32', '"embed_dim": 48')),
     r"model.safetensors does not fit its config \(.*size mismatch"),
])
def test_tampered_encoder_folder_names_the_file(tmp_path, encoder_dir, change, message):
    from ramm.retrieval.encoder import load_encoder
    bad = _tampered(encoder_dir, tmp_path / "enc", change)
    with pytest.raises(ValueError, match=message):
        load_encoder(bad)


def test_loading_an_encoder_draws_nothing_from_the_callers_rng(encoder_dir):
    """A memory loads its encoder lazily; if loading drew the module's random init from the global RNG, a
    resumed generator training (which skips the neighbour search, and so the load) would start from other
    weights than the uninterrupted run (bench/fault_injection.py, generator-ra, caught it)."""
    import torch

    from ramm.retrieval.encoder import load_encoder

    torch.manual_seed(7)
    load_encoder(encoder_dir)
    after_load = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(3), after_load)
