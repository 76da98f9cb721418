"""Stand-in encoders for the metric tests: tiny, fast, and with known behaviour."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ramm.retrieval.encoder import as_image_batch


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)


class RandomConvEncoder(nn.Module):
    """A small random CNN with the retrieval encoder's `dim` / `embed_image` interface."""

    def __init__(self, dim: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.dim = dim
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(16, dim))
        self.calls: list[tuple] = []

    @torch.no_grad()
    def embed_image(self, images) -> np.ndarray:
        x = as_image_batch(images)
        self.calls.append(tuple(x.shape))
        return F.normalize(self.net(x), dim=-1).numpy()


class MeanColourEncoder:
    """embed_image = the normalised mean RGB of the image; embed_text looks words up in a colour table."""

    dim = 3
    WORDS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "cyan": (0, 1, 1), "black": (-1, -1, -1)}

    def embed_image(self, images) -> np.ndarray:
        v = np.asarray(images, np.float32).mean(axis=(1, 2)) + 1e-3  # (N, 3)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed_text(self, texts: list[str]) -> np.ndarray:
        v = np.array([self.WORDS[t.split()[-1]] for t in texts], np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def _solid(rgb, n: int = 1, size: int = 8) -> np.ndarray:
    """n solid-colour uint8 images (n, size, size, 3)."""
    return np.broadcast_to(np.array(rgb, np.uint8), (n, size, size, 3)).copy()


@pytest.fixture
def solid():
    return _solid


@pytest.fixture
def conv_encoder():
    return RandomConvEncoder()


@pytest.fixture
def colour_encoder():
    return MeanColourEncoder()
