"""Recipe: RA fine-tuning of a Chameleon / Anole checkpoint (RA-CM3 sec. 3.3 on transformers weights).

The same RA data as ramm's own generator (`RADataset`: train-split main documents, up to k retrieved
documents drawn per micro-batch, their tokens weighted alpha, CM3 masking) through the same `Trainer`
(DDP or FSDP2 under torchrun), over `ChameleonGenerator`: full fine-tuning or LoRA adapters (peft). The result is
saved back as a directory transformers loads (`ChameleonForConditionalGeneration.from_pretrained`),
adapters merged in, with generator.json naming the memory so `RAMM.load(out)` retrieves from it.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from ramm.config import ChameleonFinetuneConfig
from ramm.corpus import open_corpus
from ramm.model.bundle import INFO
from ramm.model.hf_chameleon import load_chameleon
from ramm.pipeline import image_size
from ramm.retrieval.memory import Memory
from ramm.tokenizers.code_cache import encode_images, with_codes
from ramm.training.ra_data import RADataset, precompute_neighbours, relative_ids
from ramm.training.recipe import holds_run_folder, start_run
from ramm.training.trainer import Trainer
from ramm.utils import atomic_write_json

log = logging.getLogger(__name__)


def ra_finetune(model, fmt, train, memory, cfg: ChameleonFinetuneConfig) -> tuple[dict, dict | None]:
    """Fine-tune `model` (a ChameleonGenerator) in place on `train` documents with neighbours from `memory`;
    returns the trainer's last metrics and, under FSDP (which leaves `model` sharded), the full trained
    weights on rank 0 ({} on the others; None without FSDP) for `unsharded`."""
    if fmt.image_tokenizer is None:
        raise ValueError("RA fine-tuning encodes the corpus' images: the checkpoint has no image tokens or VQGAN")
    train = [d for d in train if d.image is not None]
    if not train:
        raise ValueError("no train documents with an image")
    pool = {d.id: d for d in train}
    pool.update((d.id, d) for d in memory.documents([i for i in memory.ids if i not in pool]))
    with_image = [d for d in pool.values() if d.image is not None]
    codes = dict(zip([d.id for d in with_image], encode_images(fmt.image_tokenizer, with_image, batch=8)))
    lookup = {i: with_codes(d, codes) for i, d in pool.items() if i in codes}
    partners = relative_ids(list(pool.values()), list(pool.values()), cfg.ra.group_by)
    neighbours = precompute_neighbours(memory, train, cfg.ra, partners, allowed={d.id for d in train}) \
        if max(cfg.ra.k_choices) else {}
    data = RADataset([lookup[d.id] for d in train], neighbours, lookup, fmt, cfg.ra)
    if cfg.lora_rank:
        model.add_lora(cfg.lora_rank, cfg.lora_alpha, targets=cfg.lora_targets)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("RA fine-tuning %d documents, %.2fM trainable parameters", len(data), trainable / 1e6)
    model.train()
    trainer = Trainer(model, data, cfg.trainer, collate_fn=data.collate)
    last = trainer.fit()
    model.eval()
    fsdp = trainer.distributed and cfg.trainer.strategy == "fsdp"
    return last, trainer.full_state_dict() if fsdp else None


def unsharded(cfg: ChameleonFinetuneConfig, weights: dict[str, torch.Tensor]):
    """A plain ChameleonGenerator (adapters included) from cfg.model with FSDP's gathered `weights`."""
    model, _, _ = load_chameleon(cfg.model, device="cpu", dtype=getattr(torch, cfg.dtype))
    if cfg.lora_rank:
        model.add_lora(cfg.lora_rank, cfg.lora_alpha, targets=cfg.lora_targets)
    model.load_state_dict(weights)
    return model


@holds_run_folder
def finetune_chameleon(cfg: ChameleonFinetuneConfig) -> dict:
    """Load cfg.model, RA fine-tune it on cfg.corpus with cfg.memory, save to cfg.out; returns a summary."""
    out = start_run(cfg, "chameleon_finetune_config.json")
    t0 = time.time()
    model, fmt, info = load_chameleon(cfg.model, device="cpu", dtype=getattr(torch, cfg.dtype))
    fmt.alpha = cfg.ra.alpha
    if fmt.image_tokenizer is None:
        raise ValueError(info["images_unavailable"])
    docs = list(open_corpus(cfg.corpus, image_size=image_size(fmt.image_tokenizer)))
    train = cfg.split.group(docs).get("train", [])
    last, weights = ra_finetune(model, fmt, train, Memory.load(cfg.memory),
                                replace(cfg, trainer=replace(cfg.trainer, out_dir=cfg.trainer.out_dir or str(out))))
    if not dist.is_initialized() or dist.get_rank() == 0:
        if weights is not None:
            model = unsharded(cfg, weights)
        model.save_pretrained(out, tokenizer=info["tokenizer"], source=cfg.model)
        atomic_write_json(out / INFO, {"backend": "chameleon", "memory": str(Path(cfg.memory).resolve()),
                                       "alpha": cfg.ra.alpha, "base": str(Path(cfg.model).resolve()),
                                       "lora_rank": cfg.lora_rank})
    return {"train_loss": last.get("loss"), "minutes": (time.time() - t0) / 60,
            "tokens_per_s": last.get("tokens_per_s")}
