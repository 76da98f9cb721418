"""The retrieval memory (RA-CM3 section 3.2): what every caller of a memory uses, whichever store holds it.

A memory is a directory whose `config.json` names its backend, with `encoder/`, its own copy of the encoder
that embedded the documents (queries use it):
  faiss   (default) FaissMemory, ramm/retrieval/faiss_memory.py: a FAISS index and an SQLite store in the
          directory itself; one machine, one writer at a time, kill -9 safe.
  milvus  MilvusMemory, ramm/retrieval/milvus_memory.py: a Milvus collection (a Milvus Lite file, or a
          server / cluster by URI) holding ids, vectors and documents; many writers, many readers.
`Memory.load(dir)` opens either; `ramm memory build --backend milvus --uri URI` makes the second.

This class holds what does not depend on the backend: query embedding, the encoder check (any other encoder
is refused by its fingerprint: its vectors would not compare with the stored ones), the retrieval
strategies over the nearest candidates, and ingestion (bad items and duplicate ids skipped and counted,
documents already present left alone, so an interrupted build resumes). A backend gives the primitives
below, on `keys`: what its search returns for a document (a store row for FAISS, the id for Milvus).
"""
from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Hashable, Iterable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ramm.corpus.document import BadItem, Document
from ramm.retrieval.encoder import Encoder, encoder_fingerprint, load_encoder
from ramm.retrieval.strategies import Strategy, choose, eligible, get_strategy, pool_size

log = logging.getLogger(__name__)

ENCODER_DIR = "encoder"
BACKENDS = ("faiss", "milvus")

Key = Hashable


def memory_class(backend: str) -> type["Memory"]:
    """The Memory implementation of a backend name (`faiss` | `milvus`)."""
    if backend == "faiss":
        # lazy: import cycle, the backends subclass Memory
        from ramm.retrieval.faiss_memory import FaissMemory
        return FaissMemory
    if backend == "milvus":
        # lazy: import cycle, and pymilvus is optional
        from ramm.retrieval.milvus_memory import MilvusMemory
        return MilvusMemory
    raise ValueError(f"unknown memory backend {backend!r}; choose from {list(BACKENDS)}")


def memory_backend(root: str | Path) -> str:
    """The backend a memory directory's config.json names ("faiss" when it names none: every older memory)."""
    cfg_file = Path(root) / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"no memory at {root} (missing config.json)")
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{cfg_file}: not a readable memory config ({e})") from None
    return raw.get("backend", "faiss") if isinstance(raw, dict) else "faiss"


def _as_document(item: Any) -> Document:
    """Corpus items may be Documents, Document dicts, or the BadItem a loader could not read."""
    if isinstance(item, Exception):
        raise item if isinstance(item, ValueError) else BadItem("unreadable", "?", repr(item))
    doc = Document.from_dict(item) if isinstance(item, dict) else item
    if not isinstance(doc, Document):
        raise BadItem("not_a_document", repr(item)[:60])
    if not doc.texts and doc.image is None:
        raise BadItem("empty_document", doc.id, "no text and no image pixels")
    return doc


