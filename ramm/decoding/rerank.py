"""Sample N, keep the best: how RA-CM3 and CM3Leon report their numbers.

Images are ranked by the retriever's image-text similarity (RA-CM3: best of 10 by CLIP score,
CM3Leon: best of 8); captions by the generator's own perplexity (RA-CM3 re-ranks 32 samples).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ramm.decoding.decoder import left_pad


def image_text_scores(encoder, images: np.ndarray, caption: str | Sequence[str]) -> np.ndarray:
    """Cosine similarity of each image (N, H, W, 3) uint8 with the caption (one for all, or one per image:
    a batch of several prompts' samples is scored in one encoder call), by the dual encoder."""
    if len(images) == 0:
        return np.zeros(0, dtype=np.float32)
    captions = [caption] * len(images) if isinstance(caption, str) else list(caption)
    if len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    unique = list(dict.fromkeys(captions))
    img = encoder.embed_image(np.asarray(images))
    txt = encoder.embed_text(unique)[[unique.index(c) for c in captions]]
    return (img * txt).sum(-1).astype(np.float32)


@torch.inference_mode()
def continuation_nll(model, pad: int, prompts: Sequence[Sequence[int]],
                     continuations: Sequence[Sequence[int]]) -> np.ndarray:
    """Mean negative log-likelihood per token of each continuation given its prompt (log perplexity)."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    if any(len(c) == 0 for c in continuations):
        raise ValueError("cannot score an empty continuation")
    device = next(model.parameters()).device
    rows = [list(p) + list(c) for p, c in zip(prompts, continuations)]
    idx, attn = left_pad(rows, pad, device)
    logits, _ = model(idx, attention_mask=attn)
    logp = logits[:, :-1].float().log_softmax(-1).gather(-1, idx[:, 1:, None]).squeeze(-1)  # (B, T-1)
    T = idx.size(1)
    lengths = torch.tensor([len(c) for c in continuations], device=device)
    # position t of logp predicts token t+1; a continuation of length n occupies the last n tokens
    scored = torch.arange(1, T, device=device)[None] >= (T - lengths)[:, None]
    nll = -(logp * scored).sum(1) / lengths
    return nll.cpu().numpy()


def rank(scores: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Indices best-first; ties keep sample order so that a seed fixes the ranking."""
    s = np.asarray(scores, dtype=np.float64)
    return np.argsort(-s if higher_is_better else s, kind="stable")
