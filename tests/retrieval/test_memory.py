import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ramm.corpus.document import BadItem, Document, TextSegment
from ramm.retrieval.dual_encoder import DualEncoder
from ramm.retrieval.index import IndexSpec, choose_index
from ramm.retrieval.memory import Memory

HERE = Path(__file__).parent


@pytest.fixture()
def memory(tmp_path, docs, encoder_dir):
    return Memory.build(docs, encoder_dir, tmp_path / "mem", batch_size=16, progress=False)


def test_build_stores_every_document_once_and_index_agrees(memory, docs):
    assert len(memory) == len(docs) == memory.index.ntotal
    assert memory.ids == [d.id for d in docs]
    assert memory.config.index["factory"] == "Flat"


def test_save_load_round_trip_returns_same_documents_and_scores(memory, docs):
    before = memory.search("red circle", k=5)
    loaded = Memory.load(memory.root)
    after = loaded.search("red circle", k=5)
    assert [d.id for d, _ in before] == [d.id for d, _ in after]
    assert np.allclose([s for _, s in before], [s for _, s in after], atol=1e-5)
    assert loaded.get(docs[3].id) == docs[3]


def test_add_after_load_appends_without_rebuild(memory, docs):
    loaded = Memory.load(memory.root)
    new = Document.from_pair("new-doc", "filled emoji: red circle", docs[0].image, metadata={"concept": "red-circle"})
    stats = loaded.add([new, docs[0]])
    assert stats["added"] == 1 and stats["already_present"] == 1
    again = Memory.load(memory.root)
    assert len(again) == again.index.ntotal == len(docs) + 1
    assert again.ids[-1] == "new-doc"


def test_search_by_text_image_and_document_returns_scored_documents(memory, docs):
    by_text = memory.search(docs[0].text, k=3)
    by_image = memory.search(docs[0].image, k=3)
    by_doc = memory.search(docs[0], k=3)
    for hits in (by_text, by_image):
        assert len(hits) == 3 and all(isinstance(d, Document) for d, _ in hits)
        assert [s for _, s in hits] == sorted([s for _, s in hits], reverse=True)
    assert docs[0].id in [d.id for d, _ in by_image]  # the exact image finds its own document
    assert docs[0].id not in [d.id for d, _ in by_doc]  # a Document query never returns itself


def test_search_scores_match_exact_inner_product(memory, docs):
    emb = memory.encoder.embed_documents(docs)
    q = memory.encoder.embed_text(["blue ring"])
    exact = np.sort(emb @ q[0])[::-1][:5]
    assert np.allclose([s for _, s in memory.search("blue ring", k=5)], exact, atol=1e-5)


def test_corrupt_document_is_skipped_and_counted(tmp_path, docs, encoder_dir):
    bad_png = {"id": "bad", "segments": [{"type": "image", "png": "bm90IGEgcG5n"}]}
    corpus = [docs[0], bad_png, BadItem("corrupt_image", "x"), Document("empty", [TextSegment("")][:0]), docs[1]]
    mem = Memory.build(corpus, encoder_dir, tmp_path / "m", batch_size=2, progress=False)
    assert len(mem) == 2
    assert mem.stats["skipped"] == 3 and mem.stats["skipped_corrupt_image"] == 2


def test_index_reconciled_with_store_after_lost_index_save(memory, docs):
    os.remove(memory.root / "index.faiss")
    cfg = json.loads((memory.root / "config.json").read_text())
    assert cfg["count"] == len(docs)
    again = Memory.load(memory.root)
    assert again.index.ntotal == len(again) == len(docs)


def test_index_choice_by_size():
    assert choose_index(99_999, 512).factory == "Flat"
    mid = choose_index(1_000_000, 512)
    assert mid.factory == "IVF4096,SQ8" and "nprobe" in mid.params and mid.train_size > 0
    big = choose_index(50_000_000, 512)
    assert big.factory.startswith("IVF32768,PQ64x4fs") and "k_factor_rf" in big.params


