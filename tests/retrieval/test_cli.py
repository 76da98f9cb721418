import json

from PIL import Image

from ramm.cli import build_parser


def run(argv):
    args = build_parser().parse_args(argv)
    return args.func(args)


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
    assert "12 documents" in capsys.readouterr().out
    assert run(["memory", "search", str(mem), docs[0].text, "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(len(l.split("\t")) == 3 for l in lines)
    assert run(["memory", "search", str(mem), "--image", str(tmp_path / f"{docs[1].id}.png"), "-k", "2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
