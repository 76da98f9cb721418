import numpy as np
import pytest

from ramm.corpus.document import Document, ImageSegment, TextSegment
from ramm.retrieval.memory import Memory
from ramm.retrieval.strategies import STRATEGIES, Strategy, get_strategy, mmr, query_dropout, select


@pytest.fixture(scope="module")
def memory(tmp_path_factory, docs, encoder_dir):
    text_only = Document("text-only-red-circle", [TextSegment("filled emoji: red circle")], metadata={"concept": "red-circle"})
    image_only = Document("image-only-red-circle", [ImageSegment(pixels=docs[0].image)], metadata={"concept": "red-circle"})
    duplicate = Document("copy-of-" + docs[0].id, docs[0].segments, metadata=docs[0].metadata)
    return Memory.build(docs + [text_only, image_only, duplicate], encoder_dir, tmp_path_factory.mktemp("m"),
                        batch_size=32, progress=False)


def test_relevance_excludes_self_and_exact_duplicates(memory, docs):
    q = memory.encoder.embed_documents([docs[0]])
    plain = [i for i, _ in memory.neighbours(q, 5)[0]]
    assert docs[0].id in plain and "copy-of-" + docs[0].id in plain  # both score ~1 without exclusion
    hits = [i for i, _ in memory.neighbours(q, 5, exclude_ids=[[docs[0].id]])[0]]
    assert len(hits) == 5 and docs[0].id not in hits and "copy-of-" + docs[0].id not in hits


def test_modality_prefers_mixed_modal_documents(memory, docs):
    relevance = memory.search(docs[0].image, k=10)
    assert any(not d.is_mixed_modal for d, _ in relevance)  # the image-only copy ranks high by relevance
    picked = memory.search(docs[0].image, k=10, strategy="modality")
    assert all(d.is_mixed_modal for d, _ in picked)


def test_diversity_threshold_honoured_against_query_and_picks(memory, docs):
    thr = 0.5
    hits = memory.search(docs[0].text, k=5, strategy=Strategy(diversity=thr))
    assert all(s <= thr for _, s in hits)
    emb = memory.encoder.embed_documents([d for d, _ in hits])
    sims = emb @ emb.T
    assert (sims[np.triu_indices(len(hits), 1)] <= thr + 1e-5).all()
    relevance = memory.search(docs[0].text, k=5)
    assert relevance[0][1] > thr  # so the threshold did remove something


def test_diversity_exempt_ids_are_kept(memory, docs):
    top = memory.search(docs[0].text, k=1)[0][0].id
    hits = memory.search(docs[0].text, k=3, strategy=Strategy(diversity=0.0).with_exempt([top]))
    assert hits[0][0].id == top


def test_select_picks_in_score_order_when_unconstrained():
    assert select(Strategy(), [f"d{i}" for i in range(4)], np.array([0.9, 0.8, 0.7, 0.6]), None, 2) == [0, 1]


def test_mmr_trades_a_near_duplicate_of_the_first_pick_for_complementary_evidence():
    emb = np.array([[1.0, 0.0, 0.0], [0.99, 0.14, 0.0], [0.6, 0.0, 0.8]], np.float32)
    scores = np.array([0.71, 0.51, 0.50], np.float32)  # partner, partner-twin, sibling
    assert mmr(scores, emb, 2, 0.3) == [0, 2]
    assert mmr(scores, emb, 2, 0.0) == [0, 1]  # weight 0 is plain relevance
    assert mmr(scores[:1], emb[:1], 2, 0.3) == [0]
    with pytest.raises(ValueError, match="mmr"):
        Strategy(mmr=-1)


def exact_selection(memory, q, k, strategy, exclude, exempt=(), allowed=None):
    """The slow exact twin of Memory.neighbours: numpy dot products over every stored vector, the banned
    rows (excluded ids and every exact duplicate of them) removed, then the strategy's rule on the whole list."""
    emb = np.concatenate(list(memory.store.iter_embeddings()))  # (N, D) in row order
    ids = memory.store.ids_of(list(range(len(emb))))
    hashes = memory.store.hashes(list(range(len(emb))))
    banned = {hashes[r] for r in ids if ids[r] in exclude}
    scores = (emb @ q).astype(np.float32)  # (N,)
    order = [int(r) for r in np.argsort(-scores, kind="stable")
             if ids[int(r)] not in exclude and hashes[int(r)] not in banned and (allowed is None or ids[int(r)] in allowed)]
    docs = memory.store.documents(order) if strategy.prefer_mixed_modal else None
    rule = strategy.with_exempt(strategy.exempt_ids | set(exempt))
    picked = select(rule, [ids[r] for r in order], scores[order], emb[order], k,
                    [d.is_mixed_modal for d in docs] if docs else None)
    return [ids[order[i]] for i in picked], [float(scores[order[i]]) for i in picked]


@pytest.mark.parametrize("strategy", [Strategy(), Strategy(prefer_mixed_modal=True), Strategy(diversity=0.5),
                                      Strategy(diversity=0.3, diversity_to_picks=False), Strategy(mmr=0.3),
                                      Strategy(diversity=0.6, diversity_to_picks=False, mmr=0.5),
                                      STRATEGIES["ra-cm3"]])
def test_batched_neighbours_equal_an_exact_brute_force_selection(memory, docs, strategy):
    queries = docs[:12]
    q = np.concatenate([memory.encoder.embed_text([d.text for d in queries[:6]]),
                        memory.encoder.embed_image(np.stack([d.image for d in queries[6:]]))])
    exempt = [[docs[(i + 1) % len(docs)].id] for i in range(len(queries))]
    allowed = {d.id for d in docs[::2]} | {"text-only-red-circle", "image-only-red-circle"}
    content = {i: memory.get(i).content_hash() for i in memory.ids}
    for allow in (None, allowed):
        got = memory.neighbours(q, 4, exclude_ids=[[d.id] for d in queries], strategy=strategy, exempt_ids=exempt,
                                allowed_ids=allow)
        for row, d, v, ex in zip(got, queries, q, exempt):
            want_ids, want_scores = exact_selection(memory, v, 4, strategy, {d.id}, ex, allow)
            # exact duplicates tie, and the index may order a tie either way: compare contents
            assert [content[i] for i, _ in row] == [content[i] for i in want_ids]
            assert np.allclose([s for _, s in row], want_scores, atol=1e-5)


def test_named_strategies_and_bad_names():
    assert get_strategy("ra-cm3").diversity == 0.9 and get_strategy("ra-cm3").prefer_mixed_modal
    assert set(STRATEGIES) >= {"relevance", "modality", "diversity"}
    with pytest.raises(ValueError, match="nope"):
        get_strategy("nope")
    with pytest.raises(ValueError):
        Strategy(diversity=2.0)


def test_query_dropout_drops_about_a_fifth_of_tokens():
    rng = np.random.default_rng(0)
    text = " ".join(f"w{i}" for i in range(1000))
    kept = query_dropout(text, 0.2, rng).split()
    assert 750 < len(kept) < 850 and set(kept) <= set(text.split())
    img = np.zeros((32, 32, 3), np.uint8)
    dropped = query_dropout(img, 0.2, rng)
    assert 0.1 < (dropped == 255).mean() < 0.3 and (img == 0).all()
    assert query_dropout("one", 0.9, rng) == "one"  # never empties a query
    with pytest.raises(ValueError):
        query_dropout(text, 1.0)