def test_ivf_pq_memory_agrees_with_exact_search(tmp_path, docs, encoder_dir, monkeypatch):
    """The approximate path (IVF-PQ + refine) against the exact Flat one on the same store."""
    import ramm.retrieval.faiss_memory as memory_mod
    spec = IndexSpec("IVF4,PQ16x4fs,Refine(SQ8)", params="nprobe=4,k_factor_rf=8", train_size=len(docs))
    monkeypatch.setattr(memory_mod, "choose_index", lambda n, dim, flat_below: spec)
    approx = Memory.build(docs, encoder_dir, tmp_path / "ivf", batch_size=16, progress=False)
    monkeypatch.undo()
    exact = Memory.build(docs, encoder_dir, tmp_path / "flat", batch_size=16, progress=False)
    assert approx.config.index["factory"] == spec.factory and exact.config.index["factory"] == "Flat"
    q = exact.encoder.embed_documents(docs[:20])
    _, a = approx.search_vectors(q, 5)
    _, e = exact.search_vectors(q, 5)
    overlap = np.mean([len(set(x) & set(y)) / 5 for x, y in zip(a, e)])
    assert overlap >= 0.9


def test_kill_9_during_build_then_resume_gives_every_document_once(tmp_path, docs, encoder_dir):
    out = tmp_path / "killed"
    cmd = [sys.executable, str(HERE / "_slow_build.py"), str(encoder_dir), str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "SLOW": "1"})
    for line in proc.stdout:  # the child reports each document it hands to the build
        if int(line) >= 25:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = Memory.load(out, encoder=DualEncoder.from_pretrained(encoder_dir))
    assert 0 < len(partial) < len(docs)  # killed mid-build
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    mem = Memory.load(out)
    assert sorted(mem.ids) == sorted(d.id for d in docs)
    assert len(mem) == mem.index.ntotal == len(docs)
    emb = mem.encoder.embed_documents(docs)
    _, rows = mem.search_vectors(emb, 1)
    assert [mem.ids[r] for r in rows[:, 0]] == [d.id for d in docs]  # index rows agree with store rows


# ---- data safety: encoder identity, one writer, readers never write, the store as source of truth ----
def _retrained(src: Path, dst: Path) -> Path:
    """A copy of the encoder folder whose weights then changed (a retrain in place)."""
    import shutil

    import torch
    shutil.copytree(src, dst)
    enc = DualEncoder.from_pretrained(dst)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    enc.save_pretrained(dst)
    return dst


def test_memory_keeps_its_encoder_when_the_source_folder_is_retrained(tmp_path, docs, encoder_dir):
    src = _retrained(encoder_dir, tmp_path / "enc")  # any weights: we only need a folder we may change
    mem = Memory.build(docs[:20], src, tmp_path / "m", batch_size=8, progress=False)
    before = [(d.id, round(s, 5)) for d, s in mem.search("red circle", k=5)]
    _retrained(src, tmp_path / "enc2")
    import shutil
    shutil.rmtree(src)
    shutil.copytree(tmp_path / "enc2", src)  # the folder the memory was built from now holds other weights
    again = Memory.load(tmp_path / "m")
    assert (tmp_path / "m" / "encoder" / "model.safetensors").is_file()
    assert [(d.id, round(s, 5)) for d, s in again.search("red circle", k=5)] == before
    with pytest.raises(ValueError, match="was built with encoder .* vectors do not compare"):
        Memory.load(tmp_path / "m", encoder=DualEncoder.from_pretrained(src))
    with pytest.raises(ValueError, match="was built with encoder"):
        Memory.build(docs[20:], src, tmp_path / "m", batch_size=8, progress=False)
    assert len(Memory.load(tmp_path / "m")) == 20


def _files(root: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.iterdir()) if p.is_file()}


def test_reading_a_memory_never_writes_even_when_index_or_store_is_missing(memory, docs):
    os.remove(memory.root / "index.faiss")
    before = _files(memory.root)
    again = Memory.load(memory.root)  # the index is rebuilt in memory from the store's embeddings
    assert again.index.ntotal == len(docs) and again.search("red circle", k=3)
    assert _files(memory.root) == before
    os.rename(memory.root / "store.sqlite", memory.root / "moved.sqlite")
    with pytest.raises(FileNotFoundError, match="store.sqlite not found"):
        Memory.load(memory.root)
    assert not (memory.root / "store.sqlite").exists()


def test_corrupt_index_is_rebuilt_from_the_store_not_fatal(memory, docs):
    expected = [d.id for d, _ in memory.search("blue ring", k=5)]
    index_file = memory.root / "index.faiss"
    index_file.write_bytes(index_file.read_bytes()[:45])
    again = Memory.load(memory.root)
    assert [d.id for d, _ in again.search("blue ring", k=5)] == expected
    again.add([])  # a writer saves the rebuilt index
    import faiss
    assert faiss.read_index(str(index_file)).ntotal == len(docs)


