"""Tiny fixtures: a synthetic two-style corpus (coloured shapes, filled vs outlined) and a tiny encoder."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ramm.corpus.document import Document
from ramm.retrieval.dual_encoder import DualEncoderConfig

COLORS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220), "yellow": (230, 210, 20),
          "purple": (140, 30, 170), "black": (10, 10, 10)}
SHAPES = ("circle", "square", "triangle", "cross", "ring")
TINY = dict(image_size=16, channels=(8, 16), text_vocab_size=300, text_max_len=16, text_width=32,
            text_layers=1, text_heads=2, embed_dim=32)


def draw(shape: str, color, style: str, size: int = 16) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    mask = {"circle": xx**2 + yy**2 < 0.6, "square": np.maximum(abs(xx), abs(yy)) < 0.6,
            "triangle": (yy > -0.6) & (yy < 0.6) & (abs(xx) < (yy + 0.6) / 2),
            "cross": ((abs(xx) < 0.2) | (abs(yy) < 0.2)) & (np.maximum(abs(xx), abs(yy)) < 0.8),
            "ring": (xx**2 + yy**2 < 0.7) & (xx**2 + yy**2 > 0.3)}[shape]
    if style == "outline":  # keep only the mask's border
        inner = np.zeros_like(mask)
        inner[1:-1, 1:-1] = mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
        mask = mask & ~inner
    img = np.full((size, size, 3), 255, np.uint8)
    img[mask] = color
    return img


def make_docs(styles=("filled", "outline")) -> list[Document]:
    docs = []
    for c, rgb in COLORS.items():
        for s in SHAPES:
            for st in styles:
                docs.append(Document.from_pair(f"{st}-{c}-{s}", f"{st} emoji: {c} {s}", draw(s, rgb, st),
                                               metadata={"concept": f"{c}-{s}", "style": st, "name": f"{c} {s}"}))
    return docs


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def docs() -> list[Document]:
    return make_docs()


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory, docs):
    """A tiny encoder trained for a few seconds on the fixture corpus, saved to disk."""
    from ramm_lab.emojibench import name_query
    from ramm.config import RetrieverRecipeConfig
    from ramm.training.retriever_recipe import train_retriever
    from ramm.training.trainer import TrainerConfig
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("encoder")
    train_retriever(docs, path, TrainerConfig(out_dir=str(path), steps=60, batch_size=30, lr=3e-3, warmup_steps=5,
                                              progress=False, amp=False), DualEncoderConfig(**TINY),
                    RetrieverRecipeConfig(match="concept"), alt_text=name_query)
    return path
