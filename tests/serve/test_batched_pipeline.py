"""What the server's batching rests on: RAMM.generate_images decodes several captions as one batch and
gives each the result it would get alone; re-ranking scores a batch in one encoder call."""
import numpy as np
import pytest


def test_a_batch_of_captions_equals_each_caption_decoded_alone(facade):
    captions, counts = ["a emoji: red square", "b emoji: green square", "a emoji: yellow square"], [2, 3, 1]
    kw = dict(method="greedy", k=1, batch_size=16)  # greedy: the batch's shared random stream plays no part
    batched = facade.generate_images(captions, counts, **kw)
    for caption, n, got in zip(captions, counts, batched):
        alone = facade.generate_image(caption, n=n, **kw)
        assert got.tokens == alone.tokens and [d.id for d in got.retrieved] == [d.id for d in alone.retrieved]
        assert np.allclose(got.scores, alone.scores, atol=1e-5) and len(got.outputs) == n


def test_a_mixed_batch_counts_samples_per_caption_and_progress_across_them(facade):
    seen = []
    out = facade.generate_images(["a emoji: red square", "b emoji: blue square"], [3, 2], method="mix", rerank=False,
                                 batch_size=2, progress=seen.append)
    assert [len(r.outputs) for r in out] == [3, 2] and seen[-1] == 5 and seen == sorted(seen)
    with pytest.raises(ValueError, match="2 captions but 1"):
        facade.generate_images(["a", "b"], [1])
    with pytest.raises(ValueError, match="n must be >= 1"):
        facade.generate_images(["a", "b"], [1, 0])


def test_image_text_scores_with_a_caption_per_image_equals_one_call_per_caption(facade):
    from ramm.decoding.rerank import image_text_scores
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    captions = ["a emoji: red square"] * 3 + ["b emoji: blue square"] * 2
    both = image_text_scores(facade.memory.encoder, images, captions)
    one = np.concatenate([image_text_scores(facade.memory.encoder, images[:3], captions[0]),
                          image_text_scores(facade.memory.encoder, images[3:], captions[3])])
    assert np.allclose(both, one, atol=1e-6)
    with pytest.raises(ValueError, match="5 images but 2 captions"):
        image_text_scores(facade.memory.encoder, images, captions[:2])
