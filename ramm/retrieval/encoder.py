"""What the memory needs from an encoder, and RA-CM3's mixed-modal document embedding.

RA-CM3 (section 3.2) encodes a document's text and image separately, L2-normalises each, averages
them and normalises again; a text-only or image-only document keeps its one vector.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ramm.corpus.document import Document


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


class Encoder:
    """Base for encoders: subclasses give `dim`, `embed_text(list[str])` and `embed_image(images)`,
    both returning L2-normalised float32 (N, dim) numpy arrays."""

    dim: int
    image_text_scale: float = 1.0  # largest image-text cosine of these vectors (< 1 with private subspaces)

    def embed_text(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def embed_image(self, images) -> np.ndarray:
        raise NotImplementedError

    def embed_documents(self, docs: list[Document]) -> np.ndarray:
        """(N, dim): mean of the normalised text and image vectors, renormalised."""
        out = np.zeros((len(docs), self.dim), dtype=np.float32)
        with_text = [i for i, d in enumerate(docs) if d.texts]
        with_image = [i for i, d in enumerate(docs) if d.image is not None]
        missing = sorted(set(range(len(docs))) - set(with_text) - set(with_image))
        if missing:
            raise ValueError(f"document {docs[missing[0]].id} has neither text nor image pixels to embed")
        if with_text:
            out[with_text] += self.embed_text([docs[i].text for i in with_text])
        if with_image:
            out[with_image] += self.embed_image(np.stack([docs[i].image for i in with_image]))
        return l2_normalize(out)


def load_encoder(path: str | Path) -> Encoder:
    """A ramm DualEncoder directory, or a transformers CLIPModel directory (config model_type 'clip')."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"no encoder at {path} (missing config.json)")
    if json.loads(cfg_file.read_text()).get("model_type") == "clip":
        from ramm.retrieval.hf_clip import HFClipEncoder
        return HFClipEncoder.from_pretrained(path)
    from ramm.retrieval.dual_encoder import DualEncoder
    return DualEncoder.from_pretrained(path)


def as_image_batch(images, size: int | None = None):
    """uint8 (N, H, W, 3) / (H, W, 3) array or float (N, 3, H, W) tensor in [0, 1] -> float (N, 3, size, size)."""
    import torch
    import torch.nn.functional as F
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if images.ndim == 3:
            images = images[None]
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)
    elif isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"image tensors must be float (N, 3, H, W) in [0, 1], got {images.dtype} {tuple(images.shape)}")
        x = images.float()
    else:
        raise ValueError(f"images must be a uint8 numpy array or a float tensor, got {type(images).__name__}")
    if size is not None and x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x
