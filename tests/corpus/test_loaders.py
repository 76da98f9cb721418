"""Each loader on a tiny fixture holding every bad-input case: skipped and counted, or raised under strict."""
import csv
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from ramm.corpus import open_corpus
from ramm.corpus.document import BadItem, MAX_IMAGE_PIXELS
from ramm.corpus.skips import SkipCounter


def png_bytes(color=(200, 30, 30), size=(6, 4), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def bomb_bytes() -> bytes:
    """A small file that decodes to more pixels than the limit (1-bit, so cheap to make)."""
    buf = io.BytesIO()
    Image.new("1", (8193, MAX_IMAGE_PIXELS // 8192)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """good.png, red.jpg, corrupt.png (garbage), truncated.png (half a PNG), bomb.png (over the pixel limit)."""
    d = tmp_path_factory.mktemp("imgs")
    (d / "good.png").write_bytes(png_bytes())
    Image.new("RGB", (5, 5), (0, 0, 255)).save(d / "blue.jpg")
    (d / "corrupt.png").write_bytes(b"this is not an image at all")
    full = png_bytes(size=(64, 64), color=(1, 2, 3))
    (d / "truncated.png").write_bytes(full[: len(full) // 2])
    (d / "bomb.png").write_bytes(bomb_bytes())
    return d


# (row id, image file, caption, expected skip reason or None)
ROWS = [
    ("ok1", "good.png", "a red box", None),
    ("ok2", "blue.jpg", "a blue box", None),
    ("corrupt", "corrupt.png", "garbage", "corrupt_image"),
    ("trunc", "truncated.png", "half an image", "corrupt_image"),
    ("missing", "nowhere.png", "no file", "missing_file"),
    ("empty", "good.png", "   ", "empty_caption"),
    ("bomb", "bomb.png", "too big", "image_too_large"),
]
GOOD = ["ok1", "ok2"]
BAD_REASONS = {"corrupt_image": 2, "missing_file": 1, "empty_caption": 1, "image_too_large": 1}


def read_all(corpus):
    docs = list(corpus)
    return docs, dict(corpus.skips.skipped)


def test_jsonl_reads_good_rows_and_counts_every_bad_one(images):
    lines = [json.dumps({"id": i, "image": f, "caption": c}).encode() for i, f, c, _ in ROWS]
    lines.insert(3, b'{"id": "broken", "image": "good.png", "caption": ')  # malformed JSON
    lines.insert(4, json.dumps({"id": "latin1", "image": "good.png"}).encode()[:-1] + b', "caption": "caf\xe9"}')
    lines.insert(5, b'["a list", "not an object"]')
    (images / "c.jsonl").write_bytes(b"\n".join(lines) + b"\n\n")
    docs, skipped = read_all(open_corpus(images / "c.jsonl"))
    assert [d.id for d in docs] == GOOD
    assert docs[0].text == "a red box" and docs[0].image.shape == (4, 6, 3)
    assert tuple(docs[0].image[0, 0]) == (200, 30, 30)
    assert skipped == dict(BAD_REASONS, malformed_row=2, bad_encoding=1)


def test_jsonl_strict_raises_with_id_and_path(images):
    (images / "s.jsonl").write_text("\n".join(json.dumps({"id": i, "image": f, "caption": c}) for i, f, c, _ in ROWS))
    corpus = open_corpus(images / "s.jsonl", strict=True)
    with pytest.raises(BadItem) as e:
        list(corpus)
    assert e.value.reason == "corrupt_image" and "corrupt" in str(e.value) and "corrupt.png" in str(e.value)


def test_csv_skips_bad_rows_and_resizes(images):
    with open(images / "c.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "image_path", "caption", "license"])
        for i, fn, c, _ in ROWS:
            w.writerow([i, fn, c, "cc0"])
        w.writerow(["short", "good.png"])  # too few fields
    with open(images / "c.csv", "ab") as f:
        f.write(b"latin1,good.png,caf\xe9,cc0\n")
    corpus = open_corpus(images / "c.csv", image_size=8)
    docs, skipped = read_all(corpus)
    assert [d.id for d in docs] == GOOD
    assert docs[1].image.shape == (8, 8, 3) and docs[1].metadata["license"] == "cc0"
    assert skipped == dict(BAD_REASONS, malformed_row=1, bad_encoding=1)
    assert corpus.skips.summary().startswith("2 read, 7 skipped: corrupt_image x 2")


def test_csv_without_caption_column_is_rejected(images):
    (images / "h.csv").write_text("image,label\ngood.png,1\n")
    with pytest.raises(ValueError, match="caption column"):
        list(open_corpus(images / "h.csv"))


def test_coco_one_document_per_image_with_all_captions(images):
    ims = [{"id": n, "file_name": f} for n, (_, f, _, _) in enumerate(ROWS)] + [{"file_name": "good.png"}]
    anns = [{"image_id": n, "caption": c} for n, (_, _, c, _) in enumerate(ROWS)]
    anns += [{"image_id": 0, "caption": "a second caption"}, {"caption": "orphan"}]
    (images / "coco.json").write_text(json.dumps({"images": ims, "annotations": anns}))
    docs, skipped = read_all(open_corpus(images / "coco.json"))
    assert [d.id for d in docs] == ["coco-0", "coco-1"]
    assert docs[0].metadata["captions"] == ["a red box", "a second caption"]
    # image 5's only caption is blank: its annotation and then the image are both counted
    assert skipped == {"corrupt_image": 2, "missing_file": 1, "empty_caption": 2, "image_too_large": 1,
                       "malformed_row": 2}


def test_coco_file_that_is_not_coco_is_rejected(images):
    (images / "other.json").write_text('{"rows": []}')
    with pytest.raises(ValueError, match="not COCO"):
        list(open_corpus(images / "other.json"))


def write_tar(path, members, truncate=False):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2 + 100] if truncate else data)


def test_webdataset_img2dataset_layout(images, tmp_path):
    read = lambda f: (images / f).read_bytes()
    members = [("000.jpg", read("blue.jpg")), ("000.txt", b"blue box"),
               ("000.json", json.dumps({"key": "000", "url": "http://x", "caption": "ignored"}).encode()),
               ("001.png", read("good.png")), ("001.json", json.dumps({"caption": "from json"}).encode()),
               ("002.png", read("corrupt.png")), ("002.txt", b"bad image"),
               ("003.png", read("good.png")), ("003.txt", b"\xff\xfe not utf-8"),
               ("004.png", read("good.png")), ("004.json", b"{not json"),
               ("005.txt", b"caption without image"),
               ("006.png", read("bomb.png")), ("006.txt", b"bomb"),
               ("007.png", read("good.png")), ("007.txt", b"")]
    write_tar(tmp_path / "00000.tar", members)
    write_tar(tmp_path / "00001.tar", [m for n in range(40) for m in
                                       [(f"1{n:02d}.png", read("good.png")), (f"1{n:02d}.txt", b"x")]], truncate=True)
    (tmp_path / "00000_stats.json").write_text("{}")  # img2dataset writes these beside the shards
    corpus = open_corpus(tmp_path)
    docs, skipped = read_all(corpus)
    assert corpus.kind == "webdataset"
    ids = [d.id for d in docs]
    assert ids[:2] == ["000", "001"]
    assert 5 < len(ids[2:]) < 40 and all(i.startswith("1") for i in ids[2:])  # the truncated shard's whole items
    assert docs[0].text == "blue box" and docs[0].metadata == {"url": "http://x"}
    assert docs[1].text == "from json"
    assert skipped == {"corrupt_image": 1, "bad_encoding": 1, "malformed_row": 1, "missing_file": 1,
                       "image_too_large": 1, "empty_caption": 1, "corrupt_shard": 1}


def test_corpus_is_reiterable_and_streams(images):
    (images / "r.jsonl").write_text("\n".join(json.dumps({"id": i, "image": f, "caption": c}) for i, f, c, _ in ROWS))
    corpus = open_corpus(images / "r.jsonl")
    first = next(iter(corpus))
    assert first.id == "ok1" and corpus.skips.read == 1 and not corpus.skips.skipped  # nothing read ahead
    assert [d.id for d in corpus] == [d.id for d in corpus] == GOOD


def test_open_corpus_rejects_unknown_and_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_corpus(tmp_path / "nope.jsonl")
    (tmp_path / "x.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown corpus format"):
        open_corpus(tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="no .tar shards and is in no registered corpus format"):
        open_corpus(tmp_path)


def test_skip_counter_summary_and_strict():
    s = SkipCounter()
    s.ok(), s.ok()
    s.skip(BadItem("missing_file", "a")), s.skip(BadItem("corrupt_image", "b")), s.skip(BadItem("corrupt_image", "c"))
    assert s.summary() == "2 read, 3 skipped: corrupt_image x 2, missing_file x 1"
    with pytest.raises(BadItem, match="missing_file: z"):
        SkipCounter(strict=True).skip(BadItem("missing_file", "z"))
    assert np.isclose(s.n_skipped, 3)


def test_cli_stats_streams_a_user_corpus_and_strict_fails_cleanly(images, capsys):
    from ramm.__main__ import main

    (images / "cli.jsonl").write_text("\n".join(json.dumps({"id": i, "image": f, "caption": c})
                                               for i, f, c, _ in ROWS))
    assert main(["data", "stats", str(images / "cli.jsonl")]) == 0
    assert "2 read, 5 skipped: corrupt_image x 2" in capsys.readouterr().out
    assert main(["data", "stats", str(images / "cli.jsonl"), "--strict"]) == 1
    err = capsys.readouterr().err
    assert "ramm: error: corrupt_image: corrupt (" in err and "corrupt.png" in err


def test_corpus_modules_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, ramm.corpus.loaders, ramm.corpus.formats, ramm.plugins, ramm_lab.corpus_format, ramm.cli.data; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---- a user's corpus: layouts and exports that used to lose or garble rows ----
def test_webdataset_keys_follow_webdataset_rule_for_dotted_folders_and_dot_slash(images, tmp_path):
    read = lambda f: (images / f).read_bytes()
    write_tar(tmp_path / "a.tar", [("./000.png", read("good.png")), ("./000.txt", b"first"),
                                   ("./001.png", read("good.png")), ("./001.txt", b"second")])
    write_tar(tmp_path / "b.tar", [("laion.v2/000.jpg", read("blue.jpg")), ("laion.v2/000.txt", b"third"),
                                   ("laion.v2/001.jpg", read("blue.jpg")), ("laion.v2/001.cls.txt", b"7"),
                                   ("laion.v2/001.txt", b"fourth")])
    docs, skipped = read_all(open_corpus(tmp_path))
    assert [(d.id, d.text) for d in docs] == [("000", "first"), ("001", "second"),
                                               ("laion.v2/000", "third"), ("laion.v2/001", "fourth")]
    assert skipped == {}


def test_webdataset_member_over_the_size_cap_is_skipped_unread(images, tmp_path, monkeypatch):
    import ramm.corpus.loaders as loaders
    monkeypatch.setattr(loaders, "MAX_MEMBER_BYTES", 1000)
    write_tar(tmp_path / "s.tar", [("0.png", read_png := (images / "good.png").read_bytes()), ("0.txt", b"ok"),
                                   ("1.png", read_png), ("1.txt", b"x" * 5000)])
    docs, skipped = read_all(open_corpus(tmp_path / "s.tar"))
    assert [d.id for d in docs] == ["0"] and skipped == {"member_too_large": 1}


def test_csv_with_bom_and_unterminated_quote_loses_only_the_bad_line(images):
    text = ("id,image,caption\n" "a,good.png,first\n" 'b,good.png,"unterminated quote\n'
            "c,good.png,third\n" 'd,good.png,"a quoted\ncaption over two lines"\n' "e,good.png,fifth\n")
    (images / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    docs, skipped = read_all(open_corpus(images / "bom.csv"))
    assert [d.id for d in docs] == ["a", "c", "d", "e"]
    assert docs[2].text == "a quoted\ncaption over two lines"
    assert skipped == {"malformed_row": 1}
    (images / "eof.csv").write_text('id,image,caption\na,good.png,ok\nb,good.png,"never closed\n')
    docs, skipped = read_all(open_corpus(images / "eof.csv"))
    assert [d.id for d in docs] == ["a"] and skipped == {"malformed_row": 1}


def test_coco_ids_of_the_wrong_type_are_malformed_rows_not_tracebacks(images):
    ims = [{"id": 1, "file_name": "good.png"}, {"id": [2], "file_name": "good.png"}, {"id": {"x": 3}, "file_name": "good.png"}]
    anns = [{"image_id": 1, "caption": "fine"}, {"image_id": [2], "caption": "list"}, {"image_id": {"x": 3}, "caption": "obj"}]
    (images / "ids.json").write_text(json.dumps({"images": ims, "annotations": anns}))
    docs, skipped = read_all(open_corpus(images / "ids.json"))
    assert [d.id for d in docs] == ["coco-1"] and skipped == {"malformed_row": 4}


def test_overlong_caption_is_a_counted_skip(images):
    import ramm.corpus.loaders as loaders
    rows = [{"id": "ok", "image": "good.png", "caption": "short"},
            {"id": "long", "image": "good.png", "caption": "w " * loaders.MAX_CAPTION_CHARS}]
    (images / "long.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    docs, skipped = read_all(open_corpus(images / "long.jsonl"))
    assert [d.id for d in docs] == ["ok"] and skipped == {"caption_too_long": 1}


def test_large_images_decode_reduced_to_the_size_asked(tmp_path):
    from ramm.corpus.document import decode_image_bytes
    buf = io.BytesIO()
    img = Image.new("RGB", (1024, 768), (250, 20, 20))
    img.save(buf, format="PNG")
    small = decode_image_bytes(buf.getvalue(), "big", size=16)
    assert small.shape == (16, 16, 3) and abs(int(small[8, 8, 0]) - 250) <= 2
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    assert decode_image_bytes(buf.getvalue(), "big.jpg", size=16).shape == (16, 16, 3)
    buf = io.BytesIO()
    Image.new("1", (4096, 4096), 1).save(buf, format="PNG")
    assert decode_image_bytes(buf.getvalue(), "bw", size=16)[0, 0].tolist() == [255, 255, 255]


def test_a_small_file_of_huge_dimensions_decodes_in_bounded_memory(tmp_path):
    """An 8192x8192 1-bit PNG (25 KB) asked at 64 px: reduced while decoding, never a full RGB copy."""
    import subprocess
    import sys
    script = tmp_path / "bomb.py"
    script.write_text(
        "import io, resource\nfrom PIL import Image\nfrom ramm.corpus.document import decode_image_bytes\n"
        "buf = io.BytesIO(); Image.new('1', (8192, 8192), 1).save(buf, format='PNG')\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "assert decode_image_bytes(buf.getvalue(), 'bw', size=64).shape == (64, 64, 3)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)\n")
    grew_mib = int(subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout)
    assert grew_mib < 200  # 532 MiB when decoded whole, then converted, then resized


def test_an_unreadable_image_is_named_never_shown_as_a_bytes_object():
    from ramm.corpus.document import decode_image_bytes
    with pytest.raises(BadItem, match=r"corrupt_image: photo.jpg \(not an image format") as e:
        decode_image_bytes(b"not an image", "photo.jpg")
    assert "BytesIO" not in str(e.value)
