"""What each `ramm train` command takes: the generator (RA-CM3 or vanilla), Chameleon fine-tuning, GRACE, SFT, the
image and text tokenizers and the retriever. A command's config *contains* the configs it hands on (the
generator's holds a `TrainerConfig`, an `RAConfig`, a `SplitConfig`), so nothing is copied field by field.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from ramm.config.components import (DualEncoderConfig, ImageTokenizerConfig, RAConfig, SplitConfig, TrainerConfig)
from ramm.config.decode import DecodeConfig, DecodeDefaults
from ramm.config.schema import require

SCHEMES = ("numeric", "string", "semantic", "structured", "atomic")  # GRACE's identifier schemes (ramm.grace.identifiers)


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
    clusters: int = 30  # structured: clusters per level (GRACE's k: 30)
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
        for name in ("memorize_steps", "retrieve_steps", "clusters", "leaf_size", "num_beams"):
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


