"""Image identifiers for generative cross-modal retrieval (GRACE, Li et al. 2024, sec. 3.2).

Every memorized image gets a token sequence that the generator learns to emit; all end in `</doc>`, so
the set is prefix-free and a `PrefixTrie` over it constrains decoding.

    numeric     the index as separate digits, "1 2 3"                 (text tokens)
    string      the index as plain text, "123"                        (text tokens)
    semantic    the image's caption, made unique                      (text tokens)
    structured  recursive k-means path over retriever image embeddings (k = 30, <= 30 per leaf), "4 17 2"
    atomic      one new vocabulary id per image, appended past `Vocabulary.size`
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ramm.config import SCHEMES
from ramm.decoding.trie import PrefixTrie
from ramm.tokenizers.vocab import Vocabulary
from ramm.utils import atomic_write_json


def kmeans_paths(embeddings: np.ndarray, k: int = 30, leaf_size: int = 30, seed: int = 0) -> list[list[int]]:
    """GRACE's structured identifiers: cluster into k, recurse into clusters larger than `leaf_size`;
    an image's path is its cluster index at each level, then its position inside the leaf."""
    # lazy: faiss (a slow import) only for the semantic identifiers' k-means
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"embeddings must be a non-empty (N, D) array, got shape {x.shape}")
    if k < 2 or leaf_size < 1:
        raise ValueError(f"need k >= 2 and leaf_size >= 1, got k={k} leaf_size={leaf_size}")
    paths: list[list[int]] = [[] for _ in range(len(x))]

    def split(rows: np.ndarray, depth: int) -> None:
        if len(rows) <= leaf_size:
            for pos, r in enumerate(rows):
                paths[r].append(pos)
            return
        n_clusters = min(k, len(rows))
        km = faiss.Kmeans(x.shape[1], n_clusters, niter=20, nredo=5, seed=seed + depth, min_points_per_centroid=1)
        km.train(x[rows])
        _, assign = km.index.search(x[rows], 1)
        assign = assign[:, 0]
        if len(np.unique(assign)) == 1:  # identical points: k-means cannot split them, chunk evenly
            assign = np.arange(len(rows)) % n_clusters
        for c in np.unique(assign):
            members = rows[assign == c]
            for r in members:
                paths[r].append(int(c))
            split(members, depth + 1)

    split(np.arange(len(x)), 0)
    return paths


@dataclass
class Identifiers:
    """Image id <-> identifier token sequence for one scheme; saved as identifiers.json with the model."""

    scheme: str  # one of SCHEMES
    ids: list[str]  # image (document) ids, in index order
    strings: list[str]  # readable form of each identifier ("1 2 3", "japan flag", "<id:7>")
    tokens: list[list[int]]  # unified-vocabulary token sequence of each identifier, ending in </doc>
    new_tokens: int = 0  # ids appended past the vocabulary (atomic scheme); the model must be resized
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown identifier scheme {self.scheme!r}; choose one of {SCHEMES}")
        if not (len(self.ids) == len(self.strings) == len(self.tokens)):
            raise ValueError("ids, strings and tokens must have the same length")
        self._index = {d: i for i, d in enumerate(self.ids)}
        if len(self._index) != len(self.ids):
            dup = next(d for d, n in Counter(self.ids).items() if n > 1)
            raise ValueError(f"image id {dup!r} appears twice")
        seen: dict[tuple, int] = {}
        for i, t in enumerate(self.tokens):
            j = seen.setdefault(tuple(t), i)
            if j != i:
                raise ValueError(f"images {self.ids[j]!r} and {self.ids[i]!r} got the same identifier {self.strings[i]!r}")

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, image_id: str) -> int:
        try:
            return self._index[image_id]
        except KeyError:
            raise ValueError(f"image {image_id!r} has no identifier") from None

    def token_sequence(self, image_id: str) -> list[int]:
        return self.tokens[self.index(image_id)]

    def trie(self) -> PrefixTrie:
        """Trie over all identifiers; its values are indices into `ids`."""
        return PrefixTrie(self.tokens)

    def save(self, path: str | Path) -> None:
        atomic_write_json(Path(path), {"scheme": self.scheme, "ids": self.ids, "strings": self.strings,
                                       "tokens": self.tokens, "new_tokens": self.new_tokens})

    @classmethod
    def load(cls, path: str | Path) -> "Identifiers":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (not a GRACE model directory?)")
        d = json.loads(path.read_text())
        return cls(d["scheme"], d["ids"], d["strings"], [list(t) for t in d["tokens"]], d.get("new_tokens", 0))


def unique_strings(strings: list[str]) -> list[str]:
    """Semantic ids: a repeated caption gets " (2)", " (3)", ... so that every image has its own."""
    count: Counter = Counter()
    out = []
    for s in strings:
        count[s] += 1
        out.append(s if count[s] == 1 else f"{s} ({count[s]})")
    return out


def build_identifiers(scheme: str, image_ids: Sequence[str], vocab: Vocabulary, text_tokenizer,
                      captions: Sequence[str] | None = None, embeddings: np.ndarray | None = None,
                      k: int = 30, leaf_size: int = 30, seed: int = 0) -> Identifiers:
    """Identifiers for `image_ids` under `scheme`; semantic needs `captions`, structured `embeddings` (N, D)."""
    n = len(image_ids)
    if n == 0:
        raise ValueError("no images to give identifiers to")
    if scheme == "numeric":
        strings = [" ".join(str(i)) for i in range(n)]
    elif scheme == "string":
        strings = [str(i) for i in range(n)]
    elif scheme == "semantic":
        if captions is None or len(captions) != n:
            raise ValueError("the semantic scheme needs one caption per image")
        empty = [image_ids[i] for i, c in enumerate(captions) if not c or not c.strip()]
        if empty:
            raise ValueError(f"image {empty[0]!r} has an empty caption (semantic identifiers need one)")
        strings = unique_strings([c.strip() for c in captions])
    elif scheme == "structured":
        if embeddings is None or len(embeddings) != n:
            raise ValueError("the structured scheme needs one embedding per image")
        strings = [" ".join(map(str, p)) for p in kmeans_paths(embeddings, k, leaf_size, seed)]
    elif scheme == "atomic":
        strings = [f"<id:{i}>" for i in range(n)]
        tokens = [[vocab.size + i, vocab.doc_end] for i in range(n)]
        return Identifiers(scheme, list(image_ids), strings, tokens, new_tokens=n)
    else:
        raise ValueError(f"unknown identifier scheme {scheme!r}; choose one of {SCHEMES}")
    tokens = [[*text_tokenizer.encode(s), vocab.doc_end] for s in strings]
    return Identifiers(scheme, list(image_ids), strings, tokens)


def identifier_text(ids: Identifiers, tokens: Sequence[int], text_tokenizer, vocab: Vocabulary) -> str:
    """Decode a token sequence back to its readable identifier (the round trip of `strings`)."""
    body = [t for t in tokens if t != vocab.doc_end]
    if ids.scheme == "atomic":
        return " ".join(f"<id:{t - vocab.size}>" for t in body)
    return text_tokenizer.decode(body)
