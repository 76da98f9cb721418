import itertools

import pytest
import torch
from hypothesis import given, settings, strategies as st

from ramm.decoding.constrained_beam import constrained_beam_search
from ramm.decoding.trie import PrefixTrie
from ramm.model.transformer import Transformer, TransformerConfig

torch.set_num_threads(1)
V, END = 24, 23  # END closes every sequence, which makes any set of sequences prefix-free


def tiny_model(seed=0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerConfig.preset("tiny", vocab_size=V, max_seq_len=32)).eval()


MODEL = tiny_model()
sequences = st.lists(st.lists(st.integers(0, END - 1), min_size=0, max_size=4).map(lambda s: (*s, END)),
                     min_size=1, max_size=30, unique=True)


def test_trie_children_get_and_iteration():
    trie = PrefixTrie([(1, 2, END), (1, 3, END), (4, END)])
    assert sorted(trie.children(())) == [1, 4]
    assert sorted(trie.children((1,))) == [2, 3]
    assert trie.children((1, 2, END)) == [] and trie.children((9,)) == []
    assert trie.get((1, 3, END)) == 1 and trie.get((1, 3)) is None and (4, END) in trie
    assert sorted(trie) == [((1, 2, END), 0), ((1, 3, END), 1), ((4, END), 2)]
    assert len(trie) == 3 and trie.depth() == 3


def test_trie_rejects_duplicates_prefixes_and_empty():
    trie = PrefixTrie([(1, 2, END)])
    with pytest.raises(ValueError, match="already stored"):
        trie.add((1, 2, END), 5)
    with pytest.raises(ValueError, match="prefix"):
        trie.add((1, 2), 5)
    with pytest.raises(ValueError, match="prefix-free"):
        trie.add((1, 2, END, 3), 5)
    with pytest.raises(ValueError, match="empty"):
        trie.add((), 5)


@settings(max_examples=40, deadline=None)
@given(sequences, st.lists(st.integers(0, V - 1), min_size=1, max_size=6), st.integers(1, 8))
def test_constrained_beam_only_returns_valid_identifiers(seqs, prompt, beams):
    trie = PrefixTrie(seqs)
    hyps = constrained_beam_search(MODEL, prompt, trie, num_beams=beams)
    assert 1 <= len(hyps) <= min(beams, len(seqs))
    assert len({h.tokens for h in hyps}) == len(hyps)
    for h in hyps:
        assert trie.get(h.tokens) == h.value and seqs[h.value] == h.tokens
    assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)


def exact_score(model, prompt, seq) -> float:
    """Slow reference: one full forward over prompt + sequence, no cache."""
    ids = torch.tensor([[*prompt, *seq]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids)[0][0].float(), -1)
    return sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(seq))


def test_beam_as_wide_as_the_trie_ranks_every_identifier_by_its_exact_score():
    seqs = [(*p, END) for p in itertools.product(range(3), repeat=2)] + [(5, END)]
    trie, prompt = PrefixTrie(seqs), [7, 8, 9]
    hyps = constrained_beam_search(MODEL, prompt, trie, num_beams=len(seqs))
    exact = sorted(((exact_score(MODEL, prompt, s), s) for s in seqs), reverse=True)
    assert [h.tokens for h in hyps] == [s for _, s in exact]
    for h, (score, _) in zip(hyps, exact):
        assert h.score == pytest.approx(score, abs=1e-4)


def test_beam_search_rejects_bad_arguments():
    trie = PrefixTrie([(1, END)])
    with pytest.raises(ValueError, match="num_beams"):
        constrained_beam_search(MODEL, [1], trie, num_beams=0)
    with pytest.raises(ValueError, match="prompt"):
        constrained_beam_search(MODEL, [], trie)
    with pytest.raises(ValueError, match="empty"):
        constrained_beam_search(MODEL, [1], PrefixTrie())
