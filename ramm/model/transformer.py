"""The RA-CM3 / CM3Leon generator: a decoder-only transformer over the unified CM3 token stream.

Pre-norm blocks (RMSNorm without learnable bias), rotary positions, fused `scaled_dot_product_attention`,
SwiGLU MLP, optional weight tying, and a KV cache for incremental decoding of left-padded batches.
`forward(idx, targets) -> (logits, loss)` as nanoGPT; the loss takes per-token weights so that
RA-CM3's `-log p(x | m) - alpha log p(m)` is one weighted cross-entropy.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save

from ramm.config import load_config
from ramm.model.copy_head import CopyHead
from ramm.model.packing import Linear
from ramm.utils import atomic_write_bytes, atomic_write_json, load_weights

log = logging.getLogger(__name__)

# Named sizes (minGPT style). `small` is the EmojiBench demo (docs/emojibench.md: 4 layers, d=256).
PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=2, n_head=4, d_model=64, d_ff=172, max_seq_len=512),
    "small": dict(n_layer=4, n_head=8, d_model=256, d_ff=688, max_seq_len=512),
    "medium": dict(n_layer=8, n_head=8, d_model=512, d_ff=1376, max_seq_len=1024),
    "base": dict(n_layer=12, n_head=12, d_model=768, d_ff=2048, max_seq_len=2048),
    "large": dict(n_layer=24, n_head=16, d_model=1024, d_ff=2816, max_seq_len=4096),
}


@dataclass
class TransformerConfig:
    vocab_size: int  # size of the unified vocabulary (text + image codes + specials [+ GRACE ids])
    n_layer: int = 4  # transformer blocks
    n_head: int = 8  # attention heads; d_model must divide evenly
    d_model: int = 256  # residual width
    d_ff: int = 688  # SwiGLU hidden width (about 8/3 d_model, as LLaMA)
    max_seq_len: int = 512  # longest sequence (prompt + generation) the rotary table covers
    rope_theta: float = 10000.0  # rotary base
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_weights: bool = True  # share the input embedding with the output projection
    dropout: float = 0.0  # residual/attention dropout (CM3Leon uses none)
    init_std: float = 0.02  # normal init std; residual output projections get std / sqrt(2 n_layer)
    image_tokens: int = 0  # codes per image; > 0 adds a learned grid-position embedding to image codes
    image_open_id: int = -1  # the `<img>` id that starts an image's codes (needed when image_tokens > 0)
    copy_dim: int = 0  # > 0: a copy (pointer) head over the retrieved documents' tokens (ramm.model.copy_head)
    sep_id: int = -1  # the `<sep>` id closing the retrieved documents (needed when copy_dim > 0)
    content_ids: int = 0  # ids below this (text and image codes) can be copied (needed when copy_dim > 0)
    copy_end_ids: tuple[int, ...] = ()  # markers that can close a text (`<img>`, `</doc>`): copied as `eos_id`
    eos_id: int = -1  # what pointing at the end of a retrieved text emits (`<eos>`, which closes an infilled span)
    copy_gate_reads: bool = False  # the copy gate sees what the pointer points at (h + values), not h alone

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "d_ff", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"d_model={self.d_model} must split into {self.n_head} heads of even size")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.image_tokens < 0 or (self.image_tokens and not 0 <= self.image_open_id < self.vocab_size):
            raise ValueError("image_tokens must be >= 0, and > 0 needs image_open_id inside the vocabulary")
        self.copy_end_ids = tuple(int(i) for i in self.copy_end_ids)
        if self.copy_dim < 0 or (self.copy_dim and not (0 <= self.sep_id < self.vocab_size
                                                        and 0 < self.content_ids <= self.vocab_size)):
            raise ValueError("copy_dim must be >= 0, and > 0 needs sep_id and content_ids inside the vocabulary")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @classmethod
    def preset(cls, name: str, **overrides) -> "TransformerConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown model size {name!r}; known: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


class KVCache:
    """Keys/values of every layer for `batch` sequences of up to `max_len` tokens; `length` filled so far."""

    def __init__(self, n_layer: int, batch: int, n_head: int, head_dim: int, max_len: int, device, dtype):
        shape = (n_layer, batch, n_head, max_len, head_dim)
        # uninitialised: attention only ever reads the first `length` positions, which are written first
        # (zero-filling two (L, B, h, S, hs) buffers was ~5% of a batch-8 prefill on CPU)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0
        self.last_open = torch.full((batch,), -(1 << 30), dtype=torch.long, device=device)  # last <img> position
        self.copy: dict[str, torch.Tensor] | None = None  # the copy head's keys and sources (Transformer.new_cache)

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (B, nh, T, hs) keys/values; return all keys/values so far."""
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        """Select/duplicate batch rows (beam search)."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)
        self.last_open = self.last_open.index_select(0, index)
        if self.copy is not None:
            self.copy = {k: v.index_select(0, index) for k, v in self.copy.items()}


ALL_KEYS = object()  # attention "mask" meaning every key is visible (one-token decoding steps)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """LLaMA's rotary embedding, `x * cos + rotate_half(x) * sin`, in three ops: rotate_half(x) is
    roll(x, hs / 2) with the first half negated, and that sign is folded into `sin_signed`. Decoding
    a token is a few hundred tiny ops, so each one saved shows in tokens/s."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin_signed)


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = Linear(cfg.d_model, 3 * cfg.d_model, bias=False)  # fused q, k, v projection
        self.proj = Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int):
        B, T, D = x.shape
        # plain view/permute, not einops: its pattern handling costs ~40 us a call (measured), which shows in a CPU decode step
        qkv = self.qkv(x).view(B, T, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)  # (3, B, h, T, hs)
        q, k = apply_rotary(qkv[:2], cos, sin)  # queries and keys rotated together
        v = qkv[2]
        if cache is not None:
            k, v = cache.update(layer, k, v)
        drop = self.dropout if self.training else 0.0
        if mask is None:  # plain causal training batch: the fused kernel's own causal mask
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        elif mask is ALL_KEYS:  # one new token per row, no padding: it sees every key, no mask to build
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.gate_up = Linear(cfg.d_model, 2 * cfg.d_ff, bias=False)  # fused SwiGLU gate and up
        self.proj = Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


