import pytest

from ramm.evaluation.recall import recall_at_k


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
