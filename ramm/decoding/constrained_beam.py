"""Beam search constrained to a prefix trie (GENRE; GRACE sec. 3.4 decodes image identifiers this way).

At every step each live beam may only continue with its trie children, so every finished hypothesis is a
stored identifier. Scores are summed log-probabilities under the model's full softmax (HF's
`prefix_allowed_tokens_fn` masks after log_softmax the same way). The prompt is run once; beams share it
through the Transformer's KV cache, which is reordered as beams are selected.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ramm.decoding.trie import PrefixTrie


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]  # the identifier's token sequence (a complete trie sequence)
    value: int  # the trie's value for it (the identifier's index)
    score: float  # sum of log-probabilities of its tokens given the prompt


@torch.no_grad()
def constrained_beam_search(model, prompt: Sequence[int], trie: PrefixTrie, num_beams: int = 10) -> list[Hypothesis]:
    """Top-`num_beams` trie sequences for `prompt`, best first (fewer if the trie holds fewer)."""
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if not prompt:
        raise ValueError("the prompt is empty")
    if len(trie) == 0:
        raise ValueError("the trie is empty: no identifiers to retrieve")
    device = next(model.parameters()).device
    max_len = len(prompt) + trie.depth()
    cache = model.new_cache(1, max_len, device=device)
    logits, _ = model(torch.tensor([list(prompt)], device=device), cache=cache, last_only=True)
    logp = torch.log_softmax(logits[:, -1].float(), dim=-1)  # (beams, V)
    beams: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    finished: list[Hypothesis] = []
    while beams:
        parents, tokens, scores = [], [], []
        for b, (prefix, score) in enumerate(beams):
            allowed = trie.children(prefix)
            lp = logp[b, allowed].tolist()
            parents += [b] * len(allowed)
            tokens += allowed
            scores += [score + x for x in lp]
        if not scores:
            break
        top = torch.tensor(scores).topk(min(num_beams, len(scores))).indices.tolist()
        keep_rows, new_beams = [], []
        for i in top:
            seq = (*beams[parents[i]][0], tokens[i])
            value = trie.get(seq)
            if value is not None:
                finished.append(Hypothesis(seq, value, scores[i]))
            else:
                keep_rows.append(i)
                new_beams.append((seq, scores[i]))
        finished.sort(key=lambda h: -h.score)
        # log-probs are <= 0, so a live beam below the num_beams-th finished score can never overtake it
        if len(finished) >= num_beams:
            floor = finished[num_beams - 1].score
            kept = [(r, bm) for r, bm in zip(keep_rows, new_beams) if bm[1] > floor]
            keep_rows, new_beams = [r for r, _ in kept], [bm for _, bm in kept]
        if not new_beams:
            break
        cache.reorder(torch.tensor([parents[i] for i in keep_rows], device=device))
        step = torch.tensor([[tokens[i]] for i in keep_rows], device=device)
        logits, _ = model(step, cache=cache)
        logp = torch.log_softmax(logits[:, -1].float(), dim=-1)
        beams = new_beams
    return finished[:num_beams]
