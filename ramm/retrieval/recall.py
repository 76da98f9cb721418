"""Recall@K for cross-modal retrieval, as EmojiBench's protocol defines it.

text->image: the query is a document's text (text tower), the memory holds every document's
mixed-modal embedding, the query document itself is left out; a hit is any retrieved document of
the same answer: the same value of a metadata key (`match`; EmojiBench: the concept, so the other
style). image->text: the same with the document's image (image tower) as the query.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ramm.corpus.document import Document


def concept_of(doc: Document, key: str | None) -> str:
    """The answer a document stands for: its metadata `key` (EmojiBench: the concept), else (or with key None)
    its own id."""
    return str(doc.id if key is None else doc.metadata.get(key, doc.id))


def recall_at_k(ranked: Sequence[Sequence[str]], relevant: Sequence[Iterable[str] | str],
                ks: Iterable[int] = (1, 5, 10)) -> dict[int, float]:
    """{K: the fraction of queries with at least one relevant id among their first K results}.

    ranked[i]: ids (or labels) returned for query i, best first; relevant[i]: its relevant ids (a
    non-empty set, or one id as a string). The definition of cross-modal retrieval papers (CLIP,
    GRACE section 4), used for the dense retriever and GRACE alike. A K larger than a returned list
    counts what is there (a list of 3 ids can still hit at K=10).
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


def exact_leave_one_out(queries: np.ndarray, memory: np.ndarray, self_rows: Sequence[int], k: int) -> np.ndarray:
    """(N, k) memory rows by exact inner product, each query's own row left out (numpy, small memories)."""
    scores = queries @ memory.T  # (N, M)
    scores[np.arange(len(queries)), np.asarray(self_rows)] = -np.inf
    return np.argsort(-scores, axis=1)[:, :k]


def memory_recall(memory, queries: Sequence[Document], *, match: str | None, ks=(1, 5, 10)) -> dict[str, dict[int, float]]:
    """{'text->image': {K: recall}, 'image->text': {...}} for `queries` against a built Memory,
    each query's own document left out (by id, and its exact duplicates); a hit shares the query's
    metadata `match`."""
    if not queries:
        raise ValueError("no query documents")
    if match is None or not any(match in d.metadata for d in queries):
        raise ValueError(f"no query document has metadata {match!r}: its only hit would be itself, which is left "
                         f"out; name the metadata key that documents of one answer share (match)")
    enc, k = memory.encoder, max(ks)
    exclude = [[d.id] for d in queries]
    targets = [concept_of(d, match) for d in queries]
    known = {d.id: concept_of(d, match) for d in queries}
    out = {}
    for name, q in (("text->image", enc.embed_text([d.text for d in queries])),
                    ("image->text", enc.embed_image([d.image for d in queries]))):
        hits = memory.neighbours(q, k, exclude_ids=exclude)
        ranked = [[known[i] if i in known else concept_of(memory.get(i), match) for i, _ in row] for row in hits]
        out[name] = recall_at_k(ranked, targets, ks)
    return out
