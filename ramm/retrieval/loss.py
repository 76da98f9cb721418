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


def memory_loss(queries: torch.Tensor, docs: torch.Tensor, positive: torch.Tensor, own: torch.Tensor,
                logit_scale: torch.Tensor) -> torch.Tensor:
    """InfoNCE shaped like leave-one-out retrieval from a memory: query i must rank docs[positive[i]]
    above every other doc in the batch except docs[own[i]] (its own document, which retrieval leaves out).

    Unlike `clip_loss`, the candidates include same-style documents of other concepts, the negatives
    that image->document retrieval actually has to beat. queries (Q, D), docs (N, D) L2-normalised;
    positive, own: (Q,) long indices into docs."""
    if queries.ndim != 2 or docs.ndim != 2 or queries.shape[1] != docs.shape[1]:
        raise ValueError(f"memory_loss needs (Q, D) and (N, D), got {tuple(queries.shape)} and {tuple(docs.shape)}")
    scale = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * queries @ docs.t()  # (Q, N)
    logits = logits.masked_fill(F.one_hot(own, docs.shape[0]).bool(), float("-inf"))
    return F.cross_entropy(logits, positive)
