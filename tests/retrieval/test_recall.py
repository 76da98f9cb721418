import numpy as np
import pytest

from ramm.retrieval.recall import recall_at_k


def test_recall_hand_case_with_several_relevant_ids():
    ranked = [["a", "b", "c"], ["x", "y", "b"], ["p", "q", "r"], ["z", "b2", "b1"]]
    relevant = [{"a"}, {"b", "zz"}, {"s"}, {"b1", "b2"}]
    assert recall_at_k(ranked, relevant, ks=(1, 2, 3, 10)) == {1: 0.25, 2: 0.5, 3: 0.75, 10: 0.75}


def test_one_relevant_id_may_be_a_string():
    assert recall_at_k([["a", "b"]], ["b"], ks=(1, 2)) == {1: 0.0, 2: 1.0}


def test_recall_rejects_bad_input():
    with pytest.raises(ValueError, match="2 ranked lists for 1"):
        recall_at_k([["a"], ["b"]], [{"a"}])
    with pytest.raises(ValueError, match="query 1 has no relevant id"):
        recall_at_k([["a"], ["b"]], [{"a"}, set()])
    with pytest.raises(ValueError, match=">= 1"):
        recall_at_k([["a"]], [{"a"}], ks=(0, 1))
    with pytest.raises(ValueError, match="query 0: ranked ids must be a list"):
        recall_at_k(["abc"], [{"a"}])


def test_recall_counts_a_relevant_item_in_the_top_k():
    ranked = [["a", "b", "c"], ["x", "y", "b"], ["z"]]
    relevant = [{"a"}, {"b"}, {"q"}]
    assert recall_at_k(ranked, relevant, ks=(1, 3)) == {1: pytest.approx(1 / 3), 3: pytest.approx(2 / 3)}
    with pytest.raises(ValueError):
        recall_at_k([], [])


def test_recall_equals_a_brute_force_count():
    rng = np.random.default_rng(0)
    ranked = [[str(x) for x in rng.permutation(12)[:rng.integers(1, 12)]] for _ in range(50)]
    relevant = [{str(x) for x in rng.choice(15, rng.integers(1, 4), replace=False)} for _ in range(50)]
    for k in (1, 2, 5, 10, 20):
        count = sum(any(x in rel for x in ids[:k]) for ids, rel in zip(ranked, relevant))
        assert recall_at_k(ranked, relevant, ks=(k,))[k] == count / len(ranked)
