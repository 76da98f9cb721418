"""RA fine-tuning of a tiny random Chameleon checkpoint: a few steps lower the loss, and the saved directory
loads in transformers with the fine-tuned model's logits (full and LoRA)."""
import numpy as np
import pytest
import torch
from chameleon_fixture import make_checkpoint

from ramm.config import ChameleonFinetuneConfig, RAConfig, TrainerConfig
from ramm.corpus.document import Document
from ramm.model.hf_chameleon import load_chameleon
from ramm.retrieval.dual_encoder import DualEncoder, DualEncoderConfig, train_text_tokenizer
from ramm.retrieval.memory import Memory
from ramm.training.chameleon_recipe import ra_finetune

torch.set_num_threads(1)
COLORS = [(220, 30, 30), (30, 30, 220), (10, 10, 10)]
NAMES = ["red", "blue", "dog"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ra-chameleon")
    ckpt = make_checkpoint(tmp / "base")
    docs = []
    for i, (c, name) in enumerate(zip(COLORS, NAMES)):
        for j, hat in enumerate(("", " with a hat")):
            img = np.full((16, 16, 3), 255, np.uint8)
            img[4:12, 4 + 2 * j:12] = c
            docs.append(Document.from_pair(f"{name}-{j}", f"a {name} cat{hat}", img,
                                           metadata={"concept": name, "split": "train"}))
    texts = [d.text for d in docs]
    torch.manual_seed(0)
    enc = DualEncoder(DualEncoderConfig(image_size=16, channels=(8, 16), text_vocab_size=300, text_max_len=8,
                                        text_width=16, text_layers=1, text_heads=2, embed_dim=16),
                      train_text_tokenizer(texts, 300))
    enc.save_pretrained(tmp / "enc")
    memory = Memory.build(docs, tmp / "enc", tmp / "mem", progress=False)
    return ckpt, docs, memory, tmp


def _loss(model, fmt, docs):
    from ramm.model.batch import pad_batch
    seqs = [fmt.encode_ra(d, [], mask=False) for d in docs]
    batch = pad_batch([(s.ids, s.weights) for s in seqs], fmt.vocab.pad)
    with torch.no_grad():
        return float(model(**batch)[1])


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_ra_finetuning_lowers_the_loss_and_saves_a_directory_transformers_loads(setup, lora_rank, tmp_path):
    from transformers import ChameleonForConditionalGeneration

    ckpt, docs, memory, _ = setup
    model, fmt, info = load_chameleon(ckpt, device="cpu")
    cfg = ChameleonFinetuneConfig(model=str(ckpt), lora_rank=lora_rank,
                                  trainer=TrainerConfig(out_dir=str(tmp_path / "run"), steps=12, batch_size=2, lr=1e-2,
                                                        warmup_steps=1, log_every=4, ckpt_every=100, progress=False,
                                                        device="cpu", weight_decay=0.0),
                                  ra=RAConfig(k_choices=(0, 1), n_candidates=1, diversity=None, max_len=128))
    before = _loss(model, fmt, docs)
    frozen = {n: p.detach().clone() for n, p in model.hf.named_parameters()}
    ra_finetune(model, fmt, docs, memory, cfg)
    if lora_rank:  # only the adapters trained
        assert all(torch.equal(p, frozen[n.replace("base_layer.", "")])
                   for n, p in model.hf.named_parameters() if "lora_" not in n)
    after = _loss(model, fmt, docs)
    assert after < before - 0.5, (before, after)

    model.save_pretrained(tmp_path / "out", tokenizer=info["tokenizer"], source=ckpt)
    assert (tmp_path / "out" / "decoder.safetensors").is_file()
    reloaded = ChameleonForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    ids = model.to_hf[torch.tensor([fmt.encode_ra(docs[0], [], mask=False).ids])]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model.hf(input_ids=ids).logits)
    again, fmt2, _ = load_chameleon(tmp_path / "out", device="cpu")
    assert abs(_loss(again, fmt2, docs) - after) < 1e-4


def test_cli_fine_tunes_a_jsonl_corpus_and_the_facade_loads_the_result_with_its_memory(setup, tmp_path):
    import json

    from PIL import Image

    from ramm.__main__ import main
    from ramm.pipeline import RAMM

    ckpt, docs, _, tmp = setup
    rows = []
    for d in docs:  # 32x32 files: the loader resizes them to the VQGAN's 16x16
        Image.fromarray(np.kron(d.image, np.ones((2, 2, 1), np.uint8))).save(tmp_path / f"{d.id}.png")
        rows.append({"id": d.id, "image": f"{d.id}.png", "caption": d.text, "split": "train"})
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "ft"
    assert main(["train", "chameleon", "--model", str(ckpt), "--corpus", str(tmp_path / "c.jsonl"),
                 "--memory", str(tmp / "mem"), "--out", str(out), "--lora_rank", "2", "--trainer.steps", "2",
                 "--trainer.batch_size", "2", "--trainer.device", "cpu", "--no-trainer.progress",
                 "--ra.k_choices", "[0, 1]", "--ra.n_candidates", "1", "--ra.max_len", "128"]) == 0
    ramm = RAMM.load(out, device="cpu")
    assert ramm.memory is not None and len(ramm.memory) == len(docs)
    res = ramm.generate_image("a red cat", n=1, k=1, method="greedy")
    assert len(res.retrieved) == 1 and res.outputs[0].shape == (16, 16, 3)


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_one_fsdp_step_on_two_ranks_saves_a_directory_transformers_loads(setup, lora_rank, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image
    from safetensors.torch import load_file
    from transformers import ChameleonForConditionalGeneration

    ckpt, docs, _, tmp = setup
    rows = []
    for d in docs:
        Image.fromarray(d.image).save(tmp_path / f"{d.id}.png")
        rows.append({"id": d.id, "image": f"{d.id}.png", "caption": d.text, "split": "train"})
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "ft"
    cfg = {"model": str(ckpt), "corpus": str(tmp_path / "c.jsonl"), "memory": str(tmp / "mem"), "out": str(out),
           "lora_rank": lora_rank,
           "trainer": {"steps": 1, "batch_size": 2, "lr": 1e-2, "warmup_steps": 0, "log_every": 1, "device": "cpu",
                       "progress": False, "strategy": "fsdp", "weight_decay": 0.0},
           "ra": {"k_choices": [0, 1], "n_candidates": 1, "max_len": 128}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    here = Path(__file__).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{here.parents[1]}{os.pathsep}{here.parent}"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(here / "chameleon_fsdp_run.py"), str(tmp_path / "cfg.json")],
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((out / "checkpoint/trainer_state.json").read_text())
    assert state["world"] == 2 and state["config"]["strategy"] == "fsdp" and state["step"] == 1
    assert np.isfinite(json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"])
    base = load_file(ckpt / "model.safetensors")
    saved = ChameleonForConditionalGeneration.from_pretrained(out).state_dict()
    changed = {k for k, v in base.items() if not torch.equal(v, saved[k])}
    if lora_rank:  # merged adapters: only the attention projections moved
        assert changed and all(k.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj") for k in changed), changed
    else:
        assert any("embed_tokens" in k for k in changed) and any(".mlp." in k for k in changed), changed
    assert not any("vqmodel" in k for k in changed)
