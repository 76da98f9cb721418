"""The Memory on Milvus (Milvus Lite, in this process) against the FAISS memory: same answers, same checks."""
import shutil
import socket
import time

import numpy as np
import pytest
import torch

from milvus_server import needs_milvus
from ramm.corpus.document import Document, ImageSegment, TextSegment
from ramm.retrieval.dual_encoder import DualEncoder, DualEncoderConfig
from ramm.retrieval.memory import Memory
from ramm.retrieval.strategies import STRATEGIES, Strategy

pytestmark = needs_milvus


def _extra(docs):
    """Text-only, image-only and an exact duplicate: what the strategies' rules act on."""
    return [Document("text-only-red-circle", [TextSegment("filled emoji: red circle")], metadata={"concept": "red-circle"}),
            Document("image-only-red-circle", [ImageSegment(pixels=docs[0].image)], metadata={"concept": "red-circle"}),
            Document("copy-of-" + docs[0].id, docs[0].segments, metadata=docs[0].metadata)]


@pytest.fixture(scope="module")
def twins(tmp_path_factory, docs, encoder_dir):
    """The same documents in a FAISS Flat memory and in a Milvus memory with exact (FLAT) search."""
    from ramm.retrieval.milvus_memory import MilvusMemory
    root = tmp_path_factory.mktemp("twins")
    corpus = docs + _extra(docs)
    faiss = Memory.build(corpus, encoder_dir, root / "faiss", batch_size=32, progress=False)
    milvus = MilvusMemory.build(corpus, encoder_dir, root / "milvus", index_type="FLAT", batch_size=32, progress=False)
    return faiss, milvus


@pytest.mark.parametrize("strategy", [Strategy(), STRATEGIES["modality"], Strategy(diversity=0.5), Strategy(mmr=0.3),
                                      STRATEGIES["ra-cm3"]], ids=["relevance", "modality", "diversity", "mmr", "ra-cm3"])
def test_milvus_exact_search_returns_the_faiss_flat_top_k(twins, docs, strategy):
    faiss, milvus = twins
    queries = docs[:10]
    q = np.concatenate([faiss.encoder.embed_text([d.text for d in queries[:5]]),
                        faiss.encoder.embed_image(np.stack([d.image for d in queries[5:]]))])
    content = {i: faiss.get(i).content_hash() for i in faiss.ids}
    exclude = [[d.id] for d in queries]
    want = faiss.neighbours(q, 10, exclude_ids=exclude, strategy=strategy)
    got = milvus.neighbours(q, 10, exclude_ids=exclude, strategy=strategy)
    for a, b in zip(want, got):
        assert len(a) == len(b) >= 5  # a strong rule may admit fewer than k of the whole memory
        # exact duplicates tie, and each engine may order a tie either way: compare contents, then scores
        assert [content[i] for i, _ in a] == [content[i] for i, _ in b]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-5)
    for query in ("red circle", docs[3].image, docs[7]):  # text, image, document queries
        a, b = faiss.search(query, k=5), milvus.search(query, k=5)
        assert [d.content_hash() for d, _ in a] == [d.content_hash() for d, _ in b]


@pytest.mark.parametrize("mmr", [0.0, 0.5])
def test_generator_training_neighbours_are_the_same_on_milvus(twins, docs, mmr):
    """What `ramm train generator` retrieves (partners exempt, duplicates excluded, allowed ids only)."""
    from ramm.config import RAConfig
    from ramm.training.ra_data import precompute_neighbours
    faiss, milvus = twins
    cfg = RAConfig(n_candidates=4, k_choices=(0, 2), mmr=mmr)
    queries = docs[:12]
    partners = {d.id: {docs[(i + 2) % len(docs)].id} for i, d in enumerate(queries)}
    content = {i: faiss.get(i).content_hash() for i in faiss.ids}
    for allowed in (None, {d.id for d in docs[::2]}):
        want = precompute_neighbours(faiss, queries, cfg, partners, dropout=0.0, allowed=allowed)
        got = precompute_neighbours(milvus, queries, cfg, partners, dropout=0.0, allowed=allowed)
        for kind in ("text", "image"):
            assert [[content[i] for i in row] for row in want[kind]] == [[content[i] for i in row] for row in got[kind]]
            assert all(len(row) == 4 for row in got[kind])


