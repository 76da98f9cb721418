"""A corpus mixing 20, 32, 48 and 64 px images works wherever images are embedded: every image goes through
`as_image_batch`, which resizes each to the encoder's size."""
import numpy as np
import pytest
import torch

from hostile_helpers import pair_docs, tiny_encoder

SIZES = (20, 32, 48, 64)


@pytest.fixture
def mixed():
    return pair_docs(SIZES)


def test_as_image_batch_resizes_each_of_a_list_of_sizes():
    from ramm.retrieval.encoder import as_image_batch
    images = [np.full((s, s, 3), 100, np.uint8) for s in SIZES]
    x = as_image_batch(images, 16)
    assert x.shape == (4, 3, 16, 16) and torch.allclose(x, torch.full_like(x, 100 / 255), atol=1e-3)
    same = as_image_batch([images[1]] * 2, 16)  # one size: the batched path, equal to the one-by-one one
    assert torch.equal(same[0], as_image_batch(images[1], 16)[0])
    with pytest.raises(ValueError, match="different sizes"):
        as_image_batch(images)  # no size to resize to


def test_embedding_a_list_equals_embedding_each_image_alone(mixed):
    enc = tiny_encoder(mixed)
    together = enc.embed_image([d.image for d in mixed])
    alone = np.concatenate([enc.embed_image(d.image) for d in mixed])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_retrieval_training_data_and_recall_take_mixed_sizes(mixed, tmp_path):
    from ramm.config import RAConfig
    from ramm.retrieval.memory import Memory
    from ramm.retrieval.recall import memory_recall
    from ramm.training.ra_data import precompute_neighbours, relative_ids
    enc = tiny_encoder(mixed)
    memory = Memory.build(mixed, enc, tmp_path / "memory", progress=False)
    partners = relative_ids(mixed, mixed, "concept")
    nb = precompute_neighbours(memory, mixed, RAConfig(n_candidates=3), partners)  # text and image queries
    assert len(nb["image"]) == len(nb["text"]) == len(mixed)
    recall = memory_recall(memory, mixed, match="concept", ks=(1, 5))
    assert set(recall) == {"text->image", "image->text"}


def test_retriever_training_views_take_mixed_sizes(mixed):
    from ramm.config import RetrieverRecipeConfig
    from ramm.training.retriever_recipe import ConceptViews, collate, leave_one_out_recall
    enc = tiny_encoder(mixed)
    views = ConceptViews(mixed, enc, RetrieverRecipeConfig(max_shift=2, flip_prob=0.5))
    batch = collate([views[i] for i in range(len(views))])
    assert batch["image"].shape == (len(views), 3, 16, 16) and batch["image_b"].shape == batch["image"].shape
    assert set(leave_one_out_recall(enc, mixed, mixed, match="concept", ks=(1,))) == {"t2i_r1", "i2t_r1"}
