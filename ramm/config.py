"""One typed config: the dataclasses every training job reads, and JSON in and out.

A component's config *contains* the configs it hands on (the generator's holds a `TrainerConfig`, an
`RAConfig` and a `SplitConfig`), so nothing is copied field by field and nothing is silently
overridden. Every field has a comment (the CLI's help, through `field_docs`) and a check in
`__post_init__`. Configs are saved as JSON beside the weights and read back with `load_config`, which
names the field and the file when a key is unknown. No heavy imports here: the CLI builds its flags
from these classes before torch loads.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import io
import json
import math
import tokenize
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

from ramm.utils import atomic_write_json

DEFAULT_FRACTIONS = {"train": 0.80, "val": 0.05, "test": 0.05, "heldout": 0.10}  # ramm.corpus.splits uses these too


def require(cfg, names, label: str | None = None, spell=str) -> None:
    """ValueError listing the fields of `names` that are empty (paths a run needs but that default to "", so
    that a demo or a config file can fill them); `spell` turns a field name into what the user types."""
    missing = [spell(n) for n in names if not getattr(cfg, n)]
    if missing:
        raise ValueError(f"{label or type(cfg).__name__}: set {', '.join(missing)}")


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


# ------------------------------------------------------------------------------------------ decoding
METHODS = ("greedy", "sample", "cfg", "cd", "mix")  # mix: images only, half sample and half cd (`DecodeConfig.parts`)
# each numeric setting's (type, low, high or None, low excluded): `DecodeConfig.check`
DECODE_RANGES = {"temperature": (float, 0.0, None, False), "top_k": (int, 0, None, False),
                 "top_p": (float, 0.0, 1.0, True), "guidance_scale": (float, 0.0, 20.0, False),
                 "cd_alpha": (float, 0.0, 1.0, False), "cd_k": (int, 1, None, False)}


@dataclass
class DecodeConfig:
    """How the next token is chosen from the model's logits (CM3Leon sec. 4.2).

    The one type the CLI (`--decode.*`), the facade, the lab, the HTTP API and a bundle's generator.json share."""

    method: str = "sample"  # greedy | sample | cfg (classifier-free guidance) | cd (contrastive decoding CD-K) | mix (images: half sample, half cd)
    temperature: float = 1.0  # softmax temperature of the final draw; greedy ignores it
    top_k: int = 0  # keep only the k most likely tokens (0 = all)
    top_p: float = 1.0  # nucleus: keep the most likely tokens covering this mass (1 = all)
    guidance_scale: float = 3.0  # CFG weight s in uncond + s * (cond - uncond); CM3Leon swept 1..7
    cd_alpha: float = 0.1  # CD-K: candidates have p_cond >= alpha * (k-th largest p_cond)
    cd_k: int = 8  # CD-K: rank of the probability that sets the candidate threshold

    def __post_init__(self):
        for f in dataclasses.fields(self):
            self.check(f.name, getattr(self, f.name))
            if DECODE_RANGES.get(f.name, (None,))[0] is float:
                setattr(self, f.name, float(getattr(self, f.name)))  # 2 and 2.0 read and save alike

    @staticmethod
    def check(name: str, value) -> None:
        """ValueError naming the setting when `value` is out of its range (the HTTP schema checks with it too)."""
        if name == "method":
            if value not in METHODS:
                raise ValueError(f"unknown decoding method {value!r}; choose one of {METHODS}")
            return
        kind, low, high, low_open = DECODE_RANGES[name]
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) \
                or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite {kind.__name__}, got {value!r}")
        if value < low or (low_open and value == low) or (high is not None and value > high):
            span = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}{']' if high is not None else ')'}"
            raise ValueError(f"{name} must be in {span}, got {value}")

    @property
    def needs_uncond(self) -> bool:
        return self.method in ("cfg", "cd")

    def parts(self, counts: list[int]) -> list[tuple["DecodeConfig", list[int]]]:
        """(settings, samples per prompt) of each decode that `counts` samples per prompt take: one, or for
        CM3Leon's mix (it lowered their FID) the first half of each prompt's samples sampled, the rest by cd."""
        if self.method != "mix":
            return [(self, list(counts))]
        return [(dataclasses.replace(self, method="sample"), [c - c // 2 for c in counts]),
                (dataclasses.replace(self, method="cd"), [c // 2 for c in counts])]

    def with_overrides(self, where: str = "decoding", **overrides) -> "DecodeConfig":
        """These settings with some fields replaced (checked); an unknown name is a ValueError naming it."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"{where}: unknown decoding setting {', '.join(unknown)} "
                             f"(DecodeConfig has {', '.join(f.name for f in dataclasses.fields(self))})")
        return dataclasses.replace(self, **overrides) if overrides else self


@dataclass
class DecodeDefaults:
    """How a bundle decodes each task unless its caller says otherwise (generator.json `decode`)."""

    image: DecodeConfig = field(default_factory=DecodeConfig)  # text -> image (`ramm generate image`, POST /v1/images)
    caption: DecodeConfig = field(default_factory=DecodeConfig)  # image -> text (`ramm generate caption`, POST /v1/captions)


def _generator_decode() -> DecodeDefaults:
    """The demo's decoding, chosen on val (docs/results.md): CFG 2 at top-p 0.6 for images, greedy captions."""
    return DecodeDefaults(image=DecodeConfig(method="cfg", guidance_scale=2.0, top_p=0.6),
                          caption=DecodeConfig(method="greedy"))


def _generator_ra() -> RAConfig:
    return RAConfig(pseudo_names=0.5, mmr=0.3, copy_self=0.5)  # the demo's measured settings (docs/results.md)


def _generator_trainer() -> TrainerConfig:
    return TrainerConfig(steps=2000, batch_size=16, lr=2e-3, warmup_steps=100, log_every=10, ckpt_every=200, amp_cpu=True)


@dataclass
class GeneratorConfig:
    """The RA-CM3 generator (retrieval on) or its vanilla baseline; saved as generator_config.json in `out`."""

    corpus: str = ""  # any corpus `open_corpus` reads; its train split gives the main documents
    memory: str = ""  # Memory directory (ramm memory build): retrieved documents come from here
    tokenizer: str = ""  # image tokenizer directory (ramm train tokenizer --out)
    text_tokenizer: str = ""  # text tokenizer directory (ramm train text-tokenizer --out)
    out: str = ""  # output directory: generator + checkpoint/ + metrics.jsonl + eval.json
    size: str = "small"  # model preset (tiny / small / medium / base / large)
    dropout: float = 0.0  # residual/attention dropout of the model (regularises memorising the train images)
    copy_dim: int = 64  # width of the copy (pointer) head over retrieved documents (ramm.model.copy_head); 0: none
    copy_gate_reads: bool = True  # the copy gate sees what the pointer points at (decides per cell: copy or redraw)
    retrieval: bool = True  # False: the vanilla baseline (k = 0 always, whatever ra.k_choices says)
    eval_limit: int = 0  # documents per split in evaluations (0: all)
    eval_k: int = 2  # retrieved documents at evaluation (RA-CM3's best at inference; <= ra.n_candidates)
    strict: bool = False  # stop at the first unreadable corpus item, naming it, instead of skipping and counting it
    split: SplitConfig = field(default_factory=SplitConfig)  # how the corpus is split when rows carry no `split`
    trainer: TrainerConfig = field(default_factory=_generator_trainer)  # budget, optimizer, schedule
    ra: RAConfig = field(default_factory=_generator_ra)  # retrieval-augmented data
    decode: DecodeDefaults = field(default_factory=_generator_decode)  # how the saved bundle decodes unless its caller says otherwise (generator.json); not a training input

    def __post_init__(self):
        if self.eval_limit < 0 or self.dropout < 0 or self.copy_dim < 0:
            raise ValueError("eval_limit, dropout and copy_dim must be >= 0")
        if self.eval_k <= 0 or self.eval_k > self.ra.n_candidates:
            raise ValueError(f"eval_k must be in [1, ra.n_candidates={self.ra.n_candidates}], got {self.eval_k}")

    def require_paths(self) -> None:
        """The paths a run needs (empty by default so that the demo can fill them)."""
        require(self, ("corpus", "memory", "tokenizer", "text_tokenizer", "out"), "generator config")


def _chameleon_trainer() -> TrainerConfig:
    return TrainerConfig(steps=500, batch_size=8, lr=2e-5, warmup_steps=20, weight_decay=0.0, ckpt_every=100)


def _chameleon_ra() -> RAConfig:
    return RAConfig(max_len=3200)  # two retrieved 512x512 images (1,026 tokens each) plus the main document


@dataclass
class ChameleonFinetuneConfig:
    """RA fine-tuning of a transformers Chameleon / Anole checkpoint (ramm.training.chameleon_recipe)."""

    model: str = ""  # directory of a ChameleonForConditionalGeneration checkpoint (config.json + safetensors)
    corpus: str = ""  # any corpus `open_corpus` reads; its train split gives the main documents
    memory: str = ""  # Memory directory (ramm memory build): retrieved documents come from here
    out: str = ""  # output directory: a checkpoint transformers loads (+ generator.json, checkpoint/, metrics.jsonl)
    lora_rank: int = 0  # 0: full fine-tuning; > 0: LoRA adapters of this rank (peft), merged in when saved
    lora_alpha: float = 16.0  # LoRA scale numerator (the update is scaled by lora_alpha / lora_rank)
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # modules that get adapters
    dtype: str = "float32"  # weights' dtype while training: float32 | bfloat16
    split: SplitConfig = field(default_factory=SplitConfig)  # how the corpus is split when rows carry no `split`
    trainer: TrainerConfig = field(default_factory=_chameleon_trainer)  # budget, optimizer, schedule
    ra: RAConfig = field(default_factory=_chameleon_ra)  # retrieval-augmented data

    def __post_init__(self):
        self.lora_targets = tuple(self.lora_targets)
        if self.lora_rank < 0 or self.lora_alpha <= 0:
            raise ValueError("lora_rank must be >= 0 and lora_alpha > 0")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")

    def require_paths(self) -> None:
        require(self, ("model", "corpus", "memory", "out"), "chameleon fine-tuning config")


def _grace_trainer() -> TrainerConfig:
    return TrainerConfig(steps=2000, batch_size=64, lr=1e-3, warmup_steps=50, weight_decay=0.0, ckpt_every=250)


@dataclass
class GraceConfig:
    """GRACE: identifiers, memorize, retrieve; saved as grace_config.json (each stage: `trainer`, its own steps)."""

    corpus: str  # any corpus `open_corpus` reads
    out: str  # output directory: the GRACE model plus per-stage trainer checkpoints
    scheme: str = "semantic"  # identifier scheme: numeric | string | semantic | structured | atomic (semantic measured best)
    init: str | None = None  # pretrained generator directory; None trains from scratch
    preset: str = "tiny"  # model size when training from scratch
    text_tokenizer: str | None = None  # TextTokenizer directory; needed without init (the demo's: runs/demo/text_tokenizer)
    image_tokenizer: str | None = None  # ImageTokenizer directory; needed without init (the demo's: runs/demo/tokenizer)
    retriever: str | None = None  # dual encoder whose image embeddings the structured scheme clusters; needed by it (the demo's: runs/demo/retriever)
    schedule: str = "mixed"  # "sequence" (memorize, then retrieve) or "mixed" (both tasks in every batch)
    memorize_splits: tuple[str, ...] = ("train", "test")  # splits whose images are memorized
    retrieve_splits: tuple[str, ...] = ("train",)  # splits whose queries train retrieval
    pseudo_queries: bool = True  # add names and short names as extra retrieval queries
    memorize_steps: int = 1000  # optimizer steps of learning to memorize (sequence schedule)
    retrieve_steps: int = 1000  # optimizer steps of learning to retrieve (sequence); mixed runs the sum
    k: int = 30  # structured: clusters per level (GRACE: 30)
    leaf_size: int = 30  # structured: most images per leaf (GRACE: 30)
    num_beams: int = 10  # beam width at retrieval time
    strict: bool = False  # stop at the first unreadable corpus item, naming it, instead of skipping and counting it
    split: SplitConfig = field(default_factory=SplitConfig)  # how the corpus is split when rows carry no `split`
    trainer: TrainerConfig = field(default_factory=_grace_trainer)  # per stage; its `steps` is the stage's

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown identifier scheme {self.scheme!r}; choose one of {SCHEMES}")
        if self.schedule not in ("sequence", "mixed"):
            raise ValueError(f"schedule must be 'sequence' or 'mixed', got {self.schedule!r}")
        for name in ("memorize_steps", "retrieve_steps", "k", "leaf_size", "num_beams"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        self.memorize_splits, self.retrieve_splits = tuple(self.memorize_splits), tuple(self.retrieve_splits)
        if not self.memorize_splits or not self.retrieve_splits:
            raise ValueError("memorize_splits and retrieve_splits must not be empty")
        shortest = min(self.stage_steps().values())
        if self.trainer.warmup > shortest:
            raise ValueError(f"trainer.warmup_steps={self.trainer.warmup} exceeds the shortest stage "
                             f"({shortest} steps)")
        missing = [n for n in ("text_tokenizer", "image_tokenizer") if self.init is None and not getattr(self, n)]
        if missing:
            raise ValueError(f"GRACE from scratch (no init) needs {' and '.join(missing)}: the directories "
                             f"`ramm train text-tokenizer` / `ramm train tokenizer` wrote (or pass init, a generator)")
        if self.scheme == "structured" and not self.retriever:
            raise ValueError("the structured scheme needs retriever: a dual encoder directory whose image "
                             "embeddings it clusters")

    def stage_steps(self) -> dict[str, int]:
        """Stage name -> optimizer steps."""
        if self.schedule == "sequence":
            return {"memorize": self.memorize_steps, "retrieve": self.retrieve_steps}
        return {"mixed": self.memorize_steps + self.retrieve_steps}


@dataclass
class SFTMixture:
    """Relative weight of each instruction task in the SFT batches (0 leaves a task out); ramm.training.sft_data.

    Defaults chosen on val (docs/sft.md): against equal weights, the same 6 minutes with editing x3 and
    segmentation x2 gave the lowest val response loss on both (edit 2.23 -> 2.04, segmentation 2.46 -> 2.23);
    captioning keeps weight 1 because halving it cost caption loss (2.95 -> 3.42)."""

    text_to_image: float = 0.5  # caption -> image, as an instruction (the pretrained format already serves it)
    caption: float = 1.0  # image -> caption
    edit: float = 3.0  # source image + edit instruction -> target image (pairs and wordings from the corpus' hooks)
    style: float = 1.5  # image + style instruction -> the same thing in another style (pairs and wordings from the corpus' hooks)
    controlled: float = 1.0  # silhouette (the foreground mask) + caption -> image
    segment: float = 2.0  # image -> its foreground mask
    questions: dict[str, float] | None = None  # weight of each question task vqa_<kind> the corpus' hooks offer (None: the hooks' sft_questions)
    infill: float = 0.25  # CM3 infilling of the masked image
    replay: float = 1.0  # pretraining replay: whole micro-batches of the pretrained generator's own RA-CM3 examples (keeps captioning and text -> image)

    def __post_init__(self):
        self.weights({})

    def weights(self, default_questions: dict[str, float] | None) -> dict[str, float]:
        """Task -> weight in field order, `questions` (else `default_questions`) in its place; replay last."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "questions":
                value = default_questions if value is None else value
                if any(not q.startswith("vqa_") for q in value or {}):
                    raise ValueError(f"mixture.questions names tasks vqa_<kind>, got {sorted(value)}")
                out.update(value or {})
            else:
                out[f.name] = value
        if any(w < 0 for w in out.values()) or not any(w > 0 for w in out.values()):
            raise ValueError(f"mixture weights must be >= 0 with one > 0, got {out}")
        return out


def _sft_trainer() -> TrainerConfig:
    return TrainerConfig(steps=2200, batch_size=16, lr=1e-3, warmup_steps=50, log_every=20, ckpt_every=200)  # configs/demo-sft.json


@dataclass
class SFTConfig:
    """`ramm train sft`: multi-task instruction tuning of a pretrained generator (CM3Leon's second stage)."""

    pretrained: str = ""  # pretrained generator directory (`ramm train generator --out`); also `--from`
    corpus: str = ""  # corpus the instruction data comes from (its train split)
    out: str = ""  # output directory: the tuned generator + checkpoint/ + metrics.jsonl + eval.json
    heldout_templates: int = 1  # per task, the last templates never used in training (evaluation only)
    retrieve_k: int = 0  # documents retrieved into every prompt (0: off; off measured better on val at equal time, docs/sft.md)
    memory: str = ""  # memory to retrieve from when retrieve_k > 0 (default: the pretrained generator's)
    eval_limit: int = 32  # validation examples per task and template group in eval.json
    mixture: SFTMixture = field(default_factory=SFTMixture)  # task weights
    split: SplitConfig = field(default_factory=SplitConfig)  # how the corpus is split when rows carry no `split`
    trainer: TrainerConfig = field(default_factory=_sft_trainer)  # budget, optimizer, schedule (out_dir: out)

    def __post_init__(self):
        if self.heldout_templates < 0 or self.eval_limit < 0 or self.retrieve_k < 0:
            raise ValueError("heldout_templates, retrieve_k and eval_limit must be >= 0")

    def require_paths(self) -> None:
        require(self, ("pretrained", "corpus", "out"), "sft config",
                spell=lambda n: "--from" if n == "pretrained" else "--" + n)


SCHEMES = ("numeric", "string", "semantic", "structured", "atomic")  # ramm.grace.identifiers.SCHEMES


@dataclass
class RetrieverRecipeConfig:
    """How `ramm train retriever` draws its training views (ramm.training.retriever_recipe)."""

    name_view_prob: float = 0.25  # chance a text view is the caller's `alt_text` (EmojiBench: the style-free name) instead of the caption
    max_shift: int = 3  # random translation (pixels, white fill) applied to each training image
    flip_prob: float = 0.0  # chance each training image is mirrored left-right (most emoji keep their meaning)
    match: str | None = None  # metadata key shared by documents of one answer: views pair them, val recall counts them (None: the corpus format's CorpusHooks.match_key; a corpus without one: each document alone)
    seed: int = 0  # sampling and augmentation seed

    def __post_init__(self):
        if not 0 <= self.name_view_prob <= 1:
            raise ValueError(f"name_view_prob must be in [0, 1], got {self.name_view_prob}")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")
        if self.max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {self.max_shift}")


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


# ------------------------------------------------------------------------------ `ramm train` of the parts
def _tokenizer_trainer() -> TrainerConfig:
    return TrainerConfig(steps=3000, batch_size=32, lr=2e-3, warmup_steps=None, weight_decay=0.0, log_every=20,
                         ckpt_every=200)


@dataclass
class ImageTokenizerTrainConfig:
    """`ramm train tokenizer`: the VQ image tokenizer on a corpus' train split, PSNR on its test split."""

    corpus: str  # any corpus `open_corpus` reads (directory, JSONL/CSV, COCO JSON, webdataset shards)
    out: str  # output directory: config.json + model.safetensors (+ checkpoint/, metrics.jsonl)
    model: ImageTokenizerConfig = field(default_factory=lambda: ImageTokenizerConfig(local=True))  # the tokenizer's architecture (patch-local codes)
    strict: bool = False  # stop at the first unreadable corpus item, naming it, instead of skipping and counting it
    split: SplitConfig = field(default_factory=SplitConfig)  # how the corpus is split when rows carry no `split`
    trainer: TrainerConfig = field(default_factory=_tokenizer_trainer)  # budget, optimizer, schedule (out_dir: out)

    def __post_init__(self):
        require(self, ("corpus", "out"))
        self.trainer.out_dir = self.trainer.out_dir or self.out


@dataclass
class TextTokenizerTrainConfig:
    """`ramm train text-tokenizer`: byte-level BPE on the texts of a corpus' train split."""

    corpus: str  # any corpus `open_corpus` reads
    out: str  # output directory for tokenizer.json
    vocab_size: int = 2048  # BPE vocabulary size, the 256 bytes and <pad> included
    strict: bool = False  # stop at the first unreadable corpus item, naming it, instead of skipping and counting it
    split: SplitConfig = field(default_factory=SplitConfig)  # how the corpus is split when rows carry no `split`

    def __post_init__(self):
        require(self, ("corpus", "out"))
        if self.vocab_size < 257:
            raise ValueError(f"vocab_size must be >= 257 (256 bytes + <pad>), got {self.vocab_size}")


def _retriever_trainer() -> TrainerConfig:
    return TrainerConfig(steps=3000, batch_size=128, lr=2e-3, warmup_steps=None, weight_decay=0.05, log_every=20,
                         ckpt_every=200, eval_every=200)


@dataclass
class RetrieverTrainConfig:
    """`ramm train retriever`: the dual encoder on a corpus' train split, leave-one-out recall on its val split."""

    corpus: str  # any corpus `open_corpus` reads (directory, JSONL/CSV, COCO JSON, webdataset shards)
    out: str  # encoder directory: config.json, model.safetensors, tokenizer.json (+ checkpoint/)
    model: DualEncoderConfig = field(default_factory=DualEncoderConfig)  # architecture and loss weights
    views: RetrieverRecipeConfig = field(default_factory=RetrieverRecipeConfig)  # how training views are drawn
    strict: bool = False  # stop at the first unreadable corpus item, naming it, instead of skipping and counting it
    split: SplitConfig = field(default_factory=SplitConfig)  # how the corpus is split when rows carry no `split`
    trainer: TrainerConfig = field(default_factory=_retriever_trainer)  # batch_size: concepts per step (out_dir: out)

    def __post_init__(self):
        require(self, ("corpus", "out"))
        self.trainer.out_dir = self.trainer.out_dir or self.out


# ------------------------------------------------------------------------------------------ JSON in/out
def _dataclass_of(tp) -> type | None:
    """The dataclass in an annotation (`X`, `X | None`), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


@cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls, data: dict, where: str = "config", prefix: str = ""):
    """Build `cls` from JSON data, nested dataclasses included. An unknown or misspelt key raises a
    ValueError naming the field (dotted, `trainer.stepz`) and `where` (the file)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: {prefix.rstrip('.') or cls.__name__} must be an object, got {type(data).__name__}")
    check_keys(cls, data, where, prefix)
    names = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints, kwargs = _hints(cls), {}
    for key, value in data.items():
        sub = _dataclass_of(hints[key])
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, _with_default(names[key], value), where, f"{prefix}{key}.")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # a missing required field
        raise ValueError(f"{where}: {prefix}{e}") from None


def check_keys(cls, data: dict, where: str = "config", prefix: str = "") -> None:
    """Raise a ValueError naming the first unknown key (dotted) and `where`, nested sections included."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field {', '.join(prefix + k for k in unknown)} "
                         f"({cls.__name__} has {', '.join(sorted(names))})")
    hints = _hints(cls)
    for key, value in data.items():
        sub = _dataclass_of(hints[key])
        if sub is not None and isinstance(value, dict):
            check_keys(sub, value, where, f"{prefix}{key}.")


def _with_default(f: dataclasses.Field, value: dict) -> dict:
    """A nested section's keys on top of the field's own default (a generator's trainer keeps its defaults)."""
    if f.default_factory is dataclasses.MISSING or not dataclasses.is_dataclass(default := f.default_factory()):
        return value
    return {**{g.name: getattr(default, g.name) for g in dataclasses.fields(default) if g.init}, **value}


def load_config(cls, path: str | Path):
    """Read a config saved with `save_config` (or written by hand)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"config {path} not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"config {path} is not valid JSON: {e}") from None
    return from_dict(cls, data, str(path))


def to_dict(cfg) -> dict:
    """JSON-ready dict of a config (tuples as lists)."""
    return json.loads(json.dumps(asdict(cfg)))


def save_config(cfg, path: str | Path) -> None:
    """Write `cfg` as JSON (atomically); `load_config(type(cfg), path)` reads it back."""
    atomic_write_json(path, to_dict(cfg))


@cache
def field_docs(cls) -> dict[str, str]:
    """Field name -> the `# comment` on its line in the class body (the CLI's help text); a subclass's
    comment wins over its base's."""
    docs = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            docs.update(_own_field_docs(base))
    return docs


def _own_field_docs(cls) -> dict[str, str]:
    try:
        classes, lines = _module_layout(inspect.getsourcefile(cls))
    except (OSError, TypeError, SyntaxError):
        return {}
    if cls.__qualname__ not in classes:  # a class made in a function
        return {}
    (first, last), indent = classes[cls.__qualname__]
    names = {f.name for f in dataclasses.fields(cls)}
    return {name: comment for line, (col, name, comment) in lines.items()
            if first <= line <= last and col == indent and name in names and comment}


@cache
def _module_layout(filename: str) -> tuple[dict, dict]:
    """A module read once for `field_docs` (`ramm --help` reads some 30 classes): qualified class name ->
    ((first, last line), its body's indent), and line -> (column, first name, its `# comment`)."""
    source = Path(filename).read_text()
    classes = {}
    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                classes[prefix + child.name] = ((child.lineno, child.end_lineno), child.col_offset + 4)
                visit(child, f"{prefix}{child.name}.")
    visit(ast.parse(source), "")
    lines: dict[int, tuple[int, str, str]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[0] not in lines:
            lines[tok.start[0]] = (tok.start[1], tok.string, "")
        elif tok.type == tokenize.COMMENT and tok.start[0] in lines:
            col, name, _ = lines[tok.start[0]]
            lines[tok.start[0]] = (col, name, tok.string.lstrip("#").strip())
    return classes, lines
