"""What the memory needs from an encoder, and RA-CM3's mixed-modal document embedding.

RA-CM3 (section 3.2) encodes a document's text and image separately, L2-normalises each, averages
them and normalises again; a text-only or image-only document keeps its one vector.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, is_dataclass
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
        by_shape: dict[tuple, list[int]] = {}  # a user's corpus mixes image sizes; embed each size together
        for i in with_image:
            by_shape.setdefault(docs[i].image.shape, []).append(i)
        for rows in by_shape.values():
            out[rows] += self.embed_image(np.stack([docs[i].image for i in rows]))
        return l2_normalize(out)


def load_encoder(path: str | Path) -> Encoder:
    """A ramm DualEncoder directory, or a transformers CLIPModel directory (config model_type 'clip')."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"no encoder at {path} (missing config.json)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg_file}: not a readable encoder config ({e})") from None
    # lazy: encoder.py stays torch-free (a memory's readers load it; the encoders load on use)
    import torch

    # building the module draws its random init before the weights overwrite it; a memory loads its encoder
    # lazily, so without the fork a resumed training (which skips the neighbour search) would start from
    # other weights than the uninterrupted one (found by bench/fault_injection.py, generator-ra)
    with torch.random.fork_rng(devices=[]):
        if isinstance(cfg, dict) and cfg.get("model_type") == "clip":
            # lazy: transformers only for a CLIP encoder
            from ramm.retrieval.hf_clip import HFClipEncoder
            encoder = HFClipEncoder.from_pretrained(path)
        else:
            # lazy: import cycle (dual_encoder imports this module) and torch
            from ramm.retrieval.dual_encoder import DualEncoder
            encoder = DualEncoder.from_pretrained(path)
    encoder.source = path  # the files it came from, which a memory copies to stay self-contained
    return encoder


def encoder_fingerprint(encoder: Encoder) -> str:
    """sha256 of what decides an encoder's vectors: its class, config, tokenizer and every weight.

    Two encoders with the same fingerprint embed alike, so a memory records it and refuses any other
    encoder (a retrained folder, or another model of the same width), whose vectors would not compare."""
    # lazy: encoder.py stays torch-free (a memory's readers load it; the encoders load on use)
    import torch
    encoder = getattr(encoder, "replays", None) or encoder  # vectors replayed from another encoder are its
    h = hashlib.sha256(type(encoder).__name__.encode())
    model = encoder if isinstance(encoder, torch.nn.Module) else getattr(encoder, "model", None)
    cfg = getattr(encoder, "cfg", None)
    if is_dataclass(cfg):
        h.update(json.dumps(asdict(cfg), sort_keys=True, default=str).encode())
    elif model is not None and hasattr(model, "config"):
        h.update(model.config.to_json_string(use_diff=False).encode())
    tok = getattr(encoder, "tokenizer", None)
    if hasattr(tok, "to_str"):
        h.update(tok.to_str().encode())
    if model is None:
        raise ValueError(f"cannot fingerprint a {type(encoder).__name__}: it is not a torch module and has no .model")
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_encoder_copy(encoder: Encoder, out_dir: Path) -> None:
    """Save the encoder (or copy the files of its folder) to `out_dir`, whole or not at all."""
    encoder = getattr(encoder, "replays", None) or encoder
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    source = getattr(encoder, "source", None)
    if hasattr(encoder, "save_pretrained"):  # exactly the weights that were fingerprinted
        encoder.save_pretrained(tmp)
    elif source is not None:  # a transformers folder: its top-level files (no checkpoints, logs)
        tmp.mkdir(parents=True)
        for f in Path(source).iterdir():
            if f.is_file() and not f.name.startswith("."):
                shutil.copy2(f, tmp / f.name)
    else:
        raise ValueError(f"cannot copy a {type(encoder).__name__} into the memory: load it with load_encoder(path)")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def as_image_batch(images, size: int | None = None):
    """Images -> float (N, 3, size, size) in [0, 1]: the one place every encoder's input goes through.

    `images`: a uint8 (N, H, W, 3) / (H, W, 3) array, a float (N, 3, H, W) tensor in [0, 1], or a list of
    uint8 (H, W, 3) arrays whose sizes may differ (a user's corpus mixes 20 to 64 px images); each is
    resized to `size` (without one, a list of mixed sizes is a ValueError)."""
    # lazy: encoder.py stays torch-free (a memory's readers load it; the encoders load on use)
    import torch
    import torch.nn.functional as F
    if isinstance(images, (list, tuple)):
        if not images:
            return torch.zeros((0, 3, size or 1, size or 1))
        shapes = {getattr(im, "shape", None) for im in images}
        if len(shapes) == 1:
            return as_image_batch(np.stack(images), size)
        if size is None:
            raise ValueError(f"images of different sizes {sorted(map(str, shapes))[:3]} cannot form one batch "
                             f"without a size to resize them to")
        return torch.cat([as_image_batch(im, size) for im in images])
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
