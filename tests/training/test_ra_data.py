"""RA training data on a tiny synthetic corpus: two styles of coloured shapes, an untrained tiny encoder."""
import numpy as np
import pytest
import torch

from ramm.corpus.document import Document
from ramm.retrieval.dual_encoder import DualEncoder, DualEncoderConfig, train_text_tokenizer
from ramm.retrieval.memory import Memory
from ramm.tokenizers.cm3_format import CM3Format
from ramm.tokenizers.image_tokenizer import ImageTokenizer, ImageTokenizerConfig
from ramm.tokenizers.text_tokenizer import TextTokenizer
from ramm.tokenizers.vocab import Vocabulary
from ramm.evaluation.token_loss import image_token_loss
from ramm.tokenizers.code_cache import encode_images_cached, with_codes
from ramm_lab.emojibench import pseudo_namer
from ramm.training.ra_data import RAConfig, RADataset, partner_ids, precompute_neighbours, relative_ids

COLORS = [(220, 30, 30), (30, 180, 30), (30, 30, 220), (230, 210, 20), (140, 30, 170), (10, 10, 10)]


def draw(color, style, size=16):
    img = np.full((size, size, 3), 255, np.uint8)
    if style == "filled":
        img[4:12, 4:12] = color
    else:
        img[4:12, 4] = img[4:12, 11] = img[4, 4:12] = img[11, 4:12] = color
    return img


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("ra")
    docs = [Document.from_pair(f"{st}-{i}", f"{st} emoji: colour {i}", draw(c, st),
                               metadata={"concept": str(i), "style": st, "split": "train"})
            for i, c in enumerate(COLORS) for st in ("filled", "outline")]
    # an exact duplicate (same content, other id) of filled-0: it must never be retrieved for filled-0
    docs.append(Document(id="copy-of-filled-0", segments=docs[0].segments, metadata={"concept": "copy", "split": "train"}))
    texts = [d.text for d in docs]
    enc = DualEncoder(DualEncoderConfig(image_size=16, channels=(8, 16), text_vocab_size=300, text_max_len=8,
                                        text_width=16, text_layers=1, text_heads=2, embed_dim=16),
                      train_text_tokenizer(texts, 300))
    enc.save_pretrained(tmp / "enc")
    memory = Memory.build(docs, tmp / "enc", tmp / "mem", progress=False)
    itok = ImageTokenizer(ImageTokenizerConfig(image_size=16, grid=4, channels=8, latent_dim=8))
    itok.save_pretrained(tmp / "tok")
    codes = encode_images_cached(itok, tmp / "tok", docs, cache_dir=tmp / "cache")
    ttok = TextTokenizer.train(texts, vocab_size=300, min_frequency=1)
    fmt = CM3Format(Vocabulary(ttok.vocab_size, itok.codebook_size), ttok, tokens_per_image=16)
    lookup = {d.id: with_codes(d, codes) for d in docs}
    return docs, memory, fmt, lookup, tmp, itok


def test_image_codes_are_cached_and_reread(setup):
    docs, _, _, lookup, tmp, itok = setup
    files = list((tmp / "cache").rglob("*.npy"))
    assert len(files) == 1
    again = encode_images_cached(None, tmp / "tok", docs, cache_dir=tmp / "cache")  # no tokenizer needed: cached
    assert all(np.array_equal(again[d.id], lookup[d.id].images[0].tokens) for d in docs)


@pytest.mark.parametrize("exempt", [True, False])
def test_a_retrieved_document_equal_to_the_query_never_appears_in_a_training_input(setup, exempt):
    docs, memory, fmt, lookup, _, _ = setup
    cfg = RAConfig(k_choices=(2,), n_candidates=2, diversity=None if exempt else 0.9, exempt_partner=exempt)
    partners = partner_ids(docs, docs, "concept")
    nb = precompute_neighbours(memory, docs, cfg, partners)
    for kind in ("text", "image"):
        for d, row in zip(docs, nb[kind]):
            assert d.id not in row and len(row) == 2
            assert all(lookup[r].content_hash() != d.content_hash() for r in row)
    data = RADataset([lookup[d.id] for d in docs], nb, lookup, fmt, cfg)
    for epoch in range(3):
        data.set_epoch(epoch)
        for i, d in enumerate(docs):
            ids, weights = data[i]
            cut = ids.index(fmt.vocab.sep)
            prefix, main = ids[:cut], fmt.encode_document(lookup[d.id])
            assert all(prefix[s:s + len(main)] != main for s in range(len(prefix)))
            assert set(weights[:cut]) == {0.1} and set(weights[cut:]) == {1.0}


