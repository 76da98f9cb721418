"""The configs commands nest: which documents a split holds, the training loop, retrieval-augmented data, and
the architectures of the image tokenizer and the dual encoder.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

SPLITS = ("train", "val", "test", "heldout")  # the split names ramm's commands and recipes know
DEFAULT_FRACTIONS = {"train": 0.80, "val": 0.05, "test": 0.05, "heldout": 0.10}  # ramm.corpus.splits uses these too


def split_rank_key(seed: int, key) -> bytes:
    """The seeded hash that places a group in a split (SplitConfig) or orders groups (assign_splits)."""
    return hashlib.sha256(f"{seed}\x00{key}".encode("utf-8")).digest()


def check_fractions(fractions) -> None:
    if not fractions or any(f < 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {dict(fractions)}")


@dataclass
class SplitConfig:
    """Which documents of a corpus are train / val / test / heldout (ramm.corpus.splits)."""

    fractions: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))  # split -> share of groups, when rows carry no `split`
    group_by: str | None = None  # metadata key whose documents share a split (None: the document id)
    seed: int = 0  # seed of the hash that orders the groups

    def __post_init__(self):
        self.fractions = dict(self.fractions)
        check_fractions(self.fractions)

    def of(self, doc) -> str:
        """The document's split: its own `split` metadata, else a seeded hash of its group key."""
        own = doc.metadata.get("split")
        if own is not None:
            return str(own)
        key = doc.id if self.group_by is None else doc.metadata.get(self.group_by)
        if key is None:
            raise ValueError(f"document {doc.id!r} has no metadata {self.group_by!r} to group its split by")
        digest = split_rank_key(self.seed, key)
        u, total = int.from_bytes(digest[:8], "big") / 2.0 ** 64, 0.0  # u: uniform in [0, 1)
        for name, share in self.fractions.items():
            total += share
            if u < total:
                return name
        return [name for name, share in self.fractions.items() if share > 0][-1]  # rounding at the top end

    def select(self, docs, splits):
        """The documents of `splits` (a name or several), in corpus order, streamed."""
        want = {splits} if isinstance(splits, str) else set(splits)
        return (d for d in docs if self.of(d) in want)

    def group(self, docs) -> dict[str, list]:
        """split name -> its documents, in corpus order."""
        out: dict[str, list] = {}
        for d in docs:
            out.setdefault(self.of(d), []).append(d)
        return out


