"""Recall@K for retrieval: the fraction of queries with at least one relevant id among the top K.

This is the definition of cross-modal retrieval papers (CLIP, GRACE section 4): a query may have
several relevant ids (on EmojiBench both styles of a concept count) and is a hit when any of them is
ranked within K. Used for the dense retriever and for GRACE alike, since both yield ranked id lists.
"""
from __future__ import annotations

from typing import Iterable, Sequence


def recall_at_k(ranked: Sequence[Sequence[str]], relevant: Sequence[Iterable[str]],
                ks: Iterable[int] = (1, 5, 10)) -> dict[int, float]:
    """ranked[i]: ids returned for query i, best first; relevant[i]: its relevant ids (non-empty).

    A K larger than a returned list counts what is there (a list of 3 ids can still hit at K=10).
    """
    ks = sorted(set(ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"K values must be >= 1, got {ks}")
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} ranked lists for {len(relevant)} relevance sets")
    if not ranked:
        raise ValueError("recall of zero queries")
    hits = dict.fromkeys(ks, 0)
    for i, (ids, rel) in enumerate(zip(ranked, relevant)):
        if isinstance(ids, str):
            raise ValueError(f"query {i}: ranked ids must be a list, not the string {ids!r}")
        rel = {rel} if isinstance(rel, str) else set(rel)
        if not rel:
            raise ValueError(f"query {i} has no relevant id")
        first = next((rank for rank, x in enumerate(ids) if x in rel), None)  # 0-based rank of the first hit
        for k in ks:
            hits[k] += first is not None and first < k
    return {k: hits[k] / len(ranked) for k in ks}
