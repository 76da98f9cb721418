"""Recognition: does a generated image show the document that was asked for?

A stand-in for judging RA-CM3's rare-entity samples (section 4.2, figure 5). A document's label and group
are metadata keys the caller names (EmojiBench: the concept and the art style); by default the label is
the document's id and there is one group. Two modes:

- "exact": the gallery is every real document, and an image is recognised iff its nearest real image is
  the requested (label, group) document itself (EmojiBench, the headline's rule with the evaluation
  network of `ramm_lab.evaluation_network`: same concept AND same style, so the other style's image is a
  miss). Real images with identical pixels embed identically, so any of them counts as nearest.
- "group": the gallery is only the real images of the requested group, and an image is recognised when
  the nearest of them has the requested label. Every candidate shares the group, so an image of another
  group can still count as recognised (EmojiBench's original rule, kept to compare with older reports).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ramm.corpus.document import Document

MODES = ("group", "exact")
TIE = 1e-5  # cosines this close count as equal


@dataclass
class Recognition:
    rate: float  # fraction of images recognised (see the mode)
    predicted: list[str]  # label of the nearest gallery image, per generated image
    hits: list[bool]  # recognised, per generated image
    predicted_groups: list[str] = field(default_factory=list)  # group of that nearest gallery image


def nearest_labels(queries: np.ndarray, gallery: np.ndarray, gallery_labels: list[str]) -> list[str]:
    """Label of the most cosine-similar gallery vector for each L2-normalised query, (N, D) vs (M, D)."""
    return [gallery_labels[j] for j in nearest(queries, gallery, len(gallery_labels))]


def nearest(queries: np.ndarray, gallery: np.ndarray, n_labels: int | None = None) -> np.ndarray:
    """Index of the most cosine-similar gallery vector for each L2-normalised query, (N, D) vs (M, D)."""
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries {queries.shape} and gallery {gallery.shape} must be (N, D) and (M, D)")
    if (n_labels is not None and len(gallery) != n_labels) or not len(gallery):
        raise ValueError(f"gallery has {len(gallery)} vectors and {n_labels} labels; need equal, > 0")
    return (queries @ gallery.T).argmax(axis=1)  # (N,)


class Recognizer:
    """Embeds the real gallery once, then scores any number of generated sets against it.

    gallery: real documents with an image. label_key / group_key: the metadata keys of a document's label
    and group (None: the document id; one group "").
    mode: "group" (nearest among the requested group's images must have the label) or "exact" (nearest
    among all images must be the requested (label, group) document); see the module doc.
    """

    def __init__(self, encoder, gallery: list[Document], mode: str = "group", label_key: str | None = None,
                 group_key: str | None = None):
        if mode not in MODES:
            raise ValueError(f"recognition mode must be one of {MODES}, got {mode!r}")
        self.encoder, self.mode = encoder, mode
        by_group: dict[str, list[tuple[str, Document]]] = {}
        for d in gallery:
            missing = [k for k in (label_key, group_key) if k is not None and k not in d.metadata]
            if missing or d.image is None:
                raise ValueError(f"gallery document {d.id} needs an image" +
                                 "".join(f" and metadata {k!r}" for k in missing))
            label = d.id if label_key is None else str(d.metadata[label_key])
            by_group.setdefault("" if group_key is None else str(d.metadata[group_key]), []).append((label, d))
        if not by_group:
            raise ValueError("empty recognition gallery")
        if mode == "exact":
            rows = [(lab, g, d) for g, ds in by_group.items() for lab, d in ds]
            self.vectors = encoder.embed_image(np.stack([d.image for _, _, d in rows]))  # (M, D), every group
            self.labels = [(lab, g) for lab, g, _ in rows]
            self.index = {lab: j for j, lab in reversed(list(enumerate(self.labels)))}  # first row of each
            self.gallery = {}
        else:
            self.gallery = {g: (encoder.embed_image(np.stack([d.image for _, d in ds])), [lab for lab, _ in ds])
                            for g, ds in by_group.items()}  # group -> ((M, D) vectors, M labels)

    def __call__(self, images: np.ndarray, labels: list[str], groups: list[str] | None = None) -> Recognition:
        """images: uint8 (N, H, W, 3), image i generated for (labels[i], groups[i]) (groups None: all "")."""
        groups = [""] * len(labels) if groups is None else groups
        if not (len(images) == len(labels) == len(groups)):
            raise ValueError(f"got {len(images)} images, {len(labels)} labels and {len(groups)} groups")
        if not len(images):
            raise ValueError("recognition of zero images")
        if self.mode == "exact":
            return self._exact(images, labels, groups)
        unknown = sorted(set(groups) - set(self.gallery))
        if unknown:
            raise ValueError(f"no real image in group {unknown[0]!r} to recognise against")
        queries = self.encoder.embed_image(images)  # (N, D)
        predicted: list[str] = [""] * len(images)
        for group in sorted(set(groups)):
            rows = [i for i, g in enumerate(groups) if g == group]
            for i, c in zip(rows, nearest_labels(queries[rows], *self.gallery[group])):
                predicted[i] = c
        hits = [p == c for p, c in zip(predicted, labels)]
        return Recognition(rate=sum(hits) / len(hits), predicted=predicted, hits=hits, predicted_groups=list(groups))

    def _exact(self, images: np.ndarray, labels: list[str], groups: list[str]) -> Recognition:
        missing = [(c, g) for c, g in zip(labels, groups) if (c, g) not in self.index]
        if missing:
            raise ValueError(f"no real image of label {missing[0][0]!r} in group {missing[0][1]!r} to recognise against")
        sims = self.encoder.embed_image(images) @ self.vectors.T  # (N, M)
        best = sims.argmax(axis=1)
        want = np.array([self.index[(c, g)] for c, g in zip(labels, groups)])
        rows = np.arange(len(want))
        # pixel-identical real images embed identically: any of them being the requested one is a hit
        hits = (sims[rows, want] >= sims[rows, best] - TIE).tolist()
        got = [(c, g) if h else self.labels[j] for h, j, c, g in zip(hits, best, labels, groups)]
        return Recognition(rate=sum(hits) / len(hits), predicted=[c for c, _ in got], hits=hits,
                           predicted_groups=[g for _, g in got])