def test_k_is_sampled_from_the_choices_and_examples_are_deterministic(setup):
    docs, memory, fmt, lookup, _, _ = setup
    cfg = RAConfig()
    nb = precompute_neighbours(memory, docs, cfg, partner_ids(docs, docs, "concept"))
    data = RADataset([lookup[d.id] for d in docs], nb, lookup, fmt, cfg)
    ks = {data[i][0].count(fmt.vocab.doc) - 1 for i in range(len(docs)) for _ in [data.set_epoch(i)]}
    assert ks == {0, 1, 2}
    data.set_epoch(5)
    assert data[3] == data[3]
    batch = data.collate([data[0], data[1]])
    assert batch["idx"].shape == batch["targets"].shape == batch["loss_weights"].shape
    assert (batch["loss_weights"][batch["targets"] == -100] == 0).all()


def test_partner_exemption_lets_the_other_style_through_a_strict_threshold(setup):
    docs, memory, fmt, lookup, _, _ = setup
    partners = partner_ids(docs, docs, "concept")
    strict = RAConfig(k_choices=(1,), n_candidates=1, diversity=-1.0, query_dropout=0.0, exempt_partner=True)
    nb = precompute_neighbours(memory, docs, strict, partners)
    for d, row in zip(docs, nb["image"]):  # only the partner passes a threshold of -1
        assert row == sorted(partners[d.id])
    lax = RAConfig(k_choices=(1,), n_candidates=1, diversity=-1.0, query_dropout=0.0, exempt_partner=False)
    assert all(row == [] for row in precompute_neighbours(memory, docs, lax, partners)["image"])


def test_image_token_loss_counts_only_the_main_documents_image_tokens(setup):
    docs, _, fmt, lookup, _, _ = setup
    torch.manual_seed(0)
    from ramm.model.transformer import Transformer, TransformerConfig
    model = Transformer(TransformerConfig.preset("tiny", vocab_size=fmt.vocab.size, max_seq_len=128)).eval()
    main = [lookup[d.id] for d in docs[:3]]
    with torch.no_grad():
        plain = image_token_loss(model, fmt, main, [[] for _ in main])
        ra = image_token_loss(model, fmt, main, [[lookup[docs[5].id]] for _ in main])
    assert np.isfinite(plain) and abs(plain - np.log(fmt.vocab.size)) < 1.0
    assert plain != ra  # the retrieved document changed the context, not the scored tokens' count


def test_generator_directory_round_trip_rebuilds_the_format(setup, tmp_path):
    from ramm.model.bundle import load_generator, save_generator
    from ramm.model.transformer import Transformer, TransformerConfig
    docs, _, fmt, lookup, tmp, _ = setup
    fmt.text.save_pretrained(tmp_path / "text")
    model = Transformer(TransformerConfig.preset("tiny", vocab_size=fmt.vocab.size, max_seq_len=64))
    save_generator(model, tmp_path / "gen", text_tokenizer=tmp_path / "text", image_tokenizer=tmp / "tok", alpha=0.1)
    again, fmt2, info = load_generator(tmp_path / "gen", device="cpu")
    assert fmt2.vocab == fmt.vocab and fmt2.tokens_per_image == 16 and info["alpha"] == 0.1
    ids = torch.tensor([fmt.encode_document(lookup[docs[0].id])])
    torch.testing.assert_close(again(ids)[0], model.eval()(ids)[0])
    with pytest.raises(FileNotFoundError, match="generator.json"):
        load_generator(tmp_path / "text")


def test_allowed_limits_training_neighbours_to_the_given_documents(setup):
    docs, memory, fmt, lookup, _, _ = setup
    cfg = RAConfig(k_choices=(2,), n_candidates=2, diversity=None, query_dropout=0.0)
    allowed = {d.id for d in docs if d.metadata.get("style") == "filled"}
    nb = precompute_neighbours(memory, docs, cfg, partner_ids(docs, docs, "concept"), allowed=allowed)
    for kind in ("text", "image"):
        assert all(set(row) <= allowed and len(row) == 2 for row in nb[kind])
    free = precompute_neighbours(memory, docs, cfg, partner_ids(docs, docs, "concept"))
    assert any(set(row) - allowed for row in free["text"])  # without it, outline documents are retrieved


