"""One bounded decoder for every path: huge dimensions are decoded reduced (or refused from the header),
huge files are refused before they are read, and damaged image-code cache entries are re-encoded."""
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from hostile_helpers import pair_docs, tiny_image_tokenizer


def bw_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (side, side), 1).save(buf, format="PNG")
    return buf.getvalue()


def test_with_no_size_asked_a_large_image_is_decoded_reduced_to_the_side_bound():
    from ramm.corpus.document import MAX_DECODED_SIDE, decode_image_bytes
    pixels = decode_image_bytes(bw_png(4096), "bw")
    assert pixels.shape == (MAX_DECODED_SIDE, MAX_DECODED_SIDE, 3) and pixels.min() == 255
    buf = io.BytesIO()
    Image.new("RGB", (3000, 1500), (10, 200, 30)).save(buf, format="JPEG")
    wide = decode_image_bytes(buf.getvalue(), "wide.jpg")
    assert max(wide.shape[:2]) <= MAX_DECODED_SIDE and wide.shape[1] == 2 * wide.shape[0]  # aspect kept
    small = decode_image_bytes(bw_png(40), "small")
    assert small.shape == (40, 40, 3)  # small images keep their size


def test_a_corpus_of_8192px_bombs_loads_in_bounded_memory(tmp_path):
    """Three 8192x8192 1-bit PNGs in a JSONL corpus, read with no size (as `train generator` reads it):
    without the side bound each became a 192 MiB RGB array, all kept."""
    bomb = bw_png(8192)
    for i in range(3):
        (tmp_path / f"bomb{i}.png").write_bytes(bomb)
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"id": f"b{i}", "image": f"bomb{i}.png", "caption": "x"}) + "\n"
                                              for i in range(3)))
    script = ("import resource, sys\nfrom ramm.corpus import open_corpus\n"
              "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "docs = list(open_corpus(sys.argv[1]))\nassert len(docs) == 3, len(docs)\n"
              "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)\n")
    grew_mib = int(subprocess.run([sys.executable, "-c", script, str(tmp_path / "c.jsonl")], capture_output=True,
                                  text=True, check=True).stdout)
    assert grew_mib < 250  # 3 x 192 MiB kept before, plus the decode of each


def test_an_image_file_over_the_byte_cap_is_skipped_unread(tmp_path, monkeypatch):
    import ramm.corpus.document as document
    from ramm.corpus import open_corpus
    from ramm.corpus.document import BadItem, encode_png
    (tmp_path / "ok.png").write_bytes(encode_png(np.zeros((8, 8, 3), np.uint8)))
    with open(tmp_path / "huge.png", "wb") as f:  # sparse: large on paper, nothing on disk
        f.truncate(3 * 1024 * 1024)
    monkeypatch.setattr(document, "MAX_IMAGE_BYTES", 1024 * 1024)
    (tmp_path / "c.jsonl").write_text('{"id": "ok", "image": "ok.png", "caption": "x"}\n'
                                      '{"id": "huge", "image": "huge.png", "caption": "x"}\n')
    corpus = open_corpus(tmp_path / "c.jsonl")
    assert [d.id for d in corpus] == ["ok"] and dict(corpus.skips.skipped) == {"file_too_large": 1}
    with pytest.raises(BadItem, match=r"file_too_large: .*huge\.png"):
        document.read_image_file(tmp_path / "huge.png")


def test_memory_search_by_a_huge_image_decodes_it_at_the_encoders_size(tmp_path, capsys):
    from hostile_helpers import cli, tiny_encoder
    from ramm.retrieval.memory import Memory
    docs = pair_docs()
    Memory.build(docs, tiny_encoder(docs), tmp_path / "m", progress=False)
    (tmp_path / "q.png").write_bytes(bw_png(8192))
    assert cli("memory", "search", tmp_path / "m", "--image", tmp_path / "q.png", "-k", 2) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


@pytest.fixture
def cached(tmp_path):
    """(tokenizer, its folder, documents, codes, cache file) after one encode into a fresh cache."""
    from ramm.tokenizers.code_cache import encode_images_cached
    tok = tiny_image_tokenizer().eval()
    tok.save_pretrained(tmp_path / "tok")
    docs = pair_docs()
    codes = encode_images_cached(tok, tmp_path / "tok", docs, cache_dir=tmp_path / "cache")
    (entry,) = (tmp_path / "cache").rglob("*.npy")
    return tok, tmp_path / "tok", docs, codes, entry


@pytest.mark.parametrize("damage", ["truncated", "short", "garbage", "wrong_shape", "out_of_range"])
def test_a_damaged_code_cache_entry_is_encoded_again(cached, damage, caplog):
    from ramm.tokenizers.code_cache import encode_images_cached
    tok, tok_dir, docs, codes, entry = cached
    good = entry.read_bytes()
    if damage == "truncated":
        entry.write_bytes(good[: len(good) // 2])
    elif damage == "short":
        entry.write_bytes(good[:5])
    elif damage == "garbage":
        entry.write_bytes(b"\x00" * len(good))
    else:
        bad = np.zeros((3, 2), np.int64) if damage == "wrong_shape" else np.stack(list(codes.values())) + 10_000
        with open(entry, "wb") as f:
            np.save(f, bad)
    again = encode_images_cached(tok, tok_dir, docs, cache_dir=entry.parents[2])
    assert all(np.array_equal(again[i], codes[i]) for i in codes)
    assert str(entry) in caplog.text and "encoding the images again" in caplog.text
    assert entry.read_bytes() == good  # repaired


def test_a_read_only_cache_costs_an_encoding_not_the_run(tmp_path, monkeypatch, caplog):
    import ramm.tokenizers.code_cache as code_cache
    tok = tiny_image_tokenizer().eval()
    tok.save_pretrained(tmp_path / "tok")

    def refuse(path, write):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(code_cache, "atomic_write", refuse)
    codes = code_cache.encode_images_cached(tok, tmp_path / "tok", pair_docs(), cache_dir=tmp_path / "cache")
    assert len(codes) == 8 and codes["a-red"].shape == (tok.tokens_per_image,)
    assert "could not cache image codes" in caplog.text and not (tmp_path / "cache").exists()
