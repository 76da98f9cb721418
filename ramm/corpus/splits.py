"""Deterministic, seeded splits (train / val / test / heldout) for any corpus.

`SplitSpec` is what every recipe and CLI command selects documents with: a row that carries a `split`
field keeps it (EmojiBench's pinned splits are such a field); any other document is placed by a seeded
hash of its group key (its id, or a metadata key such as a concept or a source photo, so that related
documents share a split), with configurable fractions. The hash makes a document's split independent of
the corpus order and of the other documents, so a corpus can grow without moving anything.

`assign_splits` is the exact-count variant a corpus builder uses once, when it knows all its groups:
groups are ordered by the seeded hash and cut per stratum (e.g. flags vs the rest), so that each split
gets its share of every stratum (EmojiBench draws its splits per concept this way).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

SPLITS = ("train", "val", "test", "heldout")
DEFAULT_FRACTIONS = {"train": 0.80, "val": 0.05, "test": 0.05, "heldout": 0.10}


def _rank_key(seed: int, concept: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{concept}".encode("utf-8")).digest()


def _check_fractions(fractions: Mapping[str, float]) -> None:
    if not fractions or abs(sum(fractions.values()) - 1.0) > 1e-6 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {dict(fractions)}")


@dataclass(frozen=True)
class SplitSpec:
    """Which split a document is in: its own `split` metadata, else a seeded hash of its group key."""

    fractions: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))  # split -> share
    seed: int = 0  # seed of the hash; another seed is another random split
    group_by: str | None = None  # metadata key whose value keeps documents together (None: each document alone)

    def __post_init__(self):
        _check_fractions(self.fractions)
        object.__setattr__(self, "fractions", dict(self.fractions))

    def of(self, doc) -> str:
        """The document's split name."""
        own = doc.metadata.get("split")
        if own is not None:
            return str(own)
        key = doc.id if self.group_by is None else doc.metadata.get(self.group_by)
        if key is None:
            raise ValueError(f"document {doc.id!r} has no metadata {self.group_by!r} to group its split by")
        u = int.from_bytes(_rank_key(self.seed, str(key))[:8], "big") / 2.0 ** 64  # uniform in [0, 1)
        total = 0.0
        for name, share in self.fractions.items():
            total += share
            if u < total:
                return name
        return [name for name, share in self.fractions.items() if share > 0][-1]  # rounding at the top end

    def select(self, docs: Iterable, splits: Iterable[str] | str) -> Iterator:
        """The documents of `splits` (a name or several), in corpus order."""
        want = {splits} if isinstance(splits, str) else set(splits)
        return (d for d in docs if self.of(d) in want)

    def group(self, docs: Iterable) -> dict[str, list]:
        """split name -> its documents, in corpus order."""
        out: dict[str, list] = {}
        for d in docs:
            out.setdefault(self.of(d), []).append(d)
        return out


def assign_splits(concepts: Iterable[str], seed: int = 0, fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
                  strata: Mapping[str, str] | None = None,
                  min_per_stratum: Mapping[tuple[str, str], int] | None = None) -> dict[str, str]:
    """Map each concept to a split name.

    fractions: split -> share of concepts (must sum to 1; the first split takes the rounding remainder).
    strata: concept -> stratum name (default: one stratum); each stratum is cut by `fractions` on its own.
    min_per_stratum: (stratum, split) -> minimum count, e.g. {("flag", "heldout"): 25}.
    """
    _check_fractions(fractions)
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
