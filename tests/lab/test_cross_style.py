import numpy as np
import pytest
import torch

from ramm.corpus.document import Document, TextSegment
from ramm_lab.cross_style import StylePairs, ar_partner_gain, cell_count_gain, style_pairs

torch.set_num_threads(1)


def doc(concept, style, split="train", category="Smileys"):
    return Document(id=f"{concept}-{style}", segments=[TextSegment(f"{style} emoji: {concept}")],
                    metadata={"concept": concept, "style": style, "split": split, "category": category})


def test_style_pairs_take_both_directions_of_two_style_concepts_only():
    docs = [doc("a", "google"), doc("a", "twitter"), doc("f", "google", category="Flags"), doc("f", "twitter", category="Flags"),
            doc("lone", "google"), doc("v", "google", "val"), doc("v", "twitter", "val")]
    codes = {d.id: np.full(4, i) for i, d in enumerate(docs)}
    p = style_pairs(docs, codes, "train")
    assert len(p) == 4 and p.styles == ("google", "twitter")
    for t, q, s in zip(p.target, p.partner, p.style):
        tgt = next(d for d in docs if (codes[d.id] == t).all())
        par = next(d for d in docs if (codes[d.id] == q).all())
        assert tgt.metadata["concept"] == par.metadata["concept"] and tgt.metadata["style"] != par.metadata["style"]
        assert p.styles[s] == tgt.metadata["style"]
    assert p.flag.sum() == 2
    with pytest.raises(ValueError, match="heldout"):
        style_pairs(docs, codes, "heldout")


def synthetic(n, K=8, T=4, seed=0, determined=True):
    rng = np.random.default_rng(seed)
    partner = rng.integers(0, K, (n, T))
    target = (partner * 3 + 1) % K if determined else rng.integers(0, K, (n, T))
    return StylePairs(target, partner, rng.integers(0, 2, n), rng.random(n) < 0.3, ("google", "twitter"))


def test_cell_counts_see_a_partner_that_determines_the_code_and_nothing_in_noise():
    got = cell_count_gain(synthetic(400), synthetic(200, seed=1), 8)
    assert got["partner"] < 0.2 < got["prior"] - 1.5  # log 8 = 2.08 nats of prior, near 0 given the partner
    noise = cell_count_gain(synthetic(400, determined=False), synthetic(200, seed=1, determined=False), 8)
    assert noise["partner"] > noise["prior"] - 0.05 and noise["same code"] < 0.3


def test_the_model_based_bound_learns_to_use_an_informative_partner():
    r = ar_partner_gain(synthetic(256), synthetic(64, seed=1), synthetic(64, seed=2), 8, size="tiny", steps=150,
                        eval_every=50, batch_size=32, lr=3e-3)
    assert set(r) == {"no partner", "partner"}
    assert r["partner"]["test"] < 0.5 * r["no partner"]["test"]  # a permutation of the partner's codes is copyable
    assert r["no partner"]["test"] > 1.5  # without it the codes are uniform noise (log 8 = 2.08)


def test_the_model_based_bound_refuses_splits_with_other_styles():
    odd = synthetic(8)
    odd.styles = ("google", "openmoji")
    with pytest.raises(ValueError, match="different styles"):
        ar_partner_gain(synthetic(8), odd, synthetic(8), 8, size="tiny", steps=1)
