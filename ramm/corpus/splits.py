"""Deterministic, seeded splits (train / val / test / heldout) for any corpus.

`ramm.config.SplitConfig` is what every recipe and CLI command selects documents with: a row that carries a `split`
field keeps it (EmojiBench's pinned splits are such a field); any other document is placed by a seeded
hash of its group key (its id, or a metadata key such as a concept or a source photo, so that related
documents share a split), with configurable fractions. The hash makes a document's split independent of
the corpus order and of the other documents, so a corpus can grow without moving anything.

`assign_splits` is the exact-count variant a corpus builder uses once, when it knows all its groups:
groups are ordered by the seeded hash and cut per stratum (e.g. flags vs the rest), so that each split
gets its share of every stratum (EmojiBench draws its splits per concept this way).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from ramm.config import DEFAULT_FRACTIONS, check_fractions, split_rank_key


def assign_splits(concepts: Iterable[str], seed: int = 0, fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
                  strata: Mapping[str, str] | None = None,
                  min_per_stratum: Mapping[tuple[str, str], int] | None = None) -> dict[str, str]:
    """Map each concept to a split name.

    fractions: split -> share of concepts (must sum to 1; the first split takes the rounding remainder).
    strata: concept -> stratum name (default: one stratum); each stratum is cut by `fractions` on its own.
    min_per_stratum: (stratum, split) -> minimum count, e.g. {("flag", "heldout"): 25}.
    """
    check_fractions(fractions)
    concepts = sorted(set(concepts))
    strata = strata or {}
    groups: dict[str, list[str]] = {}
    for c in concepts:
        groups.setdefault(strata.get(c, ""), []).append(c)
    names = list(fractions)
    out: dict[str, str] = {}
    for stratum, members in sorted(groups.items()):
        members.sort(key=lambda c: split_rank_key(seed, c))
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
