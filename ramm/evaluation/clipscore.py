"""CLIPScore (Hessel et al. 2021) with our own dual encoder: how well a generated image matches its prompt.

RA-CM3 (section 4.2) reports CLIPScore from OpenAI's CLIP; we have no CLIP weights here, so the
encoder is the project's dual encoder (or a local CLIP loaded by `ramm.retrieval.encoder.load_encoder`)
and reports must say which. Scaled as torchmetrics' CLIPScore: 100 * max(cos, 0), where cos is divided by
the encoder's `image_text_scale` (a dual encoder with private subspaces keeps image-text similarity in a
shared part of that squared norm), so it is the cosine of the shared parts.
"""
from __future__ import annotations

import numpy as np


def clip_scores(encoder, images, texts: list[str]) -> np.ndarray:
    """(N,) per-pair scores in [0, 100]; images: uint8 (N, H, W, 3) or float (N, 3, H, W) in [0, 1]."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, one per image")
    if len(images) != len(texts):
        raise ValueError(f"clip score needs one text per image, got {len(images)} images and {len(texts)} texts")
    if not len(texts):
        raise ValueError("clip score of zero images")
    img = encoder.embed_image(images)  # (N, D), L2-normalised
    txt = encoder.embed_text(list(texts))  # (N, D)
    cos = (img * txt).sum(axis=1) / getattr(encoder, "image_text_scale", 1.0)
    return 100.0 * np.clip(cos, 0.0, 1.0)


def clip_score(encoder, images, texts: list[str]) -> float:
    """Mean CLIPScore over the pairs."""
    return float(clip_scores(encoder, images, texts).mean())
