"""EmojiBench build and read, on a fake npm package (unit tests) and on the real one (slow)."""
import hashlib
import io
import json
import os
import tarfile

import pytest
from PIL import Image

import ramm.corpus.emojibench as eb
from ramm.__main__ import main
from ramm.corpus import open_corpus
from ramm.corpus.document import BadItem

N_FLAGS, N_OTHER = 30, 20
HELDOUT_SHA256 = "111846e1b0c4f7bb3ad7d4770a2420772b4dced87e268a3c16fe3f0b29906c19"


def fake_package(style: str) -> bytes:
    """A tgz shaped like emoji-datasource-<style>: emoji.json plus 64x64 RGBA PNGs."""
    entries, files = [], {}
    for i in range(N_FLAGS + N_OTHER):
        flag = i < N_FLAGS
        uni = f"1F1{i:02X}"
        e = {"name": f"{'Flag' if flag else 'THING'} {i}", "unified": uni, "image": f"{uni.lower()}.png",
             "short_names": [f"s{i}"], "category": "Flags" if flag else "Objects", "subcategory": "x",
             "sort_order": i, "has_img_google": True, "has_img_twitter": i != N_FLAGS}  # one twitter art missing
        if i == N_FLAGS + 1:
            e["skin_variations"] = {"1F3FB": {"unified": f"{uni}-1F3FB", "image": f"{uni.lower()}-1f3fb.png",
                                              "has_img_google": True, "has_img_twitter": True}}
            files[f"{uni.lower()}-1f3fb.png"] = (i, 99)
        entries.append(e)
        files[e["image"]] = (i, 0 if style == "google" else 128)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        add("package/emoji.json", json.dumps(entries).encode())
        for name, (i, shade) in files.items():
            if style == "twitter" and name == f"1f1{N_FLAGS:02x}.png":
                continue
            png = io.BytesIO()
            Image.new("RGBA", (64, 64), (i * 5, shade, 255 - i * 5, 128)).save(png, format="PNG")
            add(f"package/img/{style}/64/{name}", png.getvalue())
    return buf.getvalue()


@pytest.fixture
def fake_npm(tmp_path, monkeypatch):
    """A cache holding fake tarballs whose checksums are the pinned ones."""
    cache = tmp_path / "cache"
    (cache / "npm").mkdir(parents=True)
    pins = {}
    for style in eb.STYLES:
        data = fake_package(style)
        (cache / "npm" / f"emoji-datasource-{style}-{eb.VERSION}.tgz").write_bytes(data)
        pins[style] = hashlib.sha256(data).hexdigest()
    monkeypatch.setattr(eb, "TARBALL_SHA256", pins)
    monkeypatch.setenv("RAMM_CACHE", str(cache))
    return cache


def build(out, **kw):
    return eb.build_emojibench(out, eb.EmojiBenchConfig(**kw), shard_size=30)


