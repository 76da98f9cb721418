"""FAISS index choice by memory size, as autofaiss does, with its parameters recorded.

Below `flat_below` vectors an exact IndexFlatIP (inner product on normalised vectors = cosine) is
both fast enough and exact. Up to `sq_below` vectors: IVF with ~4*sqrt(n) lists over 8-bit scalar-quantised
vectors (dim bytes each, a quarter of float32), whose distances are close enough to exact that no
re-ranking is needed; bench/memory_search.py measured it at 1M x 512 against the IVF-PQ + refine
alternative, which stored the same bytes (its SQ8 refine copy dominates) and was slower for the same
recall. Beyond `sq_below` memory is what limits: IVF with 4-bit PQ fast-scan codes (dim/16 bytes,
scanned in SIMD registers) and a refine stage on SQ8 vectors that re-ranks the PQ shortlist; the
refine copy can then live on disk (faiss.IndexRefine over an on-disk index). Past one machine, shard
by row range: each shard holds its own index + store, a query fans out and the top-k lists merge by
score (faiss.IndexShards does the merge in-process).
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from ramm.utils import atomic_write

log = logging.getLogger(__name__)


NPROBE_SQ = 16  # lists visited by IVF-SQ8; at 1M x 512 (bench/memory_search.py) recall@10 was 0.982 for nprobe 8..48


@dataclass
class IndexSpec:
    factory: str  # faiss.index_factory string
    params: str = ""  # faiss.ParameterSpace search parameters, e.g. "nprobe=32,k_factor_rf=4"
    train_size: int = 0  # vectors sampled to train the index (0: needs no training)

    def to_dict(self) -> dict:
        return asdict(self)


def choose_index(n: int, dim: int, flat_below: int = 100_000, sq_below: int = 20_000_000) -> IndexSpec:
    """Flat below `flat_below` vectors, IVF-SQ8 below `sq_below`, IVF-PQ(fast-scan)+SQ8 refine beyond."""
    if n < 0 or dim < 1:
        raise ValueError(f"bad index size n={n} dim={dim}")
    if n < flat_below:
        return IndexSpec("Flat")
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    if n < sq_below:
        return IndexSpec(f"IVF{nlist},SQ8", params=f"nprobe={max(NPROBE_SQ, nlist // 256)}", train_size=min(n, 64 * nlist))
    m = dim // 8 if dim % 8 == 0 and (dim // 8) % 2 == 0 else dim // 2 if dim % 2 == 0 else dim
    return IndexSpec(f"IVF{nlist},PQ{m}x4fs,Refine(SQ8)", params=f"nprobe={max(16, nlist // 128)},k_factor_rf=100",
                     train_size=min(n, 64 * nlist))


def new_index(spec: IndexSpec, dim: int, train: np.ndarray | None = None) -> faiss.Index:
    index = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        if train is None or len(train) == 0:
            raise ValueError(f"index {spec.factory} needs training vectors")
        log.info("training %s on %d vectors", spec.factory, len(train))
        index.train(check_vectors(train, dim))
    apply_params(index, spec)
    return index


def apply_params(index: faiss.Index, spec: IndexSpec) -> None:
    if spec.params:
        faiss.ParameterSpace().set_index_parameters(index, spec.params)


def check_vectors(x: np.ndarray, dim: int) -> np.ndarray:
    """FAISS wants C-contiguous float32 (N, dim)."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"vectors must be (N, {dim}), got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def save_index(index: faiss.Index, path: str | Path) -> None:
    """Atomic and durable (`atomic_write`): concurrent savers never mix files, a kill leaves old or new."""
    atomic_write(path, lambda tmp: faiss.write_index(index, tmp))


def load_index(path: str | Path, spec: IndexSpec) -> faiss.Index:
    """The saved index; ValueError naming the file when it is unreadable (truncated, not FAISS)."""
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        raise ValueError(f"{path}: unreadable FAISS index ({str(e).strip().splitlines()[-1][:200]})") from None
    apply_params(index, spec)
    return index