def test_a_training_batch_shares_one_k_and_keeps_each_examples_masks(setup):
    docs, memory, fmt, lookup, _, _ = setup
    cfg = RAConfig()
    nb = precompute_neighbours(memory, docs, cfg, partner_ids(docs, docs, "concept"))
    data = RADataset([lookup[d.id] for d in docs], nb, lookup, fmt, cfg)
    ks = set()
    for e in range(12):
        samples = [(e, i) for i in range(len(docs))]
        batch = data.batch_items(samples)
        k = {ids.count(fmt.vocab.doc) - 1 for ids, _ in batch}
        assert len(k) == 1  # one k per batch
        ks |= k
        assert batch == data.batch_items(samples)  # deterministic: resume rebuilds the same batch
    assert ks == {0, 1, 2}
    # where the batch's k equals an example's own draw, the example is exactly the per-example one
    data.set_epoch(0)
    first = data.batch_items([(0, i) for i in range(len(docs))])
    assert any(b == data[i] for i, b in enumerate(first))
    unbatched = RADataset([lookup[d.id] for d in docs], nb, lookup, fmt, RAConfig(batch_k=False))
    unbatched.set_epoch(3)
    assert unbatched.batch_items([(3, i) for i in range(len(docs))]) == [unbatched[i] for i in range(len(docs))]


def test_vanilla_examples_keep_the_ra_runs_masks(setup):
    docs, memory, fmt, lookup, tmp, itok = setup
    cfg = RAConfig(k_choices=(0, 1, 2))
    ra = RADataset([lookup[d.id] for d in docs], precompute_neighbours(memory, docs, cfg, partner_ids(docs, docs, "concept")),
                   lookup, fmt, cfg)
    vanilla = RADataset([lookup[d.id] for d in docs], {}, lookup, fmt, RAConfig(k_choices=(0,)))
    same = [ra[i] == vanilla[i] for i in range(len(docs)) if fmt.vocab.sep not in ra[i][0]]
    assert same and all(same)


def _named(d: Document) -> Document:
    return Document(id=d.id, segments=d.segments, metadata={**d.metadata, "name": d.text.split(": ", 1)[-1]})


def test_pseudo_names_rename_only_examples_that_retrieved_their_partner(setup):
    docs, memory, fmt, lookup, _, _ = setup
    named = {i: _named(d) for i, d in lookup.items()}
    train = [named[d.id] for d in docs]
    cfg = RAConfig(k_choices=(1,), n_candidates=1, diversity=None, query_dropout=0.0, pseudo_names=1.0)
    nb = precompute_neighbours(memory, docs, cfg, partner_ids(docs, docs, "concept"))
    data = RADataset(train, nb, named, fmt, cfg, rename=pseudo_namer(train))
    renamed = kept = 0
    for i, d in enumerate(train):
        first = (ids := data[i][0])[:ids.index(fmt.vocab.sep)]
        cands = {n: named[n] for n in nb["text"][i] + nb["image"][i]}
        if any(first == fmt.encode_document(c) for c in cands.values()):
            kept += 1
            assert not any(c.metadata.get("concept") == d.metadata["concept"] for c in cands.values()) or \
                any(first == fmt.encode_document(c) and c.metadata["concept"] != d.metadata["concept"]
                    for c in cands.values())
            continue
        renamed += 1  # the partner, under a made-up name: its image unchanged, its text not
        partner = [c for c in cands.values() if c.metadata.get("concept") == d.metadata["concept"]]
        images = [fmt.encode_image_codes(fmt.image_codes(p.images[0])) for p in partner]
        assert images and any(first[-len(im) - 1:-1] == im for im in images)
    assert renamed > 0
    with pytest.raises(ValueError, match="pseudo_names"):
        RAConfig(pseudo_names=1.5)


