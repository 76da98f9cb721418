"""A corpus that is not EmojiBench (drawn shapes in colours, JSONL + image folder) through every CLI stage.

The corpus is made here; every stage runs at a toy budget through `ramm.__main__.main`, the console
script's entry, and each stage reads what the one before wrote.
"""
import json
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ramm.__main__ import main as ramm
from ramm.config import DecodeConfig, SplitConfig

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 40), "blue": (30, 60, 220), "yellow": (230, 200, 20)}
SHAPES = ("circle", "square", "triangle")
FRACTIONS = {"train": 0.6, "val": 0.1, "test": 0.15, "heldout": 0.15}
SPLIT = ["--split.fractions", json.dumps(FRACTIONS), "--split.group_by", "kind", "--split.seed", "3"]
TOY = ["--trainer.steps", "2", "--trainer.batch_size", "8", "--trainer.warmup_steps", "0", "--no-trainer.progress"]


def draw(shape: str, rgb: tuple[int, int, int], variant: int) -> Image.Image:
    im = Image.new("RGB", (32, 32), "white")
    d = ImageDraw.Draw(im)
    o, s = 2 + 2 * (variant % 3), 18 + 6 * (variant // 3)
    box = (o, o, o + s, o + s)
    if shape == "circle":
        d.ellipse(box, fill=rgb)
    elif shape == "square":
        d.rectangle(box, fill=rgb)
    else:
        d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=rgb)
    return im


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """72 documents: 4 colours x 3 shapes x 6 drawings; `kind` (e.g. red-circle) groups a shape's drawings."""
    root = tmp_path_factory.mktemp("shapes")
    (root / "images").mkdir()
    rows = []
    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            for v in range(6):
                doc_id = f"{colour}-{shape}-{v}"
                draw(shape, rgb, v).save(root / "images" / f"{doc_id}.png")
                rows.append({"id": doc_id, "image": f"images/{doc_id}.png", "kind": f"{colour}-{shape}",
                             "caption": f"a {'small' if v < 3 else 'big'} {colour} {shape}"})
    (root / "shapes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "shapes.jsonl", rows


def run(capsys, *argv) -> str:
    assert ramm([str(a) for a in argv]) == 0, argv
    return capsys.readouterr().out


def test_every_stage_runs_on_a_user_corpus(shapes, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAMM_CACHE", str(tmp_path / "cache"))  # the image-code cache stays in the test's folder
    corpus, rows = shapes
    ids = {r["id"] for r in rows}
    split = SplitConfig(fractions=FRACTIONS, group_by="kind", seed=3)
    of = {r["id"]: split.of(type("Doc", (), {"id": r["id"], "metadata": {"kind": r["kind"]}})) for r in rows}
    n = {s: sum(v == s for v in of.values()) for s in FRACTIONS}
    assert all(len({of[r["id"]] for r in rows if r["kind"] == k}) == 1 for k in {r["kind"] for r in rows})
    assert n["train"] and n["test"] and n["heldout"], n  # seed 3 gives every split used below some kinds
    r = tmp_path / "runs"

    out = run(capsys, "data", "stats", corpus)
    assert "72 read, 0 skipped; 72 images" in out and "32x32: 72" in out

    out = run(capsys, "train", "tokenizer", "--corpus", corpus, "--out", r / "tok", *SPLIT, *TOY,
              "--model.channels", "16", "--model.codebook_size", "64", "--model.grid", "4")
    assert f"training on {n['train']} train documents; evaluating on {n['test']} test documents" in out
    assert (r / "tok" / "model.safetensors").is_file() and "16 tokens/image" in out

    out = run(capsys, "train", "text-tokenizer", "--corpus", corpus, "--out", r / "ttok", "--vocab_size", "300", *SPLIT)
    assert (r / "ttok" / "tokenizer.json").is_file()

    out = run(capsys, "train", "retriever", "--corpus", corpus, "--out", r / "enc", *SPLIT, *TOY,
              "--model.embed_dim", "16", "--model.channels", "[8, 16, 16]", "--model.text_width", "32",
              "--model.text_layers", "1", "--views.match", "kind")
    assert f"training the retriever on {n['train']} train documents; val recall on {n['val']} val documents" in out
    assert (r / "enc" / "config.json").is_file()

    out = run(capsys, "memory", "build", "--corpus", corpus, "--encoder", r / "enc", "--out", r / "mem", *SPLIT)
    assert "72 documents (72 added" in out

    out = run(capsys, "memory", "search", r / "mem", "a red circle", "-k", "3")
    hits = [line.split("\t") for line in out.strip().splitlines()]
    assert len(hits) == 3 and all(h[0] in ids and 0 <= float(h[1]) <= 1.0001 for h in hits)
    out = run(capsys, "memory", "search", r / "mem", "--image", corpus.parent / "images" / "blue-square-4.png", "-k", "2")
    assert [line.split("\t")[0] in ids for line in out.strip().splitlines()] == [True, True]

    eval_retrieval = ["eval", "retrieval", "--memory", r / "mem", "--corpus", corpus, "--json", r / "recall.json", *SPLIT]
    assert ramm([str(a) for a in eval_retrieval]) == 1  # a JSONL corpus names no answer key: every hit would be the left-out query
    assert "names no metadata key" in (err := capsys.readouterr().err) and "--match KEY" in err
    run(capsys, *eval_retrieval, "--match", "kind")
    recall = json.loads((r / "recall.json").read_text())
    assert set(recall) == {"test", "heldout"}
    for split_recall in recall.values():
        for by_k in split_recall.values():
            assert 0 <= by_k["1"] <= by_k["5"] <= by_k["10"] <= 1
    assert max(by_k["10"] for split_recall in recall.values() for by_k in split_recall.values()) > 0

    out = run(capsys, "train", "generator", "--corpus", corpus, "--memory", r / "mem", "--tokenizer", r / "tok",
              "--text_tokenizer", r / "ttok", "--out", r / "gen", "--size", "tiny", "--eval_limit", "4", "--ra.group_by", "kind",
              "--decode.image.top_p", "0.8", *SPLIT, *TOY)
    assert "saved generator" in out and "test_image_loss_k2" in out
    # the bundle records how it decodes: the recipe's defaults (the demo's choice), the flag on top
    assert json.loads((r / "gen" / "generator.json").read_text())["decode"] == {
        "image": {**asdict(DecodeConfig()), "method": "cfg", "guidance_scale": 2.0, "top_p": 0.8},
        "caption": {**asdict(DecodeConfig()), "method": "greedy"}}
    assert json.loads((r / "gen" / "generator_config.json").read_text())["ra"]["group_by"] == "kind"
    neighbours = json.loads((r / "gen" / "neighbours.json").read_text())
    assert set(neighbours) == {"text", "image"} and all(len(rows) == n["train"] for rows in neighbours.values())
    assert all(len(row) == 2 and set(row) <= ids for rows in neighbours.values() for row in rows)  # corpus documents

    run(capsys, "generate", "image", "a red circle", "--model", r / "gen", "--out", r / "img", "--n", "2")
    result = json.loads((r / "img" / "result.json").read_text())
    assert (result["settings"]["decode"]["method"], result["settings"]["decode"]["top_p"]) == ("cfg", 0.8)
    assert set(result["retrieved"]) <= ids and len(result["retrieved"]) == 2
    for i in range(2):
        with Image.open(r / "img" / f"sample_{i:02d}.png") as im:
            assert im.size == (32, 32)

    image = corpus.parent / "images" / "green-triangle-1.png"
    run(capsys, "generate", "caption", image, "--model", r / "gen", "--out", r / "cap", "--n", "2", "--max_tokens", "8")
    samples = json.loads((r / "cap" / "result.json").read_text())["samples"]
    assert len(samples) == 2 and all(isinstance(s["text"], str) for s in samples)

    run(capsys, "generate", "infill", "--mask", "image", "--caption", "a blue square", "--model", r / "gen",
        "--out", r / "inf", "--n", "1")
    with Image.open(r / "inf" / "sample_00.png") as im:
        assert np.asarray(im).shape == (32, 32, 3)
    run(capsys, "generate", "infill", "--mask", "caption", "--image", image, "--model", r / "gen", "--out", r / "inf2",
        "--n", "1", "--max_tokens", "8")
    assert json.loads((r / "inf2" / "result.json").read_text())["samples"][0]["text"].strip()

    out = run(capsys, "train", "grace", "--corpus", corpus, "--out", r / "grace", "--text_tokenizer", r / "ttok",
              "--image_tokenizer", r / "tok", "--retriever", r / "enc", "--memorize_steps", "2", "--retrieve_steps", "2",
              *SPLIT, *TOY)
    memorized = sum(of[i] in ("train", "test") for i in ids)
    assert f"saved GRACE model ({memorized} semantic identifiers)" in out

    out = run(capsys, "grace", "search", r / "grace", "a red circle", "-k", "3", "--corpus", corpus)
    found = [line.split()[1] for line in out.strip().splitlines()]
    assert len(found) == 3 and all(of[i] in ("train", "test") for i in found)
