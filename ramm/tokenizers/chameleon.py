"""Chameleon's VQGAN (Chameleon Team 2024; the tokenizer CM3Leon also uses: 512x512 -> 32x32 codes of 8,192)
behind ramm's image-tokenizer interface, for users who hold the real weights locally.

Encoding is transformers' `ChameleonVQVAE`. transformers keeps only the encoder half of the VQGAN, so the
decoder is rebuilt here from the same building blocks in taming-transformers' layout (`decoder.conv_in`,
`decoder.mid.*`, `decoder.up.{level}.*`, `decoder.norm_out`, `decoder.conv_out`) and its weights are read
from the `decoder.*` tensors of the directory's safetensors files, when they are there.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from einops import rearrange
from safetensors import safe_open
from torch import nn

log = logging.getLogger(__name__)


class VQGANDecoder(nn.Module):
    """taming-transformers' Decoder, mirroring transformers' ChameleonVQVAEEncoder."""

    def __init__(self, config):
        # lazy: transformers (a slow import) only for Chameleon checkpoints
        from transformers.models.chameleon.modeling_chameleon import (
            ChameleonVQVAEEncoderAttnBlock as AttnBlock,
            ChameleonVQVAEEncoderResnetBlock as ResnetBlock,
        )

        super().__init__()
        mult = tuple(config.channel_multiplier)
        block_in = config.base_channels * mult[-1]
        res = config.resolution // 2 ** (len(mult) - 1)
        attn_res = config.attn_resolutions or ()
        vanilla = config.attn_type == "vanilla"
        self.conv_in = nn.Conv2d(config.latent_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(config, block_in, block_in)
        self.mid.attn_1 = AttnBlock(block_in) if vanilla else nn.Identity()
        self.mid.block_2 = ResnetBlock(config, block_in, block_in)
        up = []
        for level in reversed(range(len(mult))):
            stage = nn.Module()
            block_out = config.base_channels * mult[level]
            stage.block = nn.ModuleList()
            stage.attn = nn.ModuleList()
            for _ in range(config.num_res_blocks + 1):
                stage.block.append(ResnetBlock(config, block_in, block_out))
                block_in = block_out
                if vanilla and res in attn_res:
                    stage.attn.append(AttnBlock(block_in))
            if level != 0:
                stage.upsample = nn.Module()
                stage.upsample.conv = nn.Conv2d(block_in, block_in, 3, padding=1)
                res *= 2
            up.insert(0, stage)
        self.up = nn.ModuleList(up)
        self.norm_out = nn.GroupNorm(32, block_in, eps=1e-6)
        self.conv_out = nn.Conv2d(block_in, config.in_channels, 3, padding=1)

    def forward(self, z):  # (B, latent_channels, h, w) -> (B, 3, H, W) in about [-1, 1]
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if level != 0:
                h = stage.upsample.conv(nn.functional.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(nn.functional.silu(self.norm_out(h)))


def read_decoder(vq_config, files, prefix: str) -> VQGANDecoder | None:
    """The VQGAN decoder from the `prefix`* tensors of these safetensors files; None when none has them."""
    weights = {}
    for f in files:
        with safe_open(f, "pt") as st:
            weights.update({k[len(prefix):]: st.get_tensor(k) for k in st.keys() if k.startswith(prefix)})
    if not weights:
        return None
    decoder = VQGANDecoder(vq_config)
    decoder.load_state_dict(weights)
    return decoder


class ChameleonImageTokenizer(nn.Module):
    """`encode(images (B, 3, S, S) in [0, 1]) -> (B, grid**2)` codes; `decode(codes) -> images in [0, 1]`."""

    def __init__(self, vqvae, decoder: VQGANDecoder | None = None):
        super().__init__()
        self.vqvae = vqvae.eval()
        self.decoder = decoder
        cfg = vqvae.config
        self.image_size = cfg.resolution
        self.grid = cfg.resolution // 2 ** (len(cfg.channel_multiplier) - 1)

    @property
    def codebook_size(self) -> int:
        return self.vqvae.config.num_embeddings

    @property
    def tokens_per_image(self) -> int:
        return self.grid ** 2

    @classmethod
    def from_pretrained(cls, model_dir, device: str | None = None) -> "ChameleonImageTokenizer":
        """A dir saved by `ChameleonVQVAE.save_pretrained` (config.json with model_type chameleon_vqgan)."""
        # lazy: transformers (a slow import) only for Chameleon checkpoints
        from transformers import ChameleonVQVAE

        d = Path(model_dir)
        if not (d / "config.json").exists():
            raise FileNotFoundError(f"no config.json in Chameleon VQGAN dir {d}")
        vqvae = ChameleonVQVAE.from_pretrained(d)
        decoder = read_decoder(vqvae.config, sorted(d.glob("*.safetensors")), "decoder.")
        if decoder is None:
            log.warning("no decoder.* weights in %s: this tokenizer can encode but not decode", d)
        return cls(vqvae, decoder).to(device or "cpu").eval()

    def _device(self) -> torch.device:
        return next(self.vqvae.parameters()).device

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (3, s, s):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor (B, 3, {s}, {s}) in [0, 1], got {shape}")
        x = images.to(self._device(), torch.float32) * 2 - 1  # Chameleon's processor maps pixels to [-1, 1]
        return self.vqvae.encode(x).image_tokens.view(len(images), -1).long()

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.decoder is None:
            raise ValueError("this Chameleon VQGAN dir has no decoder.* weights, so images cannot be decoded")
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 2 or tokens.shape[1] != self.tokens_per_image:
            raise ValueError(f"tokens must be (B, {self.tokens_per_image}), got {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size):
            raise ValueError(f"tokens must lie in [0, {self.codebook_size})")
        q = self.vqvae.quantize.embedding(tokens.long().to(self._device()))  # (B, h*w, embed_dim)
        z = self.vqvae.post_quant_conv(rearrange(q, "b (h w) d -> b d h w", h=self.grid))
        return ((self.decoder(z) + 1) / 2).clamp(0, 1).float()
