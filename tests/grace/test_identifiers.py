import numpy as np
import pytest

from ramm.grace.identifiers import SCHEMES, Identifiers, build_identifiers, identifier_text, kmeans_paths
from ramm.tokenizers.text_tokenizer import ByteTokenizer
from ramm.tokenizers.vocab import Vocabulary

VOCAB = Vocabulary(text_size=256, image_size=16, n_sentinels=2)


def build(scheme, n=75, **kw):
    rng = np.random.default_rng(0)
    ids = [f"img-{i}" for i in range(n)]
    captions = [f"emoji: thing {i % 40}" for i in range(n)]  # repeats: semantic ids must de-duplicate
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    return build_identifiers(scheme, ids, VOCAB, ByteTokenizer(), captions=captions, embeddings=emb, **kw)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_each_scheme_gives_unique_identifiers_that_round_trip(scheme, tmp_path):
    ids = build(scheme)
    assert len({tuple(t) for t in ids.tokens}) == len(ids) == 75
    assert all(t[-1] == VOCAB.doc_end for t in ids.tokens)
    trie = ids.trie()
    for i, image_id in enumerate(ids.ids):
        seq = ids.token_sequence(image_id)
        assert trie.get(seq) == i
        assert identifier_text(ids, seq, ByteTokenizer(), VOCAB) == ids.strings[i]
    ids.save(tmp_path / "identifiers.json")
    again = Identifiers.load(tmp_path / "identifiers.json")
    assert again.tokens == ids.tokens and again.ids == ids.ids and again.scheme == scheme


def test_atomic_ids_are_new_tokens_past_the_vocabulary():
    ids = build("atomic")
    assert ids.new_tokens == 75
    assert sorted(t[0] for t in ids.tokens) == list(range(VOCAB.size, VOCAB.size + 75))


def test_structured_paths_respect_leaf_size_and_share_prefixes_within_a_cluster():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(3, 16)) * 10
    emb = np.concatenate([c + rng.normal(size=(40, 16)) * 0.1 for c in centers]).astype(np.float32)
    paths = kmeans_paths(emb, k=3, leaf_size=10)
    assert len({tuple(p) for p in paths}) == 120
    leaves = {}
    for p in paths:
        leaves.setdefault(tuple(p[:-1]), []).append(p[-1])
    assert max(len(v) for v in leaves.values()) <= 10
    # the three well-separated blobs each get their own top-level cluster
    assert all(len({paths[i][0] for i in range(b * 40, (b + 1) * 40)}) == 1 for b in range(3))
    assert len({paths[b * 40][0] for b in range(3)}) == 3


def test_structured_splits_identical_embeddings():
    paths = kmeans_paths(np.ones((50, 4), dtype=np.float32), k=5, leaf_size=10)
    assert len({tuple(p) for p in paths}) == 50


def test_bad_input_raises_value_error_naming_the_item():
    with pytest.raises(ValueError, match="scheme"):
        build("nope")
    with pytest.raises(ValueError, match="img-1"):
        build_identifiers("semantic", ["img-0", "img-1"], VOCAB, ByteTokenizer(), captions=["a", " "])
    with pytest.raises(ValueError, match="embedding"):
        build_identifiers("structured", ["a"], VOCAB, ByteTokenizer())
    with pytest.raises(ValueError, match="'a' appears twice"):
        build_identifiers("numeric", ["a", "a"], VOCAB, ByteTokenizer())
    with pytest.raises(ValueError, match="no identifier"):
        build("numeric").index("missing")
