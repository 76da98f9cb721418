"""CM3Leon's two uses of an unconditional stream (Yu et al. 2023, section 4.2).

Classifier-free guidance mixes logits; self-contained contrastive decoding CD-K scores candidates
by how much the condition raised their probability. The unconditional stream is the same model
with the caption replaced by `<mask>`, so neither needs extra training.
"""
from __future__ import annotations

import torch


def cfg_logits(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """`uncond + scale * (cond - uncond)`: scale 1 is the conditional model, 0 the unconditional one."""
    if cond.shape != uncond.shape:
        raise ValueError(f"cond and uncond logits differ in shape: {tuple(cond.shape)} vs {tuple(uncond.shape)}")
    return uncond + scale * (cond - uncond)


def contrastive_scores(logp_cond: torch.Tensor, logp_uncond: torch.Tensor, alpha: float, k: int) -> torch.Tensor:
    """CD-K: `log p_cond - log p_uncond` on V = {t : p_cond(t) >= alpha * (k-th largest p_cond)}, -inf elsewhere.

    Both inputs are log-probabilities (B, V); tokens impossible under the conditional model never
    enter V, even at alpha = 0.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"CD-K alpha must be in [0, 1], got {alpha}")
    if not 1 <= k <= logp_cond.size(-1):
        raise ValueError(f"CD-K k must be in [1, {logp_cond.size(-1)}], got {k}")
    kth = torch.topk(logp_cond, k, dim=-1).values[..., -1:]
    threshold = kth + torch.log(torch.tensor(alpha, dtype=logp_cond.dtype, device=logp_cond.device))
    keep = (logp_cond >= threshold) & torch.isfinite(logp_cond)
    # an amateur that rules a candidate out entirely (-inf) makes it maximally contrastive
    ama = torch.nan_to_num(logp_uncond, neginf=torch.finfo(logp_uncond.dtype).min / 2)
    return torch.where(keep, logp_cond - ama, torch.full_like(logp_cond, float("-inf")))
