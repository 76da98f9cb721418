"""Batched, KV-cached generation under the CM3 grammar (RA-CM3 sec. 3, CM3Leon sec. 4.2).

One loop serves every task: prompts are left-padded into one batch (an attention mask marks the
padding), the model's KV cache is filled once and extended one token per step, and a per-row
`ModalityConstraint` decides which ids are legal: inside `<img> ... </img>` only image codes, exactly
`tokens_per_image` of them, then `</img>` is forced; outside, text, `<break>` and `<img>` until a
stop token or the token budget. CFG and CD-K run the conditional and unconditional streams as the
two halves of the same batch, so they share the cache and one forward per step. Identical prompts
(n samples of one caption) are prefilled once and their cache rows copied.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ramm.config import DecodeConfig
from ramm.decoding.guidance import cfg_logits, contrastive_scores
from ramm.decoding.sampling import sample
from ramm.model.packing import packed_for
from ramm.tokenizers.vocab import Vocabulary
from ramm.utils import autocast_dtype

log = logging.getLogger(__name__)

# grammar states of a row (ModalityConstraint); TEXT_NO_IMAGE is TEXT when the budget can no longer close an image
TEXT, IMAGE, CLOSE, DONE, TEXT_NO_IMAGE = range(5)


@dataclass
class Columns:
    """The logits a decoding step needs: the ids legal in some row's state, as a few contiguous ranges."""

    ranges: list[tuple[int, int]] | None  # model(..., logit_ranges=); None: the whole vocabulary
    ids: torch.Tensor | None  # column -> vocabulary id; None: column j is id j
    blocked: torch.Tensor  # (B, columns) bool: illegal for that row


# legal runs closer than this are merged: a few extra (masked) logits cost less than another product
RANGE_GAP = 64


class ModalityConstraint:
    """Per-row position in the CM3 grammar, turned into a (B, V) mask of the ids that are not legal next.

    The state machine runs on the host over the sampled ids (a handful of ints a step), and each state's
    illegal ids are one row of a (state, V) table, so a decoding step costs one gather. The earlier
    all-tensor version spent ~300 us of a ~5.5 ms CPU step (small preset, batch 8) on a dozen tiny ops.
    `columns` also tells the model which logits to compute at all: inside an image only its codes.
    """

    def __init__(self, vocab: Vocabulary, n_logits: int, tokens_per_image: int, prompts: Sequence[Sequence[int]],
                 stop_tokens: Sequence[int], allow_images: bool, stop_after_image: bool, device):
        self.vocab, self.tpi, self.stop_after_image = vocab, tokens_per_image, stop_after_image
        self.stop = frozenset(int(t) for t in stop_tokens)
        ids = torch.arange(n_logits)
        # text mode, the grammar inside a document: text ids, <break>, <img> when allowed, and the stop tokens
        text = torch.as_tensor(vocab.is_text(ids.numpy()))
        text[vocab.brk] = True
        text[sorted(self.stop)] = True
        text[vocab.img] = allow_images
        text_no_image = text.clone()
        text_no_image[vocab.img] = False
        legal = torch.stack([text, torch.as_tensor(vocab.is_image(ids.numpy())), ids == vocab.img_end,
                             ids == vocab.pad, text_no_image])  # rows indexed by TEXT .. TEXT_NO_IMAGE
        self.table = (~legal).to(device)
        self.device = device
        self._plans: dict[frozenset, tuple] = {}  # states present -> (ranges, ids, table over those columns)
        # a prompt ending inside an image (e.g. text -> image prompts end in <img>) starts in image mode
        self.state, self.count = [], []
        for p in prompts:
            p = list(p)
            opened = max((i for i, t in enumerate(p) if t == vocab.img), default=-1)
            closed = max((i for i, t in enumerate(p) if t == vocab.img_end), default=-1)
            count = len(p) - opened - 1 if opened > closed else 0
            if count > tokens_per_image:
                raise ValueError(f"a prompt's open image already has more than {tokens_per_image} codes")
            self.count.append(count)
            self.state.append(TEXT if opened <= closed else IMAGE if count < tokens_per_image else CLOSE)

    @property
    def finished(self) -> bool:
        """Every row has stopped."""
        return all(s == DONE for s in self.state)

    def _rows(self, remaining: int) -> list[int]:
        """Each row's table row; `remaining` = tokens left in the budget, so an image is only opened if it can close."""
        return self.state if remaining >= self.tpi + 2 else [TEXT_NO_IMAGE if s == TEXT else s for s in self.state]

    def blocked(self, remaining: int) -> torch.Tensor:
        """(B, V) bool of illegal ids."""
        return self.table[torch.tensor(self._rows(remaining), device=self.device)]

    def columns(self, remaining: int) -> Columns:
        """The logits the next step needs (the ids legal in some row) and each row's illegal ones among them."""
        rows = self._rows(remaining)
        key = frozenset(rows)
        if key not in self._plans:
            legal = (~self.table[sorted(key)]).any(0).cpu().numpy()
            ids = np.flatnonzero(legal)
            cut = np.flatnonzero(np.diff(ids) > RANGE_GAP)
            starts, stops = np.r_[ids[0], ids[cut + 1]], np.r_[ids[cut], ids[-1]] + 1
            ranges = [(int(a), int(b)) for a, b in zip(starts, stops)]
            if ranges == [(0, self.table.shape[1])]:
                self._plans[key] = (None, None, self.table)
            else:
                cols = torch.cat([torch.arange(a, b) for a, b in ranges]).to(self.device)
                self._plans[key] = (ranges, cols, self.table[:, cols])
        ranges, ids, table = self._plans[key]
        return Columns(ranges, ids, table[torch.tensor(rows, device=self.device)])

    def update(self, tokens: Sequence[int]) -> None:
        """Advance every row over its sampled id (ids are legal: they were drawn under `blocked`)."""
        v = self.vocab
        for i, t in enumerate(tokens):
            s = self.state[i]
            if s == DONE:
                continue
            if s == IMAGE:
                self.count[i] += 1
                s = IMAGE if self.count[i] < self.tpi else CLOSE
            elif t == v.img:
                s, self.count[i] = (IMAGE if self.tpi else CLOSE), 0
            elif t == v.img_end:
                s = DONE if self.stop_after_image else TEXT
            if t in self.stop:
                s = DONE
            self.state[i] = s


