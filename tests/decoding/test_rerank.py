import numpy as np
import pytest
import torch

from ramm.decoding.rerank import continuation_nll, image_text_scores, rank


def test_continuation_nll_matches_a_direct_computation_per_row(model, vocab):
    prompts = [[vocab.doc, 1, 2, 3, 4], [vocab.doc, 5]]
    conts = [[6, 7], [8, 9, 10, vocab.eos]]
    nll = continuation_nll(model, vocab.pad, prompts, conts)
    for i, (p, c) in enumerate(zip(prompts, conts)):
        ids = torch.tensor([p + c])
        logp = model(ids)[0][0].log_softmax(-1)
        expected = -np.mean([logp[len(p) - 1 + j, t].item() for j, t in enumerate(c)])
        assert nll[i] == pytest.approx(expected, abs=1e-4)


def test_continuation_nll_prefers_what_the_model_generates(model, vocab):
    from ramm.config import DecodeConfig
    from ramm.decoding.decoder import generate
    prompt = [vocab.doc, 3, 4]
    greedy = generate(model, vocab, [prompt], tokens_per_image=4, max_new_tokens=6, allow_images=False,
                      config=DecodeConfig(method="greedy"))[0]
    rng = np.random.default_rng(0)
    random = rng.integers(0, vocab.text_size, size=(5, len(greedy))).tolist()
    nll = continuation_nll(model, vocab.pad, [prompt] * 6, [greedy] + random)
    assert rank(nll, higher_is_better=False)[0] == 0


def test_continuation_nll_rejects_bad_input(model, vocab):
    with pytest.raises(ValueError, match="continuations"):
        continuation_nll(model, vocab.pad, [[1]], [[2], [3]])
    with pytest.raises(ValueError, match="empty"):
        continuation_nll(model, vocab.pad, [[1]], [[]])


class ColourEncoder:
    """Embeds an image by its mean colour and a text by the colour word it names."""

    COLOURS = {"red": [1, 0, 0], "green": [0, 1, 0], "blue": [0, 0, 1]}

    def embed_image(self, images):
        v = np.asarray(images, dtype=np.float32).mean(axis=(1, 2))
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed_text(self, texts):
        return np.array([self.COLOURS[t.split()[-1]] for t in texts], dtype=np.float32)


def test_image_text_scores_rank_the_matching_image_first():
    images = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    images[0, ..., 0], images[1, ..., 2], images[2, ..., 1] = 255, 255, 255
    scores = image_text_scores(ColourEncoder(), images, "a blue")
    assert rank(scores)[0] == 1
    assert scores[1] == pytest.approx(1.0)


def test_rank_is_stable_for_ties():
    assert rank(np.array([0.5, 0.9, 0.5, 0.9])).tolist() == [1, 3, 0, 2]
    assert rank(np.array([2.0, 1.0, 2.0]), higher_is_better=False).tolist() == [1, 0, 2]
