"""Concept-level splits: deterministic from the seed, stratified, independent of input order."""
import pytest

from ramm.corpus.splits import DEFAULT_FRACTIONS, assign_splits

CONCEPTS = [f"c{i:04d}" for i in range(1000)]
STRATA = {c: ("flag" if i % 7 == 0 else "other") for i, c in enumerate(CONCEPTS)}  # 143 flags


def split(seed=0, concepts=CONCEPTS, **kw):
    return assign_splits(concepts, seed=seed, strata=STRATA, min_per_stratum={("flag", "heldout"): 25}, **kw)


def test_same_seed_same_split_regardless_of_input_order():
    assert split(0) == split(0, concepts=list(reversed(CONCEPTS)))
    assert split(0) != split(1)


def test_fractions_and_flag_minimum_hold():
    s = split(0)
    counts = {k: sum(v == k for v in s.values()) for k in DEFAULT_FRACTIONS}
    assert counts == {"train": 789, "val": 50, "test": 50, "heldout": 111}  # 86 others + 25 flags heldout
    flags = [s[c] for c in CONCEPTS if STRATA[c] == "flag"]
    assert sum(f == "heldout" for f in flags) == 25  # round(0.1 * 143) = 14, raised to the minimum
    assert all(sum(f == k for f in flags) > 0 for k in ("val", "test", "train"))


def test_adding_a_concept_moves_few_others():
    before, after = split(0), split(0, concepts=CONCEPTS + ["new"])
    moved = sum(before[c] != after[c] for c in CONCEPTS)
    assert moved <= 5


def test_bad_fractions_and_impossible_minimum_raise():
    with pytest.raises(ValueError, match="sum to 1"):
        assign_splits(CONCEPTS, fractions={"train": 0.9, "val": 0.2})
    with pytest.raises(ValueError, match="fewer than"):
        assign_splits(CONCEPTS[:10], strata={c: "flag" for c in CONCEPTS}, min_per_stratum={("flag", "heldout"): 25})
