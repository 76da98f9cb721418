"""Recognition: does a generated image show the concept that was asked for?

EmojiBench's stand-in for judging RA-CM3's rare-entity samples (section 4.2, figure 5): an image is
recognised when its nearest real image, by our image encoder, among all concepts drawn in the
requested style, is the requested concept. Every candidate in that gallery shares the style, so
content decides; the document of the requested concept itself is in it, as it should be.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ramm.corpus.document import Document


@dataclass
class Recognition:
    rate: float  # fraction of images whose nearest target-style real image is the requested concept
    predicted: list[str]  # concept of that nearest real image, per generated image
    hits: list[bool]  # predicted == requested, per generated image


def nearest_concepts(queries: np.ndarray, gallery: np.ndarray, gallery_concepts: list[str]) -> list[str]:
    """Concept of the most cosine-similar gallery vector for each L2-normalised query, (N, D) vs (M, D)."""
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries {queries.shape} and gallery {gallery.shape} must be (N, D) and (M, D)")
    if len(gallery) != len(gallery_concepts) or not len(gallery):
        raise ValueError(f"gallery has {len(gallery)} vectors and {len(gallery_concepts)} concepts; need equal, > 0")
    best = (queries @ gallery.T).argmax(axis=1)  # (N,)
    return [gallery_concepts[j] for j in best]


class Recognizer:
    """Embeds the real gallery once (per style), then scores any number of generated sets against it.

    gallery: real documents of all concepts, each with an image and metadata "concept" and "style".
    """

    def __init__(self, encoder, gallery: list[Document]):
        self.encoder = encoder
        by_style: dict[str, list[Document]] = {}
        for d in gallery:
            if "concept" not in d.metadata or "style" not in d.metadata or d.image is None:
                raise ValueError(f"gallery document {d.id} needs metadata concept and style and an image")
            by_style.setdefault(d.metadata["style"], []).append(d)
        if not by_style:
            raise ValueError("empty recognition gallery")
        self.gallery = {s: (encoder.embed_image(np.stack([d.image for d in docs])), [d.metadata["concept"] for d in docs])
                        for s, docs in by_style.items()}  # style -> ((M, D) vectors, M concepts)

    def __call__(self, images: np.ndarray, concepts: list[str], styles: list[str]) -> Recognition:
        """images: uint8 (N, H, W, 3), image i generated for (concepts[i], styles[i])."""
        if not (len(images) == len(concepts) == len(styles)):
            raise ValueError(f"got {len(images)} images, {len(concepts)} concepts and {len(styles)} styles")
        if not len(images):
            raise ValueError("recognition of zero images")
        unknown = sorted(set(styles) - set(self.gallery))
        if unknown:
            raise ValueError(f"no real image in style {unknown[0]!r} to recognise against")
        queries = self.encoder.embed_image(images)  # (N, D)
        predicted: list[str] = [""] * len(images)
        for style in sorted(set(styles)):
            rows = [i for i, s in enumerate(styles) if s == style]
            for i, c in zip(rows, nearest_concepts(queries[rows], *self.gallery[style])):
                predicted[i] = c
        hits = [p == c for p, c in zip(predicted, concepts)]
        return Recognition(rate=sum(hits) / len(hits), predicted=predicted, hits=hits)
