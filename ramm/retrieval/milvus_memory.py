"""The Memory on Milvus (RA-CM3's web-scale memory, written by many and read by many generator replicas).

A Milvus memory is still a directory (what `--memory DIR` names everywhere), holding
  config.json   MilvusConfig: backend "milvus", the URI and collection, dim, encoder fingerprint, index
  encoder/      the memory's own copy of the encoder (queries are embedded in the reader's process)
while the documents and vectors live in one Milvus collection:
  id      VARCHAR(512), primary key: Document.id (an upsert by id never stores a document twice)
  vector  FLOAT_VECTOR(dim): the mixed-modal embedding (L2-normalised), index over inner product
  hash    VARCHAR(64): Document.content_hash, for the strategies' exact-duplicate rule
  doc     VARCHAR(65535): Document JSON (text, metadata, images as PNG base64); larger documents are skipped
          and counted (`skipped_document_too_large`): keep big images outside and refer to them
  run     VARCHAR(32): the ingestion that stored the row (tells a duplicate id of one build from a resume)
The collection's property `ramm.memory` records the encoder fingerprint and dim, so a memory folder made with another
encoder, or of another width, is refused against it. A URI is a path ending in `.db` (Milvus Lite: the same
engine embedded in this process, one process per file) or `http(s)://host:port` (a Milvus server or cluster);
credentials come from the environment only (MILVUS_TOKEN, or MILVUS_USER and MILVUS_PASSWORD). Every call has
a timeout; a server that is down or a bad URI is a ConnectionError naming the URI. Searches and reads run at
`Strong` consistency: every acknowledged add, from any writer, is seen by the next search of any reader.
"""
from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ramm.corpus.document import Document
from ramm.retrieval.encoder import Encoder, encoder_fingerprint, load_encoder, save_encoder_copy
from ramm.retrieval.memory import ENCODER_DIR, Memory, memory_backend
from ramm.utils import atomic_write_json, output_dir

log = logging.getLogger(__name__)

MAX_ID_BYTES = 512  # the id field's VARCHAR length
MAX_DOC_BYTES = 65_535  # Milvus' VARCHAR limit: a document's JSON past it is skipped and counted
MAX_FETCH = 16_384  # Milvus' largest topk: the widest window one strategy search may ask for
CHUNK = 500  # ids per get / filter expression
INDEXES = {  # index_type -> (build params, search params); all over inner product (= cosine: vectors are normalised)
    "FLAT": ({}, {}),
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 128}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_SQ8": ({"nlist": 1024}, {"nprobe": 32}),
}
CONSISTENCY = ("Strong", "Bounded", "Session", "Eventually")
MEMORY_MARK = "ramm.memory"  # the collection property holding ramm's record (JSON: version, dim, encoder_sha256)


def uri_kind(uri: str) -> str:
    """"lite" for a path ending in .db (Milvus Lite), "server" for http(s)://host:port; else ValueError."""
    if re.match(r"^(https?|tcp)://[^/\s]+", uri or ""):
        return "server"
    if uri and "://" not in uri and uri.endswith(".db"):
        return "lite"
    raise ValueError(f"Milvus URI {uri!r}: give a path ending in .db (Milvus Lite) or http(s)://host:port (a server)")


@dataclass
class MilvusConfig:
    """config.json of a Milvus memory directory."""

    uri: str  # a path ending in .db (Milvus Lite; relative: to the memory directory) or http(s)://host:port
    collection: str  # the collection holding the documents
    dim: int  # embedding dimension
    encoder: str = ""  # directory the encoder was taken from (a record; queries use the copy in encoder/)
    encoder_sha256: str = ""  # encoder_fingerprint of the encoder that made the vectors (also in the collection)
    index_type: str = "HNSW"  # FLAT (exact) | HNSW | IVF_FLAT | IVF_SQ8, over inner product
    index_params: dict = field(default_factory=dict)  # build parameters (default: INDEXES[index_type][0])
    search_params: dict = field(default_factory=dict)  # search parameters (default: INDEXES[index_type][1])
    consistency: str = "Strong"  # Strong: a search sees every acknowledged add of every writer (see the docstring)
    timeout: float = 10.0  # seconds one call to Milvus (connecting included) may take before it is an error
    backend: str = "milvus"  # what Memory.load reads to pick this class

    def __post_init__(self):
        uri_kind(self.uri)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", self.collection or ""):
            raise ValueError(f"Milvus collection name {self.collection!r}: letters, digits and _, not starting "
                             f"with a digit, at most 255")
        if self.index_type not in INDEXES:
            raise ValueError(f"Milvus index_type {self.index_type!r}: choose from {list(INDEXES)}")
        if self.consistency not in CONSISTENCY:
            raise ValueError(f"Milvus consistency {self.consistency!r}: choose from {list(CONSISTENCY)}")
        if self.dim < 1 or self.timeout <= 0 or self.backend != "milvus":
            raise ValueError(f"bad Milvus memory config: dim={self.dim} timeout={self.timeout} backend={self.backend}")
        self.index_params = self.index_params or dict(INDEXES[self.index_type][0])
        self.search_params = self.search_params or dict(INDEXES[self.index_type][1])

    @classmethod
    def read(cls, path: Path) -> "MilvusConfig":
        raw = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        if set(raw) - known or {"uri", "collection", "dim"} - set(raw):
            raise ValueError(f"{path}: a Milvus memory config has the keys {sorted(known)}, got {sorted(raw)}")
        return cls(**raw)