class Memory:
    """A memory of documents and their embeddings; `Memory.load(dir)` opens one of any backend and
    `Memory.build(corpus, encoder, dir)` builds the default (FAISS) one."""

    max_fetch: float = float("inf")  # most candidates one search may ask the backend for

    def __init__(self, root: str | Path, config, encoder: Encoder | None = None):
        """`config` has at least `dim`, `encoder` (a path, a record) and `encoder_sha256`."""
        self.root, self.config = Path(root), config
        self._encoder = None
        if encoder is not None:
            self._check_encoder(encoder, "the given encoder")
            self._encoder = encoder
        self.stats: Counter = Counter()  # what the last build/add did: added, skipped, reasons

    # ---- opening --------------------------------------------------------------------------------
    @classmethod
    def load(cls, root: str | Path, encoder: Encoder | None = None, snapshot: bool = False) -> "Memory":
        """Open the memory at `root` with the backend its config.json names (reading never writes).
        snapshot=True: a short read-only look (CLI search, evaluation) that creates no file and works on a
        read-only mount; `add` is refused then (a Milvus memory holds nothing on disk to protect)."""
        return memory_class(memory_backend(root)).load(root, encoder, snapshot=snapshot)

    @classmethod
    def build(cls, corpus: Iterable, encoder: Encoder | str | Path, out_dir: str | Path, **options) -> "Memory":
        """Build (or resume building) the default FAISS memory; see FaissMemory.build for `options`."""
        return memory_class("faiss").build(corpus, encoder, out_dir, **options)

    def _check_encoder(self, encoder: Encoder, what: str) -> None:
        if not self.config.encoder_sha256:
            return
        fp = encoder_fingerprint(encoder)
        if fp != self.config.encoder_sha256:
            raise ValueError(
                f"memory {self.root} was built with encoder {self.config.encoder_sha256[:12]}, but {what} is "
                f"{fp[:12]} (retrained, or another model): its vectors do not compare with the stored ones. "
                f"Query with the memory's own copy ({self.root / ENCODER_DIR}) or build a new memory.")

    @property
    def encoder(self) -> Encoder:
        """The memory's own copy of its encoder (older memories: the folder they name), fingerprint-checked."""
        if self._encoder is None:
            own = self.root / ENCODER_DIR
            path = own if (own / "config.json").is_file() else self.config.encoder
            if not path:
                raise ValueError(f"memory {self.root} has no encoder/ copy and records no encoder path; "
                                 f"pass encoder= to Memory.load")
            encoder = load_encoder(path)
            self._check_encoder(encoder, f"the encoder at {path}")
            self._encoder = encoder
        return self._encoder

    # ---- what a backend gives ---------------------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def ids(self) -> list[str]:
        """Every document id (FAISS: in insertion order; Milvus: sorted)."""
        raise NotImplementedError

    def get(self, id: str) -> Document:
        """The document stored under `id`; KeyError when there is none."""
        raise NotImplementedError

    def documents(self, ids: Sequence[str]) -> list[Document]:
        """The documents stored under `ids`, in their order, in a few reads (KeyError naming a missing one)."""
        keys = self._keys_of(list(ids))
        missing = [i for i in ids if i not in keys]
        if missing:
            raise KeyError(f"no document {missing[0]!r} in the memory ({len(missing)} missing)")
        return self._documents([keys[i] for i in ids])

    def add(self, docs: Iterable, batch_size: int = 256, progress: bool = False) -> Counter:
        """Store documents whose ids are new (those present are left alone); returns `stats`."""
        raise NotImplementedError

    @property
    def index_description(self) -> str:
        """The index in use and its search parameters, for people."""
        raise NotImplementedError

    def _candidates(self, q: np.ndarray, n: int) -> list[list[tuple[Key, float]]]:
        """Per query vector (rows of q, checked), up to n (key, inner product), best first."""
        raise NotImplementedError

    def _keys_of(self, ids: list[str]) -> dict[str, Key]:
        raise NotImplementedError

    def _ids_of(self, keys: list[Key]) -> dict[Key, str]:
        raise NotImplementedError

    def _hashes(self, keys: list[Key]) -> dict[Key, str]:
        """{key: content hash} (Document.content_hash)."""
        raise NotImplementedError

    def _keys_by_hash(self, hashes: Iterable[str]) -> dict[str, set]:
        """{hash: every key whose content has it} (exact duplicates), for the given hashes."""
        raise NotImplementedError

    def _embeddings(self, keys: list[Key]) -> np.ndarray:
        """(len(keys), dim) stored vectors, in the order of keys."""
        raise NotImplementedError

    def _documents(self, keys: list[Key]) -> list[Document]:
        raise NotImplementedError

    def _begin_ingest(self) -> Any:
        """A mark telling the documents this ingestion stores from those stored before it."""
        raise NotImplementedError

    def _present(self, ids: list[str], mark: Any) -> dict[str, bool]:
        """{id: stored since `mark`} for the ids already stored."""
        raise NotImplementedError

    def _write(self, docs: list[Document], embeddings: np.ndarray, mark: Any) -> int:
        """Store one batch (all or none of it); returns how many were stored (a backend may skip, counted)."""
        raise NotImplementedError

    # ---- ingestion ----------------------------------------------------------------------------
    def _skip(self, reason: str) -> None:
        self.stats["skipped"] += 1
        self.stats[f"skipped_{reason}"] += 1

    def _ingest(self, corpus: Iterable, batch_size: int, progress: bool) -> None:
        """Duplicate ids: the first copy wins, at any batch size; later copies are skips."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.stats = Counter()
        mark = self._begin_ingest()
        items = iter(tqdm(corpus, desc="memory", unit="doc", disable=not progress))
        while batch := list(itertools.islice(items, batch_size)):
            docs: dict[str, Document] = {}
            for item in batch:
                try:
                    doc = _as_document(item)
                except ValueError as e:
                    self._skip(getattr(e, "reason", "bad_document"))
                    log.warning("skipping corpus item: %s", e)
                    continue
                if doc.id in docs:
                    self._skip("duplicate_id")
                    continue
                docs[doc.id] = doc
            present = self._present(list(docs), mark)
            for mine in present.values():
                if mine:
                    self._skip("duplicate_id")
                else:
                    self.stats["already_present"] += 1
            new = [d for i, d in docs.items() if i not in present]
            if new:
                emb = self.encoder.embed_documents(new)
                bad = ~np.isfinite(emb).all(axis=1)
                if bad.any():
                    raise ValueError(f"the encoder gave non-finite embeddings for {int(bad.sum())} document(s), "
                                     f"e.g. {new[int(np.argmax(bad))].id!r}: refusing to store them")
                self.stats["added"] += self._write(new, emb, mark)
        log.info("memory %s: %s", self.root, dict(self.stats))

    # ---- search -------------------------------------------------------------------------------
    def embed_query(self, query: str | np.ndarray | Document) -> np.ndarray:
        """(1, dim): text -> text tower, uint8 (H, W, 3) image -> image tower, Document -> mixed."""
        if isinstance(query, str):
            if not query.strip():
                raise ValueError("the search query is empty")
            return self.encoder.embed_text([query])
        if isinstance(query, np.ndarray):
            return self.encoder.embed_image(query[None] if query.ndim == 3 else query)
        if isinstance(query, Document):
            return self.encoder.embed_documents([query])
        raise ValueError(f"a query is a text, a uint8 image array or a Document, got {type(query).__name__}")

    def check_queries(self, q: np.ndarray) -> np.ndarray:
        """C-contiguous float32 (N, dim) and finite, or ValueError."""
        q = np.asarray(q)
        if q.ndim != 2 or q.shape[1] != self.config.dim:
            raise ValueError(f"vectors must be (N, {self.config.dim}), got {q.shape}")
        if not np.isfinite(q).all():
            raise ValueError("the query embedding is not finite (NaN or inf): nothing to search with")
        return np.ascontiguousarray(q, dtype=np.float32)

    def search(self, query: str | np.ndarray | Document, k: int = 5, exclude_ids: Sequence[str] = (),
               strategy: Strategy | str | None = None) -> list[tuple[Document, float]]:
        """Top-k documents for one query, after the strategy. A Document query never returns itself
        or an exact duplicate of its content."""
        query_hash = [query.content_hash()] if isinstance(query, Document) else []
        exclude = list(exclude_ids) + ([query.id] if isinstance(query, Document) else [])
        (hits,) = self._search_many(self.embed_query(query), k, [exclude], get_strategy(strategy), [query_hash])
        docs = self._documents([r for r, _ in hits])
        return [(d, s) for d, (_, s) in zip(docs, hits)]

    def neighbours(self, queries: np.ndarray, k: int, exclude_ids: Sequence[Sequence[str]] | None = None,
                   strategy: Strategy | str | None = None, *, exclude_hashes: Sequence[Sequence[str]] | None = None,
                   exempt_ids: Sequence[Iterable[str]] | None = None,
                   allowed_ids: Iterable[str] | None = None) -> list[list[tuple[str, float]]]:
        """Batched search (training inputs, evaluation): per query vector, up to k (id, score) after the
        strategy, never an excluded id (e.g. the query document itself) nor an exact duplicate of one or
        of `exclude_hashes` (content hashes, e.g. of a query document outside the memory). Per query,
        `exempt_ids` join the strategy's diversity exemptions; only `allowed_ids` may be returned."""
        n_q = len(queries)
        exclude_ids = exclude_ids if exclude_ids is not None else [()] * n_q
        exclude_hashes = exclude_hashes if exclude_hashes is not None else [()] * n_q
        for name, per_query in (("exclusion", exclude_ids), ("hash", exclude_hashes), ("exemption", exempt_ids)):
            if per_query is not None and len(per_query) != n_q:
                raise ValueError(f"{n_q} queries but {len(per_query)} {name} lists")
        hits = self._search_many(queries, k, exclude_ids, get_strategy(strategy), exclude_hashes, exempt_ids,
                                 allowed_ids)
        ids = self._ids_of(sorted({r for row in hits for r, _ in row}))
        return [[(ids[r], s) for r, s in row] for row in hits]

    def _search_many(self, q, k, exclude_ids, strategy: Strategy, query_hashes, exempt_ids=None,
                     allowed_ids=None) -> list[list[tuple[Key, float]]]:
        """Per query, the strategy's k (key, score): the backend's top candidates minus the banned keys, through
        `eligible` and `choose`; a query whose window admits too few is searched again with a 4x wider one,
        so the result equals the strategy applied to the whole memory in score order (up to `max_fetch`)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = self.check_queries(q)
        n, want = len(self), pool_size(strategy, k)
        if n == 0:
            log.warning("memory %s is empty: no neighbours", self.root)
            return [[] for _ in range(len(q))]
        excl = self._keys_of(sorted({i for ex in exclude_ids for i in ex}))
        banned = [{excl[i] for i in ex if i in excl} for ex in exclude_ids]
        if strategy.exclude_duplicates:
            own = self._hashes(sorted(excl.values()))
            dups = [{own[r] for r in b} | set(h) for b, h in zip(banned, query_hashes)]
            by_hash = self._keys_by_hash({h for d in dups for h in d})
            banned = [b.union(*(by_hash.get(h, ()) for h in d)) for b, d in zip(banned, dups)]
        allowed = None if allowed_ids is None else set(self._keys_of(sorted(set(allowed_ids))).values())
        needs_embs = bool(strategy.mmr) or (strategy.diversity is not None and strategy.diversity_to_picks)
        results: list[list[tuple[Key, float]] | None] = [None] * len(q)
        todo = list(range(len(q)))
        widest = min(n, self.max_fetch)
        fetch = min(widest, 4 * want + 2 * max((len(e) for e in exclude_ids), default=0) + 16)
        while todo:
            hits = self._candidates(q[todo], int(fetch))
            seen = sorted({r for row in hits for r, _ in row})  # one store read per window, not per query
            ids = self._ids_of(seen)
            pos = {r: j for j, r in enumerate(seen)}
            embs = self._embeddings(seen) if needs_embs else None
            mixed = {r: d.is_mixed_modal for r, d in zip(seen, self._documents(seen))} \
                if strategy.prefer_mixed_modal else None
            retry = []
            for j, qi in enumerate(todo):
                keep = [(r, s) for r, s in hits[j] if r not in banned[qi] and (allowed is None or r in allowed)]
                cand = [r for r, _ in keep]
                cand_scores = np.array([s for _, s in keep], dtype=np.float32)
                cand_embs = embs[[pos[r] for r in cand]] if needs_embs else None
                rule = strategy if not exempt_ids else strategy.with_exempt(strategy.exempt_ids | set(exempt_ids[qi]))
                pool = eligible(rule, [ids[r] for r in cand], cand_scores, cand_embs, want,
                                [mixed[r] for r in cand] if mixed else None)
                if len(pool) < want and fetch < widest:
                    retry.append(qi)
                else:
                    results[qi] = [(cand[i], float(cand_scores[i])) for i in choose(rule, pool, cand_scores, cand_embs, k)]
            todo, fetch = retry, min(widest, fetch * 4)
        return results
