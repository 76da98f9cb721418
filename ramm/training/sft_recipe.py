"""Recipe: multi-task instruction tuning (SFT) of a pretrained generator, CM3Leon's second stage.

Starts from a `ramm train generator` directory and tunes every weight on the task mixture of
`ramm.training.sft_data` (train split only; loss on the response only), then reports the response
loss on val per task, for the training templates and the held-out ones. Retrieval is off during SFT:
the instruction already holds the evidence the edit, style and question tasks need (the source image),
and on EmojiBench a retrieved document of the same concept would be the edit's target itself.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace

from ramm.config import SFTConfig
from ramm.training.recipe import start_run
from ramm.utils import atomic_write_json

log = logging.getLogger(__name__)


def corpus_tasks(corpus: str, docs: list) -> tuple[dict, dict]:
    """(pairings, masks) a corpus offers beyond its documents: EmojiBench's tone / style / question pairs and
    its alpha masks; other corpora give none (their SFT is text -> image, captioning and infilling)."""
    from ramm.corpus.emojibench import is_emojibench_dir, load_masks, sft_pairings
    if not is_emojibench_dir(corpus):
        return {}, {}
    return sft_pairings(docs), load_masks(corpus, [d.id for d in docs])


def prepare(fmt, image_tokenizer_dir, docs: list, masks: dict) -> tuple[dict, dict]:
    """({id: Document with codes}, {id: silhouette ImageSegment with codes}): VQ codes from the shared cache."""
    from ramm.corpus.document import Document, ImageSegment
    from ramm.tokenizers.code_cache import encode_images_cached, with_codes
    from ramm.training.sft_data import mask_image

    docs = [d for d in docs if d.image is not None]
    mask_docs = [Document(f"{i}.mask", [ImageSegment(pixels=mask_image(m))]) for i, m in masks.items()]
    codes = encode_images_cached(fmt.image_tokenizer, image_tokenizer_dir, docs + mask_docs)
    lookup = {d.id: with_codes(d, codes) for d in docs}
    silhouettes = {i: ImageSegment(pixels=mask_image(m), tokens=codes[f"{i}.mask"]) for i, m in masks.items()}
    return lookup, silhouettes


def response_losses(model, fmt, items: dict, heldout: int, limit: int = 0) -> dict[str, float]:
    """Teacher-forced loss on the response tokens per task, `<task>_trained` (training templates, each
    item under template i mod n) and `<task>_heldout` (held-out templates)."""
    import torch

    from ramm.evaluation.token_loss import _main_token_loss
    from ramm.training.sft_data import encode_item, split_templates

    out = {}
    device = next(model.parameters()).device
    with torch.no_grad():
        for task, task_items in items.items():
            chosen = task_items[:limit] if limit else task_items
            for group, templates in zip(("trained", "heldout"), split_templates(task, heldout)):
                if chosen and templates:
                    seqs = [encode_item(fmt, it, templates[i % len(templates)]) for i, it in enumerate(chosen)]
                    out[f"{task}_{group}"] = _main_token_loss(model, seqs, fmt.vocab.pad, 32, device)
    return out


def train_sft(cfg: SFTConfig, pairings: dict | None = None, masks: dict | None = None) -> dict:
    """Tune cfg.pretrained on cfg.corpus, save the tuned generator to cfg.out, return the val evaluation.
    `pairings` / `masks` override what the corpus offers (`corpus_tasks`)."""
    from ramm.corpus import open_corpus
    from ramm.model.generator import bundle_info, load_generator, save_generator
    from ramm.training.sft_data import SFTDataset, build_items
    from ramm.training.trainer import Trainer

    out = start_run(cfg, "sft_config.json")
    t0 = time.time()
    info = bundle_info(cfg.pretrained)
    model, fmt, _ = load_generator(cfg.pretrained, cfg.trainer.device)
    model.train()
    docs = list(open_corpus(cfg.corpus))
    if not docs:
        raise ValueError(f"corpus {cfg.corpus} has no documents")
    by_split = cfg.split.group(docs)
    used = by_split.get("train", []) + by_split.get("val", [])
    found_pairs, found_masks = corpus_tasks(cfg.corpus, used)
    pairings = found_pairs if pairings is None else pairings
    masks = found_masks if masks is None else masks
    lookup, silhouettes = prepare(fmt, info["image_tokenizer"], used, masks)
    mixture = asdict(cfg.mixture)
    tasks = [t for t, w in mixture.items() if w > 0]
    items = {s: build_items({d.id: lookup[d.id] for d in by_split.get(s, []) if d.id in lookup}, pairings,
                            silhouettes, tasks) for s in ("train", "val")}
    if not any(items["train"].values()):
        raise ValueError(f"corpus {cfg.corpus} has no train documents with an image")
    data = SFTDataset(items["train"], mixture, fmt, heldout=cfg.heldout_templates, seed=cfg.trainer.seed,
                      max_len=model.cfg.max_seq_len)
    log.info("SFT items per task: %s; prepared in %.0fs", {t: len(v) for t, v in items["train"].items()},
             time.time() - t0)

    def eval_fn(m):
        return response_losses(m, fmt, items["val"], cfg.heldout_templates, cfg.eval_limit)

    trainer = Trainer(model, data, replace(cfg.trainer, out_dir=cfg.trainer.out_dir or str(out)),
                      collate_fn=data.collate, eval_fn=eval_fn if any(items["val"].values()) else None)
    last = trainer.fit()
    extra = {k: v for k, v in info.items() if k not in ("text_tokenizer", "image_tokenizer", "memory", "alpha")}
    save_generator(model, out, text_tokenizer=info["text_tokenizer"], image_tokenizer=info["image_tokenizer"],
                   memory=info.get("memory"), alpha=info.get("alpha", 0.1), **{**extra, "sft": True})
    model.eval()
    result = response_losses(model, fmt, items["val"], cfg.heldout_templates, cfg.eval_limit)
    result.update(steps=trainer.step, train_loss=last.get("loss"), minutes=(time.time() - t0) / 60,
                  items={t: len(v) for t, v in items["train"].items()})
    atomic_write_json(out / "eval.json", result)
    return result
