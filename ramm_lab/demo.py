"""The headline experiment (RA-CM3's claim at laptop scale), as `ramm demo` runs it on EmojiBench.

    corpus -> evaluation network (measures only) -> image + text tokenizers -> retriever -> memory
           -> RA generator + vanilla baseline -> text->image and image->text on test + heldout -> metrics -> report

Each stage writes `RUN/<stage>/done.json` last (atomically) and is skipped when that file exists
with the same stage config, so a second run only redoes what changed. Sizes and budgets live in one
JSON file (configs/demo.json); `DemoConfig` documents every field. The protocol is docs/emojibench.md:
leave-one-out retrieval, three systems (RA, vanilla, retrieval-only), FID and recognition on the
features of an evaluation network trained on every document (ramm_lab.evaluation_network), which no
system reads.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import torch

from ramm.config import (DecodeConfig, DecodeDefaults, GeneratorConfig, RetrieverRecipeConfig, TrainerConfig, from_dict,
                         load_config, to_dict)
from ramm.model.bundle import set_decode_defaults
from ramm.retrieval.dual_encoder import DualEncoderConfig
from ramm.retrieval.memory import Memory
from ramm.retrieval.recall import memory_recall
from ramm.tokenizers.image_tokenizer import ImageTokenizerConfig
from ramm.tokenizers.text_tokenizer import TextTokenizer
from ramm.training.generator_recipe import train_generator
from ramm.training.retriever_recipe import train_retriever
from ramm.training.tokenizer_recipe import train_image_tokenizer
from ramm.utils import atomic_write_json
from ramm_lab.emojibench import (MATCH_KEY, load_emojibench, name_query,
                                 pseudo_namer, sibling_key)
from ramm_lab.emojibench_build import EmojiBenchConfig, build_emojibench
from ramm_lab.evaluation_network import EvaluatorConfig, train_evaluator
from ramm_lab.headline import evaluate_headline

log = logging.getLogger(__name__)

STAGES = ("corpus", "evaluator", "tokenizer", "text_tokenizer", "retriever", "memory", "generator_ra", "generator_vanilla", "evaluate")


@dataclass
class EvalConfig:
    """How the trained systems are sampled and scored."""

    splits: tuple[str, ...] = ("test", "heldout")  # splits reported (never tune on heldout)
    limit: int = 0  # documents per split (0: all); a fixed hash-ordered subset otherwise
    k: int = 2  # retrieved documents at inference (RA-CM3's best)
    image: DecodeConfig = field(default_factory=lambda: DecodeConfig(top_p=0.9))  # text -> image decoding (greedy collapses; mix is not used here); the generators' bundles keep it as their default
    n_samples: int = 1  # images sampled per prompt; the best by retriever image-text similarity is kept
    caption: DecodeConfig = field(default_factory=lambda: DecodeConfig(method="greedy"))  # image -> text decoding; the bundles keep it too
    max_caption_tokens: int = 24  # caption length cap
    batch_size: int = 64  # prompts decoded together
    examples_per_split: dict = field(default_factory=lambda: {"test": 4, "heldout": 16})  # grid rows per split and track
    example_flags: int = 2  # of which flags (per split and track)
    usage_limit: int = 128  # documents per split and track in the retrieval-usage probe (0: all)
    train_probe: int = 128  # train documents (half flags) both generators draw for the recognition ceilings (0: off)
    seed: int = 0  # sampling seed

    def decode_defaults(self) -> DecodeDefaults:
        """What the demo's bundles record as their decoding: these settings."""
        return DecodeDefaults(image=self.image, caption=self.caption)

    def __post_init__(self):
        self.splits = tuple(self.splits)
        if isinstance(self.examples_per_split, int):
            self.examples_per_split = {s: self.examples_per_split for s in self.splits}
        if self.image.method == "mix" or self.caption.method == "mix":
            raise ValueError("eval: decoding method mix is the facade's (RAMM.generate_image); use sample, cfg or cd")
        if self.k < 1 or self.n_samples < 1 or self.batch_size < 1 or self.limit < 0 or self.train_probe < 0:
            raise ValueError("eval: k, n_samples and batch_size must be >= 1, limit and train_probe >= 0")


@dataclass
class TokenizerStage:
    """The image tokenizer stage: the model and its training budget."""

    model: ImageTokenizerConfig = field(default_factory=ImageTokenizerConfig)  # the VQ tokenizer's architecture
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # its training budget and optimizer


