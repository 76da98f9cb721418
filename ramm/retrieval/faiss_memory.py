"""The FAISS memory (RA-CM3 section 3.2): a FAISS inner-product index over mixed-modal document embeddings
plus an on-disk document store, kept in agreement across crashes; the default backend of `Memory`.

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
One machine, one writer: past that, the same Memory on Milvus (ramm/retrieval/milvus_memory.py).
"""
from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ramm.corpus.document import Document
from ramm.retrieval.encoder import Encoder, encoder_fingerprint, load_encoder, save_encoder_copy
from ramm.retrieval.index import IndexSpec, check_vectors, choose_index, load_index, new_index, save_index
from ramm.retrieval.memory import ENCODER_DIR, Memory, memory_backend
from ramm.retrieval.store import DocStore
from ramm.utils import atomic_write_json, exclusive_lock, output_dir

log = logging.getLogger(__name__)

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


class FaissMemory(Memory):
    """A Memory in one directory: FAISS index + SQLite store; keys are store rows (= FAISS ids)."""

    def __init__(self, root: str | Path, config: MemoryConfig, encoder: Encoder | None = None,
                 create: bool = False, snapshot: bool = False):
        """Open a memory; create=True (a writer) may create its store; snapshot=True opens it for a short read
        (`DocStore`: read-only, immutable when no writer is about). The index is read, or rebuilt in memory
        from the store's embeddings when missing, unreadable or out of step (never written here)."""
        super().__init__(root, config, encoder)
        self.snapshot = snapshot
        self.store = DocStore(self.root / "store.sqlite", config.dim, create=create, snapshot=snapshot)
        self.spec = IndexSpec(**config.index)
        index_file = self.root / "index.faiss"
        self.index, self._index_saved = None, False
        if index_file.exists():
            try:
                self.index, self._index_saved = load_index(index_file, self.spec), True
            except ValueError as e:
                log.warning("%s; rebuilding the index from the store's embeddings", e)
        self._sync_index()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, corpus: Iterable, encoder: Encoder | str | Path, out_dir: str | Path, *,
              encoder_path: str | Path | None = None, batch_size: int = 256, flat_below: int = 100_000,
              progress: bool = True) -> "FaissMemory":
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
                if (backend := memory_backend(out_dir)) != "faiss":
                    raise ValueError(f"{out_dir} is a {backend} memory: build the FAISS memory in another directory")
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

    def _begin_ingest(self) -> int:
        return len(self.store)  # rows from here on were added by this run

    def _present(self, ids: list[str], mark: int) -> dict[str, bool]:
        return {i: row >= mark for i, row in self.store.rows_of(ids).items()}

    def _write(self, docs: list[Document], embeddings: np.ndarray, mark: int) -> int:
        self.store.add(docs, embeddings)  # one transaction per batch
        return len(docs)

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
    def load(cls, root: str | Path, encoder: Encoder | None = None, snapshot: bool = False) -> "FaissMemory":
        """Open a memory for search (and `add`); reading never writes a file of it. snapshot=True: a short
        read-only look (CLI search and evaluation) that creates no file either, and works on a read-only
        mount; `add` is refused then."""
        root = Path(root)
        if not (root / "config.json").exists():
            raise FileNotFoundError(f"no memory at {root} (missing config.json)")
        return cls(root, MemoryConfig.read(root / "config.json"), encoder, snapshot=snapshot)

    # ---- documents ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.store)

    @property
    def ids(self) -> list[str]:
        return self.store.ids()

    def get(self, id: str) -> Document:
        return self.store.get(id)

    @property
    def index_description(self) -> str:
        return f"{self.spec.factory} {self.spec.params}".rstrip()

    # ---- search -------------------------------------------------------------------------------
    def search_vectors(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw index search: (scores (N, k), rows (N, k)); rows are store rows, -1 where fewer exist."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return self.index.search(self.check_queries(q), k)

    def _candidates(self, q: np.ndarray, n: int) -> list[list[tuple[int, float]]]:
        scores, rows = self.search_vectors(q, n)
        return [[(int(r), float(s)) for r, s in zip(rr, ss) if r >= 0] for rr, ss in zip(rows, scores)]

    def _keys_of(self, ids: list[str]) -> dict[str, int]:
        return self.store.rows_of(ids)

    def _ids_of(self, keys: list[int]) -> dict[int, str]:
        return self.store.ids_of(keys)

    def _hashes(self, keys: list[int]) -> dict[int, str]:
        return self.store.hashes(keys)

    def _keys_by_hash(self, hashes: Iterable[str]) -> dict[str, set]:
        return self.store.rows_by_hash(hashes)

    def _embeddings(self, keys: list[int]) -> np.ndarray:
        return self.store.embeddings(keys)

    def _documents(self, keys: list[int]) -> list[Document]:
        return self.store.documents(keys)