@dataclass
class TrainerConfig:
    """The training loop's settings (ramm.training.trainer): budget, optimizer, schedule, checkpoints."""

    out_dir: str = ""  # checkpoints and metrics.jsonl go here ("": the recipe's output directory)
    steps: int = 1000  # optimizer steps; also the cosine schedule's length
    max_minutes: float | None = None  # stop (with a checkpoint) after this wall time, even before `steps`
    batch_size: int = 16  # samples per optimizer step, over all ranks and accumulation micro-steps
    grad_accum: int = 1  # micro-steps per optimizer step on each rank
    lr: float = 3e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int | None = 100  # linear warmup steps (None: min(100, steps // 10))
    weight_decay: float = 0.1  # AdamW decay on matrices (not on norms or biases)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    log_every: int = 10  # steps between metrics rows
    ckpt_every: int = 200  # steps between checkpoints (one is always written at the end)
    eval_every: int = 0  # steps between eval_fn calls (0: only at the end)
    seed: int = 0  # data order and initial RNG
    amp: bool = True  # bf16 autocast where the device supports it
    amp_cpu: bool = False  # with amp, bf16 autocast on a CPU with native bf16 (avx512_bf16 / AMX) too (training steps only)
    device: str | None = None  # None: cuda if available, else cpu
    resume: bool = False  # continue from out_dir/checkpoint if present
    progress: bool = True  # tqdm bar on rank 0
    strategy: str = "ddp"  # under torchrun: ddp (whole model per rank) | fsdp (weights, grads, optimizer sharded per block)

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accum", "log_every", "ckpt_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1 or self.warmup < 0 or self.eval_every < 0:
            raise ValueError("need lr > 0, 0 <= min_lr_ratio <= 1, warmup_steps >= 0, eval_every >= 0")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError("max_minutes must be positive")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0")
        if self.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"strategy must be 'ddp' or 'fsdp', got {self.strategy!r}")

    @property
    def warmup(self) -> int:
        """Warmup steps in effect (None scales with the budget, so a toy run still reaches its peak lr)."""
        return min(100, self.steps // 10) if self.warmup_steps is None else self.warmup_steps


@dataclass
class RAConfig:
    """Retrieval-augmented training data (ramm.training.ra_data; RA-CM3 sec. 3.3)."""

    k_choices: tuple[int, ...] = (0, 1, 2)  # k retrieved documents, drawn uniformly (RA-CM3; per micro-batch: batch_k)
    n_candidates: int = 2  # neighbours kept per query (k <= this)
    diversity: float | None = 0.9  # skip candidates whose relevance to the query exceeds this (None: off)
    exempt_partner: bool = True  # never skip the leave-one-out partners (documents sharing `group_by`)
    group_by: str | None = None  # metadata key a document shares with its leave-one-out partners (None: the corpus format's CorpusHooks.match_key; a corpus without one: no partners)
    query_dropout: float = 0.2  # fraction of the text query's words dropped before retrieval
    alpha: float = 0.1  # loss weight on retrieved tokens: -log p(x|m) - alpha log p(m)
    max_len: int = 512  # longest training sequence; longer ones lose retrieved documents first
    seed: int = 0  # query dropout, query-modality choice, k and CM3 masking
    query: str = "both"  # retrieval query per example: "text", "image" or "both" (drawn 50/50)
    batch_k: bool = True  # training draws k once per micro-batch instead of per example (less padding)
    pseudo_names: float = 0.0  # chance that a concept with a retrieved partner is renamed (when the recipe's caller gives a renamer)
    mmr: float = 0.0  # > 0: text queries pick documents by maximal marginal relevance with this redundancy weight
    copy_self: float = 0.0  # chance that an example with k >= 1 retrieves its own document first (pays for a verbatim copy)

    def __post_init__(self):
        self.k_choices = tuple(self.k_choices)
        if not self.k_choices or min(self.k_choices) < 0:
            raise ValueError(f"k_choices must be non-negative and non-empty, got {self.k_choices}")
        if max(self.k_choices) > self.n_candidates:
            raise ValueError(f"k_choices {self.k_choices} exceed n_candidates={self.n_candidates}")
        if self.diversity is not None and not -1 <= self.diversity <= 1:
            raise ValueError(f"diversity threshold must be a cosine in [-1, 1], got {self.diversity}")
        if not 0 <= self.query_dropout < 1 or self.alpha < 0 or self.max_len < 8:
            raise ValueError("need 0 <= query_dropout < 1, alpha >= 0, max_len >= 8")
        if self.query not in ("text", "image", "both"):
            raise ValueError(f"query must be 'text', 'image' or 'both', got {self.query!r}")
        if not 0 <= self.pseudo_names <= 1:
            raise ValueError(f"pseudo_names must be a probability, got {self.pseudo_names}")
        if self.mmr < 0:
            raise ValueError(f"mmr must be >= 0, got {self.mmr}")
        if not 0 <= self.copy_self <= 1:
            raise ValueError(f"copy_self must be a probability, got {self.copy_self}")



@dataclass
class ImageTokenizerConfig:
    """The VQ image tokenizer's architecture (ramm.tokenizers.image_tokenizer); saved as its config.json."""

    image_size: int = 32  # input images are (3, image_size, image_size)
    grid: int = 8  # codes per side: tokens_per_image = grid ** 2; image_size / grid must be a power of 2
    patch: int = 2  # space-to-depth factor applied first (pixel unshuffle): convs start at image_size / patch
    channels: int = 64  # width of the first conv stage; each downsampling doubles it (capped by max_mult)
    max_mult: int = 2  # cap on the channel multiplier
    res_blocks: int = 1  # residual blocks per resolution stage
    codebook_size: int = 512  # number of codes
    codebook_dim: int = 8  # the codebook lookup happens in this projected dimension
    latent_dim: int = 64  # encoder output channels fed to the quantizer
    commitment_weight: float = 0.25  # weight of the commitment loss
    ema_decay: float = 0.9  # EMA decay of the codebook
    l1_weight: float = 0.5  # reconstruction loss = mse + l1_weight * l1 (l1 sharpens edges)
    local: bool = False  # patch-local encoder: a cell's code reads only its own pixels (`ramm train tokenizer` default: on;
    # off here so that tokenizers saved before the field load as what they are)

    def __post_init__(self):
        if self.image_size <= 0 or self.grid <= 0 or self.image_size % self.grid:
            raise ValueError(f"image_size={self.image_size} must be a positive multiple of grid={self.grid}")
        ratio = self.image_size // self.grid
        if ratio & (ratio - 1):
            raise ValueError(f"image_size / grid = {ratio} must be a power of 2")
        if self.patch <= 0 or ratio % self.patch:
            raise ValueError(f"patch={self.patch} must divide image_size / grid = {ratio}")
        for name in ("patch", "channels", "max_mult", "res_blocks", "codebook_size", "codebook_dim", "latent_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.ema_decay < 1 or self.commitment_weight < 0 or self.l1_weight < 0:
            raise ValueError("need 0 < ema_decay < 1, commitment_weight >= 0, l1_weight >= 0")

    @property
    def n_down(self) -> int:
        return int(math.log2(self.image_size // self.grid // self.patch))

    def stage_channels(self) -> list[int]:
        """Channels of each resolution stage, from image_size / patch down to the grid."""
        return [self.channels * min(2 ** i, self.max_mult) for i in range(self.n_down + 1)]


@dataclass
class DualEncoderConfig:
    """The CLIP-style dual encoder's architecture and losses (ramm.retrieval.dual_encoder); its config.json."""

    image_size: int = 32  # input images are resized to image_size x image_size
    channels: tuple[int, ...] = (32, 64, 128)  # CNN width per stage; each stage halves the resolution
    text_vocab_size: int = 1024  # byte-level BPE vocabulary of the text tower
    text_max_len: int = 32  # text tokens kept per caption (longer captions are truncated)
    text_width: int = 128  # text transformer width
    text_layers: int = 2  # text transformer layers
    text_heads: int = 4  # attention heads of the text transformer
    embed_dim: int = 256  # dimension of the shared (cross-modal) embedding space
    private_dim: int = 0  # >0: each modality also gets its own subspace of this size (see DualEncoder)
    shared_weight: float = 0.5  # with private_dim: share of a vector's squared norm in the shared subspace
    embed_shared_weight: float | None = None  # shared_weight of retrieval vectors (embed_*); None: shared_weight
    pool: str = "mean"  # image tower head: "mean" (global average) or "flatten" (keeps the final grid's layout)
    memory_loss_weight: float = 1.0  # training only: weight of the leave-one-out memory loss (0: CLIP losses only)
    image_loss_weight: float = 0.0  # training only: the same loss with images as the documents (same-style negatives)
    model_type: str = "ramm-dual-encoder"  # tells load_encoder this is not a transformers CLIP

    def __post_init__(self):
        self.channels = tuple(self.channels)
        if self.image_size < 8 or self.image_size % (2 ** len(self.channels)):
            raise ValueError(f"image_size {self.image_size} must be >= 8 and divisible by 2**len(channels)")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive, got {self.channels}")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} not divisible by text_heads {self.text_heads}")
        if self.pool not in ("mean", "flatten"):
            raise ValueError(f"pool must be 'mean' or 'flatten', got {self.pool!r}")
        if self.private_dim < 0 or not 0 < self.shared_weight <= 1:
            raise ValueError(f"need private_dim >= 0 and 0 < shared_weight <= 1, "
                             f"got {self.private_dim}, {self.shared_weight}")
        if self.embed_shared_weight is not None and not 0 < self.embed_shared_weight <= 1:
            raise ValueError(f"embed_shared_weight must be in (0, 1] or None, got {self.embed_shared_weight}")
        for name in ("text_vocab_size", "text_max_len", "text_layers", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("memory_loss_weight", "image_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 turns the loss off), got {getattr(self, name)}")


