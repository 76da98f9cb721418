"""EmojiBench build and read, on a fake npm package (unit tests) and on the real one (slow)."""
import hashlib
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

import ramm_lab.emojibench as eb
import ramm_lab.emojibench_build as ebb
from ramm.__main__ import main
from ramm.corpus import open_corpus
from ramm.corpus.document import BadItem
from ramm.corpus.skips import SkipCounter

N_FLAGS, N_OTHER = 30, 20
HELDOUT_SHA256 = "111846e1b0c4f7bb3ad7d4770a2420772b4dced87e268a3c16fe3f0b29906c19"
TONED, PAIRED = N_FLAGS + 1, N_FLAGS + 2  # one entry with the 5 tones, one two-person entry with 4 tone pairs
PAIRS = ("1F3FB-1F3FB", "1F3FB-1F3FF", "1F3FF-1F3FB", "1F3FF-1F3FF")
N_VARIANTS = 5 + len(PAIRS)
MISSING_VARIANT = f"1f1{TONED:02x}-1f3ff.png"  # listed in emoji.json, absent from the twitter package


def fake_package(style: str) -> bytes:
    """A tgz shaped like emoji-datasource-<style>: emoji.json plus 64x64 RGBA PNGs (an 8-pixel transparent
    frame around alpha 128)."""
    entries, files = [], {}
    for i in range(N_FLAGS + N_OTHER):
        flag = i < N_FLAGS
        uni = f"1F1{i:02X}"
        e = {"name": f"{'Flag' if flag else 'THING'} {i}", "unified": uni, "image": f"{uni.lower()}.png",
             "short_names": [f"s{i}"], "category": "Flags" if flag else "Objects", "subcategory": "x",
             "sort_order": i, "has_img_google": True, "has_img_twitter": i != N_FLAGS}  # one twitter art missing
        tones = list(eb.TONES) if i == TONED else PAIRS if i == PAIRED else []
        if tones:
            e["skin_variations"] = {t: {"unified": f"{uni}-{t}", "image": f"{uni}-{t}.png".lower(),
                                        "has_img_google": True, "has_img_twitter": True} for t in tones}
            files.update({f"{uni}-{t}.png".lower(): (i, 99) for t in tones})
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
            if style == "twitter" and name in (f"1f1{N_FLAGS:02x}.png", MISSING_VARIANT):
                continue
            png = io.BytesIO()
            img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
            img.paste((i * 5, shade, 255 - i * 5, 128), (8, 8, 56, 56))
            img.save(png, format="PNG")
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
        (cache / "npm" / f"emoji-datasource-{style}-{ebb.VERSION}.tgz").write_bytes(data)
        pins[style] = hashlib.sha256(data).hexdigest()
    monkeypatch.setattr(ebb, "TARBALL_SHA256", pins)
    monkeypatch.setenv("RAMM_CACHE", str(cache))
    return cache


def build(out, **kw):
    return ebb.build_emojibench(out, ebb.EmojiBenchConfig(**kw), shard_size=30)