def connect(uri: str, timeout: float):
    """A MilvusClient for `uri`, credentials from MILVUS_TOKEN or MILVUS_USER / MILVUS_PASSWORD; a ConnectionError
    naming the URI when it cannot be reached within `timeout` seconds."""
    kind = uri_kind(uri)
    try:
        # lazy: pymilvus is optional (pip install ramm[milvus])
        from pymilvus import MilvusClient
    except ImportError:
        raise ImportError("the Milvus memory backend needs pymilvus and milvus-lite: pip install 'ramm[milvus]'") from None
    if kind == "lite" and not Path(uri).parent.is_dir():
        raise ValueError(f"Milvus Lite file {uri}: its folder {Path(uri).parent} does not exist")
    try:
        return MilvusClient(uri=uri, token=os.environ.get("MILVUS_TOKEN", ""), user=os.environ.get("MILVUS_USER", ""),
                            password=os.environ.get("MILVUS_PASSWORD", ""), timeout=timeout)
    except Exception as e:  # pymilvus raises its own types, grpc's, or OSError from the Lite engine
        hint = (" (Milvus Lite serves one process: is another one using this file? For many processes, run a "
                "server, e.g. `milvus-lite server`, and give its http:// URI)") if kind == "lite" else ""
        raise ConnectionError(f"cannot reach Milvus at {uri} within {timeout:g}s: {_reason(e)}{hint}") from None


def _absolute(uri: str, base: Path) -> str:
    """A Milvus Lite path made absolute against `base` (relative paths in a config: the memory directory);
    a server URI as it is."""
    if uri_kind(uri) == "lite":
        return str((base / uri).resolve())
    return uri.rstrip("/")


def _reason(e: Exception) -> str:
    return (getattr(e, "message", "") or str(e) or type(e).__name__).strip().splitlines()[0][:300]


