"""The Document: an ordered, interleaved list of text and image segments.

It is the unit the memory stores and the generator reads and writes (RA-CM3 section 3: a
"multimodal document" is any interleaving of text and images), so it is not limited to
(image, caption) pairs.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np
from PIL import Image

# Pillow's default bomb guard warns at ~89 Mpx; we treat anything past this as bad input. Decoding
# reduces a large image towards the size asked for (JPEG draft, box reduce) before converting it to RGB.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
MAX_DECODED_SIDE = 1024  # asked for no size, an image is decoded reduced until its longer side fits this
MAX_IMAGE_BYTES = 64 * 1024 * 1024  # an image file larger than this is refused before a byte is read


class BadItem(ValueError):
    """A corpus item that cannot be read; `reason` is a short key used in skip summaries."""

    def __init__(self, reason: str, item: str, detail: str = ""):
        self.reason, self.item, self.detail = reason, item, detail
        super().__init__(f"{reason}: {item}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class TextSegment:
    text: str

    @property
    def kind(self) -> str:
        return "text"


@dataclass(frozen=True, eq=False)
class ImageSegment:
    """An RGB uint8 image (H, W, 3); `tokens` may hold its VQ codes when known."""

    pixels: np.ndarray | None = None
    tokens: np.ndarray | None = None

    def __post_init__(self):
        if self.pixels is None and self.tokens is None:
            raise ValueError("ImageSegment needs pixels or tokens")
        if self.pixels is not None:
            p = self.pixels
            if not (isinstance(p, np.ndarray) and p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3):
                raise ValueError(f"ImageSegment pixels must be uint8 (H, W, 3), got "
                                 f"{getattr(p, 'dtype', type(p))} {getattr(p, 'shape', '')}")

    @property
    def kind(self) -> str:
        return "image"

    def __eq__(self, other):
        if not isinstance(other, ImageSegment):
            return NotImplemented
        return _arr_eq(self.pixels, other.pixels) and _arr_eq(self.tokens, other.tokens)

    __hash__ = None  # mutable numpy payload

    @classmethod
    def from_pil(cls, img: Image.Image, background=(255, 255, 255)) -> "ImageSegment":
        return cls(pixels=pil_to_rgb(img, background))

    def to_pil(self) -> Image.Image:
        if self.pixels is None:
            raise ValueError("this image segment holds only tokens; decode them with an ImageTokenizer")
        return Image.fromarray(self.pixels, "RGB")

    def to_tensor(self):
        """(3, H, W) float in [0, 1]."""
        # lazy: ramm.corpus reads and checks corpora without torch
        import torch
        return torch.from_numpy(self.pixels).permute(2, 0, 1).float().div(255.0)


Segment = Union[TextSegment, ImageSegment]


def _arr_eq(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.array_equal(a, b))


def pil_to_rgb(img: Image.Image, background=(255, 255, 255)) -> np.ndarray:
    """RGB uint8 array; transparency composited on `background` (emoji PNGs are RGBA)."""
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, background + (255,))
        img = Image.alpha_composite(bg, img)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def decode_image_bytes(data: bytes, item: str = "?", size: int | None = None,
                       max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode PNG/JPEG bytes to RGB uint8, raising BadItem (never a raw PIL error) on bad input: the one
    bounded decoder every path uses. An image over `max_pixels` (width x height, read from its header) is
    refused before it is decoded; a large one is decoded reduced (JPEG DCT scaling, then an integer box
    reduce), so its full-resolution RGB copy never exists: to size x size with `size`, else until its
    longer side fits MAX_DECODED_SIDE (aspect kept)."""
    if not data:
        raise BadItem("empty_image", item)
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise BadItem("image_too_large", item, f"{w}x{h} > {max_pixels} px")
            if img.format == "JPEG" and (size is not None or max(w, h) > MAX_DECODED_SIDE):
                img.draft("RGB", (size, size) if size is not None else (MAX_DECODED_SIDE, MAX_DECODED_SIDE))
            img.load()
            factor = min(img.size) // (2 * size) if size is not None else -(-max(img.size) // MAX_DECODED_SIDE)
            if factor >= 2:
                if img.mode not in ("L", "LA", "RGB", "RGBA"):
                    img = img.convert("L" if img.mode in ("1", "I", "I;16", "F") else "RGBA")
                img = img.reduce(factor)
            if size is not None and img.size != (size, size):
                img = img.convert("RGBA").resize((size, size), Image.LANCZOS)
            return pil_to_rgb(img)
    except BadItem:
        raise
    except Image.DecompressionBombError as e:
        raise BadItem("image_too_large", item, str(e)) from None
    except Image.UnidentifiedImageError:  # its message shows the BytesIO object, not the file
        raise BadItem("corrupt_image", item, "not an image format Pillow reads") from None
    except Exception as e:  # PIL raises many types for corrupt/truncated data
        raise BadItem("corrupt_image", item, f"{type(e).__name__}: {e}") from None


