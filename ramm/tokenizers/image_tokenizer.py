"""The VQ image tokenizer (VQ-VAE, van den Oord et al. 2017; the VQGAN layout of Esser et al. 2021 without
the GAN): images -> a grid of discrete codes the generator reads and writes as image tokens (RA-CM3 / CM3Leon
use a VQGAN tokenizer, 256x256 -> 32x32 = 1,024 tokens; EmojiBench uses 32x32 -> 8x8 = 64).

A pixel-unshuffle then a residual conv encoder reach the grid; the quantizer (from `vector-quantize-pytorch`)
is an EMA codebook with k-means init, dead-code replacement and a low-dimensional (8-d) lookup.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import save
from torch import nn

from ramm.config import ImageTokenizerConfig, from_dict
from ramm.utils import atomic_write_bytes, atomic_write_json, load_weights

log = logging.getLogger(__name__)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(8, c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.GroupNorm(8, c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.block(x)


def _head(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.GroupNorm(8, c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))


class Encoder(nn.Module):
    def __init__(self, cfg: ImageTokenizerConfig):
        super().__init__()
        chs = cfg.stage_channels()
        layers: list[nn.Module] = [nn.PixelUnshuffle(cfg.patch), nn.Conv2d(3 * cfg.patch ** 2, chs[0], 3, padding=1)]
        for i, c in enumerate(chs):
            c_in = chs[i - 1] if i else chs[0]
            layers += [ResBlock(c_in if j == 0 else c, c) for j in range(cfg.res_blocks)]
            if i < len(chs) - 1:
                layers.append(nn.Conv2d(c, c, 4, stride=2, padding=1))
        layers.append(_head(chs[-1], cfg.latent_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x):  # (B, 3, H, W) in [-1, 1] -> (B, latent_dim, grid, grid)
        return self.net(x)


class LocalEncoder(nn.Module):
    """A per-cell MLP (1x1 convolutions, no normalisation over space): a cell's latent is a function of
    its own image_size / grid pixels only, so two images that share a patch share its code. With 3x3
    convolutions and GroupNorm a colour change anywhere leaks into the neighbours' (and through the
    statistics every cell's) codes: two skin-tone variants of an emoji shared 20% of their codes,
    so a generator copying a retrieved sibling had 80% of the image to redraw. The decoder keeps its
    3x3 convolutions: smooth reconstructions need the neighbours, codes do not."""

    def __init__(self, cfg: ImageTokenizerConfig):
        super().__init__()
        cell = cfg.image_size // cfg.grid
        width = cfg.stage_channels()[-1]
        self.unshuffle = nn.PixelUnshuffle(cell)
        self.inp = nn.Conv2d(3 * cell ** 2, width, 1)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Conv2d(width, width, 1), nn.SiLU(),
                                                  nn.Conv2d(width, width, 1)) for _ in range(max(1, cfg.res_blocks)))
        self.out = nn.Sequential(nn.SiLU(), nn.Conv2d(width, cfg.latent_dim, 1))

    def forward(self, x):  # (B, 3, H, W) in [-1, 1] -> (B, latent_dim, grid, grid)
        h = self.inp(self.unshuffle(x))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class Decoder(nn.Module):
    def __init__(self, cfg: ImageTokenizerConfig):
        super().__init__()
        chs = cfg.stage_channels()[::-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent_dim, chs[0], 3, padding=1)]
        for i, c in enumerate(chs):
            c_in = chs[i - 1] if i else chs[0]
            layers += [ResBlock(c_in if j == 0 else c, c) for j in range(cfg.res_blocks)]
            if i < len(chs) - 1:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
        layers += [_head(chs[-1], 3 * cfg.patch ** 2), nn.PixelShuffle(cfg.patch)]
        self.net = nn.Sequential(*layers)

    def forward(self, z):  # (B, latent_dim, grid, grid) -> (B, 3, H, W), roughly [-1, 1]
        return self.net(z)


def _make_quantizer(cfg: ImageTokenizerConfig) -> nn.Module:
    # lazy: vector_quantize_pytorch (a slow import) only when a VQ model is built
    from vector_quantize_pytorch import VectorQuantize
    return VectorQuantize(dim=cfg.latent_dim, codebook_size=cfg.codebook_size, codebook_dim=cfg.codebook_dim,
                          decay=cfg.ema_decay, commitment_weight=cfg.commitment_weight, kmeans_init=True,
                          kmeans_iters=10, threshold_ema_dead_code=2)


def reconstruction_loss(recon: torch.Tensor, images: torch.Tensor, l1_weight: float) -> torch.Tensor:
    """MSE (what PSNR measures) plus a little L1, both on [0, 1] pixels."""
    return F.mse_loss(recon, images) + l1_weight * F.l1_loss(recon, images)


def psnr(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for [0, 1] images (B, 3, H, W) -> (B,)."""
    mse = (recon.clamp(0, 1) - images).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


