"""What every other `ramm` command takes: memory build / add / search, generate (image, edit, caption,
infill), eval retrieval, grace search, data stats and serve. The `ramm train` commands' are in `ramm.config.train`.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from ramm.config.components import SPLITS, SplitConfig
from ramm.config.decode import DecodeConfig
from ramm.config.schema import require

def _check_splits(name: str, splits: tuple[str, ...]) -> tuple[str, ...]:
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    if not splits or not all(isinstance(s, str) and s for s in splits):
        raise ValueError(f"{name} must be a non-empty list of split names, got {splits!r}")
    return splits


@dataclass
class MemoryBuildConfig:
    """`ramm memory build`: embed a corpus' documents and add them to a Memory (resumable)."""

    corpus: str  # any corpus `open_corpus` reads
    encoder: str  # encoder directory (a ramm dual encoder or a transformers CLIP)
    out: str  # memory directory
    splits: tuple[str, ...] = SPLITS  # splits whose documents go in
    batch_size: int = 256  # documents embedded per store transaction
    flat_below: int = 100_000  # faiss: exact (flat) index below this many documents, approximate above
    backend: str = "faiss"  # faiss: index and store in `out` (one machine) | milvus: a Milvus collection at `uri`
    uri: str = ""  # milvus: a path ending in .db (Milvus Lite; default out/milvus.db) or http(s)://host:port; credentials from MILVUS_TOKEN (or MILVUS_USER, MILVUS_PASSWORD)
    collection: str = ""  # milvus: collection name (default ramm_<out's name>)
    index_type: str = "HNSW"  # milvus: FLAT (exact) | HNSW | IVF_FLAT | IVF_SQ8
    timeout: float = 10.0  # milvus: seconds one call (connecting included) may take before it is an error
    strict: bool = False  # stop at the first unreadable corpus item, naming it, instead of skipping and counting it
    split: SplitConfig = field(default_factory=SplitConfig)  # how the corpus is split when rows carry no `split`

    def __post_init__(self):
        require(self, ("corpus", "encoder", "out"))
        self.splits = _check_splits("splits", self.splits)
        if self.batch_size <= 0 or self.flat_below < 0:
            raise ValueError("need batch_size > 0 and flat_below >= 0")
        if self.backend not in ("faiss", "milvus"):
            raise ValueError(f"backend must be faiss or milvus, got {self.backend!r}")
        if self.backend == "faiss" and (self.uri or self.collection):
            raise ValueError("--uri and --collection are for --backend milvus")

    def backend_options(self) -> dict:
        """The keywords the backend's Memory.build takes from this job."""
        if self.backend == "milvus":
            return {"uri": self.uri, "collection": self.collection, "index_type": self.index_type,
                    "timeout": self.timeout}
        return {"flat_below": self.flat_below}


@dataclass
class MemoryAddConfig:
    """`ramm memory add MEMORY CORPUS`: add a corpus' new documents to a built memory (any backend)."""

    memory: str  # memory directory (positional)
    corpus: str  # any corpus `open_corpus` reads (positional)
    splits: tuple[str, ...] = SPLITS  # splits whose documents go in
    batch_size: int = 256  # documents embedded per write
    strict: bool = False  # stop at the first unreadable corpus item, naming it, instead of skipping and counting it
    split: SplitConfig = field(default_factory=SplitConfig)  # how the corpus is split when rows carry no `split`

    def __post_init__(self):
        require(self, ("memory", "corpus"))
        self.splits = _check_splits("splits", self.splits)
        if self.batch_size <= 0:
            raise ValueError("need batch_size > 0")


@dataclass
class RetrievalEvalConfig:
    """`ramm eval retrieval`: Recall@1/5/10 text->image and image->text, leave-one-out, per query split."""

    memory: str  # memory directory (should hold every split)
    corpus: str  # corpus the queries come from
    splits: tuple[str, ...] = ("test", "heldout")  # query splits
    json: str | None = None  # also write the numbers to this JSON file
    match: str | None = None  # metadata key: a retrieved document with the query's value is a hit (None: the corpus format's CorpusHooks.match_key; a corpus without one must name it)
    strict: bool = False  # stop at the first unreadable corpus item, naming it, instead of skipping and counting it
    split: SplitConfig = field(default_factory=SplitConfig)  # how the corpus is split when rows carry no `split`

    def __post_init__(self):
        require(self, ("memory", "corpus"))
        self.splits = _check_splits("splits", self.splits)


