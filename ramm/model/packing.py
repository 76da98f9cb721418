"""CPU weight packing for decoding: bias-free `Linear` layers that multiply by an (in, out) copy of
their weight, and the one rule for when decoding packs (`packed_for`).

Packing changes no number (tests compare packed decoding with plain decoding token for token); it only
trades a second copy of the weights for faster thin matmuls on CPU. Three callers use it: `generate`
packs a long call for its length, `generate_batched` packs a whole batched run once, and the facade
(`RAMM.load`) packs for the model's life.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F


class Linear(nn.Linear):
    """nn.Linear that, once packed (`pack_weights`) on CPU, multiplies by an (in, out) copy of its weight.

    Decoding multiplies a handful of rows (batch x 1 token) by every weight. On CPU, oneDNN/MKL do such thin
    products 1.4-1.7x faster against the (in, out) layout than against nn.Linear's (out, in) weight (2-core
    Xeon, torch 2.13): the weight prepacking CPU inference runtimes do. The copy is used only without
    autograd and only while the weight's version counter is the one it was packed at, so in-place changes
    (optimizer steps, `load_state_dict`, `torch.no_grad` writes) fall back to F.linear until repacked.
    Writes through `.data` bypass the version counter (as they bypass autograd): repack after them.
    State dicts are unchanged; other devices use F.linear.
    """

    _packed: torch.Tensor | None = None
    _packed_version: int | None = None  # weight._version at packing; None: not tracked (inference tensors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._use_pack():
            return x @ self._packed
        return F.linear(x, self.weight, self.bias)

    def columns(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Outputs [start, stop) only: a view of the weight, no copy."""
        if self._use_pack():
            return x @ self._packed[:, start:stop]
        return F.linear(x, self.weight[start:stop], None if self.bias is None else self.bias[start:stop])

    def _use_pack(self) -> bool:
        return not torch.is_grad_enabled() and self._pack_is_current()

    def _pack_is_current(self) -> bool:
        """A pack exists and the weight has not changed in place since."""
        if self._packed is None:
            return False
        return self._packed_version is None or self.weight._version == self._packed_version


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter
        return None


def pack_weights(model: nn.Module) -> list[Linear]:
    """Give every bias-free CPU `Linear` of `model` an (in, out) weight copy; returns the ones packed now.

    Already packed, current ones are left alone (so nested packing is free); stale ones are repacked.
    Costs one pass over the weights and keeps a second copy of them (`RAMM.load` packs once per model).
    """
    mods = [m for m in model.modules() if isinstance(m, Linear) and m.bias is None
            and m.weight.device.type == "cpu" and not m._pack_is_current()]
    for m in mods:
        m._packed = m.weight.detach().t().contiguous()
        m._packed_version = _version(m.weight)
    return mods


def unpack_weights(mods: list[Linear]) -> None:
    """Drop the copies `pack_weights` made (its return value): back to F.linear and one copy of the weights."""
    for m in mods:
        m._packed = m._packed_version = None


@contextlib.contextmanager
def packed_weights(model: nn.Module):
    """Decode with (in, out) weight copies on CPU (see `Linear`) for the length of the block; a no-op
    elsewhere and for weights already packed (their packs outlive the block)."""
    mods = pack_weights(model)
    try:
        yield model
    finally:
        unpack_weights(mods)


# Packing the weights (`packed_weights`) costs one pass over them; measured on the 2-core box (small preset,
# interleaved, fastest of 9) it paid off from batch x new tokens ~512 on (batch 8 x 64 tokens 1.09-1.16x,
# batch 64 x 16 1.18x, batch 64 x 64 1.16x) and lost below (batch 8 x 16 0.82x, batch 1 x 64 0.90x). Models
# packed for good (`pack_weights`, as `RAMM.load` does) skip this and use the packed products at every size.
PACK_MIN_TOKENS = 512


def packed_for(model: nn.Module, tokens: int):
    """`packed_weights(model)` when a decode computes at least PACK_MIN_TOKENS tokens (batch x new
    tokens), else nothing: the one place that decides whether decoding packs."""
    return packed_weights(model) if tokens >= PACK_MIN_TOKENS else contextlib.nullcontext(model)