class ImageTokenizer(nn.Module):
    """`encode(images (B, 3, H, W) in [0, 1]) -> LongTensor (B, grid**2)`; `decode(tokens) -> images in [0, 1]`."""

    def __init__(self, cfg: ImageTokenizerConfig | None = None):
        super().__init__()
        self.cfg = cfg or ImageTokenizerConfig()
        self.encoder = LocalEncoder(self.cfg) if self.cfg.local else Encoder(self.cfg)
        self.quantizer = _make_quantizer(self.cfg)
        self.decoder = Decoder(self.cfg)

    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    @property
    def grid(self) -> int:
        return self.cfg.grid

    @property
    def tokens_per_image(self) -> int:
        return self.cfg.grid ** 2

    def _check_images(self, images: torch.Tensor) -> None:
        s = self.cfg.image_size
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (3, s, s):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor (B, 3, {s}, {s}) in [0, 1], got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}")

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, D, h, w) -> quantized (B, D, h, w), codes (B, h*w), aux loss."""
        h = z.shape[-2]
        seq = rearrange(z, "b d h w -> b (h w) d").float()
        q, codes, aux = self.quantizer(seq)
        return rearrange(q, "b (h w) d -> b d h w", h=h), codes.long(), aux.sum()

    def _codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        q = self.quantizer.get_output_from_indices(codes)
        return rearrange(q, "b (h w) d -> b d h w", h=self.cfg.grid)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: images in [0, 1] -> (reconstruction (unclamped), codes, loss)."""
        self._check_images(images)
        q, codes, aux = self._quantize(self.encoder(images * 2 - 1))
        recon = (self.decoder(q) + 1) / 2
        loss = reconstruction_loss(recon.float(), images.float(), self.cfg.l1_weight) + aux
        return recon, codes, loss

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._check_images(images)
        return self._quantize(self.encoder(images.to(self._device()) * 2 - 1))[1]

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 2 or tokens.shape[1] != self.tokens_per_image:
            raise ValueError(f"tokens must be (B, {self.tokens_per_image}), got {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size):
            raise ValueError(f"tokens must lie in [0, {self.codebook_size}), got [{int(tokens.min())}, {int(tokens.max())}]")
        z = self._codes_to_latent(tokens.long().to(self._device()))
        return ((self.decoder(z) + 1) / 2).clamp(0, 1).float()

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def save_pretrained(self, out_dir) -> None:
        out = Path(out_dir)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(out / "model.safetensors", save(state))
        atomic_write_json(out / "config.json", {"kind": "ramm-vq", **asdict(self.cfg)})

    @classmethod
    def from_pretrained(cls, model_dir, device: str | None = None) -> "ImageTokenizer":
        d = Path(model_dir)
        if not (d / "config.json").exists():
            raise FileNotFoundError(f"no config.json in image tokenizer dir {d}")
        try:
            raw = json.loads((d / "config.json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{d / 'config.json'}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{d / 'config.json'}: expected an object, got {type(raw).__name__}")
        raw.pop("kind", None)
        if raw.pop("quantizer", "vq") != "vq":
            raise ValueError(f"{d / 'config.json'}: only the VQ quantizer is supported (FSQ was removed)")
        raw.pop("fsq_levels", None)  # written by versions that also offered FSQ
        model = cls(from_dict(ImageTokenizerConfig, raw, str(d / "config.json")))
        load_weights(model, d / "model.safetensors")
        return model.to(device or "cpu").eval()


def decode_pixels(image_tokenizer, codes) -> np.ndarray:
    """(B, tokens_per_image) codes -> uint8 (B, H, W, 3) pixels (the form Documents and metrics take), by any
    image tokenizer whose `decode` gives (B, 3, H, W) floats in [0, 1] (this one, Chameleon's VQGAN)."""
    with torch.no_grad():
        images = image_tokenizer.decode(codes)
    return (images.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
