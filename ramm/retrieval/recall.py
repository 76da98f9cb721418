"""Recall@K for cross-modal retrieval, as EmojiBench's protocol defines it.

text->image: the query is a document's text (text tower), the memory holds every document's
mixed-modal embedding, the query document itself is left out; a hit is any retrieved document of
the same concept (on EmojiBench: the other style). image->text: the same with the document's
image (image tower) as the query.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ramm.corpus.document import Document


def concept_of(doc: Document) -> str:
    return str(doc.metadata.get("concept", doc.id))


def recall_at_k(ranked: Sequence[Sequence[str]], targets: Sequence[str], ks=(1, 5, 10)) -> dict[int, float]:
    """ranked[i]: labels of query i's results, best first; a hit at K is targets[i] among the first K."""
    if len(ranked) != len(targets) or not targets:
        raise ValueError(f"need one ranked list per target, got {len(ranked)} lists and {len(targets)} targets")
    return {k: float(np.mean([t in r[:k] for r, t in zip(ranked, targets)])) for k in ks}


def exact_leave_one_out(queries: np.ndarray, memory: np.ndarray, self_rows: Sequence[int], k: int) -> np.ndarray:
    """(N, k) memory rows by exact inner product, each query's own row left out (numpy, small memories)."""
    scores = queries @ memory.T  # (N, M)
    scores[np.arange(len(queries)), np.asarray(self_rows)] = -np.inf
    return np.argsort(-scores, axis=1)[:, :k]


def memory_recall(memory, queries: Sequence[Document], ks=(1, 5, 10)) -> dict[str, dict[int, float]]:
    """{'text->image': {K: recall}, 'image->text': {...}} for `queries` against a built Memory,
    each query's own document left out (by id, and its exact duplicates)."""
    if not queries:
        raise ValueError("no query documents")
    enc, k = memory.encoder, max(ks)
    exclude = [[d.id] for d in queries]
    targets = [concept_of(d) for d in queries]
    known = {d.id: concept_of(d) for d in queries}
    out = {}
    for name, q in (("text->image", enc.embed_text([d.text for d in queries])),
                    ("image->text", enc.embed_image(np.stack([d.image for d in queries])))):
        hits = memory.neighbours(q, k, exclude_ids=exclude)
        ranked = [[known[i] if i in known else concept_of(memory.get(i)) for i, _ in row] for row in hits]
        out[name] = recall_at_k(ranked, targets, ks)
    return out
