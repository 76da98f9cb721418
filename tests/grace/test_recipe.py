import pytest

from ramm.corpus.document import Document, TextSegment
from ramm.grace.tasks import pseudo_queries
from ramm.training.grace_recipe import GraceConfig, eval_queries, recall_at_k


def doc(style, concept="1f1ef-1f1f5", name="japan flag"):
    return Document(id=f"{style}-{concept}", segments=[TextSegment(f"{style} emoji: {name}")],
                    metadata={"concept": concept, "name": name, "short_names": ["flag-jp", "jp"]})


def test_pseudo_queries_are_name_and_short_names_without_the_caption():
    assert pseudo_queries(doc("google")) == ["japan flag", "flag jp", "jp"]


def test_eval_queries_put_captions_first_and_deduplicate_pseudo_queries_per_concept():
    qs = eval_queries([doc("google"), doc("twitter")])
    assert qs[:2] == [("google emoji: japan flag", "1f1ef-1f1f5"), ("twitter emoji: japan flag", "1f1ef-1f1f5")]
    assert len(qs) == 2 + 3


def test_recall_at_k_counts_a_relevant_item_in_the_top_k():
    ranked = [["a", "b", "c"], ["x", "y", "b"], ["z"]]
    relevant = [{"a"}, {"b"}, {"q"}]
    assert recall_at_k(ranked, relevant, ks=(1, 3)) == {"R@1": pytest.approx(1 / 3), "R@3": pytest.approx(2 / 3)}
    with pytest.raises(ValueError):
        recall_at_k([], [])


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="scheme"):
        GraceConfig(corpus="c", out="o", scheme="bogus")
    with pytest.raises(ValueError, match="schedule"):
        GraceConfig(corpus="c", out="o", schedule="interleaved")
    with pytest.raises(ValueError, match="batch_size"):
        GraceConfig(corpus="c", out="o", batch_size=0)
