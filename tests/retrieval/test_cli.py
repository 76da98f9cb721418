import json

import pytest

from PIL import Image

from ramm.__main__ import main as run


def test_memory_build_and_search_by_text_and_image(tmp_path, docs, encoder_dir, capsys):
    rows = []
    for d in docs[:12]:
        Image.fromarray(d.image).save(tmp_path / f"{d.id}.png")
        rows.append(json.dumps({"id": d.id, "image": f"{d.id}.png", "caption": d.text}))
    rows.append(json.dumps({"id": "broken", "image": "missing.png", "caption": "x"}))
    (tmp_path / "corpus.jsonl").write_text("\n".join(rows) + "\n")
    mem = tmp_path / "mem"
    assert run(["memory", "build", "--corpus", str(tmp_path / "corpus.jsonl"), "--encoder", str(encoder_dir),
                "--out", str(mem), "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "12 documents (12 added, 0 already present, 1 skipped)" in out  # the loader's skip is counted
    assert "skipped missing_file: 1" in out
    assert run(["memory", "build", "--corpus", str(tmp_path / "corpus.jsonl"), "--encoder", str(encoder_dir),
                "--out", str(tmp_path / "strict"), "--strict"]) == 1
    assert "missing_file: broken" in capsys.readouterr().err
    assert run(["memory", "search", str(mem), docs[0].text, "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(len(l.split("\t")) == 3 for l in lines)
    assert run(["memory", "search", str(mem), "--image", str(tmp_path / f"{docs[1].id}.png"), "-k", "2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_train_retriever_cli_passes_the_subspace_options_to_the_saved_config(tmp_path, docs, capsys):
    rows = []
    for d in docs[:8]:
        Image.fromarray(d.image).save(tmp_path / f"{d.id}.png")
        rows.append(json.dumps({"id": d.id, "image": f"{d.id}.png", "caption": d.text}))
    (tmp_path / "corpus.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "enc"
    assert run(["train", "retriever", "--corpus", str(tmp_path / "corpus.jsonl"), "--out", str(out), "--trainer.steps", "2",
                "--trainer.batch-size", "4", "--trainer.warmup-steps", "0", "--trainer.weight-decay", "0.1",
                "--model.embed-dim", "16", "--model.private-dim", "8", "--model.shared-weight", "0.2",
                "--model.pool", "flatten", "--model.image-loss-weight", "1", "--model.embed-shared-weight", "0.01",
                "--model.memory-loss-weight", "0.5", "--split.fractions", '{"train": 1.0}']) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["private_dim"], cfg["shared_weight"], cfg["pool"], cfg["image_loss_weight"], cfg["embed_shared_weight"],
            cfg["memory_loss_weight"]) == (8, 0.2, "flatten", 1.0, 0.01, 0.5)
    from ramm.retrieval.encoder import load_encoder
    assert load_encoder(out).dim == 16 + 2 * 8


def test_bad_paths_and_sizes_are_clear_errors_not_tracebacks(tmp_path, docs, encoder_dir, capsys):
    (tmp_path / "afile").write_text("x")
    mem = tmp_path / "mem"
    from ramm.retrieval.memory import Memory
    Memory.build(docs[:3], encoder_dir, mem, progress=False)
    assert run(["memory", "search", str(mem), "--image", str(tmp_path)]) == 1
    assert f"--image {tmp_path} is not an image file" in capsys.readouterr().err
    assert run(["memory", "build", "--corpus", str(tmp_path / "afile.jsonl"), "--encoder", str(encoder_dir),
                "--out", str(tmp_path / "afile")]) == 1
    with pytest.raises(ValueError, match="memory directory .*afile is a file"):
        Memory.build(docs[:3], encoder_dir, tmp_path / "afile", progress=False)
    from ramm.training.retriever_recipe import train_retriever
    from ramm.training.trainer import TrainerConfig
    with pytest.raises(ValueError, match="InfoNCE needs >= 2 pairs"):
        train_retriever(docs[:4], tmp_path / "enc", TrainerConfig(out_dir=str(tmp_path / "enc"), batch_size=1))
    with pytest.raises(ValueError, match="encoder directory .*afile is a file"):
        train_retriever(docs[:4], tmp_path / "afile", TrainerConfig(out_dir=str(tmp_path / "afile"), batch_size=4,
                                                                    steps=1, progress=False))
