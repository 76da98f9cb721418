"""Building one memory on many processes (`torchrun ... -m ramm memory build`): embedding is the cost, so
it is split; the index is built once.

Rank r of N takes corpus items r, r + N, r + 2N, ... and builds a shard memory of them in
`<out>/shards/rank-<r>/` (its document store holds the embeddings), and writes `rank-<r>.json` with each
stored document's position in the corpus and its embedding throughput. After a barrier, rank 0 builds
`<out>` itself with `Memory.build` from the shards' documents in corpus order, taking their stored
vectors instead of re-embedding: the index is chosen for the full size, trained once on a sample of
all vectors and filled from every shard, so the result is the memory one process would have built.
Across nodes the shards' directory must be on a filesystem every rank sees (the merge reads them all).

With the Milvus backend there is nothing to merge: rank 0 creates the memory (its directory, the collection
and its index) with an empty build, and after a barrier every rank opens it and upserts its own items into
the one collection; the result is the collection one process would have filled. Every rank must see `<out>`
(it holds the config and the encoder copy) and reach the URI: a server's http:// URI (Milvus Lite serves one
process).
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import torch.distributed as dist

from ramm.corpus.document import Document
from ramm.retrieval.encoder import Encoder, load_encoder
from ramm.retrieval.faiss_memory import FaissMemory
from ramm.retrieval.memory import Memory, memory_class
from ramm.utils import atomic_write_json

log = logging.getLogger(__name__)


class StoredVectors(Encoder):
    """An Encoder that answers `embed_documents` with the vectors the shards already computed; it `replays`
    the shards' encoder, so the merged memory records (and copies) that encoder, not this one."""

    def __init__(self, shards: list[FaissMemory]):
        self.shards = shards
        self.replays = shards[0].encoder
        self.dim = shards[0].config.dim
        self.where: dict[str, int] = {}  # document id -> shard holding it (the first, as the merge order)

    def embed_documents(self, docs: list[Document]) -> np.ndarray:
        out = np.zeros((len(docs), self.dim), dtype=np.float32)
        for s, shard in enumerate(self.shards):
            mine = [i for i, d in enumerate(docs) if self.where[d.id] == s]
            if mine:
                rows = shard.store.rows_of([docs[i].id for i in mine])
                out[mine] = shard.store.embeddings([rows[docs[i].id] for i in mine])
        return out


def shard_dir(out: str | Path, rank: int) -> Path:
    return Path(out) / "shards" / f"rank-{rank:05d}"


def build_distributed(corpus: Iterable, encoder_path: str | Path, out: str | Path, *, batch_size: int = 256,
                      progress: bool = False, backend: str = "faiss", **options) -> Memory | None:
    """Run on every rank (gloo or nccl process group, initialised here when torchrun started us);
    returns the built Memory on rank 0, None elsewhere. `options`: the backend's build keywords
    (faiss: flat_below; milvus: uri, collection, index_type)."""
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    positions: dict[str, int] = {}

    def my_items():
        for i, item in enumerate(corpus):
            if i % world == rank:
                if isinstance(item, Document):
                    positions.setdefault(item.id, i)
                yield item

    t0 = time.perf_counter()
    if backend == "milvus":
        if rank == 0:  # the directory, the collection and its index, once
            memory_class(backend).build([], load_encoder(encoder_path), out, encoder_path=encoder_path,
                                        progress=False, **options)
        dist.barrier()
        shard = Memory.load(out)
        shard.add(my_items(), batch_size=batch_size, progress=progress and rank == 0)
        n_docs, placed = shard.stats["added"] + shard.stats["already_present"], []  # nothing to merge
    else:
        shard = FaissMemory.build(my_items(), load_encoder(encoder_path), shard_dir(out, rank),
                                  encoder_path=encoder_path, batch_size=batch_size, progress=progress and rank == 0,
                                  **options)
        ids = shard.ids
        n_docs, placed = len(ids), [positions[i] for i in ids]
    seconds = time.perf_counter() - t0
    report = shard_dir(out, rank).with_suffix(".json")
    report.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(report, {"rank": rank, "world": world, "documents": n_docs, "seconds": seconds,
                               "docs_per_s": n_docs / seconds if seconds else 0.0, "stats": dict(shard.stats),
                               "positions": placed})
    log.info("rank %d: embedded %d documents in %.1fs (%.1f docs/s)", rank, n_docs, seconds, n_docs / seconds)
    dist.barrier()
    if backend == "milvus":
        return shard if rank == 0 else None
    merged = merge_shards(out, world, encoder_path, batch_size, **options) if rank == 0 else None
    dist.barrier()
    return merged


def merge_shards(out: str | Path, world: int, encoder_path: str | Path, batch_size: int = 256,
                 flat_below: int = 100_000) -> Memory:
    """`<out>` from the N shard memories, documents in corpus order, vectors reused."""
    shards = [FaissMemory.load(shard_dir(out, r)) for r in range(world)]
    reports = [json.loads(shard_dir(out, r).with_suffix(".json").read_text()) for r in range(world)]
    order = sorted((pos, r, row) for r, rep in enumerate(reports) for row, pos in enumerate(rep["positions"]))
    vectors = StoredVectors(shards)
    ids = {r: shards[r].ids for r in range(world)}
    for _, r, row in order:
        vectors.where.setdefault(ids[r][row], r)

    def documents():
        for start in range(0, len(order), batch_size):
            part = order[start:start + batch_size]
            fetched = {}
            for r in {r for _, r, _ in part}:
                rows = [row for _, s, row in part if s == r]
                fetched.update(zip([(r, row) for row in rows], shards[r].store.documents(rows)))
            yield from (fetched[r, row] for _, r, row in part)

    FaissMemory.build(documents(), vectors, out, encoder_path=encoder_path, batch_size=batch_size,
                      flat_below=flat_below, progress=False)
    return FaissMemory.load(out)  # with the real encoder for queries


def embedding_report(out: str | Path) -> list[dict]:
    """Each rank's shard report: documents, seconds, docs_per_s."""
    return [json.loads(f.read_text()) for f in sorted((Path(out) / "shards").glob("rank-*.json"))]


def world_size() -> int:
    """Processes torchrun started (1 when run plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))