@dataclass
class GenerateConfig:
    """What every `ramm generate` command shares: the bundle, retrieval and decoding settings.

    `decode` of `image` and `caption` defaults to what the bundle's generator.json records for the task
    (`ramm.cli` reads it before the flags, so `--decode.top_p 0.9` changes only top_p); infill and edit sample."""

    model: str = ""  # generator directory: a ramm bundle (generator.json) or a transformers Chameleon / Anole checkpoint
    out: str = ""  # output directory for samples, grid.png, result.json, index.html
    memory: str | None = None  # memory directory to retrieve from (None: the bundle's, if any)
    n: int = 8  # samples to draw
    k: int | None = None  # documents to retrieve (None: as the bundle trained, its eval_k; a vanilla bundle 0)
    retrieve: bool | None = None  # --no-retrieve: no retrieved documents, --retrieve: retrieve (unset: as the bundle trained)
    exclude: tuple[str, ...] = ()  # memory ids never to retrieve (leave-one-out)
    decode: DecodeConfig = field(default_factory=DecodeConfig)  # decoding method and its settings (default: the bundle's for this task)
    seed: int = 0  # random seed (same seed, same samples)
    batch_size: int = 8  # samples decoded together
    device: str | None = None  # cpu / cuda (None: cuda when available)

    def __post_init__(self):
        require(self, ("model", "out"))
        self.exclude = (self.exclude,) if isinstance(self.exclude, str) else tuple(self.exclude)
        if self.n < 1 or (self.k is not None and self.k < 0) or self.batch_size < 1:
            raise ValueError(f"need n >= 1, k >= 0, batch_size >= 1; got {self.n}, {self.k}, {self.batch_size}")


@dataclass
class GenerateImageConfig(GenerateConfig):
    """`ramm generate image CAPTION`: text -> image samples."""

    caption: str = ""  # the caption to draw (positional)
    rerank: bool = True  # best CLIP-style score first (--no-rerank: sample order)

    def __post_init__(self):
        super().__post_init__()
        if not self.caption.strip():
            raise ValueError("caption is empty")


@dataclass
class GenerateEditConfig(GenerateConfig):
    """`ramm generate edit IMAGE INSTRUCTION`: image + instruction -> image, from an SFT generator (`ramm train sft`)."""

    image: str = ""  # PNG/JPEG file to edit (positional)
    instruction: str = ""  # what to do, e.g. "make the skin tone dark" (positional)
    retrieve: bool | None = None  # condition on retrieved documents (default: as the SFT run trained, its retrieve_k)

    def __post_init__(self):
        super().__post_init__()
        if not self.image or not self.instruction.strip():
            raise ValueError("edit needs an image and a non-empty instruction")
        if self.decode.method not in ("sample", "greedy"):
            raise ValueError(f"edit decodes with --decode.method sample or greedy, not {self.decode.method!r}")


@dataclass
class GenerateCaptionConfig(GenerateConfig):
    """`ramm generate caption IMAGE`: image -> text samples."""

    image: str = ""  # PNG/JPEG file to caption (positional)
    max_tokens: int = 32  # longest caption in tokens
    rerank: bool = True  # lowest perplexity first (--no-rerank: sample order)

    def __post_init__(self):
        super().__post_init__()
        require(self, ("image",))
        if self.decode.method == "mix":
            raise ValueError("--decode.method mix is for images (half sample, half cd); caption with sample, greedy, cfg or cd")


@dataclass
class GenerateInfillConfig(GenerateConfig):
    """`ramm generate infill`: regenerate the caption or the image of a (caption, image) document."""

    n: int = 4  # samples to draw
    mask: str = ""  # which segment to regenerate: image | caption
    caption: str = ""  # the document's caption (required unless mask is caption)
    image: str | None = None  # the document's image file (required unless mask is image)
    max_tokens: int = 32  # longest text span in tokens

    def __post_init__(self):
        super().__post_init__()
        if self.mask not in ("image", "caption"):
            raise ValueError(f"mask must be 'image' or 'caption', got {self.mask!r}")
        if self.decode.method not in ("sample", "greedy"):
            raise ValueError(f"infill decodes with --decode.method sample or greedy, not {self.decode.method!r}")
        if self.mask == "image" and not self.caption.strip():
            raise ValueError("caption is needed to infill the image")
        if self.mask == "caption" and not self.image:
            raise ValueError("image is needed to infill the caption")


