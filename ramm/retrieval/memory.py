"""The retrieval memory (RA-CM3 section 3.2): a FAISS inner-product index over mixed-modal document
embeddings plus an on-disk document store, kept in agreement across crashes.

Layout of a memory directory:
  config.json    MemoryConfig: encoder fingerprint, dim, index factory + search params, vector count
  encoder/       the memory's own copy of the encoder that embedded the documents (queries use it)
  store.sqlite   DocStore: documents and their embeddings in row order (row = FAISS id); the source of
                 truth: the index is rebuilt from its embeddings when missing, short or unreadable
  index.faiss    the index, saved atomically by the writer
  .lock          held by the one writer (build / add); readers take no lock and never write
The store commits each batch in one transaction, so a build killed at any point resumes where it
stopped and ends with every document exactly once. Any other encoder (a retrained folder, another
model of the same width) is refused by its fingerprint: its vectors would not compare with the stored ones.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from ramm.corpus.document import BadItem, Document
from ramm.retrieval.encoder import Encoder, encoder_fingerprint, load_encoder, save_encoder_copy
from ramm.retrieval.index import IndexSpec, check_vectors, choose_index, load_index, new_index, save_index
from ramm.retrieval.store import DocStore
from ramm.retrieval.strategies import Strategy, choose, eligible, get_strategy, pool_size
from ramm.utils import atomic_write_json, exclusive_lock, output_dir

log = logging.getLogger(__name__)

ENCODER_DIR = "encoder"
LOCK_FILE = ".lock"


@dataclass
class MemoryConfig:
    encoder: str  # directory the encoder was taken from (a record; the memory uses its own copy in encoder/)
    dim: int  # embedding dimension
    index: dict = field(default_factory=lambda: IndexSpec("Flat").to_dict())  # IndexSpec in use
    count: int = 0  # vectors in the saved index
    flat_below: int = 100_000  # exact search below this many documents, IVF (SQ8, PQ past 20M) beyond
    encoder_sha256: str = ""  # encoder_fingerprint of the encoder that made the embeddings ("" in old memories)

    def __post_init__(self):
        for name in ("dim", "count", "flat_below"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.dim < 1 or self.count < 0 or self.flat_below < 0:
            raise ValueError(f"bad memory config: dim={self.dim} count={self.count} flat_below={self.flat_below}")

    @classmethod
    def read(cls, path: Path) -> "MemoryConfig":
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a readable memory config ({e})") from None
        known = {f.name for f in fields(cls)}
        if not isinstance(raw, dict) or set(raw) - known or {"encoder", "dim"} - set(raw):
            raise ValueError(f"{path}: a memory config has the keys {sorted(known)}, got "
                             f"{sorted(raw) if isinstance(raw, dict) else type(raw).__name__}")
        try:
            return cls(**raw)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None


@contextlib.contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """One writer per memory at a time: an exclusive lock on root/.lock (`ramm.utils.exclusive_lock`).
    Holding it, the writer removes the temp files of saves a kill interrupted (`.index.faiss.*.tmp`, ...):
    no other writer can be mid-save, and readers never write."""
    with exclusive_lock(root / LOCK_FILE, lambda pid: f"memory {root} is being written by pid {pid}; wait for it to finish"):
        for leftover in root.glob(".*.tmp"):
            if leftover.is_file():
                log.info("removing %s, left by an interrupted save", leftover)
                leftover.unlink(missing_ok=True)
        yield


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
    def __init__(self, root: str | Path, config: MemoryConfig, encoder: Encoder | None = None,
                 create: bool = False, snapshot: bool = False):
        """Open a memory; create=True (a writer) may create its store; snapshot=True opens it for a short read
        (`DocStore`: read-only, immutable when no writer is about). The index is read, or rebuilt in memory
        from the store's embeddings when missing, unreadable or out of step (never written here)."""
        self.root, self.config, self.snapshot = Path(root), config, snapshot
        self.store = DocStore(self.root / "store.sqlite", config.dim, create=create, snapshot=snapshot)
        self.spec = IndexSpec(**config.index)
        index_file = self.root / "index.faiss"
        self.index, self._index_saved = None, False
        if index_file.exists():
            try:
                self.index, self._index_saved = load_index(index_file, self.spec), True
            except ValueError as e:
                log.warning("%s; rebuilding the index from the store's embeddings", e)
        self._encoder = None
        if encoder is not None:
            self._check_encoder(encoder, "the given encoder")
            self._encoder = encoder
        self.stats: Counter = Counter()  # what the last build/add did: added, skipped, reasons
        self._sync_index()

    def _check_encoder(self, encoder: Encoder, what: str) -> None:
        if not self.config.encoder_sha256:
            return
        fp = encoder_fingerprint(encoder)
        if fp != self.config.encoder_sha256:
            raise ValueError(
                f"memory {self.root} was built with encoder {self.config.encoder_sha256[:12]}, but {what} is "
                f"{fp[:12]} (retrained, or another model): its vectors do not compare with the stored ones. "
                f"Query with the memory's own copy ({self.root / ENCODER_DIR}) or build a new memory.")

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, corpus: Iterable, encoder: Encoder | str | Path, out_dir: str | Path, *,
              encoder_path: str | Path | None = None, batch_size: int = 256, flat_below: int = 100_000,
              progress: bool = True) -> "Memory":
        """Stream `corpus` into a new memory, or resume an interrupted build of the same directory
        (with the same encoder: another one is refused)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(encoder, (str, Path)):
            encoder_path, encoder = encoder, load_encoder(encoder)
        out_dir = output_dir(out_dir, "memory")
        cfg_file = out_dir / "config.json"
        with writer_lock(out_dir):
            if cfg_file.exists():
                mem = cls(out_dir, MemoryConfig.read(cfg_file), encoder, create=True)
                if mem.config.dim != encoder.dim:
                    raise ValueError(f"{out_dir} holds dim-{mem.config.dim} embeddings, the encoder gives {encoder.dim}")
                if not mem.config.encoder_sha256:
                    log.warning("memory %s predates encoder fingerprints: cannot check the encoder", out_dir)
                elif not (out_dir / ENCODER_DIR).is_dir():
                    save_encoder_copy(encoder, out_dir / ENCODER_DIR)
            else:
                source = encoder_path or getattr(encoder, "source", None)
                cfg = MemoryConfig(encoder=str(Path(source).resolve()) if source else "", dim=encoder.dim,
                                   flat_below=flat_below, encoder_sha256=encoder_fingerprint(encoder))
                save_encoder_copy(encoder, out_dir / ENCODER_DIR)  # before the config that marks a build
                atomic_write_json(cfg_file, asdict(cfg))
                mem = cls(out_dir, cfg, encoder, create=True)
            mem._ingest(corpus, batch_size, progress)
            mem._sync_index(rechoose=True)
            mem.save()
        return mem

    def add(self, docs: Iterable, batch_size: int = 256, progress: bool = False) -> Counter:
        """Append documents (new ids only) to the store and the index, without a rebuild."""
        if self.snapshot:
            raise ValueError(f"memory {self.root} was opened as a read-only snapshot: Memory.load it without "
                             f"snapshot=True to add documents")
        with writer_lock(self.root):
            self._ingest(docs, batch_size, progress)
            self._sync_index()
            self.save()
        return self.stats

    def _skip(self, reason: str) -> None:
        self.stats["skipped"] += 1
        self.stats[f"skipped_{reason}"] += 1

    def _ingest(self, corpus: Iterable, batch_size: int, progress: bool) -> None:
        """Duplicate ids: the first copy wins, at any batch size; later copies are skips."""
        self.stats = Counter()
        first_new_row = len(self.store)  # rows from here on were added by this run
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
            present = self.store.rows_of(list(docs))
            for row in present.values():
                if row >= first_new_row:
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
                self.store.add(new, emb)  # one transaction per batch
                self.stats["added"] += len(new)
        log.info("memory %s: %s", self.root, dict(self.stats))

    def _sync_index(self, rechoose: bool = False) -> None:
        """Bring the in-memory index to the store's rows (re-adding what a crash lost, rebuilding a
        missing or unreadable one); only writers save it."""
        n = len(self.store)
        if rechoose:
            spec = choose_index(n, self.config.dim, self.config.flat_below)
            if self.index is None or spec.factory != self.spec.factory:
                self.spec, self.index = spec, None
        if self.index is not None and (self.index.ntotal > n or self.index.d != self.config.dim):
            log.warning("index has %d rows of dim %d, the store %d of dim %d; rebuilding it",
                        self.index.ntotal, self.index.d, n, self.config.dim)
            self.index = None
        if self.index is None:
            if self.spec.train_size and n == 0:
                self.spec = IndexSpec("Flat")
            train = self.store.sample_embeddings(self.spec.train_size) if self.spec.train_size else None
            self.index, self._index_saved = new_index(self.spec, self.config.dim, train), False
        if self.index.ntotal < n:
            self._index_saved = False
            for chunk in self.store.iter_embeddings(self.index.ntotal):
                self.index.add(check_vectors(chunk, self.config.dim))

    # ---- persistence --------------------------------------------------------------------------
    def save(self, out_dir: str | Path | None = None) -> None:
        """Index first, then config: a crash between them leaves a config the load reconciles.
        Call it holding the writer lock (build and add do)."""
        if out_dir is not None and Path(out_dir) != self.root:
            raise ValueError("a memory lives in its directory; copy the directory to move it")
        if self._index_saved and self.config.count == self.index.ntotal and self.config.index == self.spec.to_dict():
            return
        save_index(self.index, self.root / "index.faiss")
        self._index_saved = True
        self.config.index, self.config.count = self.spec.to_dict(), self.index.ntotal
        atomic_write_json(self.root / "config.json", asdict(self.config))

    @classmethod
    def load(cls, root: str | Path, encoder: Encoder | None = None, snapshot: bool = False) -> "Memory":
        """Open a memory for search (and `add`); reading never writes a file of it. snapshot=True: a short
        read-only look (CLI search and evaluation) that creates no file either, and works on a read-only
        mount; `add` is refused then."""
        root = Path(root)
        if not (root / "config.json").exists():
            raise FileNotFoundError(f"no memory at {root} (missing config.json)")
        return cls(root, MemoryConfig.read(root / "config.json"), encoder, snapshot=snapshot)

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

    def __len__(self) -> int:
        return len(self.store)

    @property
    def ids(self) -> list[str]:
        return self.store.ids()

    def get(self, id: str) -> Document:
        return self.store.get(id)

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

    def search_vectors(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw index search: (scores (N, k), rows (N, k)); rows are store rows, -1 where fewer exist."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = check_vectors(q, self.config.dim)
        if not np.isfinite(q).all():
            raise ValueError("the query embedding is not finite (NaN or inf): nothing to search with")
        return self.index.search(q, k)

    def search(self, query: str | np.ndarray | Document, k: int = 5, exclude_ids: Sequence[str] = (),
               strategy: Strategy | str | None = None) -> list[tuple[Document, float]]:
        """Top-k documents for one query, after the strategy. A Document query never returns itself
        or an exact duplicate of its content."""
        query_hash = [query.content_hash()] if isinstance(query, Document) else []
        exclude = list(exclude_ids) + ([query.id] if isinstance(query, Document) else [])
        (hits,) = self._search_many(self.embed_query(query), k, [exclude], get_strategy(strategy), [query_hash])
        docs = self.store.documents([r for r, _ in hits])
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
        ids = self.store.ids_of(sorted({r for row in hits for r, _ in row}))
        return [[(ids[r], s) for r, s in row] for row in hits]

    def _search_many(self, q, k, exclude_ids, strategy: Strategy, query_hashes, exempt_ids=None,
                     allowed_ids=None) -> list[list[tuple[int, float]]]:
        """Per query, the strategy's k (row, score): the index's top candidates minus the banned rows, through
        `eligible` and `choose`; a query whose window admits too few is searched again with a 4x wider one,
        so the result equals the strategy applied to the whole memory in score order."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        n, want = len(self.store), pool_size(strategy, k)
        if n == 0:
            log.warning("memory %s is empty: no neighbours", self.root)
            return [[] for _ in range(len(q))]
        excl_rows = self.store.rows_of(sorted({i for ex in exclude_ids for i in ex}))
        banned = [{excl_rows[i] for i in ex if i in excl_rows} for ex in exclude_ids]
        if strategy.exclude_duplicates:
            own = self.store.hashes(sorted(excl_rows.values()))
            dups = [{own[r] for r in b} | set(h) for b, h in zip(banned, query_hashes)]
            by_hash = self.store.rows_by_hash({h for d in dups for h in d})
            banned = [b.union(*(by_hash.get(h, ()) for h in d)) for b, d in zip(banned, dups)]
        allowed = None if allowed_ids is None else set(self.store.rows_of(sorted(set(allowed_ids))).values())
        needs_embs = bool(strategy.mmr) or (strategy.diversity is not None and strategy.diversity_to_picks)
        results: list[list[tuple[int, float]] | None] = [None] * len(q)
        todo = list(range(len(q)))
        fetch = min(n, 4 * want + 2 * max((len(e) for e in exclude_ids), default=0) + 16)
        while todo:
            scores, rows = self.search_vectors(q[todo], fetch)
            seen = sorted({int(r) for r in rows.ravel() if r >= 0})  # one store read per window, not per query
            ids = self.store.ids_of(seen)
            pos = {r: j for j, r in enumerate(seen)}
            embs = self.store.embeddings(seen) if needs_embs else None
            mixed = {r: d.is_mixed_modal for r, d in zip(seen, self.store.documents(seen))} \
                if strategy.prefer_mixed_modal else None
            retry = []
            for j, qi in enumerate(todo):
                keep = [(int(r), s) for r, s in zip(rows[j], scores[j])
                        if r >= 0 and r not in banned[qi] and (allowed is None or r in allowed)]
                cand = [r for r, _ in keep]
                cand_scores = np.array([s for _, s in keep], dtype=np.float32)
                cand_embs = embs[[pos[r] for r in cand]] if needs_embs else None
                rule = strategy if not exempt_ids else strategy.with_exempt(strategy.exempt_ids | set(exempt_ids[qi]))
                pool = eligible(rule, [ids[r] for r in cand], cand_scores, cand_embs, want,
                                [mixed[r] for r in cand] if mixed else None)
                if len(pool) < want and fetch < n:
                    retry.append(qi)
                else:
                    results[qi] = [(cand[i], float(cand_scores[i])) for i in choose(rule, pool, cand_scores, cand_embs, k)]
            todo, fetch = retry, min(n, fetch * 4)
        return results