def test_build_writes_documents_per_protocol(fake_npm, tmp_path):
    meta = build(tmp_path / "eb")
    docs = eb.load_emojibench(tmp_path / "eb")
    assert meta["n_documents"] == len(docs) == 2 * (N_FLAGS + N_OTHER) - 1
    assert meta["skipped"] == {"missing_image": 1}
    assert sorted(p.name for p in (tmp_path / "eb").glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar", "00003.tar"]
    d = next(d for d in docs if d.id == "twitter-1f100")
    assert d.text == "twitter emoji: flag 0" and d.image.shape == (32, 32, 3)
    assert d.metadata == {"concept": "1f100", "style": "twitter", "split": d.metadata["split"], "name": "flag 0",
                          "short_names": ["s0"], "category": "Flags", "subcategory": "x"}
    # alpha 128 composited on white: halfway between the colour and 255
    assert abs(int(d.image[16, 16, 1]) - (128 + 255) // 2) <= 2
    split_of = {}
    for d in docs:
        assert split_of.setdefault(d.metadata["concept"], d.metadata["split"]) == d.metadata["split"]
    assert sum(s == "heldout" for c, s in split_of.items() if int(c[3:], 16) < N_FLAGS) >= 25
    assert not eb.verify_emojibench(tmp_path / "eb")


def test_rerun_is_a_no_op_and_repairs_a_damaged_shard(fake_npm, tmp_path, monkeypatch):
    out = tmp_path / "eb"
    build(out)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    fetch = eb.fetch_package
    monkeypatch.setattr(eb, "fetch_package", lambda *a: pytest.fail("a complete output must not refetch"))
    build(out)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp
    monkeypatch.setattr(eb, "fetch_package", fetch)
    data = (out / "00001.tar").read_bytes()
    (out / "00001.tar").write_bytes(data[: len(data) // 2])  # a half-written shard
    assert eb.verify_emojibench(out)
    build(out)
    assert not eb.verify_emojibench(out)
    assert (out / "00001.tar").read_bytes() == data
    assert (out / "00000.tar").stat().st_mtime_ns == stamp["00000.tar"]  # good shards untouched


def test_reader_rejects_tampered_images(fake_npm, tmp_path):
    out = tmp_path / "eb"
    build(out)
    rows = (out / eb.MANIFEST).read_text().splitlines()
    row = json.loads(rows[0])
    row["sha256"] = "0" * 64
    (out / eb.MANIFEST).write_text("\n".join([json.dumps(row)] + rows[1:]) + "\n")
    with pytest.raises(BadItem, match="checksum_mismatch"):
        eb.load_emojibench(out)
    assert len(eb.load_emojibench(out, verify=False)) == len(rows)


def test_filters_by_split_and_style(fake_npm, tmp_path):
    build(tmp_path / "eb")
    held = eb.load_emojibench(tmp_path / "eb", splits=("heldout",), styles="google")
    assert held and all(d.metadata["split"] == "heldout" and d.id.startswith("google-") for d in held)
    with pytest.raises(ValueError, match="unknown split"):
        eb.load_emojibench(tmp_path / "eb", splits=("training",))
    with pytest.raises(ValueError, match="unknown style"):
        eb.EmojiBenchConfig(styles=("apple",))


def test_skin_tone_variants_share_their_base_split(fake_npm, tmp_path):
    build(tmp_path / "eb", skin_tones=True)
    docs = {d.id: d for d in eb.load_emojibench(tmp_path / "eb")}
    base, variant = docs[f"google-1f1{N_FLAGS + 1:02x}"], docs[f"google-1f1{N_FLAGS + 1:02x}-1f3fb"]
    assert variant.text == f"google emoji: thing {N_FLAGS + 1}: light skin tone"
    assert variant.metadata["split"] == base.metadata["split"]
    assert variant.metadata["base_concept"] == base.metadata["concept"]


def test_missing_npm_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(eb.shutil, "which", lambda name: None)
    with pytest.raises(eb.FetchError, match="apt-get install nodejs npm"):
        eb.fetch_package("google", tmp_path)


def fake_npm_binary(tmp_path, script: str) -> str:
    path = tmp_path / "npm"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def test_failed_fetch_and_bad_checksum_raise_fetch_error(tmp_path, monkeypatch):
    offline = fake_npm_binary(tmp_path, "echo 'npm error code ECONNREFUSED' >&2; exit 1\n")
    monkeypatch.setattr(eb.shutil, "which", lambda name: offline)
    with pytest.raises(eb.FetchError, match="ECONNREFUSED.*registry.npmjs.org"):
        eb.fetch_package("google", tmp_path / "cache")
    tampered = fake_npm_binary(tmp_path, f"echo tampered > emoji-datasource-google-{eb.VERSION}.tgz\n")
    monkeypatch.setattr(eb.shutil, "which", lambda name: tampered)
    with pytest.raises(eb.FetchError, match="does not match the pinned"):
        eb.fetch_package("google", tmp_path / "cache")
    assert not list((tmp_path / "cache" / "npm").iterdir())  # nothing unverified is left in the cache


def test_cli_build_stats_and_open_corpus(fake_npm, tmp_path, capsys):
    out = tmp_path / "eb"
    assert main(["data", "emojibench", "--out", str(out), "--styles", "google"]) == 0
    assert main(["data", "stats", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "heldout" in text and "Flags" in text and f"{N_FLAGS + N_OTHER} of {N_FLAGS + N_OTHER} images" in text
    corpus = open_corpus(out)
    assert corpus.kind == "emojibench" and len(list(corpus)) == N_FLAGS + N_OTHER
    os.unlink(out / "00000.tar")
    assert main(["data", "stats", str(out), "--verify"]) == 1
    assert main(["data", "emojibench", "--out", str(out), "--styles", "google,apple"]) == 1
    assert "unknown style" in capsys.readouterr().err


@pytest.mark.slow
def test_real_emojibench_end_to_end(tmp_path):
    """Fetches (or reuses from the cache) the real npm packages: 1,911 concepts x 2 styles."""
    out = tmp_path / "eb"
    meta = eb.build_emojibench(out)
    rows = eb.read_manifest(out)
    assert meta["n_concepts"] == 1911 and len(rows) == 2 * 1911 and meta["skipped"] == {}
    assert {r["style"] for r in rows} == {"google", "twitter"}
    heldout_flags = {r["concept"] for r in rows if r["split"] == "heldout" and r["category"] == "Flags"}
    assert len(heldout_flags) >= 25
    assert {r["split"] for r in rows if r["category"] == "Flags"} == {"train", "val", "test", "heldout"}
    # the seed-0 heldout set is pinned: results measured on it must stay comparable across code changes
    heldout = ",".join(sorted({r["concept"] for r in rows if r["split"] == "heldout"}))
    assert hashlib.sha256(heldout.encode()).hexdigest() == HELDOUT_SHA256
    assert not eb.verify_emojibench(out)
    docs = eb.load_emojibench(out, splits="val")
    assert docs and all(d.image.shape == (32, 32, 3) for d in docs)