def test_memory_load_opens_a_milvus_memory_with_its_documents(twins, docs):
    from ramm.retrieval.milvus_memory import MilvusMemory
    faiss, milvus = twins
    again = Memory.load(milvus.root)
    assert isinstance(again, MilvusMemory) and again.uri == milvus.uri
    assert len(again) == len(faiss) == len(docs) + 3
    assert again.ids == sorted(faiss.ids)
    d = again.get(docs[4].id)
    assert d.text == docs[4].text and np.array_equal(d.image, docs[4].image) and d.metadata == docs[4].metadata
    for mem in (faiss, again):  # one batched read, in the order asked
        assert [x.id for x in mem.documents([docs[2].id, docs[1].id])] == [docs[2].id, docs[1].id]
        with pytest.raises(KeyError, match="no document 'nope'"):
            mem.documents([docs[0].id, "nope"])
    with pytest.raises(KeyError, match="no document 'nope'"):
        again.get("nope")
    assert again.add(docs[:5])["already_present"] == 5 and len(again) == len(faiss)  # nothing added twice


def _other_encoder(encoder_dir, embed_dim=None):
    """The fixture encoder with other weights (a retrain), or another width."""
    enc = DualEncoder.from_pretrained(encoder_dir)
    if embed_dim is not None:
        return DualEncoder(DualEncoderConfig(**{**enc.cfg.__dict__, "embed_dim": embed_dim}), enc.tokenizer)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return enc


def test_a_collection_refuses_another_encoder_and_another_dim(tmp_path, docs, encoder_dir):
    from ramm.retrieval.milvus_memory import MilvusMemory
    uri = str(tmp_path / "shared.db")
    MilvusMemory.build(docs[:6], encoder_dir, tmp_path / "a", uri=uri, collection="emoji", progress=False)
    with pytest.raises(ValueError, match="collection 'emoji' at Milvus .*shared.db was built with encoder"):
        MilvusMemory.build(docs[6:], _other_encoder(encoder_dir), tmp_path / "b", uri=uri, collection="emoji",
                           progress=False)
    with pytest.raises(ValueError, match="holds dim-32 vectors"):
        MilvusMemory.build(docs[6:], _other_encoder(encoder_dir, embed_dim=16), tmp_path / "c", uri=uri,
                           collection="emoji", progress=False)
    assert not (tmp_path / "b" / "config.json").exists()  # refused before a memory folder was written
    with pytest.raises(ValueError, match="was built with encoder .* vectors do not compare"):
        Memory.load(tmp_path / "a", encoder=_other_encoder(encoder_dir))
    assert len(Memory.load(tmp_path / "a")) == 6


