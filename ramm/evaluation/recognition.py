"""Recognition: does a generated image show the document that was asked for?

EmojiBench's stand-in for judging RA-CM3's rare-entity samples (section 4.2, figure 5). Two modes:

- "exact" (the headline's, with the evaluation network of `ramm.evaluation.evaluator`): the gallery
  is every real document of every style, and an image is recognised iff its nearest real image is
  the requested document itself: same concept AND same style (and, with skin tones, same variant,
  since each variant is its own concept). Returning the other style's image is a miss. Real images
  with identical pixels (the corpus has a few) embed identically, so any of them counts as nearest.
- "style" (the original): the gallery is only the real images drawn in the requested style, and an
  image is recognised when the nearest of them is the requested concept. Every candidate shares the
  style, so an image of the other style can still count as recognised; kept to compare with older
  reports.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ramm.corpus.document import Document

MODES = ("style", "exact")
TIE = 1e-5  # cosines this close count as equal


@dataclass
class Recognition:
    rate: float  # fraction of images recognised (see the mode)
    predicted: list[str]  # concept of the nearest gallery image, per generated image
    hits: list[bool]  # recognised, per generated image
    predicted_styles: list[str] = field(default_factory=list)  # style of that nearest gallery image


def nearest_concepts(queries: np.ndarray, gallery: np.ndarray, gallery_concepts: list[str]) -> list[str]:
    """Concept of the most cosine-similar gallery vector for each L2-normalised query, (N, D) vs (M, D)."""
    return [gallery_concepts[j] for j in nearest(queries, gallery, len(gallery_concepts))]


def nearest(queries: np.ndarray, gallery: np.ndarray, n_labels: int | None = None) -> np.ndarray:
    """Index of the most cosine-similar gallery vector for each L2-normalised query, (N, D) vs (M, D)."""
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries {queries.shape} and gallery {gallery.shape} must be (N, D) and (M, D)")
    if (n_labels is not None and len(gallery) != n_labels) or not len(gallery):
        raise ValueError(f"gallery has {len(gallery)} vectors and {n_labels} concepts; need equal, > 0")
    return (queries @ gallery.T).argmax(axis=1)  # (N,)


class Recognizer:
    """Embeds the real gallery once, then scores any number of generated sets against it.

    gallery: real documents, each with an image and metadata "concept" and "style".
    mode: "style" (nearest among the requested style's images must be the concept) or "exact"
    (nearest among all images must be the requested (concept, style) document); see the module doc.
    """

    def __init__(self, encoder, gallery: list[Document], mode: str = "style"):
        if mode not in MODES:
            raise ValueError(f"recognition mode must be one of {MODES}, got {mode!r}")
        self.encoder, self.mode = encoder, mode
        by_style: dict[str, list[Document]] = {}
        for d in gallery:
            if "concept" not in d.metadata or "style" not in d.metadata or d.image is None:
                raise ValueError(f"gallery document {d.id} needs metadata concept and style and an image")
            by_style.setdefault(d.metadata["style"], []).append(d)
        if not by_style:
            raise ValueError("empty recognition gallery")
        if mode == "exact":
            docs = [d for ds in by_style.values() for d in ds]
            self.vectors = encoder.embed_image(np.stack([d.image for d in docs]))  # (M, D), every style
            self.labels = [(d.metadata["concept"], d.metadata["style"]) for d in docs]
            self.index = {lab: j for j, lab in reversed(list(enumerate(self.labels)))}  # first row of each
            self.gallery = {}
        else:
            self.gallery = {s: (encoder.embed_image(np.stack([d.image for d in docs])), [d.metadata["concept"] for d in docs])
                            for s, docs in by_style.items()}  # style -> ((M, D) vectors, M concepts)

    def __call__(self, images: np.ndarray, concepts: list[str], styles: list[str]) -> Recognition:
        """images: uint8 (N, H, W, 3), image i generated for (concepts[i], styles[i])."""
        if not (len(images) == len(concepts) == len(styles)):
            raise ValueError(f"got {len(images)} images, {len(concepts)} concepts and {len(styles)} styles")
        if not len(images):
            raise ValueError("recognition of zero images")
        if self.mode == "exact":
            return self._exact(images, concepts, styles)
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
        return Recognition(rate=sum(hits) / len(hits), predicted=predicted, hits=hits, predicted_styles=list(styles))

    def _exact(self, images: np.ndarray, concepts: list[str], styles: list[str]) -> Recognition:
        missing = [(c, s) for c, s in zip(concepts, styles) if (c, s) not in self.index]
        if missing:
            raise ValueError(f"no real image of concept {missing[0][0]!r} in style {missing[0][1]!r} to recognise against")
        sims = self.encoder.embed_image(images) @ self.vectors.T  # (N, M)
        best = sims.argmax(axis=1)
        want = np.array([self.index[(c, s)] for c, s in zip(concepts, styles)])
        rows = np.arange(len(want))
        # pixel-identical real images embed identically: any of them being the requested one is a hit
        hits = (sims[rows, want] >= sims[rows, best] - TIE).tolist()
        got = [(c, s) if h else self.labels[j] for h, j, c, s in zip(hits, best, concepts, styles)]
        return Recognition(rate=sum(hits) / len(hits), predicted=[c for c, _ in got], hits=hits,
                           predicted_styles=[s for _, s in got])