@dataclass
class TextTokenizerStage:
    """The byte-level BPE stage (TextTokenizer.train)."""

    vocab_size: int = 2048  # BPE vocabulary size incl. 256 bytes and <pad>

    def __post_init__(self):
        if self.vocab_size < 257:
            raise ValueError(f"vocab_size must exceed the 256 bytes, got {self.vocab_size}")


@dataclass
class RetrieverStage:
    """The dual-encoder stage: the model, its training budget and how the recipe draws views."""

    model: DualEncoderConfig = field(default_factory=DualEncoderConfig)  # the dual encoder's architecture and losses
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # its training budget and optimizer
    recipe: RetrieverRecipeConfig = field(default_factory=RetrieverRecipeConfig)  # view sampling and augmentation


DEMO_SETS = ("corpus", "memory", "tokenizer", "text_tokenizer", "out", "retrieval")  # the demo's own generator fields
# the generator fields that are no training input: they key no training stage (the evaluation section sets decode)
NOT_TRAINING = ("decode",)


@dataclass
class DemoConfig:
    """Every stage's settings: typed sections of the library's own configs (configs/*.json)."""

    name: str = "demo"  # run name, the report title
    threads: int = 0  # torch threads (0: torch's default)
    emojibench: EmojiBenchConfig = field(default_factory=EmojiBenchConfig)  # the corpus build (size, styles, seed)
    tokenizer: TokenizerStage = field(default_factory=TokenizerStage)  # the image tokenizer
    text_tokenizer: TextTokenizerStage = field(default_factory=TextTokenizerStage)  # the text tokenizer
    retriever: RetrieverStage = field(default_factory=RetrieverStage)  # the dual encoder
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)  # shared by RA and vanilla (same budget); paths are the demo's
    evaluation: EvalConfig = field(default_factory=EvalConfig)  # how the systems are sampled and scored
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)  # the evaluation network (FID, recognition)

    def __post_init__(self):
        if isinstance(self.generator, dict):
            bad = set(self.generator) & {*DEMO_SETS, *NOT_TRAINING} | ({"resume"} & set(self.generator.get("trainer", {})))
            if bad:
                raise ValueError(f"demo config: generator section must not set {sorted(bad)} (the demo sets them)")
        for f in fields(self):
            if isinstance(getattr(self, f.name), dict):
                setattr(self, f.name, from_dict(_SECTIONS[f.name], getattr(self, f.name), f"demo config {f.name}"))
        if any(getattr(self.generator, n) not in ("", True) for n in DEMO_SETS):
            raise ValueError(f"demo config: generator section must not set {list(DEMO_SETS)} (the demo sets them)")
        # the keys the library leaves to the corpus (CorpusHooks.match_key), written out: stage configs name them
        self.retriever.recipe.match = self.retriever.recipe.match or MATCH_KEY
        self.generator.ra.group_by = self.generator.ra.group_by or MATCH_KEY
        self.generator = replace(self.generator, decode=self.evaluation.decode_defaults())  # bundles decode as evaluated

    @classmethod
    def load(cls, path: str | Path) -> "DemoConfig":
        return load_config(cls, path)


class Stage:
    """A cached step: runs `fn` unless RUN/<name>/done.json records the same config. A run of the same
    config that was cut off resumes in its folder; another config starts from an empty one."""

    def __init__(self, run: Path, name: str, config, report: Callable[[str], None]):
        self.dir, self.name, self.report = run / name, name, report
        self.key = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def done(self) -> dict | None:
        f = self.dir / "done.json"
        if f.exists():
            d = json.loads(f.read_text())
            if d.get("key") == self.key:
                return d["result"]
        return None

    def run(self, fn: Callable[[Path], dict]) -> dict:
        cached = self.done()
        if cached is not None:
            self.report(f"[{self.name}] cached ({self.dir})")
            return cached
        started = self.dir / "started.json"
        if self.dir.exists() and (not started.exists() or json.loads(started.read_text()).get("key") != self.key):
            self.report(f"[{self.name}] its config changed: starting over ({self.dir})")
            shutil.rmtree(self.dir)  # a memory or checkpoint of another config must not be resumed
        self.report(f"[{self.name}] running ...")
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(started, {"key": self.key})  # a killed run with the same config resumes
        t0 = time.time()
        result = fn(self.dir)
        result = {**result, "seconds": round(time.time() - t0, 1)}
        atomic_write_json(self.dir / "done.json", {"key": self.key, "result": result})
        self.report(f"[{self.name}] done in {result['seconds']:.0f}s: "
                    + ", ".join(f"{k}={_short(v)}" for k, v in result.items() if k != "seconds" and not isinstance(v, (dict, list))))
        return result