def left_pad(rows: Sequence[Sequence[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths -> ids (B, T) padded on the left and a bool mask of the real tokens."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token")
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, T - len(r):] = True
    return ids.to(device), mask.to(device)


def next_token_scores(logits: torch.Tensor, blocked: torch.Tensor, config: DecodeConfig) -> torch.Tensor:
    """Logits of the whole batch (2B rows when guided: cond then uncond) -> (B, V) scores to sample from."""
    neg = float("-inf")
    if config.method == "cfg":
        cond, uncond = logits.chunk(2)
        return cfg_logits(cond, uncond, config.guidance_scale).masked_fill(blocked, neg)
    if config.method == "cd":
        cond, uncond = (x.masked_fill(blocked, neg).log_softmax(-1) for x in logits.chunk(2))
        # over a few columns (the grammar's legal ids) k may exceed them; the k-th largest over the whole
        # vocabulary was then -inf (all legal ids kept), which k = columns also gives
        return contrastive_scores(cond, uncond, config.cd_alpha, min(config.cd_k, cond.size(-1)))
    return logits.masked_fill(blocked, neg)


def _packs_long_decodes(fn):
    """On CPU, run long decodes with (in, out) weight copies for the thin decode matmuls (`ramm.model.packing`)."""
    @functools.wraps(fn)
    def wrapper(model, vocab, prompts, *, max_new_tokens: int, **kw):
        with packed_for(model, len(prompts) * max_new_tokens):
            return fn(model, vocab, prompts, max_new_tokens=max_new_tokens, **kw)
    return wrapper


@_packs_long_decodes
@torch.inference_mode()
def generate(model, vocab: Vocabulary, prompts: Sequence[Sequence[int]], *, tokens_per_image: int,
             max_new_tokens: int, config: DecodeConfig | None = None,
             uncond_prompts: Sequence[Sequence[int]] | None = None, stop_tokens: Sequence[int] = (),
             allow_images: bool = True, stop_after_image: bool = False,
             generator: torch.Generator | None = None, use_cache: bool = True) -> list[list[int]]:
    """Continue each prompt; returns the new ids per row, ending with the stop token when one was emitted.

    `uncond_prompts` (one per prompt) feed CFG / CD-K. `use_cache=False` recomputes the whole prefix at
    every step: the slow exact path the cache is checked against.
    """
    config = config or DecodeConfig()
    if config.method == "mix":
        raise ValueError("method 'mix' splits a prompt's samples into sample and cd decodes (DecodeConfig.parts): "
                         "images only, through RAMM.generate_image")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    B = len(prompts)
    rows = list(prompts)
    if config.needs_uncond:
        if uncond_prompts is None or len(uncond_prompts) != B:
            raise ValueError(f"decoding method {config.method!r} needs one unconditional prompt per prompt")
        rows += list(uncond_prompts)
    device = next(model.parameters()).device
    idx, attn = left_pad(rows, vocab.pad, device)
    limit = model.cfg.max_seq_len
    if idx.size(1) + max_new_tokens > limit:
        raise ValueError(f"prompt ({idx.size(1)} tokens) + {max_new_tokens} new tokens exceed the model's "
                         f"context of {limit}")
    # without padding the model's cheaper plain-causal path gives the same result
    padded = not bool(attn.all())
    amp = autocast_dtype(str(device))
    autocast = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
    constraint = ModalityConstraint(vocab, model.cfg.vocab_size, tokens_per_image, prompts, stop_tokens,
                                    allow_images, stop_after_image, device)
    cols = constraint.columns(max_new_tokens)
    cache = None
    with autocast:
        if use_cache:
            logits, cache = _prefill(model, rows, vocab.pad, idx.size(1) + max_new_tokens, amp, padded, cols.ranges)
        else:
            logits = model(idx, attention_mask=attn if padded else None, last_only=True,
                           logit_ranges=cols.ranges)[0][:, -1]
    greedy = config.method == "greedy"
    out = []
    for step in range(max_new_tokens):
        scores = next_token_scores(logits.float(), cols.blocked, config)
        tok = sample(scores, 0.0 if greedy else config.temperature, config.top_k, config.top_p, generator)
        if cols.ids is not None:
            tok = cols.ids[tok]  # column -> vocabulary id
        out.append(tok.tolist())  # the host's copy drives the grammar (and is the result)
        constraint.update(out[-1])
        if constraint.finished or step == max_new_tokens - 1:
            break
        cols = constraint.columns(max_new_tokens - step - 1)
        feed = (tok.repeat(2) if config.needs_uncond else tok)[:, None]  # uncond follows the same tokens
        if padded:
            attn = torch.cat([attn, torch.ones_like(feed, dtype=torch.bool)], 1)
        with autocast:
            if use_cache:
                logits = model(feed, cache=cache, attention_mask=attn if padded else None,
                               logit_ranges=cols.ranges)[0][:, -1]
            else:
                idx = torch.cat([idx, feed], 1)
                logits = model(idx, attention_mask=attn if padded else None, last_only=True,
                               logit_ranges=cols.ranges)[0][:, -1]
    return [_until_stop(list(r), vocab.pad) for r in zip(*out)]


def generate_batched(model, vocab: Vocabulary, prompts: Sequence[Sequence[int]], *, batch_size: int,
                     uncond_prompts: Sequence[Sequence[int]] | None = None, generator: torch.Generator | None = None,
                     progress: Callable[[int], None] | None = None, **kw) -> list[list[int]]:
    """`generate` over prompts in batches of `batch_size`, one generator across the batches (so a seed fixes
    every sample), the weights packed once for the whole run when it is long; `progress(rows done)` after
    each batch. What the facade (`ramm.pipeline.RAMM`) and the headline evaluation decode with."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows: list[list[int]] = []
    with packed_for(model, len(prompts) * kw["max_new_tokens"]):
        for i in range(0, len(prompts), batch_size):
            rows += generate(model, vocab, prompts[i:i + batch_size], generator=generator,
                             uncond_prompts=uncond_prompts[i:i + batch_size] if uncond_prompts else None, **kw)
            if progress:
                progress(len(rows))
    return rows


def _prefill(model, rows: list, pad: int, max_len: int, dtype, padded: bool, logit_ranges=None):
    """Fill a new KV cache with the prompts; returns the last logits (B, V or the ranges' ids) and the cache.

    Identical prompts (n samples of one caption) share one prefill row, then the cache is copied out.
    """
    device = next(model.parameters()).device
    unique = {tuple(r): None for r in rows}
    slot = {r: i for i, r in enumerate(unique)}
    idx, attn = left_pad(list(unique), pad, device)  # the longest prompt is among them: same width
    cache = model.new_cache(len(unique), max_len, device, dtype or next(model.parameters()).dtype)
    logits = model(idx, cache=cache, attention_mask=attn if padded else None, last_only=True,
                   logit_ranges=logit_ranges)[0][:, -1]
    if len(unique) < len(rows):
        where = torch.tensor([slot[tuple(r)] for r in rows], device=device)
        cache.reorder(where)
        logits = logits[where]
    return logits, cache


def _until_stop(row: list[int], pad: int) -> list[int]:
    """Drop the padding emitted after a row finished."""
    return row[:row.index(pad)] if pad in row else row
