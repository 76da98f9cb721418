"""Deterministic, seeded, concept-level splits (EmojiBench protocol: train / val / test / heldout).

Splits are drawn per concept, never per document, so every style of a concept lands in one split and a
heldout concept is never seen in training. Concepts are ordered by a seeded hash, which makes a concept's
rank independent of the input order; strata (e.g. flags vs the rest) are cut separately so that each
split gets its share of every stratum.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

SPLITS = ("train", "val", "test", "heldout")
DEFAULT_FRACTIONS = {"train": 0.80, "val": 0.05, "test": 0.05, "heldout": 0.10}


def _rank_key(seed: int, concept: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{concept}".encode("utf-8")).digest()


def assign_splits(concepts: Iterable[str], seed: int = 0, fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
                  strata: Mapping[str, str] | None = None,
                  min_per_stratum: Mapping[tuple[str, str], int] | None = None) -> dict[str, str]:
    """Map each concept to a split name.

    fractions: split -> share of concepts (must sum to 1; the first split takes the rounding remainder).
    strata: concept -> stratum name (default: one stratum); each stratum is cut by `fractions` on its own.
    min_per_stratum: (stratum, split) -> minimum count, e.g. {("flag", "heldout"): 25}.
    """
    if abs(sum(fractions.values()) - 1.0) > 1e-6 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {dict(fractions)}")
    concepts = sorted(set(concepts))
    strata = strata or {}
    groups: dict[str, list[str]] = {}
    for c in concepts:
        groups.setdefault(strata.get(c, ""), []).append(c)
    names = list(fractions)
    out: dict[str, str] = {}
    for stratum, members in sorted(groups.items()):
        members.sort(key=lambda c: _rank_key(seed, c))
        n = len(members)
        counts = {s: round(fractions[s] * n) for s in names[1:]}
        for (st, split), m in (min_per_stratum or {}).items():
            if st == stratum and split in counts:
                if m > n:
                    raise ValueError(f"stratum {stratum!r} has {n} concepts, fewer than the {m} asked for {split}")
                counts[split] = max(counts[split], m)
        counts[names[0]] = n - sum(counts.values())
        if counts[names[0]] < 0:
            raise ValueError(f"stratum {stratum!r}: minimum counts exceed its {n} concepts")
        i = 0
        for split in reversed(names):  # the small splits first, so the remainder is the first split's
            for c in members[i:i + counts[split]]:
                out[c] = split
            i += counts[split]
    return out
