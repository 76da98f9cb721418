"""The memory's document store: SQLite, one row per document, row number = FAISS row id.

Why SQLite: stdlib (no extra dependency), one file on disk (10M+ rows without holding them in RAM),
transactional (a batch of documents and their embeddings lands completely or not at all, which is
what makes kill -9 during a build safe) and append-friendly. Each row keeps the Document JSON (PNG
bytes base64, text, metadata, optional image tokens), its content hash (exact-duplicate detection)
and its float32 embedding (so the index can be rebuilt or reconciled without re-encoding).
"""
from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ramm.corpus.document import Document
from ramm.utils import lock_held

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    row INTEGER PRIMARY KEY,   -- 0-based insertion order = FAISS row id
    id TEXT UNIQUE NOT NULL,   -- Document.id
    hash TEXT NOT NULL,        -- Document.content_hash()
    doc TEXT NOT NULL,         -- Document.to_json()
    emb BLOB NOT NULL          -- float32 embedding
);
CREATE INDEX IF NOT EXISTS docs_hash ON docs(hash);
"""


def _os_error(e: sqlite3.OperationalError, path: Path) -> OSError:
    """SQLite's error as an OSError naming the store (SQLite's messages name no file)."""
    msg = str(e)
    code = errno.ENOSPC if "full" in msg else errno.EACCES if "readonly" in msg or "unable to open" in msg else errno.EIO
    return OSError(code, f"{os.strerror(code)} (sqlite: {msg})", str(path))


class DocStore:
    def __init__(self, path: str | Path, dim: int, create: bool = True, snapshot: bool = False):
        """create=False (readers): the store must exist; opening it never creates or changes a file.

        snapshot=True (a short-lived reader: `memory search`, `eval retrieval`): opened read-only, so a WAL a
        killed writer left is read, never checkpointed into the store; with no WAL and no writer holding
        `writer_lock` (the `.lock` beside it), immutable: SQLite creates no -wal / -shm and a read-only
        mount works. Not for a process that must see another's later writes (the server)."""
        self.path, self.dim = Path(path), dim
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"{self.path} not found: the memory's document store is missing")
        mode = "rwc" if create else "rw"
        if snapshot:
            wal = self.path.with_name(self.path.name + "-wal")
            quiet = not wal.exists() and not lock_held(self.path.with_name(".lock"))
            mode = "ro&immutable=1" if quiet else "ro"
        try:
            self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode={mode}", uri=True)
        except sqlite3.OperationalError as e:  # a read-only folder: "unable to open database file"
            raise _os_error(e, self.path) from None
        try:
            if create:
                self.db.execute("PRAGMA journal_mode=WAL")  # a killed writer never corrupts committed rows
                self.db.executescript(SCHEMA)
            len(self)
        except sqlite3.OperationalError as e:
            self.db.close()
            raise _os_error(e, self.path) from None
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise ValueError(f"{self.path}: not a readable memory store ({e})") from None

    def close(self) -> None:
        self.db.close()

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM docs").fetchone()[0]

    def add(self, docs: list[Document], embeddings: np.ndarray) -> None:
        """Append in one transaction: either the whole batch is stored or none of it."""
        if len(docs) != len(embeddings) or embeddings.shape[1:] != (self.dim,):
            raise ValueError(f"{len(docs)} documents but embeddings of shape {embeddings.shape} (dim {self.dim})")
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)
        rows = [(i, d.id, d.content_hash(), d.to_json(), emb[i].tobytes()) for i, d in enumerate(docs)]
        try:
            with self.db:
                start = len(self)
                self.db.executemany("INSERT INTO docs(row, id, hash, doc, emb) VALUES (?, ?, ?, ?, ?)",
                                    [(start + i, *rest) for i, *rest in rows])
        except sqlite3.OperationalError as e:  # "database or disk is full", a read-only file: the batch is not stored
            raise _os_error(e, self.path) from None

    def existing(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i: i + 500]
            q = f"SELECT id FROM docs WHERE id IN ({','.join('?' * len(chunk))})"
            found.update(r[0] for r in self.db.execute(q, chunk))
        return found

    def _rows(self, column: str, key: str, values: list) -> dict:
        out = {}
        for i in range(0, len(values), 500):
            chunk = values[i: i + 500]
            q = f"SELECT {key}, {column} FROM docs WHERE {key} IN ({','.join('?' * len(chunk))})"
            out.update(self.db.execute(q, chunk).fetchall())
        return out

    def documents(self, rows: list[int]) -> list[Document]:
        found = self._rows("doc", "row", [int(r) for r in rows])
        return [Document.from_json(found[int(r)]) for r in rows]

    def get(self, id: str) -> Document:
        r = self.db.execute("SELECT doc FROM docs WHERE id = ?", (id,)).fetchone()
        if r is None:
            raise KeyError(f"no document {id!r} in the memory")
        return Document.from_json(r[0])

    def rows_of(self, ids: list[str]) -> dict[str, int]:
        return self._rows("row", "id", list(ids))

    def hashes(self, rows: list[int]) -> dict[int, str]:
        return self._rows("hash", "row", [int(r) for r in rows])

    def rows_by_hash(self, hashes: Iterable[str]) -> dict[str, set[int]]:
        """{hash: every row whose content has it} (exact duplicates), for the given hashes."""
        hashes, out = sorted(set(hashes)), {}
        for i in range(0, len(hashes), 500):
            chunk = hashes[i: i + 500]
            q = f"SELECT hash, row FROM docs WHERE hash IN ({','.join('?' * len(chunk))})"
            for h, r in self.db.execute(q, chunk):
                out.setdefault(h, set()).add(r)
        return out

    def ids(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT id FROM docs ORDER BY row")]

    def ids_of(self, rows: list[int]) -> dict[int, str]:
        return self._rows("id", "row", [int(r) for r in rows])

    def embeddings(self, rows: list[int]) -> np.ndarray:
        found = self._rows("emb", "row", [int(r) for r in rows])
        return np.stack([np.frombuffer(found[int(r)], np.float32) for r in rows]) if rows else np.zeros((0, self.dim), np.float32)

    def iter_embeddings(self, start: int = 0, chunk: int = 65536) -> Iterator[np.ndarray]:
        """Embeddings of rows start.. in row order, `chunk` rows at a time (streams past RAM)."""
        while True:
            rows = self.db.execute("SELECT emb FROM docs WHERE row >= ? ORDER BY row LIMIT ?", (start, chunk)).fetchall()
            if not rows:
                return
            blobs = b"".join(r[0] for r in rows)
            if len(blobs) != len(rows) * self.dim * 4:
                raise ValueError(f"{self.path}: its embeddings do not have the memory's dim {self.dim} (stored "
                                 f"{len(rows[0][0]) // 4} floats per row): is the memory's config.json edited?")
            yield np.frombuffer(blobs, np.float32).reshape(len(rows), self.dim)
            start += len(rows)

    def sample_embeddings(self, n: int, seed: int = 0) -> np.ndarray:
        total = len(self)
        rows = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
        return np.concatenate([self.embeddings(rows[i: i + 50000].tolist()) for i in range(0, len(rows), 50000)])
