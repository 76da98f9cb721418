"""Recipe: multi-task instruction tuning (SFT) of a pretrained generator, CM3Leon's second stage.

Starts from a `ramm train generator` directory and tunes every weight on the task mixture of
`ramm.training.sft_data` (train split only; loss on the response only), then reports the response
loss on val per task, for the training templates and the held-out ones.

With `retrieve_k` > 0 every prompt starts with retrieved documents (RA-CM3's format, no loss on them):
by the input image, or by the caption for the text-prompted tasks; never the example's own documents
(its source and its target: leave-one-out), and for training items only train documents (retrieved
documents are trained on in pretraining; heldout concepts stay unseen). Off by default: see docs/sft.md
for the equal-time comparison on val.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from ramm.config import GeneratorConfig, RAConfig, SFTConfig, from_dict
from ramm.corpus import open_corpus
from ramm.corpus.document import Document, ImageSegment
from ramm.evaluation.token_loss import _main_token_loss
from ramm.model.bundle import bundle_info, decode_defaults, load_generator, save_generator
from ramm.retrieval.memory import Memory
from ramm.tokenizers.code_cache import encode_images_cached, with_codes
from ramm.training.ra_data import RADataset, precompute_neighbours
from ramm.training.recipe import holds_run_folder, start_run
from ramm.training.sft_data import (TEMPLATES, TEXT_QUERY_TASKS, SFTDataset, build_items, encode_within, mask_image,
                                    split_templates, with_templates)
from ramm.training.trainer import Trainer
from ramm.utils import atomic_write_json

log = logging.getLogger(__name__)


def corpus_tasks(hooks, docs: list) -> tuple[dict, dict]:
    """(pairings, masks) a corpus offers beyond its documents (`CorpusHooks.sft_tasks`: EmojiBench's tone / style
    / question pairs and its alpha masks); other corpora give none (their SFT is text -> image, captioning and
    infilling)."""
    return hooks.sft_tasks(docs) if hooks.sft_tasks is not None else ({}, {})


def prepare(fmt, image_tokenizer_dir, docs: list, masks: dict) -> tuple[dict, dict]:
    """({id: Document with codes}, {id: silhouette ImageSegment with codes}): VQ codes from the shared cache."""
    docs = [d for d in docs if d.image is not None]
    mask_docs = [Document(f"{i}.mask", [ImageSegment(pixels=mask_image(m))]) for i, m in masks.items()]
    codes = encode_images_cached(fmt.image_tokenizer, image_tokenizer_dir, docs + mask_docs)
    lookup = {d.id: with_codes(d, codes) for d in docs}
    silhouettes = {i: ImageSegment(pixels=mask_image(m), tokens=codes[f"{i}.mask"]) for i, m in masks.items()}
    return lookup, silhouettes


def sft_retriever(memory, docs: list, lookup: dict, k: int, allowed: set[str] | None = None):
    """item -> its k retrieved documents (`ramm.training.sft_data.Retrieve`), precomputed for `docs` by the
    memory's batched search: image neighbours for image-input tasks, text neighbours for the captioned
    ones; the item's own document never (the search's leave-one-out) nor its target (dropped here)."""
    ra = RAConfig(k_choices=(k,), n_candidates=k + 1, diversity=None, query_dropout=0.0)
    found = precompute_neighbours(memory, docs, ra, {}, allowed=allowed)
    nb = {kind: dict(zip([d.id for d in docs], rows)) for kind, rows in found.items()}

    def retrieve(item) -> list:
        kind = "text" if item.task in TEXT_QUERY_TASKS else "image"
        return [lookup[i] for i in nb[kind].get(item.source, []) if i != item.target][:k]
    return retrieve


def pretraining_replay(pretrained, train: list, lookup: dict, fmt):
    """The pretrained generator's own training examples (`ramm.training.ra_data.RADataset`: its RA config and
    the neighbours it saved), for replay during SFT; None, with a warning, when the directory lacks them
    (a generator not trained by `ramm train generator`) or they were computed on other documents."""
    cfg_file, nb_file = Path(pretrained) / "generator_config.json", Path(pretrained) / "neighbours.json"
    if not cfg_file.is_file():
        log.warning("no pretraining replay: %s has no generator_config.json", pretrained)
        return None
    gen = from_dict(GeneratorConfig, json.loads(cfg_file.read_text()), str(cfg_file))
    if not gen.retrieval:
        return RADataset(train, {}, lookup, fmt, replace(gen.ra, k_choices=(0,)))
    neighbours = json.loads(nb_file.read_text()) if nb_file.is_file() else {}
    if not neighbours or any(len(rows) != len(train) for rows in neighbours.values()):
        log.warning("no pretraining replay: %s holds no neighbours for these %d train documents", nb_file, len(train))
        return None
    if any(i not in lookup for rows in neighbours.values() for row in rows for i in row):
        log.warning("no pretraining replay: %s names documents outside the corpus", nb_file)
        return None
    return RADataset(train, neighbours, lookup, fmt, gen.ra)


def response_losses(model, fmt, items: dict, heldout: int, limit: int = 0, retrieve=None, templates=None) -> dict[str, float]:
    """Teacher-forced loss on the response tokens per task, `<task>_trained` (training templates, each
    item under template i mod n) and `<task>_heldout` (held-out templates)."""
    templates = TEMPLATES if templates is None else templates
    out = {}
    device = next(model.parameters()).device
    with torch.no_grad():
        for task, task_items in items.items():
            chosen = task_items[:limit] if limit else task_items
            if not chosen:  # a task the corpus offers no pairs for (and maybe no wordings)
                continue
            for group, numbers in zip(("trained", "heldout"), split_templates(task, heldout, templates)):
                if numbers:
                    seqs = [encode_within(fmt, it, numbers[i % len(numbers)], retrieve(it) if retrieve else (),
                                          model.cfg.max_seq_len, templates) for i, it in enumerate(chosen)]
                    out[f"{task}_{group}"] = _main_token_loss(model, seqs, fmt.vocab.pad, 32, device)
    return out


@holds_run_folder
def train_sft(cfg: SFTConfig, pairings: dict | None = None, masks: dict | None = None,
              templates: dict | None = None) -> dict:
    """Tune cfg.pretrained on cfg.corpus, save the tuned generator to cfg.out, return the val evaluation.
    `pairings` / `masks` / `templates` (wordings of the pairings' tasks) override what the corpus' hooks offer
    (`corpus_tasks`, `CorpusHooks.sft_templates`)."""
    out = start_run(cfg, "sft_config.json")
    t0 = time.time()
    info = bundle_info(cfg.pretrained)
    model, fmt, _ = load_generator(cfg.pretrained, cfg.trainer.device)
    model.train()
    corpus = open_corpus(cfg.corpus)
    docs = list(corpus)
    if not docs:
        raise ValueError(f"corpus {cfg.corpus} has no documents")
    by_split = cfg.split.group(docs)
    used = by_split.get("train", []) + by_split.get("val", [])
    found_pairs, found_masks = corpus_tasks(corpus.hooks, used)
    pairings = found_pairs if pairings is None else pairings
    masks = found_masks if masks is None else masks
    memory = None
    if cfg.retrieve_k:
        if not (cfg.memory or info.get("memory")):
            raise ValueError(f"retrieve_k={cfg.retrieve_k} needs a memory: pass --memory (the pretrained generator "
                             f"{cfg.pretrained} names none)")
        memory = Memory.load(cfg.memory or info["memory"])
    extra_docs = memory.documents(memory.ids) if memory is not None else []
    seen = {d.id for d in used}
    lookup, silhouettes = prepare(fmt, info["image_tokenizer"], used + [d for d in extra_docs if d.id not in seen], masks)
    templates = with_templates(corpus.hooks.sft_templates if templates is None else templates)
    mixture = cfg.mixture.weights(dict(corpus.hooks.sft_questions or {}))
    replay_weight = mixture.pop("replay")
    tasks = [t for t, w in mixture.items() if w > 0]
    items = {s: build_items({d.id: lookup[d.id] for d in by_split.get(s, []) if d.id in lookup}, pairings,
                            silhouettes, tasks) for s in ("train", "val")}
    if not any(items["train"].values()):
        raise ValueError(f"corpus {cfg.corpus} has no train documents with an image")
    retrieve = {"train": None, "val": None}
    if memory is not None:
        for s in ("train", "val"):
            split_docs = [lookup[d.id] for d in by_split.get(s, []) if d.id in lookup]
            allowed = {d.id for d in by_split.get("train", [])} if s == "train" else None
            retrieve[s] = sft_retriever(memory, split_docs, lookup, cfg.retrieve_k, allowed) if split_docs else None
    replay = pretraining_replay(cfg.pretrained, [lookup[d.id] for d in by_split.get("train", []) if d.id in lookup],
                                lookup, fmt) if replay_weight > 0 else None
    data = SFTDataset(items["train"], mixture, fmt, heldout=cfg.heldout_templates, seed=cfg.trainer.seed,
                      max_len=model.cfg.max_seq_len, retrieve=retrieve["train"], replay=replay,
                      replay_weight=replay_weight, templates=templates)
    log.info("SFT items per task: %s; prepared in %.0fs", {t: len(v) for t, v in items["train"].items()},
             time.time() - t0)

    def eval_fn(m):
        return response_losses(m, fmt, items["val"], cfg.heldout_templates, cfg.eval_limit, retrieve["val"], templates)

    trainer = Trainer(model, data, replace(cfg.trainer, out_dir=cfg.trainer.out_dir or str(out)),
                      collate_fn=data.collate, eval_fn=eval_fn if any(items["val"].values()) else None)
    last = trainer.fit()
    extra = {k: v for k, v in info.items() if k not in ("text_tokenizer", "image_tokenizer", "memory", "alpha", "decode")}
    save_generator(model, out, text_tokenizer=info["text_tokenizer"], image_tokenizer=info["image_tokenizer"],
                   memory=info.get("memory") if memory is None else memory.root, alpha=info.get("alpha", 0.1),
                   decode=decode_defaults(info), **{**extra, "sft": True, "sft_retrieve_k": cfg.retrieve_k})
    model.eval()
    result = response_losses(model, fmt, items["val"], cfg.heldout_templates, cfg.eval_limit, retrieve["val"], templates)
    result.update(steps=trainer.step, train_loss=last.get("loss"), minutes=(time.time() - t0) / 60,
                  items={t: len(v) for t, v in items["train"].items()})
    atomic_write_json(out / "eval.json", result)
    return result
