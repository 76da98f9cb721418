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


def _doc(i, **meta):
    from ramm.corpus.document import Document, TextSegment
    return Document(id=f"d{i:04d}", segments=[TextSegment(f"text {i}")], metadata=meta)


def test_split_config_keeps_a_rows_own_split_field():
    from ramm.config import SplitConfig
    docs = [_doc(0, split="heldout"), _doc(1, split="train"), _doc(2, split="custom")]
    assert [SplitConfig().of(d) for d in docs] == ["heldout", "train", "custom"]
    assert [d.id for d in SplitConfig(seed=5).select(docs, "heldout")] == ["d0000"]


def test_split_config_hashes_documents_by_seed_with_the_asked_fractions():
    from ramm.config import SplitConfig
    docs = [_doc(i) for i in range(4000)]
    spec = SplitConfig(fractions={"train": 0.7, "val": 0.1, "test": 0.2}, seed=3)
    groups = spec.group(docs)
    assert set(groups) == {"train", "val", "test"}
    for name, share in spec.fractions.items():
        assert abs(len(groups[name]) / len(docs) - share) < 0.03
    assert [spec.of(d) for d in docs] == [spec.of(d) for d in reversed(docs)][::-1]  # order-free
    assert spec.group(docs[::-1])["val"] == groups["val"][::-1]
    other = SplitConfig(fractions=spec.fractions, seed=4)
    assert [other.of(d) for d in docs] != [spec.of(d) for d in docs]
    assert [d.id for d in spec.select(docs, ["val", "test"])] == [d.id for d in docs if spec.of(d) != "train"]


def test_split_config_group_by_keeps_related_documents_together():
    from ramm.config import SplitConfig
    docs = [_doc(i, photo=f"p{i // 5}") for i in range(500)]
    spec = SplitConfig(group_by="photo")
    by_photo: dict[str, set[str]] = {}
    for d in docs:
        by_photo.setdefault(d.metadata["photo"], set()).add(spec.of(d))
    assert all(len(s) == 1 for s in by_photo.values())
    assert len({spec.of(d) for d in docs}) > 1
    with pytest.raises(ValueError, match="d0000.*'concept'"):
        SplitConfig(group_by="concept").of(docs[0])


def test_split_config_rejects_bad_fractions():
    from ramm.config import SplitConfig
    for bad in ({"train": 0.5, "val": 0.4}, {"train": 1.2, "val": -0.2}, {}):
        with pytest.raises(ValueError, match="fractions"):
            SplitConfig(fractions=bad)
    assert SplitConfig(fractions={"train": 1.0}).of(_doc(7)) == "train"
