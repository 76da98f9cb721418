"""Recipe: train the VQ image tokenizer with the shared Trainer and measure it the way the issue asks
(PSNR in dB, share of codes used, code perplexity) on a held-out split."""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from ramm.corpus.document import Document
from ramm.tokenizers.image_tokenizer import ImageTokenizer, ImageTokenizerConfig, psnr
from ramm.training.trainer import Trainer, TrainerConfig
from ramm.utils import seed_everything

log = logging.getLogger(__name__)


class ImageDataset(torch.utils.data.Dataset):
    """Every image of every document, as float (3, H, W) in [0, 1]."""

    def __init__(self, docs: Sequence[Document], image_size: int):
        pixels = [seg.pixels for d in docs for seg in d.images if seg.pixels is not None]
        bad = next((p.shape for p in pixels if p.shape != (image_size, image_size, 3)), None)
        if bad is not None:
            raise ValueError(f"corpus images must be {image_size}x{image_size} RGB for this tokenizer, found {bad}")
        self.images = torch.stack([torch.from_numpy(p).permute(2, 0, 1) for p in pixels]) if pixels else \
            torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i].float() / 255


@torch.no_grad()
def evaluate(model: ImageTokenizer, images: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """Mean PSNR (dB), fraction of the codebook used, and perplexity of the code distribution."""
    model.eval()
    scores, counts = [], torch.zeros(model.codebook_size, dtype=torch.float64)
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(next(model.parameters()).device)
        codes = model.encode(x)
        scores.append(psnr(model.decode(codes), x).cpu())
        counts += torch.bincount(codes.flatten().cpu(), minlength=model.codebook_size).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {"psnr": torch.cat(scores).mean().item(), "usage": (counts > 0).double().mean().item(),
            "perplexity": math.exp(entropy)}


def tokenizer_step(model, batch):
    """Trainer step: the tokenizer's own loss; counts images."""
    _, _, loss = model(batch)
    return loss, batch.shape[0]


def train_image_tokenizer(docs: Sequence[Document], cfg: ImageTokenizerConfig, trainer_cfg: TrainerConfig,
                          eval_docs: Sequence[Document] = ()) -> tuple[ImageTokenizer, dict[str, float]]:
    """Train on `docs`, save the tokenizer to trainer_cfg.out_dir, return it with metrics on `eval_docs`."""
    data = ImageDataset(docs, cfg.image_size)
    if len(data) == 0:
        raise ValueError("no images to train the tokenizer on (is the corpus' train split empty?)")
    eval_images = ImageDataset(eval_docs, cfg.image_size).images.float() / 255 if eval_docs else None
    seed_everything(trainer_cfg.seed)  # the initial weights too: same seed, same tokenizer
    model = ImageTokenizer(cfg)
    eval_fn = (lambda m: evaluate(m, eval_images)) if eval_images is not None and len(eval_images) else None
    trainer = Trainer(model, data, trainer_cfg, step_fn=tokenizer_step, eval_fn=eval_fn)
    log.info("training image tokenizer on %d images (%d parameters)", len(data),
             sum(p.numel() for p in model.parameters()))
    row = trainer.fit()
    model.eval()
    model.save_pretrained(Path(trainer_cfg.out_dir))
    return model, {**{k: row[k] for k in ("psnr", "usage", "perplexity") if k in row}, "step": trainer.step}