def test_build_writes_documents_per_protocol(fake_npm, tmp_path):
    meta = build(tmp_path / "eb")
    docs = eb.load_emojibench(tmp_path / "eb")
    # both styles of every concept and every variant, less one missing base and one missing variant art
    assert meta["n_documents"] == len(docs) == 2 * (N_FLAGS + N_OTHER + N_VARIANTS) - 2
    assert meta["n_concepts"] == N_FLAGS + N_OTHER + N_VARIANTS and meta["n_base_concepts"] == N_FLAGS + N_OTHER
    assert meta["skipped"] == {"missing_image": 2}
    assert sorted(p.name for p in (tmp_path / "eb").glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar", "00003.tar"]
    d = next(d for d in docs if d.id == "twitter-1f100")
    assert d.text == "twitter emoji: flag 0" and d.image.shape == (32, 32, 3)
    assert d.metadata == {"concept": "1f100", "base": "1f100", "tone": "", "has_tones": False, "style": "twitter",
                          "split": d.metadata["split"], "name": "flag 0", "short_names": ["s0"], "category": "Flags",
                          "subcategory": "x"}
    json.dumps([d.metadata for d in docs])  # metadata stays JSON-serialisable
    # alpha 128 composited on white: halfway between the colour and 255
    assert abs(int(d.image[16, 16, 1]) - (128 + 255) // 2) <= 2
    split_of = {}
    for d in docs:
        assert split_of.setdefault(d.metadata["concept"], d.metadata["split"]) == d.metadata["split"]
    assert sum(s == "heldout" for c, s in split_of.items() if int(c[3:5], 16) < N_FLAGS) >= 25
    assert not eb.verify_emojibench(tmp_path / "eb")


def test_rerun_is_a_no_op_and_repairs_a_damaged_shard(fake_npm, tmp_path, monkeypatch):
    out = tmp_path / "eb"
    build(out)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    fetch = ebb.fetch_package
    monkeypatch.setattr(ebb, "fetch_package", lambda *a: pytest.fail("a complete output must not refetch"))
    build(out)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp
    monkeypatch.setattr(ebb, "fetch_package", fetch)
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
        ebb.EmojiBenchConfig(styles=("apple",))


def test_skin_tone_variants_are_documents_of_their_base_split(fake_npm, tmp_path):
    meta = build(tmp_path / "eb")
    docs = {d.id: d for d in eb.load_emojibench(tmp_path / "eb")}
    toned, paired = f"1f1{TONED:02x}", f"1f1{PAIRED:02x}"
    base, dark = docs[f"google-{toned}"], docs[f"google-{toned}-1f3ff"]
    assert base.text == f"google emoji: thing {TONED}"  # the default keeps its plain text
    assert base.metadata | {"split": None} == {
        "concept": toned, "base": toned, "tone": "", "has_tones": True, "style": "google", "split": None,
        "name": f"thing {TONED}", "short_names": [f"s{TONED}"], "category": "Objects", "subcategory": "x"}
    assert dark.text == f"google emoji: thing {TONED}, dark skin tone"
    assert dark.metadata | {"split": None} == {
        "concept": f"{toned}-1f3ff", "base": toned, "tone": "dark", "has_tones": True, "style": "google",
        "split": None, "name": f"thing {TONED}, dark skin tone", "short_names": [f"s{TONED}"], "category": "Objects",
        "subcategory": "x"}
    tones = [docs[f"twitter-{toned}-{t.lower()}"].metadata["tone"] for t in list(eb.TONES)[:4]]
    assert tones == ["light", "medium-light", "medium", "medium-dark"]
    # two-person variants name both tones, also when they are equal
    mixed, same = docs[f"twitter-{paired}-1f3fb-1f3ff"], docs[f"google-{paired}-1f3ff-1f3ff"]
    assert mixed.text == f"twitter emoji: thing {PAIRED}, light skin tone, dark skin tone"
    assert mixed.metadata["tone"] == "light, dark" and mixed.metadata["base"] == paired
    assert same.text == f"google emoji: thing {PAIRED}, dark skin tone, dark skin tone"
    assert same.metadata["tone"] == "dark, dark"
    # every document in its base's split; the partner (same concept, other style) is the same variant
    split_of = {d.metadata["concept"]: d.metadata["split"] for d in docs.values() if not d.metadata["tone"]}
    assert all(d.metadata["split"] == split_of[d.metadata["base"]] for d in docs.values())
    assert docs[f"twitter-{toned}-1f3fb"].metadata["concept"] == docs[f"google-{toned}-1f3fb"].metadata["concept"]
    n_toned = sum(bool(d.metadata["tone"]) for d in docs.values())
    assert n_toned == meta["n_tone_documents"] == 2 * N_VARIANTS - 1
    assert meta["tracks"] == {"variants": n_toned + 4, "cross-style": len(docs) - n_toned - 4}
    assert [eb.track(d.metadata) for d in (base, dark, docs["google-1f100"])] == ["variants", "variants", "cross-style"]
    # splits are drawn over base concepts only: variants on or off, no base concept moves
    off = build(tmp_path / "off", skin_tones=False)
    plain = {d.id: d.metadata["split"] for d in eb.load_emojibench(tmp_path / "off")}
    assert off["n_documents"] == len(plain) == 2 * (N_FLAGS + N_OTHER) - 1
    assert plain == {k: d.metadata["split"] for k, d in docs.items() if not d.metadata["tone"]}


def test_missing_variant_image_is_a_counted_named_skip(fake_npm, tmp_path):
    skips = SkipCounter()
    meta = ebb.build_emojibench(tmp_path / "eb", shard_size=30, skips=skips)
    assert skips.skipped == {"missing_image": 2} and meta["skipped"] == {"missing_image": 2}
    assert meta["missing_images"] == [f"img/twitter/64/1f1{N_FLAGS:02x}.png", f"img/twitter/64/{MISSING_VARIANT}"]
    err = next(e for e in skips.first if e.item == f"twitter-{MISSING_VARIANT[:-4]}")
    assert MISSING_VARIANT in str(err) and "not in the package" in str(err)
    ids = {r["key"] for r in eb.read_manifest(tmp_path / "eb")}
    assert f"google-{MISSING_VARIANT[:-4]}" in ids and f"twitter-{MISSING_VARIANT[:-4]}" not in ids


def test_masks_round_trip(fake_npm, tmp_path):
    out = tmp_path / "eb"
    build(out)
    rows = {r["key"]: r for r in eb.read_manifest(out)}
    key = f"twitter-1f1{PAIRED:02x}-1f3fb-1f3ff"
    masks = eb.load_masks(out, [key, "google-1f100"])
    assert set(masks) == {key, "google-1f100"}
    for m in masks.values():
        assert m.dtype == np.uint8 and m.shape == (32, 32)
        assert m[0, 0] == 0 and abs(int(m[16, 16]) - 128) <= 1  # transparent frame, alpha 128 inside
    r = rows[key]
    with tarfile.open(out / r["shard"]) as tf:
        first = next(k for k, row in rows.items() if row["shard"] == r["shard"])
        assert tf.getnames()[:3] == [f"{first}.{e}" for e in ("json", "png", "mask.png")]
        stored = tf.extractfile(f"{key}.mask.png").read()
    shard = (out / r["shard"]).read_bytes()
    assert shard[r["mask_offset"]:r["mask_offset"] + r["mask_size"]] == stored
    assert shard[r["offset"]:r["offset"] + r["size"]] != stored  # the image keeps its own offset/size
    with Image.open(io.BytesIO(stored)) as img:
        assert img.mode == "L" and img.size == (32, 32)
    assert len(eb.load_masks(out)) == len(rows)
    with pytest.raises(KeyError, match="google-nope"):
        eb.load_masks(out, ["google-nope"])
    # a changed mask is caught by verify and by the reader
    data = bytearray(shard)
    data[r["mask_offset"] + r["mask_size"] // 2] ^= 0xFF
    (out / r["shard"]).write_bytes(bytes(data))
    assert eb.verify_emojibench(out) == [f"{key}.mask.png: missing or changed in {r['shard']}"]
    with pytest.raises(BadItem, match="checksum_mismatch"):
        eb.load_masks(out, [key])


def test_half_built_folder_is_reported_incomplete(fake_npm, tmp_path, capsys):
    out = tmp_path / "eb"
    build(out)
    n = len(eb.read_manifest(out))
    (out / eb.META).unlink()  # the manifest is written before meta: this is a build cut off between the two
    with pytest.raises(eb.IncompleteEmojiBench, match="incomplete EmojiBench build"):
        eb.load_emojibench(out)
    (out / eb.MANIFEST).unlink()  # shards only
    for read in (eb.load_emojibench, eb.load_masks, eb.read_manifest):
        with pytest.raises(eb.IncompleteEmojiBench, match=r"has 4 shard\(s\), lacks manifest.jsonl \+ meta.json"):
            read(out)
    corpus = open_corpus(out)  # not read as plain webdataset shards (whose captions it would all skip)
    assert corpus.kind == "emojibench"
    with pytest.raises(eb.IncompleteEmojiBench):
        list(corpus)
    assert eb.verify_emojibench(out)
    assert main(["data", "stats", str(out)]) == 1
    assert "incomplete EmojiBench build" in capsys.readouterr().err
    build(out)  # resumes
    assert len(eb.load_emojibench(out)) == n
    assert not eb.is_emojibench_dir(tmp_path) and not eb.is_emojibench_dir(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="not found: build EmojiBench") as e:
        eb.read_manifest(tmp_path)
    assert not isinstance(e.value, eb.IncompleteEmojiBench)


def fake_npm_binary(tmp_path, script: str) -> str:
    path = tmp_path / "npm"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def test_npm_pack_fallback_failures_and_bad_checksum_raise_fetch_error(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def no_https(url, timeout):
        raise urllib.error.URLError("blocked")
    monkeypatch.setattr(urllib.request, "urlopen", no_https)
    monkeypatch.setattr(ebb, "FETCH_TRIES", 1)
    offline = fake_npm_binary(tmp_path, "echo 'npm error code ECONNREFUSED' >&2; exit 1\n")
    monkeypatch.setattr(ebb.shutil, "which", lambda name: offline)
    with pytest.raises(ebb.FetchError, match="ECONNREFUSED.*registry.npmjs.org"):
        ebb.fetch_package("google", tmp_path / "cache")
    tampered = fake_npm_binary(tmp_path, f"echo tampered > emoji-datasource-google-{ebb.VERSION}.tgz\n")
    monkeypatch.setattr(ebb.shutil, "which", lambda name: tampered)
    with pytest.raises(ebb.FetchError, match="does not match the pinned"):
        ebb.fetch_package("google", tmp_path / "cache")
    assert not list((tmp_path / "cache" / "npm").iterdir())  # nothing unverified is left in the cache


def test_cli_build_stats_and_open_corpus(fake_npm, tmp_path, capsys):
    out = tmp_path / "eb"
    assert main(["data", "emojibench", "--out", str(out), "--styles", "google"]) == 0
    assert main(["data", "stats", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    n = N_FLAGS + N_OTHER + N_VARIANTS
    assert "heldout" in text and "Flags" in text and f"{n} of {n} images" in text
    total = next(line.split() for line in text.splitlines() if line.startswith("total"))
    header = next(line.split() for line in text.splitlines() if line.startswith("split"))
    assert header[2:] == ["google", "documents", "concepts", "bases", "tones", "variants", "cross-style"]
    assert total[1:] == [str(n), str(n), str(n), str(N_FLAGS + N_OTHER), str(N_VARIANTS), str(N_VARIANTS + 2),
                         str(N_FLAGS + N_OTHER - 2)]
    corpus = open_corpus(out)
    assert corpus.kind == "emojibench" and len(list(corpus)) == n
    assert main(["data", "emojibench", "--out", str(tmp_path / "plain"), "--styles", "google", "--no-skin-tones"]) == 0
    assert len(eb.read_manifest(tmp_path / "plain")) == N_FLAGS + N_OTHER
    os.unlink(out / "00000.tar")
    assert main(["data", "stats", str(out), "--verify"]) == 1
    assert main(["data", "emojibench", "--out", str(out), "--styles", "google,apple"]) == 1
    assert "unknown style" in capsys.readouterr().err


@pytest.mark.slow
def test_real_emojibench_end_to_end(tmp_path):
    """Fetches (or reuses from the cache) the real npm packages: 1,911 concepts + 1,875 skin-tone variants
    (323 concepts: 310 x 5 tones, 13 two-person x 25 tone pairs) x 2 styles, nothing missing."""
    out = tmp_path / "eb"
    meta = ebb.build_emojibench(out)
    rows = eb.read_manifest(out)
    assert meta["n_base_concepts"] == 1911 and meta["n_concepts"] == 1911 + 1875 and meta["skipped"] == {}
    assert len(rows) == 2 * (1911 + 1875) == 7572 and meta["n_tone_documents"] == 2 * 1875
    assert {r["style"] for r in rows} == {"google", "twitter"}
    assert len({r["base"] for r in rows if r["has_tones"]}) == 323
    heldout_flags = {r["concept"] for r in rows if r["split"] == "heldout" and r["category"] == "Flags"}
    assert len(heldout_flags) >= 25
    assert {r["split"] for r in rows if r["category"] == "Flags"} == {"train", "val", "test", "heldout"}
    # the seed-0 heldout set is pinned: results measured on it must stay comparable across code changes
    for concepts in ({r["base"] for r in rows if r["split"] == "heldout"},
                     {r["concept"] for r in rows if r["split"] == "heldout" and not r["tone"]}):
        assert hashlib.sha256(",".join(sorted(concepts)).encode()).hexdigest() == HELDOUT_SHA256
    split_of = {r["concept"]: r["split"] for r in rows if not r["tone"]}
    assert all(r["split"] == split_of[r["base"]] for r in rows)
    # documents per split and track (variants: concepts with tones, default tone included)
    count = {(sp, t): sum(r["split"] == sp and eb.track(r) == t for r in rows) for sp in eb.SPLITS for t in eb.TRACKS}
    assert count == {("train", "variants"): 3540, ("train", "cross-style"): 2526, ("val", "variants"): 244,
                     ("val", "cross-style"): 158, ("test", "variants"): 236, ("test", "cross-style"): 166,
                     ("heldout", "variants"): 376, ("heldout", "cross-style"): 326}
    assert meta["tracks"] == {"variants": 4396, "cross-style": 3176}
    by_key = {r["key"]: r for r in rows}
    assert by_key["twitter-1f44b-1f3ff"]["caption"] == "twitter emoji: waving hand sign, dark skin tone"
    assert by_key["google-1f9d1-1f3fb-200d-1f91d-200d-1f9d1-1f3ff"]["caption"] == \
        "google emoji: people holding hands, light skin tone, dark skin tone"
    assert not eb.verify_emojibench(out)
    docs = eb.load_emojibench(out, splits="val")
    assert docs and all(d.image.shape == (32, 32, 3) for d in docs)
    masks = eb.load_masks(out, ["twitter-1f44b-1f3ff", "google-1f44b", "google-1f600"])
    for m in masks.values():  # a typical emoji: transparent corners, opaque centre
        assert m.shape == (32, 32) and m.dtype == np.uint8 and m[0, 0] == 0 and m[16, 16] > 0


# ---- fetching the pinned tarballs: Python over HTTPS, npm pack as the fallback ----
class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def test_fetch_downloads_over_https_without_npm_and_checks_the_pin(tmp_path, monkeypatch):
    import urllib.request
    data = fake_package("google")
    monkeypatch.setattr(ebb, "TARBALL_SHA256", {"google": hashlib.sha256(data).hexdigest(), "twitter": "0" * 64})
    monkeypatch.setattr(ebb.shutil, "which", lambda name: None)  # no npm on this machine
    urls = []
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: urls.append(url) or _Response(data))
    path = ebb.fetch_package("google", tmp_path)
    assert path.read_bytes() == data
    assert urls == [f"https://registry.npmjs.org/emoji-datasource-google/-/emoji-datasource-google-{ebb.VERSION}.tgz"]
    with pytest.raises(ebb.FetchError, match="does not match the pinned"):
        ebb.fetch_package("twitter", tmp_path)
    assert not (tmp_path / "npm" / f"emoji-datasource-twitter-{ebb.VERSION}.tgz").exists()


def test_fetch_offline_without_npm_is_a_clear_error_after_retries(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request
    monkeypatch.setattr(ebb.shutil, "which", lambda name: None)
    monkeypatch.setattr(ebb, "FETCH_TRIES", 2)
    monkeypatch.setattr("time.sleep", lambda s: None)
    calls = []

    def offline(url, timeout):
        calls.append(url)
        raise urllib.error.URLError("Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ebb.FetchError, match="could not download .*name resolution.*npm .* not installed"):
        ebb.fetch_package("google", tmp_path)
    assert len(calls) == 2
