"""On-disk cache of VQ image codes: every document's image is encoded once per tokenizer, then read back.

Keyed by the tokenizer's weights and the documents' content, so any recipe or evaluation that encodes the
same images with the same tokenizer shares one file (the generator, GRACE and the lab all do).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ramm.corpus.document import Document, ImageSegment, batch_pixels
from ramm.utils import atomic_write, default_cache_dir

log = logging.getLogger(__name__)

def _tokenizer_key(tokenizer_dir: str | Path) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        h.update((Path(tokenizer_dir) / name).read_bytes())
    return h.hexdigest()[:16]


def encode_images(image_tokenizer, docs: Sequence[Document], batch: int = 256, size: int | None = None) -> np.ndarray:
    """(N, tokens_per_image) int64 codes of the documents' first images (each must have one), in order."""
    image_tokenizer.eval()  # deterministic codes (no dropout / codebook updates while encoding)
    with torch.no_grad():  # batch_pixels: (B, C, H, W) float, each image resized to `size`
        return np.concatenate([image_tokenizer.encode(batch_pixels(docs[i:i + batch], size)).cpu().numpy()
                               for i in range(0, len(docs), batch)]).astype(np.int64)


def encode_images_cached(image_tokenizer, tokenizer_dir: str | Path, docs: Sequence[Document],
                         cache_dir: str | Path | None = None, batch: int = 256) -> dict[str, np.ndarray]:
    """{doc id: codes (tokens_per_image,)} for each document's first image; computed once, then read from
    <cache>/image_codes/<tokenizer hash>/<documents hash>.npy."""
    docs = [d for d in docs if d.image is not None]
    h = hashlib.sha256()
    for d in docs:
        h.update(d.id.encode() + b"\0" + d.content_hash().encode())
    path = Path(cache_dir or default_cache_dir()) / "image_codes" / _tokenizer_key(tokenizer_dir) / f"{h.hexdigest()[:16]}.npy"
    codes = _read_codes(path, len(docs), image_tokenizer) if path.exists() else None
    if codes is not None:
        log.info("image codes of %d documents read from %s", len(docs), path)
    else:
        codes = encode_images(image_tokenizer, docs, batch, image_tokenizer.cfg.image_size)
        try:
            atomic_write(path, lambda tmp: _save_npy(tmp, codes))
            log.info("encoded %d images to %s", len(docs), path)
        except OSError as e:  # a read-only or full cache costs the next run an encoding, not this run
            log.warning("could not cache image codes in %s (%s): set RAMM_CACHE to a writable folder",
                        path.parent, e.strerror or e)
    return {d.id: c for d, c in zip(docs, codes)}


def _read_codes(path: Path, n: int, image_tokenizer) -> np.ndarray | None:
    """The cached codes, or None (with a warning naming the file) when the entry is damaged: unreadable,
    short, or not n x tokens_per_image integer codes in [0, codebook_size) (with no tokenizer given, n rows
    of integers). A damaged entry is re-encoded."""
    cols = image_tokenizer.tokens_per_image if image_tokenizer is not None else None
    try:
        codes = np.load(path, allow_pickle=False)
        bad = None
        if codes.ndim != 2 or len(codes) != n or cols not in (None, codes.shape[1]) or codes.dtype.kind not in "iu":
            bad = f"holds {codes.dtype} {codes.shape}, expected int ({n}, {cols or 'tokens per image'})"
        elif codes.size and (codes.min() < 0 or (cols and codes.max() >= image_tokenizer.codebook_size)):
            bad = "holds codes outside the codebook"
    except Exception as e:  # numpy raises ValueError, EOFError, KeyError, OSError... on damaged files
        bad = f"unreadable ({type(e).__name__}: {e})"
    if bad is None:
        return codes.astype(np.int64, copy=False)
    if image_tokenizer is None:
        raise ValueError(f"image code cache entry {path} {bad}, and no image tokenizer was given to encode again")
    log.warning("image code cache entry %s %s: encoding the images again", path, bad)
    return None


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to a temp name
        np.save(f, array)


def with_codes(doc: Document, codes: dict[str, np.ndarray]) -> Document:
    """The document with its image's cached codes attached (the format needs no tokenizer then); pixels
    are kept for image queries, metrics and reports."""
    segs = [ImageSegment(pixels=s.pixels, tokens=codes[doc.id]) if isinstance(s, ImageSegment) else s
            for s in doc.segments]
    return Document(id=doc.id, segments=segs, source=doc.source, metadata=doc.metadata)