def test_vanilla_examples_keep_the_ra_runs_masks_with_pseudo_names(setup):
    docs, memory, fmt, lookup, tmp, itok = setup
    named = {i: _named(d) for i, d in lookup.items()}
    train = [named[d.id] for d in docs]
    cfg = RAConfig(k_choices=(0, 1, 2), pseudo_names=1.0)
    ra = RADataset(train, precompute_neighbours(memory, docs, cfg, partner_ids(docs, docs, "concept")), named, fmt, cfg,
                   rename=pseudo_namer(train))
    vanilla = RADataset(train, {}, named, fmt, RAConfig(k_choices=(0,), pseudo_names=1.0), rename=pseudo_namer(train))
    same = [ra[i] == vanilla[i] for i in range(len(docs)) if fmt.vocab.sep not in ra[i][0]]
    assert same and all(same)


def test_mmr_weight_must_be_non_negative():
    with pytest.raises(ValueError, match="mmr"):
        RAConfig(mmr=-1)


def test_partners_share_the_group_key_and_relatives_add_the_callers_siblings():
    meta = [{"kind": "a", "style": "x", "base": "b"}, {"kind": "a", "style": "y", "base": "b"},
            {"kind": "c", "style": "x", "base": "b"}, {"style": "x"}]
    docs = [Document.from_pair(f"d{i}", "t", np.zeros((4, 4, 3), np.uint8), metadata=m) for i, m in enumerate(meta)]
    assert partner_ids(docs, docs, "kind") == {"d0": {"d1"}, "d1": {"d0"}, "d2": set(), "d3": set()}
    assert relative_ids(docs, docs, "kind") == partner_ids(docs, docs, "kind")
    from ramm_lab.emojibench import sibling_key
    assert relative_ids(docs, docs, "kind", sibling_key) == {"d0": {"d1", "d2"}, "d1": {"d0"}, "d2": {"d0"}, "d3": set()}


def test_copy_examples_put_the_target_first_and_keep_the_other_examples_and_the_vanilla_masks(setup):
    docs, memory, fmt, lookup, _, _ = setup
    cfg = RAConfig(k_choices=(1, 2), copy_self=0.5)
    nb = precompute_neighbours(memory, docs, cfg, partner_ids(docs, docs, "concept"))
    data = RADataset([lookup[d.id] for d in docs], nb, lookup, fmt, cfg)
    main_docs = [fmt.encode_document(lookup[d.id]) for d in docs]
    copied = 0
    for e in range(6):
        data.set_epoch(e)
        for i in range(len(docs)):
            ids, weights = data[i]
            first = ids[:ids.index(fmt.vocab.doc_end) + 1]
            is_self = first == main_docs[i]
            copied += is_self
            assert ids.count(fmt.vocab.doc) - 1 in (1, 2)  # k unchanged: the target replaces the last neighbour
    n = 6 * len(docs)
    assert 0.3 * n < copied < 0.7 * n  # about copy_self of the examples
    never = RADataset([lookup[d.id] for d in docs], nb, lookup, fmt, RAConfig(k_choices=(1, 2), copy_self=0.0))
    for i in range(len(docs)):  # leave-one-out alone never retrieves the target itself
        ids = never[i][0]
        assert ids[:ids.index(fmt.vocab.doc_end) + 1] != main_docs[i]
    # the vanilla run draws the same numbers, so its masks stay those of the RA run's k = 0 examples
    ra0 = RADataset([lookup[d.id] for d in docs], nb, lookup, fmt, RAConfig(k_choices=(0, 1, 2), copy_self=0.5))
    vanilla = RADataset([lookup[d.id] for d in docs], {}, lookup, fmt, RAConfig(k_choices=(0,), copy_self=0.5))
    same = [ra0[i] == vanilla[i] for i in range(len(docs)) if fmt.vocab.sep not in ra0[i][0]]
    assert same and all(same)


def test_without_leave_one_out_a_document_retrieves_itself_first(setup):
    docs, memory, fmt, lookup, _, _ = setup
    cfg = RAConfig(k_choices=(2,), n_candidates=2, query_dropout=0.0)  # the diversity rule on: it must not drop it
    own = precompute_neighbours(memory, docs, cfg, partner_ids(docs, docs, "concept"), dropout=0.0, kinds=("text",),
                                leave_one_out=False)["text"]
    loo = precompute_neighbours(memory, docs, cfg, partner_ids(docs, docs, "concept"), dropout=0.0, kinds=("text",))["text"]
    assert sum(row[0] == d.id for row, d in zip(own, docs)) >= len(docs) - 1  # the exact duplicate may tie
    assert all(d.id not in row for row, d in zip(loo, docs))