@dataclass
class MemorySearchConfig:
    """`ramm memory search MEMORY [TEXT]`: query a memory by a text or an image file."""

    memory: str  # memory directory (positional)
    text: str | None = None  # text query (positional; or give image)
    image: str | None = None  # image file query (PNG/JPEG) instead of a text
    k: int = 5  # results
    strategy: str = "relevance"  # relevance | modality | diversity | ra-cm3

    def __post_init__(self):
        require(self, ("memory",))
        if (self.text is None) == (self.image is None):
            raise ValueError("give either a text query or --image PATH")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")


@dataclass
class GraceSearchConfig:
    """`ramm grace search MODEL QUERY`: images for a text query, by trie-constrained beam search."""

    model: str  # GRACE model directory (ramm train grace --out; positional)
    query: str  # text query (positional)
    k: int = 5  # results
    corpus: str | None = None  # show each result's text from this corpus (any `open_corpus` reads)
    device: str | None = None  # cpu / cuda (None: cuda when available)

    def __post_init__(self):
        require(self, ("model", "query"))
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")


@dataclass
class DataStatsConfig:
    """`ramm data stats PATH`: the corpus format's summary table (EmojiBench: documents per split, style, track and
    category), or a stream check of any corpus."""

    path: str  # a corpus `open_corpus` reads: COCO captions JSON, JSONL/CSV, webdataset tar shard(s), an EmojiBench folder (positional)
    verify: bool = False  # check every image against the checksums the corpus format keeps (EmojiBench: sha256)
    strict: bool = False  # other corpora: stop at the first bad item
    images: str | None = None  # image folder for COCO/JSONL/CSV (None: beside the file)

    def __post_init__(self):
        require(self, ("path",))


API_KEY_ENV = "RAMM_API_KEY"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServeConfig:
    """`ramm serve`: an HTTP API and a web page over one loaded generator and its memory."""

    model: str = ""  # generator directory (`ramm train generator --out`)
    memory: str | None = None  # memory directory (default: the one the generator was trained with); documents added over the API are written to it (a Milvus memory: many servers may share it)
    device: str | None = None  # cpu | cuda (default: cuda when available)
    host: str = "127.0.0.1"  # address to bind; anything but loopback needs an API key
    port: int = 8000  # TCP port (0: any free port)
    api_key: str | None = None  # key every request but /healthz must send (X-API-Key or Authorization: Bearer); default: $RAMM_API_KEY
    batching: bool = True  # decode concurrent image requests together (False: one request per decode)
    max_batch_rows: int = 128  # most samples one batched decode holds
    max_wait_ms: float = 5.0  # how long the oldest queued request waits for batch mates
    max_queue: int = 256  # queued requests beyond which the server answers 503 with Retry-After
    timeout_s: float = 60.0  # a request's deadline: past it the server answers 504 and drops its work
    max_upload_bytes: int = 4 * 1024 * 1024  # largest request body (uploads, JSON): beyond it 413
    max_image_pixels: int = 4096 * 4096  # largest uploaded image (width x height): beyond it 400, before decoding
    max_documents: int = 64  # most documents one POST /v1/memory/documents may add

    def __post_init__(self):
        if not self.model:
            raise ValueError("ServeConfig: set model (a generator directory)")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        for name in ("max_batch_rows", "max_queue", "max_upload_bytes", "max_image_pixels", "max_documents"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.timeout_s <= 0:
            raise ValueError(f"max_wait_ms must be >= 0 and timeout_s > 0, got {self.max_wait_ms}, {self.timeout_s}")
        self.api_key = self.api_key or os.environ.get(API_KEY_ENV) or None
        if not is_loopback(self.host) and not self.api_key:
            raise ValueError(f"binding {self.host} (not loopback) needs an API key: --api-key or ${API_KEY_ENV}")
