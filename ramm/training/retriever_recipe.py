"""Recipe: train the CLIP-style retriever (ramm.retrieval.dual_encoder) on a corpus's train split.

Each sample is one concept: two (image, text) views (EmojiBench's two styles, or two augmentations
of a concept's one document); a text view is the caption or, sometimes, the caller's alternative text of
the document (`alt_text`; the EmojiBench lab's is the style-free "emoji: <name>"). The loss pulls images
to texts, and each view to the other, so a query finds the other style's document through the text part
(text->image) or the image part (image->text) of its mixed-modal embedding.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tokenizers import Tokenizer

from ramm.config import RetrieverRecipeConfig
from ramm.corpus.document import Document
from ramm.retrieval.dual_encoder import DualEncoder, DualEncoderConfig, train_text_tokenizer
from ramm.retrieval.encoder import as_image_batch
from ramm.retrieval.recall import concept_of, exact_leave_one_out, recall_at_k
from ramm.training.recipe import run_lock
from ramm.training.trainer import Trainer, TrainerConfig
from ramm.utils import output_dir, seed_everything

log = logging.getLogger(__name__)




def shift_image(pixels: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    if max_shift == 0:
        return pixels
    dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
    h, w, _ = pixels.shape
    out = np.full_like(pixels, 255)
    out[max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] = pixels[max(-dy, 0): h - max(dy, 0), max(-dx, 0): w - max(dx, 0)]
    return out


class ConceptViews(torch.utils.data.Dataset):
    """One item per concept: {'image', 'image_b', 'text'} with fresh randomness per epoch."""

    def __init__(self, docs: list[Document], model: DualEncoder, cfg: RetrieverRecipeConfig,
                 alt_text: Callable[[Document], str] | None = None):
        groups: dict[str, list[Document]] = defaultdict(list)
        for d in docs:
            if d.image is None or not d.texts:
                raise ValueError(f"retriever training needs image+text documents; {d.id} is not one")
            groups[concept_of(d, cfg.match)].append(d)
        self.groups, self.model, self.cfg, self.alt_text, self.epoch = list(groups.values()), model, cfg, alt_text, 0
        self.size = model.cfg.image_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng((self.cfg.seed, self.epoch, i))
        group = self.groups[i]
        a, b = (group[j] for j in rng.permutation(len(group))[:2]) if len(group) > 1 else (group[0], group[0])
        # the draw is made with or without alt_text, so the augmentations that follow stay the same
        texts = [self.alt_text(d) if rng.random() < self.cfg.name_view_prob and self.alt_text else d.text
                 for d in (a, b)]
        images = [shift_image(d.image, rng, self.cfg.max_shift) for d in (a, b)]
        flip = rng.random(2) < self.cfg.flip_prob
        x = as_image_batch([im[:, ::-1] if f else im for im, f in zip(images, flip)], self.size)  # sizes may differ
        t = self.model.tokenize(texts)
        return {"image": x[0], "image_b": x[1], "text": t[0], "text_b": t[1]}


def collate(items: list[dict]) -> dict:
    """Stack images; right-pad texts with 0 to the longest in the batch."""
    pad = torch.nn.utils.rnn.pad_sequence
    return {"image": torch.stack([it["image"] for it in items]), "image_b": torch.stack([it["image_b"] for it in items]),
            "text": pad([it["text"] for it in items], batch_first=True), "text_b": pad([it["text_b"] for it in items], batch_first=True)}


def leave_one_out_recall(model: DualEncoder, queries: list[Document], memory: list[Document], *,
                         match: str | None, ks=(1, 5, 10)) -> dict:
    """Exact Recall@K (recall.py's definition, a hit shares metadata `match`) over a small in-RAM memory;
    queries must be in `memory`."""
    row = {d.id: i for i, d in enumerate(memory)}
    mem = model.embed_documents(memory)
    concepts = [concept_of(d, match) for d in memory]
    targets = [concept_of(d, match) for d in queries]
    self_rows = [row[d.id] for d in queries]
    out = {}
    for name, q in (("t2i", model.embed_text([d.text for d in queries])),
                    ("i2t", model.embed_image([d.image for d in queries]))):
        top = exact_leave_one_out(q, mem, self_rows, max(ks))
        for k, r in recall_at_k([[concepts[j] for j in t] for t in top], targets, ks).items():
            out[f"{name}_r{k}"] = r
    return out


def train_retriever(train_docs: list[Document], out_dir: str | Path, trainer_cfg: TrainerConfig,
                    model_cfg: DualEncoderConfig | None = None, recipe: RetrieverRecipeConfig | None = None,
                    val_docs: list[Document] | None = None, memory_docs: list[Document] | None = None,
                    alt_text: Callable[[Document], str] | None = None) -> dict:
    """Train and save the encoder to `out_dir` (config.json, model.safetensors, tokenizer.json).

    `alt_text(doc)`: a second text view of a document (shown with recipe.name_view_prob; None: captions only).

    With `val_docs`, logs leave-one-out recall of val queries against `memory_docs` (default:
    train + val) at each evaluation. Returns the trainer's last metrics row."""
    if not train_docs:
        raise ValueError("no training documents")
    if trainer_cfg.batch_size // trainer_cfg.grad_accum < 2:
        raise ValueError(f"batch_size {trainer_cfg.batch_size} (grad_accum {trainer_cfg.grad_accum}) gives "
                         f"micro-batches of one pair: InfoNCE needs >= 2 pairs per batch to contrast")
    model_cfg, recipe = model_cfg or DualEncoderConfig(), recipe or RetrieverRecipeConfig()
    out = output_dir(out_dir, "encoder")
    with run_lock(out):  # a second training into this folder is refused before it writes anything
        return _train(out, train_docs, trainer_cfg, model_cfg, recipe, val_docs, memory_docs, alt_text)


def _train(out: Path, train_docs, trainer_cfg, model_cfg, recipe, val_docs, memory_docs, alt_text) -> dict:
    tok_file = out / "tokenizer.json"
    if trainer_cfg.resume and tok_file.exists():  # resuming: the tokenizer must not change under the weights
        try:
            tokenizer = Tokenizer.from_file(str(tok_file))
        except Exception as e:  # tokenizers raises its own exception type
            raise ValueError(f"cannot resume: {tok_file} is not a readable tokenizer ({e})") from None
    else:
        texts = [d.text for d in train_docs] + ([alt_text(d) for d in train_docs] if alt_text else [])
        tokenizer = train_text_tokenizer(texts, model_cfg.text_vocab_size)
    seed_everything(trainer_cfg.seed)
    model = DualEncoder(model_cfg, tokenizer)
    model.save_pretrained(out)  # tokenizer + config on disk before the first checkpoint
    eval_fn = None
    if val_docs:
        memory_docs = memory_docs or train_docs + val_docs
        eval_fn = lambda m: leave_one_out_recall(m, val_docs, memory_docs, match=recipe.match)  # noqa: E731
    trainer = Trainer(model, ConceptViews(train_docs, model, recipe, alt_text), trainer_cfg, collate_fn=collate, eval_fn=eval_fn)
    row = trainer.fit()
    model.save_pretrained(out)
    log.info("retriever saved to %s: %s", out, row)
    return row
