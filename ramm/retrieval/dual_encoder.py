"""A small CLIP-style dual encoder (Radford et al. 2021), trained from scratch on EmojiBench.

RA-CM3 retrieves with a frozen CLIP bi-encoder; at laptop scale we train our own: a CNN image tower
for 32x32 images and a small transformer text tower over a byte-level BPE, both projected to one
shared, L2-normalised space. Trained with `ramm.training.retriever_recipe`.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save
from tokenizers import Tokenizer

from ramm.config import DualEncoderConfig, load_config
from ramm.retrieval.encoder import Encoder, as_image_batch
from ramm.retrieval.loss import INIT_LOGIT_SCALE, clip_loss, memory_loss
from ramm.tokenizers.text_tokenizer import train_bpe
from ramm.utils import atomic_write_bytes, atomic_write_json, atomic_write_text, load_weights, pick_device

log = logging.getLogger(__name__)


def train_text_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """The text tower's BPE over the training captions (id 0 is padding): a prefix space, so a caption's
    first word tokenizes like its others, and every merge kept (min_frequency 0)."""
    return train_bpe(texts, vocab_size, min_frequency=0, add_prefix_space=True)


class ImageTower(nn.Module):
    def __init__(self, cfg: DualEncoderConfig):
        super().__init__()
        layers, c_in = [], 3
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(8, c), nn.GELU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(8, c), nn.GELU()]
            c_in = c
        self.net = nn.Sequential(*layers)
        self.flatten = cfg.pool == "flatten"
        grid = cfg.image_size // 2 ** len(cfg.channels)
        self.proj = nn.Linear(c_in * grid * grid if self.flatten else c_in, cfg.embed_dim + cfg.private_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1] -> (B, D + private)
        h = self.net(x * 2 - 1)  # (B, C, h, w)
        return self.proj(h.flatten(1) if self.flatten else h.mean(dim=(2, 3)))


class TextTower(nn.Module):
    def __init__(self, cfg: DualEncoderConfig):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg.text_vocab_size, cfg.text_width, padding_idx=0)
        self.pos_emb = nn.Parameter(torch.randn(cfg.text_max_len, cfg.text_width) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.text_width, cfg.text_heads, 4 * cfg.text_width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(cfg.text_width)
        self.proj = nn.Linear(cfg.text_width, cfg.embed_dim + cfg.private_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) long, 0 = pad -> (B, D + private)
        real = ids != 0  # (B, T)
        h = self.tok_emb(ids) + self.pos_emb[: ids.shape[1]]
        h = self.ln(self.blocks(h, src_key_padding_mask=~real))
        w = real.unsqueeze(-1).float()
        return self.proj((h * w).sum(1) / w.sum(1).clamp(min=1))  # mean over real tokens


class DualEncoder(nn.Module, Encoder):
    """`encode_*` are differentiable (training); `embed_*` return normalised float32 numpy (retrieval).

    With `private_dim` > 0 a vector is [shared | image-private | text-private], each part normalised and
    weighted so the shared part holds `shared_weight` of the squared norm; an image leaves the text-private
    part zero and vice versa. Image-text similarity then comes from the shared part only, while an image
    query also matches a document's image through the image-private part. Why: the mixed-modal document
    embedding adds the text and image vectors, and for a concept the towers never saw, a plain CLIP space
    lets an image query's (memorised) closeness to *trained* concepts' texts outweigh the unseen document's
    image.
    `embed_shared_weight` sets the weight of retrieval vectors apart from training's: training needs a
    shared part large enough for InfoNCE's logits, retrieval does best (val) when an image query is matched
    almost only by image features; image-text ranking is unchanged by it (see `image_text_scale`)."""

    def __init__(self, cfg: DualEncoderConfig, tokenizer: Tokenizer):
        super().__init__()
        if tokenizer.get_vocab_size() > cfg.text_vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.get_vocab_size()} entries > text_vocab_size {cfg.text_vocab_size}")
        self.cfg, self.tokenizer = cfg, tokenizer
        self.image_tower, self.text_tower = ImageTower(cfg), TextTower(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))
        self.batch_size = 256  # embed_* batch size

    def forward(self, image: torch.Tensor, text: torch.Tensor, image_b: torch.Tensor | None = None,
                text_b: torch.Tensor | None = None):
        """Training loss: symmetric InfoNCE image<->text; with a second view of each item (EmojiBench:
        the other style's image and caption) also image_b<->text_b, image<->image_b (style-invariant
        image features) and text<->text_b; plus, with `cfg.memory_loss_weight`, `memory_loss`: every image
        and text query against the batch's mixed-modal documents (both views), its own document left out
        and the other view's document the positive, as leave-one-out retrieval scores them.
        Returns (None, loss) so the generic trainer applies."""
        img, txt = self.encode_image(image), self.encode_text(text)
        if image_b is None or text_b is None:
            return None, clip_loss(img, txt, self.logit_scale)
        img_b, txt_b = self.encode_image(image_b), self.encode_text(text_b)
        loss = torch.stack([clip_loss(img, txt, self.logit_scale), clip_loss(img_b, txt_b, self.logit_scale),
                            clip_loss(img, img_b, self.logit_scale), clip_loss(txt, txt_b, self.logit_scale)]).mean()
        B = img.shape[0]
        a, b = torch.arange(B, device=img.device), torch.arange(B, 2 * B, device=img.device)  # view a / view b rows
        if self.cfg.memory_loss_weight > 0:
            # documents as embed_documents builds them: normalised mean of the normalised parts
            docs = F.normalize(torch.cat([img + txt, img_b + txt_b]), dim=-1)
            queries = torch.cat([img, txt, img_b, txt_b])
            positive, own = torch.cat([b, b, a, a]), torch.cat([a, a, b, b])
            loss = loss + self.cfg.memory_loss_weight * memory_loss(queries, docs, positive, own, self.logit_scale)
        if self.cfg.image_loss_weight > 0:
            # image->image leave-one-out: the other style must beat every same-style image of the batch, the
            # negatives clip_loss(img, img_b) never shows (its columns are all the other view)
            images = torch.cat([img, img_b])
            loss = loss + self.cfg.image_loss_weight * memory_loss(images, images, torch.cat([b, a]), torch.cat([a, b]),
                                                                   self.logit_scale)
        return None, loss

    @property
    def dim(self) -> int:
        return self.cfg.embed_dim + 2 * self.cfg.private_dim

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """(B, T) long, right-padded with 0, T <= text_max_len."""
        if isinstance(texts, str):
            raise ValueError("tokenize takes a list of strings, not one string")
        rows = [e.ids[: self.cfg.text_max_len] or [0] for e in self.tokenizer.encode_batch(list(texts))]
        ids = torch.zeros(len(rows), max(map(len, rows), default=1), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return ids

    @property
    def retrieval_shared_weight(self) -> float:
        """Shared part's weight in embed_* vectors: embed_shared_weight, else the training weight."""
        return self.cfg.shared_weight if self.cfg.embed_shared_weight is None else self.cfg.embed_shared_weight

    @property
    def image_text_scale(self) -> float:
        """Largest image-text cosine of embed_* vectors: the shared part's weight (1 without private parts)."""
        return self.retrieval_shared_weight if self.cfg.private_dim else 1.0

    def _layout(self, h: torch.Tensor, private_slot: int, shared_weight: float | None = None) -> torch.Tensor:
        """Tower output (B, D + P) -> unit vectors in the layout the class docstring describes."""
        P = self.cfg.private_dim
        if P == 0:
            return F.normalize(h, dim=-1)
        w = self.cfg.shared_weight if shared_weight is None else shared_weight
        shared = F.normalize(h[:, :-P], dim=-1) * w ** 0.5
        private = F.normalize(h[:, -P:], dim=-1) * (1 - w) ** 0.5
        zeros = torch.zeros_like(private)
        parts = [shared, private, zeros] if private_slot == 0 else [shared, zeros, private]
        return torch.cat(parts, dim=-1)

    def encode_text(self, ids: torch.Tensor, shared_weight: float | None = None) -> torch.Tensor:
        return self._layout(self.text_tower(ids.to(self.device)), 1, shared_weight)

    def encode_image(self, x: torch.Tensor, shared_weight: float | None = None) -> torch.Tensor:
        return self._layout(self.image_tower(x.to(self.device)), 0, shared_weight)

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> np.ndarray:
        self.eval()
        w = self.retrieval_shared_weight
        out = [self.encode_text(self.tokenize(texts[i: i + self.batch_size]), w).float().cpu()
               for i in range(0, len(texts), self.batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)

    @torch.no_grad()
    def embed_image(self, images) -> np.ndarray:
        self.eval()
        x = as_image_batch(images, self.cfg.image_size)
        w = self.retrieval_shared_weight
        out = [self.encode_image(x[i: i + self.batch_size], w).float().cpu() for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)

    def save_pretrained(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)  # atomic writes: a full disk or read-only folder is an OSError naming the file
        atomic_write_bytes(out_dir / "model.safetensors",
                           save({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}))
        atomic_write_text(out_dir / "tokenizer.json", self.tokenizer.to_str(pretty=True))
        atomic_write_json(out_dir / "config.json", asdict(self.cfg))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None) -> "DualEncoder":
        path = Path(path)
        for f in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (path / f).exists():
                raise FileNotFoundError(f"no dual encoder at {path} (missing {f})")
        cfg = load_config(DualEncoderConfig, path / "config.json")
        try:
            model = cls(cfg, Tokenizer.from_file(str(path / "tokenizer.json")))
        except Exception as e:  # tokenizers raises its own exception type
            raise ValueError(f"{path / 'tokenizer.json'}: not a readable tokenizer ({e})") from None
        load_weights(model, path / "model.safetensors")
        return model.to(pick_device(device)).eval()