def read_image_file(path: str | Path, item: str | None = None, size: int | None = None) -> np.ndarray:
    """An image file decoded by `decode_image_bytes`; BadItem naming it when it is missing, unreadable or
    over MAX_IMAGE_BYTES (checked before it is read)."""
    path = Path(path)
    item = item or str(path)
    try:
        n = path.stat().st_size
        if not path.is_file():
            raise BadItem("missing_file", item, f"{path} is not a file")
        if n > MAX_IMAGE_BYTES:
            raise BadItem("file_too_large", item, f"{path}: {n} bytes > {MAX_IMAGE_BYTES}")
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadItem("missing_file", item, str(path)) from None
    except OSError as e:
        raise BadItem("unreadable_file", item, f"{path}: {e.strerror}") from None
    return decode_image_bytes(data, item if str(path) in item else f"{item} ({path})", size)


def resize_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> (size, size, 3), the loaders' resize (LANCZOS)."""
    if pixels.shape[:2] == (size, size):
        return pixels
    return np.array(Image.fromarray(pixels, "RGB").resize((size, size), Image.LANCZOS), dtype=np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


@dataclass(eq=True)
class Document:
    """id: stable across runs; source: where it came from (corpus name/path); metadata: JSON-able."""

    id: str
    segments: list[Segment]
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not self.id:
            raise ValueError("Document id must be non-empty")
        for s in self.segments:
            if not isinstance(s, (TextSegment, ImageSegment)):
                raise ValueError(f"document {self.id}: segment of unknown type {type(s).__name__}")

    @classmethod
    def from_pair(cls, id: str, caption: str, image: np.ndarray | Image.Image, **kw) -> "Document":
        """The common case: a caption followed by its image (EmojiBench's order)."""
        img = ImageSegment.from_pil(image) if isinstance(image, Image.Image) else ImageSegment(pixels=image)
        return cls(id=id, segments=[TextSegment(caption), img], **kw)

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.segments if isinstance(s, TextSegment)]

    @property
    def images(self) -> list[ImageSegment]:
        return [s for s in self.segments if isinstance(s, ImageSegment)]

    @property
    def text(self) -> str:
        """All text segments joined; the caption for a pair document."""
        return " ".join(self.texts)

    @property
    def image(self) -> np.ndarray | None:
        """Pixels of the first image, or None."""
        imgs = self.images
        return imgs[0].pixels if imgs else None

    @property
    def modalities(self) -> set[str]:
        return {s.kind for s in self.segments}

    @property
    def is_mixed_modal(self) -> bool:
        return self.modalities == {"text", "image"}

    def content_hash(self) -> str:
        """Hash of the content (not the id): equal for exact duplicates."""
        h = hashlib.sha256()
        for s in self.segments:
            if isinstance(s, TextSegment):
                h.update(b"T" + s.text.encode("utf-8"))
            else:
                h.update(b"I")
                if s.pixels is not None:
                    h.update(str(s.pixels.shape).encode() + s.pixels.tobytes())
                else:
                    h.update(b"tok" + np.asarray(s.tokens, dtype=np.int64).tobytes())
        return h.hexdigest()

    # --- JSON form: used by the memory's store and the HTTP API. Images as PNG base64. ---
    def to_dict(self) -> dict:
        segs = []
        for s in self.segments:
            if isinstance(s, TextSegment):
                segs.append({"type": "text", "text": s.text})
            else:
                d: dict[str, Any] = {"type": "image"}
                if s.pixels is not None:
                    d["png"] = base64.b64encode(encode_png(s.pixels)).decode("ascii")
                if s.tokens is not None:
                    d["tokens"] = np.asarray(s.tokens).astype(int).tolist()
                segs.append(d)
        return {"id": self.id, "source": self.source, "metadata": self.metadata, "segments": segs}

    @classmethod
    def from_dict(cls, d: dict) -> "Document":
        try:
            segs: list[Segment] = []
            for s in d["segments"]:
                if s["type"] == "text":
                    segs.append(TextSegment(s["text"]))
                elif s["type"] == "image":
                    px = decode_image_bytes(base64.b64decode(s["png"]), d.get("id", "?")) if "png" in s else None
                    tok = np.asarray(s["tokens"], dtype=np.int64) if "tokens" in s else None
                    segs.append(ImageSegment(pixels=px, tokens=tok))
                else:
                    raise ValueError(f"unknown segment type {s['type']!r}")
            return cls(id=d["id"], segments=segs, source=d.get("source", ""), metadata=d.get("metadata", {}))
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed document dict ({e!r}): keys {sorted(d) if isinstance(d, dict) else d}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, s: str) -> "Document":
        return cls.from_dict(json.loads(s))


def batch_pixels(docs: Iterable[Document], size: int | None = None):
    """Stack each document's first image into a float tensor (B, 3, H, W) in [0, 1]; `size` resizes
    each to size x size first (a user's corpus mixes sizes)."""
    # lazy: ramm.corpus reads and checks corpora without torch
    import torch
    pixels = [d.image if size is None else resize_pixels(d.image, size) for d in docs]
    shapes = sorted({p.shape for p in pixels})
    if len(shapes) > 1:
        raise ValueError(f"images of different sizes {shapes[:3]} cannot form one batch: give a size to resize to")
    return torch.stack([ImageSegment(pixels=p).to_tensor() for p in pixels])