def test_second_writer_is_refused_naming_the_pid(tmp_path, docs, encoder_dir):
    from ramm.retrieval.faiss_memory import writer_lock
    with writer_lock(tmp_path / "m"):
        with pytest.raises(RuntimeError, match=f"being written by pid {os.getpid()}"):
            Memory.build(docs[:4], encoder_dir, tmp_path / "m", progress=False)
    Memory.build(docs[:4], encoder_dir, tmp_path / "m", progress=False)  # the lock went with its holder


def test_concurrent_index_saves_never_mix_files(tmp_path):
    import threading

    import faiss

    from ramm.retrieval.index import save_index
    path = tmp_path / "index.faiss"
    sizes = (100, 2000)
    errors = []

    def saver(n):
        index = faiss.IndexFlatIP(8)
        index.add(np.random.default_rng(n).normal(size=(n, 8)).astype(np.float32))
        try:
            for _ in range(15):
                save_index(index, path)
        except Exception as e:  # noqa: BLE001 - the test reports any failure of either saver
            errors.append(e)

    threads = [threading.Thread(target=saver, args=(n,)) for n in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert faiss.read_index(str(path)).ntotal in sizes
    assert [p.name for p in tmp_path.iterdir()] == ["index.faiss"]  # no temp file left behind


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_duplicate_ids_first_copy_wins_and_is_counted_at_any_batch_size(tmp_path, docs, encoder_dir, batch_size):
    dup = Document.from_pair(docs[1].id, "a later copy with other text", docs[1].image)
    mem = Memory.build([docs[0], docs[1], docs[2], dup, docs[3]], encoder_dir, tmp_path / "m",
                       batch_size=batch_size, progress=False)
    assert mem.ids == [d.id for d in docs[:4]]
    assert mem.get(docs[1].id).text == docs[1].text
    assert mem.stats["skipped"] == mem.stats["skipped_duplicate_id"] == 1 and mem.stats["added"] == 4
    again = Memory.build(docs[:4], encoder_dir, tmp_path / "m", batch_size=batch_size, progress=False)
    assert again.stats["already_present"] == 4 and again.stats["skipped"] == 0  # a resume is no duplicate


def test_empty_memory_and_empty_query_give_clear_answers(tmp_path, memory, encoder_dir):
    empty = Memory.build([], encoder_dir, tmp_path / "empty", progress=False)
    assert empty.search("red circle", k=3) == []
    with pytest.raises(ValueError, match="query is empty"):
        memory.search("  ", k=3)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        Memory.build([], encoder_dir, tmp_path / "b0", batch_size=0, progress=False)


def test_nan_embeddings_are_refused_before_they_are_stored(tmp_path, docs, encoder_dir):
    enc = DualEncoder.from_pretrained(encoder_dir)
    enc.embed_documents = lambda ds: np.full((len(ds), enc.dim), np.nan, np.float32)
    with pytest.raises(ValueError, match="non-finite embeddings"):
        Memory.build(docs[:3], enc, tmp_path / "m", progress=False)
    assert len(Memory.load(tmp_path / "m")) == 0


def test_documents_with_images_of_mixed_sizes_build_a_memory(tmp_path, docs, encoder_dir):
    from tests.retrieval.conftest import draw
    big = Document.from_pair("big-red-circle", "filled emoji: red circle", draw("circle", (220, 30, 30), "filled", 40))
    mem = Memory.build(docs[:5] + [big], encoder_dir, tmp_path / "m", batch_size=8, progress=False)
    assert len(mem) == mem.index.ntotal == 6
    q = mem.encoder.embed_documents([big])
    assert mem.search_vectors(q, 1)[1][0, 0] == 5


def test_batch_pixels_resizes_mixed_sizes_or_says_why_it_cannot():
    from ramm.corpus.document import batch_pixels
    a = Document.from_pair("a", "x", np.zeros((8, 8, 3), np.uint8))
    b = Document.from_pair("b", "y", np.zeros((12, 10, 3), np.uint8))
    assert tuple(batch_pixels([a, b], size=16).shape) == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="different sizes"):
        batch_pixels([a, b])
