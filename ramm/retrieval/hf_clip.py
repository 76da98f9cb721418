"""A pretrained CLIP (RA-CM3 used ViT-L/14, CM3Leon ViT-B/32) from a local transformers directory,
behind the same `embed_text` / `embed_image` interface as our DualEncoder.

The directory is what `CLIPModel.save_pretrained` + a tokenizer's `save_pretrained` write (and
optionally `preprocessor_config.json`); nothing is downloaded. Images go through the CLIP image
processor (resize, centre crop, mean/std) with PIL, so torchvision is not needed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ramm.retrieval.encoder import Encoder, as_image_batch
from ramm.utils import pick_device


class HFClipEncoder(Encoder):
    def __init__(self, model, tokenizer, processor, batch_size: int = 64):
        self.model, self.tokenizer, self.processor, self.batch_size = model.eval(), tokenizer, processor, batch_size
        self.dim = model.config.projection_dim

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None) -> "HFClipEncoder":
        # lazy: transformers (a slow import) only when a CLIP encoder loads
        from transformers import AutoTokenizer, CLIPModel
        try:  # transformers >= 5: the PIL backend, which needs no torchvision
            from transformers import CLIPImageProcessorPil as CLIPImageProcessor
        except ImportError:
            from transformers import CLIPImageProcessor
        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no CLIP model at {path} (missing config.json)")
        model = CLIPModel.from_pretrained(str(path), local_files_only=True).to(pick_device(device))
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        size = model.config.vision_config.image_size
        processor = (CLIPImageProcessor.from_pretrained(str(path), local_files_only=True)
                     if (path / "preprocessor_config.json").exists()
                     else CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}))
        return cls(model, tokenizer, processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise ValueError("embed_text takes a list of strings, not one string")
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[i: i + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.model.config.text_config.max_position_embeddings, return_tensors="pt")
            out.append(self._normalise(self.model.get_text_features(**enc.to(self.device))))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @torch.no_grad()
    def embed_image(self, images) -> np.ndarray:
        if isinstance(images, (list, tuple)) and len({getattr(im, "shape", None) for im in images}) > 1:
            return np.concatenate([self.embed_image(im) for im in images])  # the processor resizes each
        x = as_image_batch(images)  # validates input; (N, 3, H, W) in [0, 1]
        out = []
        for i in range(0, len(x), self.batch_size):
            batch = (x[i: i + self.batch_size] * 255).round().byte().permute(0, 2, 3, 1).numpy()
            pixels = self.processor(images=list(batch), return_tensors="pt")["pixel_values"]
            out.append(self._normalise(self.model.get_image_features(pixel_values=pixels.to(self.device))))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @staticmethod
    def _normalise(features) -> np.ndarray:
        if not isinstance(features, torch.Tensor):  # some transformers versions wrap the projection
            features = features.pooler_output
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()