def _short(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def run_demo(cfg: DemoConfig, data_dir: str | Path, run_dir: str | Path, report: Callable[[str], None] = print) -> Path:
    """Run every stage (cached); returns the path of report.md."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data, run = Path(data_dir), Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run / "config.json", to_dict(cfg))
    t_start = time.time()

    def corpus_stage(_):
        meta = build_emojibench(data, cfg.emojibench)  # a no-op when complete and current
        return {"documents": meta["n_documents"], "concepts": meta["n_concepts"]}

    Stage(run, "corpus", [str(data), to_dict(cfg.emojibench)], report).run(corpus_stage)
    docs = load_emojibench(data)
    by_split: dict[str, list] = {}
    for d in docs:
        by_split.setdefault(d.metadata["split"], []).append(d)

    # --- evaluation network: a measuring instrument (FID, recognition), trained on every document of every
    # split; nothing downstream of it in the system reads it, only the evaluate stage ---
    def evaluator_stage(out):
        _, metrics = train_evaluator(docs, cfg.evaluator, out)
        return metrics

    ev_res = Stage(run, "evaluator", [str(data), to_dict(cfg.emojibench), to_dict(cfg.evaluator)], report).run(evaluator_stage)

    # --- image tokenizer ---
    def tokenizer_stage(out):
        _, metrics = train_image_tokenizer(by_split["train"], cfg.tokenizer.model,
                                           replace(cfg.tokenizer.trainer, out_dir=str(out)),
                                           eval_docs=by_split.get("test", []))
        return metrics

    tok = Stage(run, "tokenizer", to_dict(cfg.tokenizer), report).run(tokenizer_stage)

    def text_tokenizer_stage(out):
        t = TextTokenizer.train([d.text for d in by_split["train"]], vocab_size=cfg.text_tokenizer.vocab_size)
        t.save_pretrained(out)
        return {"vocab_size": t.vocab_size}

    Stage(run, "text_tokenizer", to_dict(cfg.text_tokenizer), report).run(text_tokenizer_stage)

    # --- retriever + memory ---
    def retriever_stage(out):
        r = cfg.retriever
        row = train_retriever(by_split["train"], out, replace(r.trainer, out_dir=str(out)), r.model, r.recipe,
                              alt_text=name_query)
        return {"steps": row.get("step"), "loss": row.get("loss")}

    Stage(run, "retriever", to_dict(cfg.retriever), report).run(retriever_stage)

    def memory_stage(out):
        mem = Memory.build(docs, run / "retriever", out, progress=True)
        rec = {}
        for split in cfg.evaluation.splits:
            for direction, r in memory_recall(mem, by_split[split], match=MATCH_KEY).items():
                rec[f"{direction} {split}"] = {f"R@{k}": v for k, v in r.items()}
        return {"documents": len(mem), "recall": rec}

    mem_result = Stage(run, "memory", [to_dict(cfg.retriever), to_dict(cfg.emojibench), cfg.evaluation.splits], report).run(memory_stage)

    # --- generators: same data, steps and seed; only retrieval differs ---
    def generator_stage(retrieval: bool):
        def fn(out):
            return train_generator(replace(cfg.generator, corpus=str(data), memory=str(run / "memory"),
                                           tokenizer=str(run / "tokenizer"), text_tokenizer=str(run / "text_tokenizer"),
                                           out=str(out), retrieval=retrieval), pseudo_namer, sibling_key)
        return fn

    trained = {k: v for k, v in to_dict(cfg.generator).items() if k not in NOT_TRAINING}
    upstream = [to_dict(cfg.tokenizer), to_dict(cfg.text_tokenizer), to_dict(cfg.retriever), trained]
    ra_res = Stage(run, "generator_ra", upstream, report).run(generator_stage(True))
    va_res = Stage(run, "generator_vanilla", upstream, report).run(generator_stage(False))
    # the bundles decode as the evaluation does (chosen on val), also when the stages were cached
    for name in ("generator_ra", "generator_vanilla"):
        set_decode_defaults(run / name, cfg.generator.decode)

    def evaluate_stage(out):
        return evaluate_headline(run, by_split, docs, cfg, mem_result.get("recall", {}),
                                 {"tokenizer": tok, "generator_ra": ra_res, "generator_vanilla": va_res,
                                  "evaluator": ev_res}, report)

    Stage(run, "evaluate", [upstream, to_dict(cfg.evaluation), to_dict(cfg.evaluator)], report).run(evaluate_stage)
    report(f"[demo] finished in {(time.time() - t_start) / 60:.1f} min")
    return run / "report.md"


_SECTIONS = typing.get_type_hints(DemoConfig)