def test_too_large_documents_are_skipped_and_counted(tmp_path, docs, encoder_dir):
    from ramm.retrieval.milvus_memory import MAX_DOC_BYTES, MilvusMemory
    big = Document("big", [TextSegment("red circle " * (MAX_DOC_BYTES // 10))])
    long_id = Document("x" * 600, [TextSegment("blue ring")])
    mem = MilvusMemory.build(docs[:4] + [big, long_id], encoder_dir, tmp_path / "m", progress=False)
    assert mem.stats["added"] == 4 and mem.stats["skipped"] == 2
    assert mem.stats["skipped_document_too_large"] == 1 and mem.stats["skipped_id_too_long"] == 1
    assert sorted(mem.ids) == sorted(d.id for d in docs[:4])


def test_a_build_cut_off_by_a_dropped_connection_resumes_without_duplicates(tmp_path, docs, encoder_dir, monkeypatch):
    from ramm.retrieval.milvus_memory import MilvusMemory
    real, calls = MilvusMemory._call, []

    def drop_after_third_upsert(self, method, *args, **kwargs):
        out = real(self, method, *args, **kwargs)
        if method == "upsert":
            calls.append(1)
            if len(calls) == 3:  # the batch was stored, its acknowledgement lost
                raise ConnectionError(f"Milvus at {self.uri}: upsert failed: connection reset")
        return out

    monkeypatch.setattr(MilvusMemory, "_call", drop_after_third_upsert)
    with pytest.raises(ConnectionError, match="connection reset"):
        MilvusMemory.build(docs, encoder_dir, tmp_path / "m", batch_size=8, progress=False)
    monkeypatch.setattr(MilvusMemory, "_call", real)
    mem = MilvusMemory.build(docs + docs[-3:], encoder_dir, tmp_path / "m", batch_size=8, progress=False)
    assert mem.stats["already_present"] == 24 and mem.stats["added"] == len(docs) - 24
    assert mem.stats["skipped_duplicate_id"] == 3  # the second copies in this run
    ids = mem.ids
    assert len(ids) == len(set(ids)) == len(mem) == len(docs)


def test_a_bad_uri_or_a_server_that_is_down_is_a_clear_error_naming_it(tmp_path, docs, encoder_dir):
    from ramm.retrieval.milvus_memory import MilvusMemory
    with pytest.raises(ValueError, match="Milvus URI 'mongodb://x:1'"):
        MilvusMemory.build(docs[:2], encoder_dir, tmp_path / "a", uri="mongodb://x:1", progress=False)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=f"cannot reach Milvus at {down} within 1s"):
        MilvusMemory.build(docs[:2], encoder_dir, tmp_path / "b", uri=down, progress=False, timeout=1.0)
    assert time.monotonic() - t0 < 10  # a timeout, not a hang
    assert not (tmp_path / "b" / "config.json").exists()


def test_a_milvus_memory_folder_moves_with_its_lite_file(tmp_path, docs, encoder_dir):
    from ramm.retrieval.milvus_memory import MilvusMemory
    MilvusMemory.build(docs[:5], encoder_dir, tmp_path / "m", progress=False)  # default: m/milvus.db
    assert (tmp_path / "m" / "milvus.db").exists()
    shutil.copytree(tmp_path / "m", tmp_path / "moved")
    moved = Memory.load(tmp_path / "moved")
    assert moved.uri == str((tmp_path / "moved" / "milvus.db").resolve()) and len(moved) == 5


def test_cli_builds_adds_to_and_searches_a_milvus_memory(tmp_path, docs, encoder_dir, capsys):
    import json

    from PIL import Image

    from ramm.__main__ import main as run
    rows = []
    for d in docs[:10]:
        Image.fromarray(d.image).save(tmp_path / f"{d.id}.png")
        rows.append(json.dumps({"id": d.id, "image": f"{d.id}.png", "caption": d.text}))
    (tmp_path / "first.jsonl").write_text("\n".join(rows[:6] + [json.dumps({"id": "broken", "image": "no.png",
                                                                             "caption": "x"})]) + "\n")
    (tmp_path / "more.jsonl").write_text("\n".join(rows[4:]) + "\n")
    mem, uri = tmp_path / "mem", tmp_path / "lite" / "memory.db"
    uri.parent.mkdir()
    assert run(["memory", "build", "--corpus", str(tmp_path / "first.jsonl"), "--encoder", str(encoder_dir),
                "--out", str(mem), "--backend", "milvus", "--uri", str(uri), "--index-type", "FLAT"]) == 0
    out = capsys.readouterr().out
    assert "6 documents (6 added, 0 already present, 1 skipped); index Milvus FLAT" in out
    assert "skipped missing_file: 1" in out
    assert run(["memory", "add", str(mem), str(tmp_path / "more.jsonl")]) == 0
    assert "10 documents (4 added, 2 already present, 0 skipped)" in capsys.readouterr().out
    assert run(["memory", "search", str(mem), docs[8].text, "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and {l.split("\t")[0] for l in lines} <= {d.id for d in docs[:10]}
    assert run(["memory", "build", "--corpus", str(tmp_path / "more.jsonl"), "--encoder", str(encoder_dir),
                "--out", str(tmp_path / "down"), "--backend", "milvus", "--uri", "http://127.0.0.1:1",
                "--timeout", "1"]) == 1
    assert "cannot reach Milvus at http://127.0.0.1:1" in capsys.readouterr().err
    assert run(["memory", "build", "--corpus", str(tmp_path / "more.jsonl"), "--encoder", str(encoder_dir),
                "--out", str(tmp_path / "x"), "--uri", str(uri)]) == 1
    assert "--uri and --collection are for --backend milvus" in capsys.readouterr().err


@pytest.mark.slow
def test_on_the_emojibench_memory_milvus_exact_search_returns_the_faiss_flat_top_k(tmp_path, emojibench_dir,
                                                                                    encoder_dir):
    from ramm_lab.emojibench import load_emojibench
    from ramm.retrieval.milvus_memory import MilvusMemory
    docs = load_emojibench(emojibench_dir, splits=["test"])[:400]
    faiss = Memory.build(docs, encoder_dir, tmp_path / "faiss", batch_size=128, progress=False)
    milvus = MilvusMemory.build(docs, encoder_dir, tmp_path / "milvus", index_type="FLAT", batch_size=128,
                                progress=False)
    assert len(faiss) == len(milvus) == len(docs)
    queries = docs[::20]
    q = np.concatenate([faiss.encoder.embed_text([d.text for d in queries]),
                        faiss.encoder.embed_image(np.stack([d.image for d in queries]))])
    exclude = [[d.id] for d in queries] * 2
    content = {d.id: d.content_hash() for d in docs}
    for strategy in ("relevance", "ra-cm3"):
        want = faiss.neighbours(q, 10, exclude_ids=exclude, strategy=strategy)
        got = milvus.neighbours(q, 10, exclude_ids=exclude, strategy=strategy)
        for a, b in zip(want, got):
            assert [content[i] for i, _ in a] == [content[i] for i, _ in b]
            np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-5)
