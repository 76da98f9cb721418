"""The unified token vocabulary of the generator: text ids, then image codes, then special tokens.

    [0, text_size)                         text (byte-level BPE) ids
    [text_size, text_size + image_size)    image codes, offset by text_size (Chameleon's "vocabulary mapping")
    [image_end, size)                      special tokens, in SPECIALS order, then the sentinels <mask:0..n-1>

This is the one place the layout is defined; everything else asks a `Vocabulary`. Components that
need more ids (GRACE's atomic identifiers) append them past `size`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# <sep> closes the retrieved documents (RA-CM3 prepends them to the main input); <infill> opens the
# moved spans (CM3); <eos> closes the last infilled span; <break> separates two adjacent text segments.
SPECIALS = ("<pad>", "<doc>", "</doc>", "<img>", "</img>", "<sep>", "<infill>", "<eos>", "<break>")


@dataclass(frozen=True)
class Vocabulary:
    text_size: int  # entries of the text tokenizer
    image_size: int  # codebook size of the image tokenizer
    n_sentinels: int = 8  # <mask:i> tokens available to the causal-masked objective

    def __post_init__(self):
        if self.text_size <= 0 or self.image_size <= 0:
            raise ValueError(f"vocabulary sizes must be positive, got text={self.text_size} image={self.image_size}")
        if self.n_sentinels < 1:
            raise ValueError("need at least one sentinel: <mask:0> doubles as CFG's unconditional <mask>")

    @property
    def image_offset(self) -> int:
        return self.text_size

    @property
    def special_offset(self) -> int:
        return self.text_size + self.image_size

    @property
    def size(self) -> int:
        return self.special_offset + len(SPECIALS) + self.n_sentinels

    def special(self, name: str) -> int:
        try:
            return self.special_offset + SPECIALS.index(name)
        except ValueError:
            raise ValueError(f"unknown special token {name!r}; known: {SPECIALS}") from None

    pad = property(lambda self: self.special("<pad>"))
    doc = property(lambda self: self.special("<doc>"))
    doc_end = property(lambda self: self.special("</doc>"))
    img = property(lambda self: self.special("<img>"))
    img_end = property(lambda self: self.special("</img>"))
    sep = property(lambda self: self.special("<sep>"))
    infill = property(lambda self: self.special("<infill>"))
    eos = property(lambda self: self.special("<eos>"))
    brk = property(lambda self: self.special("<break>"))

    def sentinel(self, i: int) -> int:
        if not 0 <= i < self.n_sentinels:
            raise ValueError(f"sentinel index {i} out of range [0, {self.n_sentinels})")
        return self.special_offset + len(SPECIALS) + i

    @property
    def mask(self) -> int:
        """CM3Leon's CFG `<mask>`: the sentinel the model sees in place of a masked caption."""
        return self.sentinel(0)

    def sentinel_index(self, token: int) -> int | None:
        i = token - self.sentinel(0)
        return i if 0 <= i < self.n_sentinels else None

    # --- image code <-> LM id mapping ---
    def image_id(self, code):
        return np.asarray(code) + self.image_offset if not isinstance(code, int) else code + self.image_offset

    def code(self, token):
        return np.asarray(token) - self.image_offset if not isinstance(token, int) else token - self.image_offset

    def is_image(self, ids):
        ids = np.asarray(ids)
        return (ids >= self.image_offset) & (ids < self.special_offset)

    def is_text(self, ids):
        ids = np.asarray(ids)
        return (ids >= 0) & (ids < self.text_size)

    def is_special(self, ids):
        ids = np.asarray(ids)
        return (ids >= self.special_offset) & (ids < self.size)

    def token_name(self, token: int) -> str:
        """Human-readable name of one id, for debugging sequences."""
        if token < self.text_size:
            return f"t{token}"
        if token < self.special_offset:
            return f"i{token - self.image_offset}"
        j = token - self.special_offset
        if j < len(SPECIALS):
            return SPECIALS[j]
        if j < len(SPECIALS) + self.n_sentinels:
            return f"<mask:{j - len(SPECIALS)}>"
        return f"<extra:{token - self.size}>"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        return cls(**{k: d[k] for k in ("text_size", "image_size", "n_sentinels") if k in d})
