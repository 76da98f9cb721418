"""A copy (pointer) head over the retrieved documents: the generator's output is a mixture of its
vocabulary softmax and a distribution over the tokens of the documents before `<sep>`.

Why: RA-CM3 retrieves documents so that the generator can produce what it never trained on, yet a
plain decoder trained on a laptop budget never learns to read them (on EmojiBench: a caption's
loss 2% lower with the right document in context, an image's 0.4%); copy heads form slowly from
attention alone. Copy-augmented captioners and pointer-generator networks (See et al. 2017) make
copying a first-class output: p(y) = g p_vocab(y) + (1 - g) sum_j a_j [x_j = y], with a learned
gate g and pointer weights a over the retrieved documents' text and image tokens. The vocabulary head
also reads what the pointer points at (h + sum_j a_j v(x_j)), so it can write a changed copy: the
same-style sibling's code at this cell, recoloured to the asked skin tone. Our addition to RA-CM3,
not in the papers.

The pointer's query and key carry two priors a decoder would otherwise have to discover:
- induction: the query embeds the current token, the key the token *before* the source one, so
  "after the name's first word comes its second" is one dot product (copying a retrieved name);
- grid cells: inside an image the query embeds the cell about to be generated and the key its own
  cell, so the code at the same cell of a retrieved image is one dot product away (copying a
  same-style sibling). Both embeddings start equal on the two sides (a strong match at init) and train.
Queries are the positions after the last `<sep>` (the main document); sources are content tokens
(text and image codes, ids below `content_ids`) before it, plus the marker that closes a retrieved text
(`copy_end_ids`, e.g. `<img>` after a caption), which emits `<eos>`: so ending a copied name is a copy too.
Without a `<sep>` (no retrieval: the vanilla model, CFG's unconditional stream) the output is the plain
vocabulary distribution. With `copy_gate_reads` the gate reads h plus the values pointed at, so it can decide
per cell from *what* it would copy: a skin cell of a sibling in another tone is redrawn, its outline copied
(with h alone the gate cannot tell the two apart). (Which positions are sources is decided in `Transformer._copy_logits`.)
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

PRIOR_SCORE = 6.0  # init: a matching (token or cell) pair scores ~this, unrelated pairs ~N(0, PRIOR_SCORE / sqrt(dim))


class CopyHead(nn.Module):
    def __init__(self, d_model: int, vocab_size: int, copy_dim: int, image_tokens: int):
        super().__init__()
        self.copy_dim = copy_dim
        self.q = nn.Linear(d_model, copy_dim, bias=False)
        self.k = nn.Linear(d_model, copy_dim, bias=False)
        self.tok_q = nn.Embedding(vocab_size, copy_dim)  # the current token (query side)
        self.tok_k = nn.Embedding(vocab_size, copy_dim)  # the token before the source (key side)
        self.cell_q = nn.Embedding(image_tokens + 1, copy_dim)  # cell to generate next; last row: none
        self.cell_k = nn.Embedding(image_tokens + 1, copy_dim)  # the source's own cell; last row: none
        self.gate = nn.Linear(d_model, 1)  # logit of g, the vocabulary's share
        self.tok_v = nn.Embedding(vocab_size, d_model)  # what a pointed-at token adds to the vocabulary head's input

    def reset_parameters(self, init_std: float) -> None:
        for lin in (self.q, self.k):
            nn.init.normal_(lin.weight, std=init_std)
        nn.init.normal_(self.gate.weight, std=init_std)
        nn.init.zeros_(self.gate.bias)
        nn.init.zeros_(self.tok_v.weight)  # starts as a pure pointer-generator
        with torch.no_grad():
            for a, b in ((self.tok_q, self.tok_k), (self.cell_q, self.cell_k)):
                nn.init.normal_(a.weight, std=(PRIOR_SCORE / self.copy_dim) ** 0.5)
                b.weight.copy_(a.weight)
            self.cell_q.weight[-1].zero_()
            self.cell_k.weight[-1].zero_()

    def keys(self, h: torch.Tensor, prev: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """(B, T, copy_dim) keys of positions holding tokens whose predecessor is `prev`, at grid `cell`."""
        return self.k(h) + self.tok_k(prev) + self.cell_k(cell)

    def queries(self, h: torch.Tensor, cur: torch.Tensor, next_cell: torch.Tensor) -> torch.Tensor:
        return self.q(h) + self.tok_q(cur) + self.cell_q(next_cell)

    def attend(self, q: torch.Tensor, keys: torch.Tensor, src_ids: torch.Tensor, is_query: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(pointer weights (B, T, S) over the sources, use (B, T)): q (B, T, C) queries; keys (B, S, C) and
        src_ids (B, S) of every position so far (-1 where a position is not a source); is_query (B, T) marks
        the positions that may copy. Rows that do not copy (no source, or not a query) get zero weights."""
        is_src = src_ids >= 0
        use = is_query & is_src.any(-1, keepdim=True)
        scores = torch.einsum("btc,bsc->bts", q.float(), keys.float())
        scores = scores.masked_fill(~is_src[:, None, :], float("-inf")).masked_fill(~use[..., None], 0.0)
        return scores.softmax(-1) * (is_src[:, None, :] & use[..., None]), use

    def values(self, src_ids: torch.Tensor) -> torch.Tensor:
        """(B, S, D) value embeddings of the sources (zero elsewhere)."""
        return self.tok_v(src_ids.clamp_min(0)) * (src_ids >= 0)[..., None]

    def read(self, h: torch.Tensor, attn: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
        """h plus the value embeddings of the tokens pointed at: the vocabulary head sees the retrieved token
        at the aligned position (the sibling's code at this cell) and can write a *changed* one (the same
        shape in another skin tone), which the pointer alone can only copy verbatim."""
        return h + torch.bmm(attn.to(vals.dtype), vals)

    def mix(self, logits: torch.Tensor, h: torch.Tensor, attn: torch.Tensor, use: torch.Tensor,
            src_ids: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B, T, V) of the mixture; positions that do not copy get log_softmax(logits)."""
        logp = logits.float().log_softmax(-1)
        if not bool(use.any()):
            return logp
        p_copy = torch.zeros_like(logp).scatter_add_(-1, src_ids.clamp_min(0)[:, None, :].expand_as(attn), attn)
        z = self.gate(h).float()  # (B, T, 1)
        mixed = torch.logaddexp(F.logsigmoid(z) + logp, F.logsigmoid(-z) + p_copy.clamp_min(1e-30).log())
        return torch.where(use[..., None], mixed, logp)

    def target_nll(self, logits: torch.Tensor, h: torch.Tensor, attn: torch.Tensor, use: torch.Tensor,
                   src_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, T) -log p(target) under the mixture, without building the (B, T, V) copy distribution
        (training: the mixture over the whole vocabulary cost 45% of a small-preset step; this is within noise).
        Targets of -100 give 0."""
        valid = targets.ne(-100)
        tgt = targets.clamp_min(0)
        ce = F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), reduction="none").view_as(tgt)
        use = use & valid
        if not bool(use.any()):
            return ce * valid
        p_copy = (attn * (src_ids[:, None, :] == tgt[..., None])).sum(-1)  # (B, T) pointer mass on the target
        z = self.gate(h).float().squeeze(-1)
        mixed = -torch.logaddexp(F.logsigmoid(z) - ce, F.logsigmoid(-z) + p_copy.clamp_min(1e-30).log())
        return torch.where(use, mixed, ce) * valid
