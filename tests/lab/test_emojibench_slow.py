"""Metric sanity on the real EmojiBench corpus (built once per machine by the emojibench_dir fixture)."""
import numpy as np
import pytest

from ramm_lab.emojibench import emoji_references, is_flag
from ramm.evaluation.captioning import cider
from ramm_lab.report import pick_examples

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def docs(emojibench_dir):
    from ramm_lab.emojibench import load_emojibench
    return load_emojibench(emojibench_dir, splits=("test", "heldout"))


def test_example_set_has_heldout_flags_and_is_fixed(docs):
    picked = pick_examples(docs, per_split=6, flags=2)
    assert [d.metadata["split"] for d in picked] == ["test"] * 6 + ["heldout"] * 6
    assert sum(is_flag(d) for d in picked[6:]) == 2
    assert [d.id for d in pick_examples(docs[::-1], per_split=6, flags=2)] == [d.id for d in picked]


def test_cider_separates_right_names_from_wrong_ones(docs):
    heldout = [d for d in docs if d.metadata["split"] == "heldout" and d.metadata["style"] == "twitter"]
    refs = {d.id: emoji_references(d.metadata) for d in heldout}
    right = {d.id: d.metadata["name"] for d in heldout}
    perm = np.random.default_rng(0).permutation(len(heldout))
    wrong = {d.id: heldout[j].metadata["name"] for d, j in zip(heldout, perm)}
    assert cider(right, refs)[0] > 3.0 > 0.2 > cider(wrong, refs)[0]
