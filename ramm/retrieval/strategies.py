"""RA-CM3's retrieval strategies (section 3.2), each a named option used by training and generation.

- relevance: top-k by score, never the query document itself nor an exact duplicate of it;
- modality: prefer mixed-modal (image + text) documents, which the paper found best;
- diversity: skip a candidate whose similarity to the query or to an already picked document is
  above a threshold (0.9 in the paper), so the k documents are not copies; `exempt_ids` lets a
  caller keep e.g. EmojiBench's leave-one-out partner (the other style of the same concept);
  generator training applies the threshold to the query only (`diversity_to_picks=False`);
- maximal marginal relevance (our addition, `mmr`): pick k among the first MMR_POOL * k eligible
  candidates, trading relevance for redundancy with the picks (see `mmr`);
- query dropout: during training drop a fraction (20%) of the query's tokens before retrieval.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Strategy:
    prefer_mixed_modal: bool = False  # modality: mixed-modal candidates first, others only to fill k
    diversity: float | None = None  # skip candidates more similar than this to the query or a pick
    exempt_ids: frozenset[str] = frozenset()  # ids never skipped by the diversity rule
    exclude_duplicates: bool = True  # relevance: drop exact duplicates (same content) of excluded docs
    diversity_to_picks: bool = True  # the diversity threshold also applies to the picks (False: the query only)
    mmr: float = 0.0  # > 0: choose by maximal marginal relevance with this redundancy weight (see `mmr`)

    def __post_init__(self):
        if self.diversity is not None and not -1.0 <= self.diversity <= 1.0:
            raise ValueError(f"diversity threshold must be a cosine in [-1, 1], got {self.diversity}")
        if self.mmr < 0:
            raise ValueError(f"mmr must be >= 0, got {self.mmr}")
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


MMR_POOL = 4  # MMR chooses among this many times k eligible candidates


def pool_size(strategy: Strategy, k: int) -> int:
    """Eligible candidates the strategy needs to choose k: k, or MMR_POOL * k with MMR."""
    return MMR_POOL * k if strategy.mmr else k


def eligible(strategy: Strategy, ids: list[str], scores: np.ndarray, embeddings: np.ndarray | None, n: int,
             mixed: list[bool] | None = None) -> list[int]:
    """Indices of the first n candidates the strategy admits. Candidates arrive sorted by score and already
    filtered for relevance (excluded ids and their duplicates removed); `mixed` (whether each is
    mixed-modal) is needed by the modality rule, `embeddings` (their stored vectors) by diversity among
    picks."""
    order = list(range(len(ids)))
    if strategy.prefer_mixed_modal:
        order.sort(key=lambda i: not mixed[i])  # stable: keeps score order within groups
    picked: list[int] = []
    for i in order:
        if len(picked) == n:
            break
        if strategy.diversity is not None and ids[i] not in strategy.exempt_ids:
            too_close = scores[i] > strategy.diversity or (strategy.diversity_to_picks and bool(picked) and
                                                           float((embeddings[picked] @ embeddings[i]).max()) > strategy.diversity)
            if too_close:
                continue
        picked.append(i)
    return picked


def choose(strategy: Strategy, pool: list[int], scores: np.ndarray, embeddings: np.ndarray | None,
           k: int) -> list[int]:
    """The k picks among an eligible pool (`eligible`): its first k, or by MMR."""
    if not strategy.mmr:
        return pool[:k]
    return [pool[j] for j in mmr(scores[pool], embeddings[pool], k, strategy.mmr)]


def select(strategy: Strategy, ids: list[str], scores: np.ndarray, embeddings: np.ndarray | None, k: int,
           mixed: list[bool] | None = None) -> list[int]:
    """Indices of the k candidates the strategy keeps, from the full candidate list (`eligible`, then `choose`)."""
    pool = eligible(strategy, ids, scores, embeddings, pool_size(strategy, k), mixed)
    return choose(strategy, pool, scores, embeddings, k)


def mmr(scores: np.ndarray, embeddings: np.ndarray, k: int, weight: float) -> list[int]:
    """Maximal marginal relevance (Carbonell & Goldstein 1998): indices of k candidates picked one at a time,
    each the best relevance - weight * (its highest cosine to a candidate already picked); the first is the
    most relevant.

    Why: the best two documents for "google emoji: waving hand, dark skin tone" are the other style's dark hand
    (the same concept: its name and tone) and that style's light hand (near-identical to it), while the
    same-style light hand, the one whose codes a generator can copy cell by cell, comes third. Penalising
    near-duplicates of what is already picked brings complementary evidence into k = 2 (RA-CM3's diversity
    rule, softened from a hard threshold on the query into a trade-off between the picks)."""
    if len(scores) <= 1:
        return list(range(min(k, len(scores))))
    emb = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    sim = emb @ emb.T
    rel = np.asarray(scores, dtype=np.float64)
    chosen = [0]
    while len(chosen) < min(k, len(scores)):
        score = rel - weight * sim[:, chosen].max(1)
        score[chosen] = -np.inf
        chosen.append(int(score.argmax()))
    return chosen


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
