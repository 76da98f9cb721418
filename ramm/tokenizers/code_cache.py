"""On-disk cache of VQ image codes: every document's image is encoded once per tokenizer, then read back.

Keyed by the tokenizer's weights and the documents' content, so any recipe or evaluation that encodes the
same images with the same tokenizer shares one file (the generator, GRACE and the lab all do).
Joint views (`VIEWS`) are the RA joint augmentation's rearrangements of an image (ramm.training.ra_data).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ramm.corpus.document import Document, ImageSegment, batch_pixels
from ramm.utils import default_cache_dir

log = logging.getLogger(__name__)

# (dihedral transform 0..7, colour-channel rotation 0..2); identity first, then a fixed shuffle so the
# first n views mix both kinds
VIEWS: tuple[tuple[int, int], ...] = ((0, 0),) + tuple(
    tuple(int(x) for x in v) for v in np.random.default_rng(0).permutation(
        [(d, c) for d in range(8) for c in range(3) if (d, c) != (0, 0)]))


def view_pixels(pixels: np.ndarray, view: int) -> np.ndarray:
    """(H, W, C) pixels under joint view `view`: rot90 d % 4 times, transposed when d >= 4, channels rolled."""
    d, c = VIEWS[view]
    out = np.rot90(pixels, d % 4, axes=(0, 1))
    if d >= 4:
        out = out.transpose(1, 0, 2)
    if c:
        out = np.roll(out, c, axis=2)
    return np.ascontiguousarray(out)


def _tokenizer_key(tokenizer_dir: str | Path) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        h.update((Path(tokenizer_dir) / name).read_bytes())
    return h.hexdigest()[:16]


def encode_images_cached(image_tokenizer, tokenizer_dir: str | Path, docs: Sequence[Document],
                         cache_dir: str | Path | None = None, batch: int = 256, views: int = 1) -> dict[str, np.ndarray]:
    """{doc id: codes (tokens_per_image,)} for each document's first image, or (views, tokens_per_image)
    with `views` > 1 (row v: the image under joint view v); computed once, then read from
    <cache>/image_codes/<tokenizer hash>/<documents hash>[-v<views>].npy."""
    docs = [d for d in docs if d.image is not None]
    h = hashlib.sha256()
    for d in docs:
        h.update(d.id.encode() + b"\0" + d.content_hash().encode())
    suffix = f"-v{views}" if views > 1 else ""
    path = Path(cache_dir or default_cache_dir()) / "image_codes" / _tokenizer_key(tokenizer_dir) / f"{h.hexdigest()[:16]}{suffix}.npy"
    if path.exists():
        codes = np.load(path, allow_pickle=False)
        log.info("image codes of %d documents read from %s", len(docs), path)
    else:
        def encode(chunk, v):
            px = batch_pixels(chunk)  # (B, C, H, W) float
            if v:
                px = torch.from_numpy(np.stack([view_pixels(p, v) for p in px.permute(0, 2, 3, 1).numpy()])).permute(0, 3, 1, 2)
            return image_tokenizer.encode(px).cpu().numpy()
        image_tokenizer.eval()  # deterministic codes (no dropout / codebook updates while encoding)
        with torch.no_grad():
            codes = np.stack([np.concatenate([encode(docs[i:i + batch], v) for i in range(0, len(docs), batch)])
                              for v in range(views)], axis=1).astype(np.int64)
            if views == 1:
                codes = codes[:, 0]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, codes)
        tmp.replace(path)
        log.info("encoded %d images to %s", len(docs), path)
    return {d.id: c for d, c in zip(docs, codes)}


def with_codes(doc: Document, codes: dict[str, np.ndarray]) -> Document:
    """The document with its image's cached codes attached (the format needs no tokenizer then); pixels
    are kept for image queries, metrics and reports."""
    segs = [ImageSegment(pixels=s.pixels, tokens=codes[doc.id]) if isinstance(s, ImageSegment) else s
            for s in doc.segments]
    return Document(id=doc.id, segments=segs, source=doc.source, metadata=doc.metadata)
