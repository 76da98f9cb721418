"""RA-CM3's retrieval strategies (section 3.2), each a named option used by training and generation.

- relevance: top-k by score, never the query document itself nor an exact duplicate of it;
- modality: prefer mixed-modal (image + text) documents, which the paper found best;
- diversity: skip a candidate whose similarity to the query or to an already picked document is
  above a threshold (0.9 in the paper), so the k documents are not copies; `exempt_ids` lets a
  caller keep e.g. EmojiBench's leave-one-out partner (the other style of the same concept);
- query dropout: during training drop a fraction (20%) of the query's tokens before retrieval.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ramm.corpus.document import Document


@dataclass(frozen=True)
class Strategy:
    prefer_mixed_modal: bool = False  # modality: mixed-modal candidates first, others only to fill k
    diversity: float | None = None  # skip candidates more similar than this to the query or a pick
    exempt_ids: frozenset[str] = frozenset()  # ids never skipped by the diversity rule
    exclude_duplicates: bool = True  # relevance: drop exact duplicates (same content) of excluded docs

    def __post_init__(self):
        if self.diversity is not None and not -1.0 <= self.diversity <= 1.0:
            raise ValueError(f"diversity threshold must be a cosine in [-1, 1], got {self.diversity}")
        object.__setattr__(self, "exempt_ids", frozenset(self.exempt_ids))

    def with_exempt(self, ids) -> "Strategy":
        return replace(self, exempt_ids=frozenset(ids))


STRATEGIES = {
    "relevance": Strategy(),
    "modality": Strategy(prefer_mixed_modal=True),
    "diversity": Strategy(diversity=0.9),
    "ra-cm3": Strategy(prefer_mixed_modal=True, diversity=0.9),
}


def get_strategy(name: str | Strategy | None) -> Strategy:
    if name is None:
        return STRATEGIES["relevance"]
    if isinstance(name, Strategy):
        return name
    if name not in STRATEGIES:
        raise ValueError(f"unknown retrieval strategy {name!r}; choose from {sorted(STRATEGIES)}")
    return STRATEGIES[name]


def select(strategy: Strategy, docs: list[Document], scores: np.ndarray, embeddings: np.ndarray,
           k: int) -> list[int]:
    """Indices of the k candidates to keep. Candidates arrive sorted by score and already
    filtered for relevance (excluded ids and their duplicates removed)."""
    order = list(range(len(docs)))
    if strategy.prefer_mixed_modal:
        order.sort(key=lambda i: not docs[i].is_mixed_modal)  # stable: keeps score order within groups
    picked: list[int] = []
    for i in order:
        if len(picked) == k:
            break
        if strategy.diversity is not None and docs[i].id not in strategy.exempt_ids:
            too_close = scores[i] > strategy.diversity or (
                picked and float((embeddings[picked] @ embeddings[i]).max()) > strategy.diversity)
            if too_close:
                continue
        picked.append(i)
    return picked


def query_dropout(query: str | np.ndarray, p: float = 0.2, rng: np.random.Generator | None = None,
                  patch: int = 4):
    """Drop a fraction `p` of a text query's words, or blank (to white) that fraction of an image's
    patch x patch cells, so training inputs do not retrieve with a perfect query."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"query dropout must be in [0, 1), got {p}")
    rng = rng or np.random.default_rng()
    if isinstance(query, str):
        words = query.split()
        keep = rng.random(len(words)) >= p
        if words and not keep.any():
            keep[rng.integers(len(words))] = True
        return " ".join(w for w, k in zip(words, keep) if k)
    if isinstance(query, np.ndarray) and query.dtype == np.uint8 and query.ndim == 3:
        out = query.copy()
        gh, gw = -(-query.shape[0] // patch), -(-query.shape[1] // patch)
        for c in np.flatnonzero(rng.random(gh * gw) < p):
            r, col = divmod(int(c), gw)
            out[r * patch:(r + 1) * patch, col * patch:(col + 1) * patch] = 255
        return out
    raise ValueError(f"query dropout takes a text or a uint8 (H, W, 3) image, got {type(query).__name__}")