def dropout(drop: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """`drop(x)`, without the module call when it is the identity (eval or p = 0): decoding is many tiny ops."""
    return drop(x) if drop.training and drop.p else x


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, mask, cache, layer):
        x = x + dropout(self.drop, self.attn(self.norm1(x), cos, sin, mask, cache, layer))
        return x + dropout(self.drop, self.mlp(self.norm2(x)))


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum(w * ce) / sum(w) over targets != -100 (RA-CM3: w = alpha on retrieved tokens, 1 on the main doc)."""
    flat = logits.reshape(-1, logits.size(-1)).float()
    if weights is None:
        return F.cross_entropy(flat, targets.reshape(-1), ignore_index=-100)
    return weighted_mean(F.cross_entropy(flat, targets.reshape(-1), ignore_index=-100, reduction="none"), targets, weights)


def weighted_mean(per_token: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """sum(w * loss) / sum(w) over targets != -100 (w = 1 without weights)."""
    w = targets.reshape(-1).ne(-100).float()
    if weights is not None:
        w = w * weights.reshape(-1).float()
    return (per_token.reshape(-1) * w).sum() / w.sum().clamp_min(1e-8)


class Transformer(nn.Module):
    _no_split_modules = ["Block"]  # FSDP's units (transformers' spelling, which the Trainer reads)

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        # DALL-E-style position of a code inside its image grid: lets a main-image code find the code at
        # the same grid cell of a retrieved image by position, which rotary offsets alone cannot (the
        # distance between the two depends on caption lengths)
        self.image_pos = nn.Embedding(cfg.image_tokens, cfg.d_model) if cfg.image_tokens else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.embed.weight
        inv_freq = 1.0 / cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim)
        angles = torch.outer(torch.arange(cfg.max_seq_len).float(), inv_freq).repeat(1, 2)  # (S, hs)
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        sign = torch.ones(cfg.head_dim)
        sign[: cfg.head_dim // 2] = -1  # rotate_half negates the first half (see apply_rotary)
        self.register_buffer("rope_sin", angles.sin() * sign, persistent=False)
        self.copy_head = CopyHead(cfg.d_model, cfg.vocab_size, cfg.copy_dim, cfg.image_tokens) if cfg.copy_dim else None
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layer))
        if self.copy_head is not None:
            self.copy_head.reset_parameters(cfg.init_std)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch: int, max_len: int | None = None, device=None, dtype=None) -> KVCache:
        max_len = max_len or self.cfg.max_seq_len
        if max_len > self.cfg.max_seq_len:
            raise ValueError(f"cache length {max_len} exceeds max_seq_len={self.cfg.max_seq_len}")
        p = self.embed.weight
        device = device or p.device
        cache = KVCache(self.cfg.n_layer, batch, self.cfg.n_head, self.cfg.head_dim, max_len, device, dtype or p.dtype)
        if self.copy_head is not None:
            cache.copy = {"keys": torch.zeros(batch, max_len, self.cfg.copy_dim, device=device),
                          "vals": torch.zeros(batch, max_len, self.cfg.d_model, device=device, dtype=dtype or p.dtype),
                          "src": torch.full((batch, max_len), -1, dtype=torch.long, device=device),
                          "sep": torch.zeros(batch, dtype=torch.bool, device=device),
                          "prev": torch.full((batch,), self.cfg.sep_id, dtype=torch.long, device=device)}
        return cache

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, loss_weights: torch.Tensor | None = None,
                cache: KVCache | None = None, attention_mask: torch.Tensor | None = None, last_only: bool = False,
                logit_ranges: Sequence[tuple[int, int]] | None = None):
        """idx (B, T) -> logits (B, T, V) and the weighted loss when `targets` (B, T; -100 ignored) are given.

        With `cache`, idx holds only the new tokens: they are appended and only their logits returned.
        `attention_mask` (B, S) marks real tokens (False = left padding) over all S = cache.length + T
        positions; positions count real tokens only, so a left-padded row sees the same positions as alone.
        `logit_ranges` [(start, stop), ...] projects onto those ids only, concatenated in that order: decoding
        under a grammar that rules out the rest (inside an image only its codes) skips most of the output layer.
        """
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        S = past + T
        if S > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {S} tokens exceeds max_seq_len={self.cfg.max_seq_len}")
        if cache is not None and (S > cache.max_len or cache.k.shape[1] != B):
            raise ValueError(f"cache holds {cache.k.shape[1]} x {cache.max_len} tokens, got batch {B} reaching {S}")
        if (last_only or logit_ranges is not None) and targets is not None:
            raise ValueError("last_only and logit_ranges drop logits a loss needs; pass targets or them, not both")
        if logit_ranges is not None and not (logit_ranges and all(0 <= a < b <= self.cfg.vocab_size
                                                                   for a, b in logit_ranges)):
            raise ValueError(f"logit_ranges must be non-empty (start, stop) pairs inside [0, {self.cfg.vocab_size}), "
                             f"got {logit_ranges}")
        if attention_mask is not None and attention_mask.shape != (B, S):
            raise ValueError(f"attention_mask must be (B, S) = ({B}, {S}), got {tuple(attention_mask.shape)}")

        if attention_mask is None:
            cos, sin = self.rope_cos[past:S], self.rope_sin[past:S]  # (T, hs)
            mask = None
            if past and T == 1:  # a decoding step sees every key
                mask = ALL_KEYS
            elif past:  # new queries see every cached key and the causal part of the new ones
                mask = torch.ones(T, S, dtype=torch.bool, device=idx.device).tril(diagonal=past)
        else:
            am = attention_mask.bool()
            pos = (am.long().cumsum(-1) - 1).clamp_min(0)[:, past:]  # (B, T) positions of real tokens
            cos, sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]  # (B, 1, T, hs)
            causal = torch.ones(T, S, dtype=torch.bool, device=idx.device).tril(diagonal=past)
            # a padding query sees only itself, so no row is all False (SDPA would return NaN)
            itself = F.pad(torch.eye(T, dtype=torch.bool, device=idx.device), (past, 0))
            mask = ((causal & am[:, None, :]) | itself)[:, None]  # (B, 1, T, S)
        x = self.embed(idx)
        grid = self._grid(idx, past, cache) if self.cfg.image_tokens else None
        if self.image_pos is not None:
            inside = (grid >= 0) & (grid < self.cfg.image_tokens)
            x = x + self.image_pos(grid.clamp(0, self.cfg.image_tokens - 1)) * inside[..., None]
        x = dropout(self.drop, x)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, cache, i)
        if cache is not None:
            cache.length = S
        if self.copy_head is not None:
            return self._copy_logits(idx, self.norm(x), grid, past, cache, last_only, logit_ranges, targets, loss_weights)
        if last_only:
            x = x[:, -1:]
        x = self.norm(x)
        if logit_ranges is None:
            logits = self.lm_head(x)
        else:
            parts = [self.lm_head.columns(x, a, b) for a, b in logit_ranges]
            logits = parts[0] if len(parts) == 1 else torch.cat(parts, -1)
        loss = None if targets is None else weighted_cross_entropy(logits, targets, loss_weights)
        return logits, loss

    def _copy_logits(self, idx, h, grid, past: int, cache: KVCache | None, last_only: bool, logit_ranges,
                     targets=None, loss_weights=None):
        """(log-probabilities of the copy mixture (ramm.model.copy_head), loss): log-probabilities are what
        every consumer reads as logits (cross-entropy, softmax, CFG and CD-K are all unchanged by a
        log-normalised input). With `targets` the loss is the mixture's and the logits returned are the
        vocabulary head's alone (the mixture over the whole vocabulary is not built in training).

        Sources are this call's content tokens before its last `<sep>`; queries the positions from that
        `<sep>` on (or every position when the cache saw the `<sep>` in an earlier call)."""
        cfg, head = self.cfg, self.copy_head
        B, T = idx.shape
        sep = idx == cfg.sep_id
        n_after = sep.flip(1).cumsum(1).flip(1)  # seps at or after each position
        before_last = (n_after - sep.long()) > 0  # a <sep> comes later in this call
        seen = sep.cumsum(1) > 0
        if cache is not None and cache.copy is not None:
            seen = seen | cache.copy["sep"][:, None]
        is_query = seen & ~before_last
        first_prev = cache.copy["prev"][:, None] if cache is not None and cache.copy is not None \
            else torch.full((B, 1), cfg.sep_id, dtype=idx.dtype, device=idx.device)
        prev = torch.cat([first_prev, idx[:, :-1]], 1)
        src = torch.where(before_last & (idx >= 0) & (idx < cfg.content_ids), idx, torch.full_like(idx, -1))
        if cfg.copy_end_ids and cfg.eos_id >= 0:
            # a marker right after content closes a retrieved text: pointing there says "the copied name ends here"
            ends = torch.isin(idx, torch.tensor(cfg.copy_end_ids, device=idx.device))
            ends &= before_last & (prev >= 0) & (prev < cfg.content_ids)
            src = torch.where(ends, torch.full_like(idx, cfg.eos_id), src)
        if grid is None:
            cell = next_cell = torch.zeros_like(idx)
        else:  # grid cells in [0, image_tokens), image_tokens (the prior's "none" row) elsewhere
            in_grid = lambda g: torch.where((g >= 0) & (g < cfg.image_tokens), g, cfg.image_tokens)  # noqa: E731
            cell, next_cell = in_grid(grid), in_grid(grid + 1)
        keys, vals = head.keys(h, prev, cell), head.values(src)
        if cache is not None and cache.copy is not None:
            c = cache.copy
            c["keys"][:, past:past + T] = keys.to(c["keys"].dtype)
            c["vals"][:, past:past + T] = vals.to(c["vals"].dtype)
            c["src"][:, past:past + T] = src
            c["sep"] = seen[:, -1]
            c["prev"] = idx[:, -1].clone()
            keys, vals, src = c["keys"][:, :past + T], c["vals"][:, :past + T], c["src"][:, :past + T]
        if last_only:
            h, idx, next_cell, is_query = h[:, -1:], idx[:, -1:], next_cell[:, -1:], is_query[:, -1:]
        attn, use = head.attend(head.queries(h, idx, next_cell), keys, src, is_query)
        h_read = head.read(h, attn, vals)
        logits = self.lm_head(h_read)
        h_gate = h_read if cfg.copy_gate_reads else h
        if targets is not None:
            return logits, weighted_mean(head.target_nll(logits, h_gate, attn, use, src, targets), targets, loss_weights)
        out = head.mix(logits, h_gate, attn, use, src)
        if logit_ranges is not None:
            out = torch.cat([out[..., a:b] for a, b in logit_ranges], -1)
        return (out.to(logits.dtype) if logits.dtype != torch.float32 else out), None

    def _grid(self, idx: torch.Tensor, past: int, cache: KVCache | None) -> torch.Tensor:
        """(B, T) position since the latest `<img>` minus one: code j of an image is at j; -1 at `<img>`
        itself; out of [0, image_tokens) elsewhere. Feeds the grid-position embedding and the copy head."""
        B, T = idx.shape
        pos = torch.arange(past, past + T, device=idx.device).expand(B, T)
        opens = torch.where(idx == self.cfg.image_open_id, pos, torch.full_like(pos, -(1 << 30)))
        last = opens.cummax(dim=1).values  # (B, T) position of the latest <img> so far
        if cache is not None:
            last = torch.maximum(last, cache.last_open[:, None])
            cache.last_open = last[:, -1].clone()
        return pos - last - 1

    def resize_token_embeddings(self, n: int) -> None:
        """Grow (or shrink) the vocabulary to `n` ids; new rows start at the mean embedding (GRACE's atomic ids)."""
        if n <= 0:
            raise ValueError(f"vocabulary size must be positive, got {n}")
        old = self.embed.weight.data
        keep = min(n, old.shape[0])
        new = old.mean(0, keepdim=True).repeat(n, 1)
        new[:keep] = old[:keep]
        self.embed = nn.Embedding(n, self.cfg.d_model, device=old.device, dtype=old.dtype)
        self.embed.weight.data.copy_(new)
        if self.cfg.tie_weights:
            self.lm_head = Linear(self.cfg.d_model, n, bias=False, device=old.device, dtype=old.dtype)
            self.lm_head.weight = self.embed.weight
        else:
            head = self.lm_head.weight.data
            self.lm_head = Linear(self.cfg.d_model, n, bias=False, device=old.device, dtype=old.dtype)
            self.lm_head.weight.data.zero_()
            self.lm_head.weight.data[:keep] = head[:keep]
        self.cfg.vocab_size = n

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> None:
        """config.json + model.safetensors (the tied output projection is stored once)."""
        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                 if not (self.cfg.tie_weights and k == "lm_head.weight")}
        atomic_write_bytes(directory / "model.safetensors", save(state, metadata={"format": "pt"}))
        atomic_write_json(directory / "config.json", asdict(self.cfg))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device=None) -> "Transformer":
        directory = Path(directory)
        for name in ("config.json", "model.safetensors"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory / name} not found (not a saved generator?)")
        cfg = load_config(TransformerConfig, directory / "config.json")
        model = cls(cfg)
        load_weights(model, directory / "model.safetensors", {"lm_head.weight"} if cfg.tie_weights else set())
        return model.to(device) if device else model
