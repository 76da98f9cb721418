"""Building one memory on many processes (`torchrun ... -m ramm memory build`): embedding is the cost, so
it is split; the index is built once.

Rank r of N takes corpus items r, r + N, r + 2N, ... and builds a shard memory of them in
`<out>/shards/rank-<r>/` (its document store holds the embeddings), and writes `rank-<r>.json` with each
stored document's position in the corpus and its embedding throughput. After a barrier, rank 0 builds
`<out>` itself with `Memory.build` from the shards' documents in corpus order, taking their stored
vectors instead of re-embedding: the index is chosen for the full size, trained once on a sample of
all vectors and filled from every shard, so the result is the memory one process would have built.
Across nodes the shards' directory must be on a filesystem every rank sees (the merge reads them all).
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
from ramm.retrieval.memory import Memory
from ramm.utils import atomic_write_json

log = logging.getLogger(__name__)


class StoredVectors(Encoder):
    """An Encoder that answers `embed_documents` with the vectors the shards already computed; it `replays`
    the shards' encoder, so the merged memory records (and copies) that encoder, not this one."""

    def __init__(self, shards: list[Memory]):
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
                      flat_below: int = 100_000, progress: bool = False) -> Memory | None:
    """Run on every rank (gloo or nccl process group, initialised here when torchrun started us);
    returns the merged Memory on rank 0, None elsewhere."""
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
    shard = Memory.build(my_items(), load_encoder(encoder_path), shard_dir(out, rank), encoder_path=encoder_path,
                         batch_size=batch_size, flat_below=flat_below, progress=progress and rank == 0)
    seconds = time.perf_counter() - t0
    ids = shard.ids
    atomic_write_json(shard_dir(out, rank).with_suffix(".json"),
                      {"rank": rank, "world": world, "documents": len(ids), "seconds": seconds,
                       "docs_per_s": len(ids) / seconds if seconds else 0.0, "stats": dict(shard.stats),
                       "positions": [positions[i] for i in ids]})
    log.info("rank %d: embedded %d documents in %.1fs (%.1f docs/s)", rank, len(ids), seconds, len(ids) / seconds)
    dist.barrier()
    merged = merge_shards(out, world, encoder_path, batch_size, flat_below) if rank == 0 else None
    dist.barrier()
    return merged


def merge_shards(out: str | Path, world: int, encoder_path: str | Path, batch_size: int = 256,
                 flat_below: int = 100_000) -> Memory:
    """`<out>` from the N shard memories, documents in corpus order, vectors reused."""
    shards = [Memory.load(shard_dir(out, r)) for r in range(world)]
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

    Memory.build(documents(), vectors, out, encoder_path=encoder_path, batch_size=batch_size,
                 flat_below=flat_below, progress=False)
    return Memory.load(out)  # with the real encoder for queries


def embedding_report(out: str | Path) -> list[dict]:
    """Each rank's shard report: documents, seconds, docs_per_s."""
    return [json.loads(f.read_text()) for f in sorted((Path(out) / "shards").glob("rank-*.json"))]


def world_size() -> int:
    """Processes torchrun started (1 when run plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))
