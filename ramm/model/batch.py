"""Right-padded training batches in the form the Transformer's forward takes: idx, targets, loss_weights.

The one collate of the library: RA-CM3's weighted sequences (a weight per token, alpha on retrieved
documents) and GRACE's prompt + identifier examples (loss on the identifier only) both go through it.
"""
from __future__ import annotations

from typing import Sequence

import torch

IGNORE = -100  # target id cross-entropy skips (padding, and unweighted tokens with loss_weights=False)


def pad_batch(seqs: Sequence[tuple[list[int], list[float]]], pad: int,
              loss_weights: bool = True) -> dict[str, torch.Tensor]:
    """Right-pad (ids, weights) sequences (weight w_j on predicting ids[j]) into idx (B, T), targets (B, T)
    (IGNORE on padding) and loss_weights (B, T). With loss_weights=False the weights only select the
    targets: IGNORE wherever the weight is 0, and no loss_weights tensor."""
    T = max(len(ids) for ids, _ in seqs) - 1
    idx = torch.full((len(seqs), T), pad, dtype=torch.long)
    tgt = torch.full((len(seqs), T), IGNORE, dtype=torch.long)
    w = torch.zeros(len(seqs), T)
    for b, (ids, weights) in enumerate(seqs):
        n = len(ids) - 1
        idx[b, :n] = torch.tensor(ids[:-1])
        tgt[b, :n] = torch.tensor(ids[1:])
        w[b, :n] = torch.tensor(weights[1:])
    if not loss_weights:
        return {"idx": idx, "targets": tgt.masked_fill(w == 0, IGNORE)}
    return {"idx": idx, "targets": tgt, "loss_weights": w}