def _chunks(items: list, size: int = CHUNK):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class MilvusMemory(Memory):
    """A Memory whose documents and vectors live in a Milvus collection; keys are document ids."""

    max_fetch = MAX_FETCH

    def __init__(self, root: str | Path, config: MilvusConfig, encoder: Encoder | None = None,
                 create: bool = False):
        """Connect and check the collection against the config (encoder fingerprint, dim); create=True (a
        writer's first build) creates the collection and its index when missing."""
        super().__init__(root, config, encoder)
        self.uri = _absolute(config.uri, self.root)
        self.client = connect(self.uri, config.timeout)
        if self._call("has_collection", config.collection):
            self._check_collection()
        elif create:
            self._create_collection()
        else:
            raise FileNotFoundError(f"no collection {config.collection!r} at Milvus {self.uri} (memory {self.root}): "
                                    f"build it with `ramm memory build --backend milvus`")
        if str(self._call("get_load_state", config.collection).get("state", "")).split(".")[-1] != "Loaded":
            self._call("load_collection", config.collection)

    def _call(self, method: str, *args, **kwargs):
        """One client call with the config's timeout; a failure is a ConnectionError naming the URI."""
        # lazy: pymilvus is optional (pip install ramm[milvus])
        from pymilvus.exceptions import MilvusException
        try:
            return getattr(self.client, method)(*args, timeout=self.config.timeout, **kwargs)
        except MilvusException as e:
            raise ConnectionError(f"Milvus at {self.uri}: {method} on {self.config.collection!r} failed: "
                                  f"{_reason(e)}") from None

    # ---- the collection -----------------------------------------------------------------------
    def _record(self) -> dict:
        return {"version": 1, "dim": self.config.dim, "encoder_sha256": self.config.encoder_sha256}

    def _create_collection(self) -> None:
        # lazy: pymilvus is optional (pip install ramm[milvus])
        from pymilvus import DataType, MilvusClient
        cfg = self.config
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_ID_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=cfg.dim)
        schema.add_field("hash", DataType.VARCHAR, max_length=64)
        schema.add_field("doc", DataType.VARCHAR, max_length=MAX_DOC_BYTES)
        schema.add_field("run", DataType.VARCHAR, max_length=32)
        index = MilvusClient.prepare_index_params()
        index.add_index(field_name="vector", index_type=cfg.index_type, metric_type="IP", params=cfg.index_params)
        try:
            self._call("create_collection", cfg.collection, schema=schema, index_params=index,
                       consistency_level=cfg.consistency, properties={MEMORY_MARK: json.dumps(self._record())})
        except ConnectionError:
            if not self._call("has_collection", cfg.collection):  # else another writer created it first
                raise
            self._check_collection()
        log.info("created Milvus collection %s at %s (%s, dim %d)", cfg.collection, self.uri, cfg.index_type, cfg.dim)

    def _check_collection(self) -> None:
        """The collection must be a ramm memory of this encoder and dim."""
        info = self._call("describe_collection", self.config.collection)
        where = f"collection {self.config.collection!r} at Milvus {self.uri}"
        try:
            record = json.loads((info.get("properties") or {}).get(MEMORY_MARK, "{}"))
        except json.JSONDecodeError:
            record = {}
        if not isinstance(record, dict) or record.get("version") != 1:
            raise ValueError(f"{where} is not a ramm memory (no {MEMORY_MARK} property)")
        if record.get("dim") != self.config.dim:
            raise ValueError(f"{where} holds dim-{record.get('dim')} vectors, memory {self.root} has dim "
                             f"{self.config.dim}: build a new collection for this encoder")
        if self.config.encoder_sha256 and record.get("encoder_sha256") != self.config.encoder_sha256:
            raise ValueError(f"{where} was built with encoder {str(record.get('encoder_sha256'))[:12]}, memory "
                             f"{self.root} uses {self.config.encoder_sha256[:12]} (retrained, or another model): "
                             f"its vectors do not compare with the stored ones. Build a new collection.")

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, corpus: Iterable, encoder: Encoder | str | Path, out_dir: str | Path, *, uri: str = "",
              collection: str = "", index_type: str = "HNSW", encoder_path: str | Path | None = None,
              batch_size: int = 256, progress: bool = True, timeout: float = 10.0) -> "MilvusMemory":
        """Stream `corpus` into the collection (created with its index on the first build), or resume: ids
        already stored are left alone, so a build cut off (a dropped connection, a kill) and run again adds
        every document exactly once. `out_dir` gets the config and the encoder copy; `uri` defaults to
        out_dir/milvus.db (Milvus Lite), `collection` to ramm_<out_dir's name>."""
        if isinstance(encoder, (str, Path)):
            encoder_path, encoder = encoder, load_encoder(encoder)
        out_dir = output_dir(out_dir, "memory")
        cfg_file = out_dir / "config.json"
        if cfg_file.exists():
            if (backend := memory_backend(out_dir)) != "milvus":
                raise ValueError(f"{out_dir} is a {backend} memory: build the Milvus memory in another directory")
            cfg = MilvusConfig.read(cfg_file)
            if uri and _absolute(uri, Path.cwd()) != _absolute(cfg.uri, out_dir):
                raise ValueError(f"memory {out_dir} is on Milvus {cfg.uri}, not {uri}: give another directory")
            mem = cls(out_dir, cfg, encoder, create=True)
        else:
            uri = uri or str(out_dir / "milvus.db")
            if uri_kind(uri) == "lite":  # kept relative to the directory when inside it, so the folder can move
                path, home = Path(_absolute(uri, Path.cwd())), out_dir.resolve()
                uri = str(path.relative_to(home)) if path.is_relative_to(home) else str(path)
            source = encoder_path or getattr(encoder, "source", None)
            cfg = MilvusConfig(uri=uri, collection=collection or default_collection(out_dir), dim=encoder.dim,
                               encoder=str(Path(source).resolve()) if source else "",
                               encoder_sha256=encoder_fingerprint(encoder), index_type=index_type, timeout=timeout)
            mem = cls(out_dir, cfg, encoder, create=True)  # refuses a collection of another encoder before any file
            save_encoder_copy(encoder, out_dir / ENCODER_DIR)  # before the config that marks a build
            atomic_write_json(cfg_file, asdict(cfg))
        mem._ingest(corpus, batch_size, progress)
        return mem

    @classmethod
    def load(cls, root: str | Path, encoder: Encoder | None = None, snapshot: bool = False) -> "MilvusMemory":
        """Open the memory for search and `add` (never creates the collection)."""
        root = Path(root)
        if not (root / "config.json").exists():
            raise FileNotFoundError(f"no memory at {root} (missing config.json)")
        return cls(root, MilvusConfig.read(root / "config.json"), encoder)

    def add(self, docs: Iterable, batch_size: int = 256, progress: bool = False) -> Counter:
        """Upsert documents whose ids are new; safe beside other writers (an id is stored once)."""
        self._ingest(docs, batch_size, progress)
        return self.stats

    def close(self) -> None:
        self.client.close()

    # ---- documents ----------------------------------------------------------------------------
    def __len__(self) -> int:
        rows = self._call("query", self.config.collection, filter="", output_fields=["count(*)"],
                          consistency_level=self.config.consistency)
        return int(rows[0]["count(*)"])

    @property
    def ids(self) -> list[str]:
        """Every id, sorted (a collection has no insertion order)."""
        it = self._call("query_iterator", self.config.collection, batch_size=1000, filter="", output_fields=["id"],
                        consistency_level=self.config.consistency)
        out: list[str] = []
        try:
            while page := it.next():
                out += [r["id"] for r in page]
        finally:
            it.close()
        return sorted(out)

    def get(self, id: str) -> Document:
        found = self._fields([id], "doc")
        if id not in found:
            raise KeyError(f"no document {id!r} in the memory")
        return Document.from_json(found[id])

    @property
    def index_description(self) -> str:
        params = ",".join(f"{k}={v}" for k, v in {**self.config.index_params, **self.config.search_params}.items())
        return f"Milvus {self.config.index_type} {params} ({self.config.collection} at {self.uri})".replace("  ", " ")

    def _fields(self, ids: list[str], name: str) -> dict[str, Any]:
        out = {}
        for chunk in _chunks(list(ids)):
            for row in self._call("get", self.config.collection, ids=chunk, output_fields=["id", name],
                                  consistency_level=self.config.consistency):
                out[row["id"]] = row[name]
        return out

    def _keys_of(self, ids: list[str]) -> dict[str, str]:
        return {i: i for i in self._fields(ids, "id")}

    def _ids_of(self, keys: list[str]) -> dict[str, str]:
        return {k: k for k in keys}

    def _hashes(self, keys: list[str]) -> dict[str, str]:
        return self._fields(keys, "hash")

    def _keys_by_hash(self, hashes: Iterable[str]) -> dict[str, set]:
        out: dict[str, set] = {}
        for chunk in _chunks(sorted(set(hashes))):
            for row in self._call("query", self.config.collection, filter=f"hash in {json.dumps(chunk)}",
                                  output_fields=["id", "hash"], consistency_level=self.config.consistency):
                out.setdefault(row["hash"], set()).add(row["id"])
        return out

    def _embeddings(self, keys: list[str]) -> np.ndarray:
        found = self._fields(keys, "vector")
        return np.array([found[k] for k in keys], dtype=np.float32).reshape(len(keys), self.config.dim)

    def _documents(self, keys: list[str]) -> list[Document]:
        found = self._fields(keys, "doc")
        return [Document.from_json(found[k]) for k in keys]

    # ---- search and writes --------------------------------------------------------------------
    def _candidates(self, q: np.ndarray, n: int) -> list[list[tuple[str, float]]]:
        params = dict(self.config.search_params)
        if "ef" in params:
            params["ef"] = max(params["ef"], n)  # HNSW: the beam must be at least the window
        hits = self._call("search", self.config.collection, data=[v.tolist() for v in q], limit=n,
                          anns_field="vector", search_params={"metric_type": "IP", "params": params},
                          output_fields=[], consistency_level=self.config.consistency)
        return [[(h["id"], float(h["distance"])) for h in row] for row in hits]

    def _begin_ingest(self) -> str:
        return uuid.uuid4().hex

    def _present(self, ids: list[str], mark: str) -> dict[str, bool]:
        return {i: run == mark for i, run in self._fields(ids, "run").items()}

    def _write(self, docs: list[Document], embeddings: np.ndarray, mark: str) -> int:
        rows = []
        for d, e in zip(docs, embeddings):
            body = d.to_json()
            if len(d.id.encode("utf-8")) > MAX_ID_BYTES:
                self._skip("id_too_long")
                log.warning("skipping %r: its id is longer than %d bytes", d.id[:60], MAX_ID_BYTES)
            elif len(body.encode("utf-8")) > MAX_DOC_BYTES:
                self._skip("document_too_large")
                log.warning("skipping %r: %d bytes of JSON, the collection holds at most %d", d.id,
                            len(body.encode("utf-8")), MAX_DOC_BYTES)
            else:
                rows.append({"id": d.id, "vector": e.tolist(), "hash": d.content_hash(), "doc": body, "run": mark})
        if rows:
            self._call("upsert", self.config.collection, data=rows)  # by id: a retried batch is never stored twice
        return len(rows)


def default_collection(out_dir: Path) -> str:
    """ramm_<the memory directory's name>, in the characters a collection name allows."""
    return "ramm_" + re.sub(r"[^A-Za-z0-9_]", "_", Path(out_dir).resolve().name)[:240]
