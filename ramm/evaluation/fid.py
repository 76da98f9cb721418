"""FID (Heusel et al. 2017) between image sets, computed by torchmetrics on a feature space we have.

RA-CM3 (section 4.2) reports FID on Inception-v3 features; the Inception weights cannot be downloaded
here, so by default the features are our own dual encoder's image embeddings and every number says
so ("FID on ramm-encoder features"). These values are NOT comparable with published FIDs: they live
in an L2-normalised embedding space (so they are small numbers, a few units at most), and only
comparisons between systems scored by the same encoder mean anything. A user with a local
transformers CLIP directory or torch-fidelity's Inception weights file can pass that path instead.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ramm.retrieval.encoder import load_encoder

log = logging.getLogger(__name__)

INCEPTION_SUFFIXES = (".pth", ".pt")  # torch-fidelity's pt_inception-2015-12-05-*.pth


class EncoderFeatures(nn.Module):
    """The feature network torchmetrics calls: uint8 (N, 3, H, W) images -> (N, D) embeddings.

    Holds only the encoder's bound `embed_image`, not the encoder itself, so that moving the metric
    between devices never moves the encoder.
    """

    def __init__(self, encoder):
        super().__init__()
        self.embed = encoder.embed_image
        self.num_features = int(encoder.dim)  # read by torchmetrics instead of probing with a 299x299 image

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        if imgs.dtype == torch.uint8:
            imgs = imgs.float().div(255.0)
        return torch.from_numpy(self.embed(imgs.cpu())).to(imgs.device)  # (N, D)


class FID:
    """`FID(encoder)(real, fake) -> float`; `name` says which features were used (print it with every value)."""

    def __init__(self, metric: FrechetInceptionDistance, name: str, batch_size: int = 256):
        self.metric, self.name, self.batch_size = metric, name, batch_size

    @classmethod
    def from_encoder(cls, encoder, name: str = "FID on ramm-encoder features") -> "FID":
        """Any ramm retrieval encoder (`dim`, `embed_image`): a DualEncoder, or a CLIP loaded by
        `ramm.retrieval.encoder.load_encoder`."""
        return cls(FrechetInceptionDistance(feature=EncoderFeatures(encoder), normalize=False), name)

    @classmethod
    def from_path(cls, path: str | Path) -> "FID":
        """A ramm dual encoder or transformers CLIP directory, or an Inception-v3 `.pth` weights file
        (torch-fidelity's FID Inception, used through torchmetrics' own extractor)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no FID feature extractor at {path}")
        if path.is_file():
            if path.suffix not in INCEPTION_SUFFIXES:
                raise ValueError(f"{path}: expected an encoder directory or an Inception weights file "
                                 f"({', '.join(INCEPTION_SUFFIXES)})")
            try:
                import torch_fidelity  # noqa: F401  (torchmetrics' Inception needs it)
            except ImportError:
                raise ValueError(f"{path}: FID on Inception features needs `pip install torch-fidelity`") from None
            metric = FrechetInceptionDistance(feature=2048, normalize=False, feature_extractor_weights_path=str(path))
            return cls(metric, f"FID on Inception-v3 features ({path.name})")
        kind = json.loads((path / "config.json").read_text()).get("model_type") if (path / "config.json").exists() else None
        name = "FID on CLIP features" if kind == "clip" else "FID on ramm-encoder features"
        return cls.from_encoder(load_encoder(path), f"{name} ({path.name})")

    @torch.no_grad()
    def __call__(self, real, fake) -> float:
        """real, fake: uint8 (N, H, W, 3) arrays (Document pixels) or float (N, 3, H, W) tensors in [0, 1]."""
        self.metric.reset()
        for label, imgs in (("real", real), ("fake", fake)):
            x = as_uint8_nchw(imgs, label)
            if len(x) < 2:
                raise ValueError(f"FID needs at least 2 {label} images, got {len(x)}")
            for i in range(0, len(x), self.batch_size):
                self.metric.update(x[i: i + self.batch_size], real=label == "real")
        value = max(float(self.metric.compute()), 0.0)  # identical sets give -1e-6 from round-off
        log.info("%s: %.4f (%d real, %d fake)", self.name, value, len(real), len(fake))
        return value


def as_uint8_nchw(images, label: str = "images") -> torch.Tensor:
    """uint8 (N, H, W, 3) numpy or float (N, 3, H, W) tensor in [0, 1] -> uint8 (N, 3, H, W) tensor."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{label}: expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"{label}: expected float (N, 3, H, W) in [0, 1], got {images.dtype} {tuple(images.shape)}")
        return images.detach().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    raise ValueError(f"{label}: expected a uint8 numpy array or a float tensor, got {type(images).__name__}")
