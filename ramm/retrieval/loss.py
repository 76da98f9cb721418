"""Symmetric InfoNCE (CLIP, Radford et al. 2021) with a learnable temperature, as pure functions."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# CLIP initialises the temperature at 0.07 and clamps the scale at 100 to keep training stable.
INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Row i of `a` and row i of `b` are a positive pair; every other row in the batch is a negative.

    a, b: (B, D) L2-normalised; logit_scale: scalar log of the inverse temperature.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"clip_loss needs two (B, D) tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    scale = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * a @ b.t()  # (B, B)
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
