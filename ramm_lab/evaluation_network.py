"""The evaluation network: a small CNN that tells every EmojiBench document apart, used only to measure.

FID and recognition need an image feature space. The retriever's image tower is the wrong one: it is
trained to put both art styles of a concept together (that is what makes cross-style retrieval work),
so an image of the other style scores FID 0 and counts as recognised. The papers measure with a
network that no system under test uses (Inception); this module is our stand-in for it.

It is a measuring instrument, never part of the system: no generator, retriever or memory ever reads
it, so it may be, and is, trained on ALL documents of the corpus (every split, heldout included): it
must know every document it will be asked to recognise, as Inception knows ImageNet's classes. The task is classification over document
identities (concept, style): two styles of a concept, and two variants of a concept (skin tones,
which are their own documents) are different classes. Each training image is an augmented view of a
document: a small translation (+-`shift` px), a mild rescale, Gaussian blur, JPEG-like block-DCT
quantisation or a reduced colour depth, Gaussian noise, and, when given, the image tokenizer's
reconstruction in place of the original. There are deliberately no hue, saturation or brightness
changes: skin tone is colour, so colour must stay discriminative.

The classifier is non-parametric: every document is a class whose vector is the network's own
(L2-normalised) embedding of the document's clean image, and a view must be nearest to its own
document among all of them (a cosine softmax with a CosFace margin). So the training objective is
the recognition rule itself, and the embedding is the feature space: `embed_image` is what FID and
`Recognizer` read, and the nearest real image by cosine is the recognised document.

    evaluator, metrics = train_evaluator(docs, EvaluatorConfig(), out_dir)
    fid = FID.from_encoder(evaluator, name=FID_NAME)
    recognizer = evaluator.recognizer(docs)  # exact: the nearest real image must be the document itself
    evaluator = Evaluator.from_pretrained(out_dir)
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from ramm.corpus.document import Document
from ramm.evaluation.recognition import Recognizer
from ramm.retrieval.encoder import as_image_batch
from ramm.utils import atomic_write_bytes, atomic_write_json, pick_device
from ramm_lab.emojibench import RECOGNITION_KEYS

log = logging.getLogger(__name__)

MODEL_TYPE = "ramm-evaluator"
FID_NAME = "FID on ramm-evaluator features"
TIE = 1e-5  # cosines this close count as equal (pixel-identical images embed identically)


@dataclass
class EvaluatorConfig:
    """The evaluator's network, training budget and augmentations (one flat section of the demo config)."""

    # network
    image_size: int = 32  # inputs are resized to image_size x image_size
    channels: tuple[int, ...] = (32, 64, 128)  # CNN width per stage; each stage halves the resolution
    depth: int = 1  # 3x3 convs per stage (the first one strided)
    embed_dim: int = 128  # dimension of the L2-normalised features (FID's feature size)
    logit_scale: float = 16.0  # cosine classifier temperature
    margin: float = 0.2  # CosFace margin subtracted from the target's cosine in training
    refresh: int = 50  # steps between recomputing every document's class vector (its clean image's embedding)
    # training
    steps: int = 1200  # optimizer steps
    max_seconds: float = 600.0  # safety cap: stop (with a loud warning) after this wall time even before `steps`
    batch_size: int = 128  # augmented views per step
    lr: float = 3e-3  # peak AdamW learning rate (warmup then cosine)
    warmup_steps: int = 30  # linear warmup
    weight_decay: float = 1e-4  # AdamW decay on matrices
    seed: int = 0  # initialisation, document order and augmentations
    # augmentations (all on [0, 1] RGB; none changes hue)
    shift: int = 2  # max translation in pixels (integer, both axes)
    scale: float = 0.08  # max relative rescale (1 +- scale)
    blur_p: float = 0.3  # share of views blurred
    blur_sigma: tuple[float, float] = (0.4, 1.0)  # Gaussian blur sigma range in pixels
    compress_p: float = 0.3  # share of views JPEG-like compressed (half) or colour-depth reduced (half)
    jpeg_quality: tuple[int, int] = (40, 90)  # JPEG quality range of the block-DCT quantisation
    levels: tuple[int, int] = (12, 32)  # colour depth range (levels per channel)
    noise: float = 0.04  # max std of Gaussian pixel noise (per view, uniform in [0, noise])
    recon_p: float = 0.5  # when reconstructions are given: share of views built from one
    model_type: str = MODEL_TYPE

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        self.blur_sigma = tuple(float(s) for s in self.blur_sigma)
        self.jpeg_quality = tuple(int(q) for q in self.jpeg_quality)
        self.levels = tuple(int(v) for v in self.levels)
        if not self.channels or min(self.channels) < 1 or self.depth < 1:
            raise ValueError(f"evaluator: channels must be positive and depth >= 1, got {self.channels}, {self.depth}")
        if self.image_size % max(8, 2 ** len(self.channels)):
            raise ValueError(f"evaluator: image_size {self.image_size} must divide by 8 and by 2**len(channels)")
        for name in ("embed_dim", "steps", "batch_size", "refresh"):
            if getattr(self, name) < 1:
                raise ValueError(f"evaluator: {name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.max_seconds <= 0 or self.warmup_steps < 0 or self.logit_scale <= 0:
            raise ValueError("evaluator: need lr, max_seconds, logit_scale > 0 and warmup_steps >= 0")
        for name in ("blur_p", "compress_p", "recon_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"evaluator: {name} must be in [0, 1], got {getattr(self, name)}")
        if self.shift < 0 or not 0 <= self.scale < 0.5 or self.noise < 0 or not 0 <= self.margin < 1:
            raise ValueError("evaluator: need shift >= 0, 0 <= scale < 0.5, noise >= 0, 0 <= margin < 1")
        for name, lo_min in (("blur_sigma", 0.0), ("jpeg_quality", 1), ("levels", 2)):
            lo, hi = getattr(self, name)
            if not lo_min <= lo <= hi or (name == "jpeg_quality" and hi > 100):
                raise ValueError(f"evaluator: {name} must be an increasing (low, high) range, got {(lo, hi)}")

    @classmethod
    def from_dict(cls, d: dict) -> "EvaluatorConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def identity(doc: Document) -> tuple[str, str]:
    """A document's class: (concept, style). Variants such as skin tones have their own concept."""
    try:
        return str(doc.metadata["concept"]), str(doc.metadata["style"])
    except KeyError:
        raise ValueError(f"document {doc.id} needs metadata concept and style") from None


# ---------------------------------------------------------------------------------------------- network
class Evaluator(nn.Module):
    """CNN -> L2-normalised embedding (`dim`), and the embeddings of its training documents' clean
    images (`reference`, one row per class (concept, style)) for `classify`.

    The same interface as the retriever's encoders for images (`dim`, `embed_image`), so FID and
    `Recognizer` take it unchanged.
    """

    def __init__(self, cfg: EvaluatorConfig, classes: list[tuple[str, str]]):
        super().__init__()
        if not classes:
            raise ValueError("the evaluator needs at least one class")
        if len(set(map(tuple, classes))) != len(classes):
            raise ValueError("evaluator classes must be distinct (concept, style) pairs")
        self.cfg, self.classes = cfg, [tuple(c) for c in classes]
        layers, c_in = [], 3
        for c in cfg.channels:
            for j in range(cfg.depth):
                layers += [nn.Conv2d(c_in, c, 3, stride=2 if j == 0 else 1, padding=1, bias=False),
                           nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
                c_in = c
        self.features = nn.Sequential(*layers)
        side = cfg.image_size // 2 ** len(cfg.channels)
        self.project = nn.Linear(c_in * side * side, cfg.embed_dim)  # flatten keeps where things are drawn
        self.register_buffer("reference", torch.zeros(len(classes), cfg.embed_dim))  # set by train_evaluator
        self.batch_size = 512

    @property
    def dim(self) -> int:
        return self.cfg.embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float (B, 3, S, S) in [0, 1] -> (B, dim) L2-normalised features."""
        h = self.features(x * 2 - 1)
        return F.normalize(self.project(h.flatten(1)), dim=-1)

    def _device(self) -> torch.device:
        return self.reference.device

    @torch.no_grad()
    def embed_image(self, images) -> np.ndarray:
        """uint8 (N, H, W, 3) / (H, W, 3) arrays or float (N, 3, H, W) tensors in [0, 1] -> float32
        (N, dim) L2-normalised features (any size is resized to image_size)."""
        was_training = self.training
        self.eval()
        x = as_image_batch(images, self.cfg.image_size)
        out = [self(x[i: i + self.batch_size].to(self._device())).float().cpu() for i in range(0, len(x), self.batch_size)]
        self.train(was_training)
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)

    def classify(self, images) -> list[tuple[str, str]]:
        """The (concept, style) of the training document whose clean image is nearest to each image."""
        best = (torch.from_numpy(self.embed_image(images)) @ self.reference.float().cpu().T).argmax(1).tolist()
        return [self.classes[i] for i in best]

    def recognizer(self, gallery: list[Document]):
        """An exact `Recognizer` over `gallery`: an image is recognised iff its nearest real image in the
        whole gallery (all styles) is the requested document."""
        return Recognizer(self, gallery, mode="exact", **RECOGNITION_KEYS)

    # ------------------------------------------------------------------------------------ persistence
    def save_pretrained(self, out_dir: str | Path) -> None:
        """model.safetensors + config.json (the config and the class list), each written atomically."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write_bytes(out_dir / "model.safetensors", save(tensors))
        atomic_write_json(out_dir / "config.json", {**asdict(self.cfg), "classes": [list(c) for c in self.classes]})

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None) -> "Evaluator":
        path = Path(path)
        for f in ("config.json", "model.safetensors"):
            if not (path / f).exists():
                raise FileNotFoundError(f"no evaluator at {path} (missing {f})")
        d = json.loads((path / "config.json").read_text())
        if d.get("model_type") != MODEL_TYPE:
            raise ValueError(f"{path} holds a {d.get('model_type')!r}, not a {MODEL_TYPE}")
        model = cls(EvaluatorConfig.from_dict(d), [tuple(c) for c in d["classes"]])
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return model.to(pick_device(device)).eval()


def load_evaluator(path: str | Path, device: str | None = None) -> Evaluator:
    return Evaluator.from_pretrained(path, device)


# ------------------------------------------------------------------------------------- augmentations
# the JPEG standard's luminance quantisation table (ITU T.81, annex K), used for every channel
_JPEG_Q = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    """Orthonormal DCT-II (n, n): coefficients = D @ block @ D.T (JPEG's transform)."""
    k, i = torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n, dtype=torch.float32)[None]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d


_DCT = _dct_matrix()


def _uniform(n: int, lo: float, hi: float, device, g) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, device=device, generator=g)


def jpeg_like(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Per-image JPEG-style loss: 8x8 block DCT of each RGB channel, quantised by the standard table at
    `quality` (B,) in [1, 100]. x: (B, 3, H, W) in [0, 1], H and W multiples of 8."""
    B, C, H, W = x.shape
    q = quality.float().clamp(1, 100)
    factor = torch.where(q < 50, 5000 / q, 200 - 2 * q)  # (B,)
    table = ((_JPEG_Q.to(x.device) * factor[:, None, None] + 50) / 100).floor().clamp_min(1)  # (B, 8, 8)
    d = _DCT.to(x.device)
    blocks = (x * 255 - 128).reshape(B, C, H // 8, 8, W // 8, 8).permute(0, 1, 2, 4, 3, 5)  # (B, C, h, w, 8, 8)
    t = table[:, None, None, None]
    coef = torch.round(d @ blocks @ d.T / t) * t
    out = (d.T @ coef @ d).permute(0, 1, 2, 4, 3, 5).reshape(B, C, H, W)
    return ((out + 128) / 255).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur (5 taps, edge pixels repeated); sigma (B,), 0 leaves an image as is."""
    B, C, H, W = x.shape
    r = torch.arange(-2, 3, device=x.device, dtype=x.dtype)
    w = torch.exp(-r[None] ** 2 / (2 * sigma.to(x.dtype).clamp_min(1e-3)[:, None] ** 2))
    w = (w / w.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (B * C, 5)
    y = F.pad(x.reshape(1, B * C, H, W), (2, 2, 0, 0), mode="replicate")
    y = F.conv2d(y, w[:, None, None, :], groups=B * C)
    y = F.pad(y, (0, 0, 2, 2), mode="replicate")
    return F.conv2d(y, w[:, None, :, None], groups=B * C).reshape(B, C, H, W)


def augment(x: torch.Tensor, cfg: EvaluatorConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random views of float (B, 3, H, W) images in [0, 1] (white background assumed outside the frame):
    translate + rescale, then blur, JPEG-like or colour-depth loss, then noise. No colour changes."""
    B, _, H, W = x.shape
    dev, g = x.device, generator
    # geometry: integer shifts (exact when the scale is 1), mild zoom; white comes in at the borders
    s = 1 + _uniform(B, -cfg.scale, cfg.scale, dev, g)
    shift = torch.randint(-cfg.shift, cfg.shift + 1, (B, 2), device=dev, generator=g).float()
    theta = torch.zeros(B, 2, 3, device=dev)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
    theta[:, 0, 2], theta[:, 1, 2] = -2 * shift[:, 0] / W, -2 * shift[:, 1] / H
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x - 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 1
    # blur
    blur = torch.rand(B, device=dev, generator=g) < cfg.blur_p
    if blur.any():
        sigma = _uniform(B, *cfg.blur_sigma, dev, g) * blur
        x = gaussian_blur(x, sigma)
    # lossy coding: JPEG-like block DCT quantisation, or fewer levels per channel
    kind = torch.rand(B, device=dev, generator=g)
    jpeg, posterize = kind < cfg.compress_p / 2, (kind >= cfg.compress_p / 2) & (kind < cfg.compress_p)
    if jpeg.any() and H % 8 == 0 and W % 8 == 0:
        q = _uniform(B, cfg.jpeg_quality[0], cfg.jpeg_quality[1], dev, g)
        x = torch.where(jpeg[:, None, None, None], jpeg_like(x, q), x)
    if posterize.any():
        levels = torch.randint(cfg.levels[0], cfg.levels[1] + 1, (B,), device=dev, generator=g).float()[:, None, None, None] - 1
        x = torch.where(posterize[:, None, None, None], torch.round(x * levels) / levels, x)
    # noise
    std = _uniform(B, 0, cfg.noise, dev, g)[:, None, None, None]
    x = x + std * torch.randn(x.shape, device=dev, generator=g)
    return x.clamp(0, 1)


# ------------------------------------------------------------------------------------------ training
def _image_tensor(images, size: int) -> torch.Tensor:
    return torch.cat([as_image_batch(images[i: i + 1024], size) for i in range(0, len(images), 1024)])


def _canonical(images: np.ndarray) -> torch.Tensor:
    """For each image, the index of the first image with identical pixels (itself when unique)."""
    first: dict[bytes, int] = {}
    return torch.tensor([first.setdefault(np.ascontiguousarray(im).tobytes(), i) for i, im in enumerate(images)])


@torch.no_grad()
def _embed_all(model: Evaluator, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    out = torch.cat([model(x[i: i + model.batch_size]) for i in range(0, len(x), model.batch_size)])
    model.train()
    return out


def _lr(progress: float, cfg: EvaluatorConfig, step: int) -> float:
    """Linear warmup over warmup_steps, then cosine to lr / 20 as progress (steps done / steps) goes to 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_evaluator(docs: list[Document], cfg: EvaluatorConfig = EvaluatorConfig(), out_dir: str | Path | None = None,
                    reconstructions: np.ndarray | None = None, progress: bool = True,
                    device: str | None = None) -> tuple[Evaluator, dict]:
    """Train the evaluator to tell `docs` apart (pass ALL documents: it is a measuring instrument).

    Classification over document identities, non-parametric (instance discrimination, Wu et al.
    2018): the class vectors are the network's own embeddings of the documents' clean images,
    recomputed every `refresh` steps, and each augmented view must be nearest to its own document
    among all of them (softmax at `logit_scale`, CosFace margin). Documents with pixel-identical
    images (the corpus has a few) share a class in training, since nothing can tell them apart.

    reconstructions: optional uint8 (N, H, W, 3), e.g. an image tokenizer's reconstruction of each
    document, used as the source of `recon_p` of the views. Saves the model (config.json +
    model.safetensors) and metrics.json to out_dir when given. Returns the model (eval mode) and
    metrics: steps, train_seconds, loss, and exact-identity accuracy (nearest real image) of clean
    images and of fresh augmented views drawn with another seed.
    """
    if not docs:
        raise ValueError("cannot train the evaluator on zero documents")
    missing = [d.id for d in docs if d.image is None]
    if missing:
        raise ValueError(f"{len(missing)} documents have no image, e.g. {missing[0]}")
    classes = [identity(d) for d in docs]
    if len(set(classes)) != len(classes):
        seen: set = set()
        dup = next(c for c in classes if c in seen or seen.add(c))
        raise ValueError(f"two documents share the identity {dup} (concept, style)")
    if reconstructions is not None and len(reconstructions) != len(docs):
        raise ValueError(f"{len(reconstructions)} reconstructions for {len(docs)} documents")
    dev = torch.device(pick_device(device))
    pixels = np.stack([d.image for d in docs])
    images = _image_tensor(pixels, cfg.image_size).to(dev)
    recon = _image_tensor(reconstructions, cfg.image_size).to(dev) if reconstructions is not None else None
    canon = _canonical(pixels).to(dev)
    N = len(docs)
    shadowed = canon != torch.arange(N, device=dev)  # duplicates: their class is the first copy's

    torch.manual_seed(cfg.seed)
    model = Evaluator(cfg, classes).to(dev)
    params = [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99))
    order = torch.Generator().manual_seed(cfg.seed)
    perm, pos = torch.randperm(N, generator=order), 0
    bar = tqdm(total=cfg.steps, desc="evaluator", disable=not progress, dynamic_ncols=True, leave=False)
    t0, step, loss_ema = time.time(), 0, None
    model.train()
    while step < cfg.steps:
        # the schedule follows steps only, so the same config gives the same network on a busy machine;
        # the time cap is a safety net, and hitting it is said loudly (docs/results.md: a busy machine once
        # cut this stage to 190 of 1,200 steps)
        done = step / cfg.steps
        if time.time() - t0 > cfg.max_seconds:
            log.warning("EVALUATOR CUT SHORT: the %.0f s cap stopped training at step %d of %d; its FID and "
                        "recognition are not comparable with a full run's", cfg.max_seconds, step, cfg.steps)
            break
        if step % cfg.refresh == 0:
            bank = _embed_all(model, images).masked_fill(shadowed[:, None], 0.0)
        for g in opt.param_groups:
            g["lr"] = _lr(done, cfg, step)
        if pos + cfg.batch_size > N:
            perm, pos = torch.randperm(N, generator=order), 0
        idx = perm[pos: pos + cfg.batch_size].to(dev)
        pos += cfg.batch_size
        x = images[idx]
        if recon is not None:
            x = torch.where((torch.rand(len(x), device=dev) < cfg.recon_p)[:, None, None, None], recon[idx], x)
        with torch.no_grad():
            x = augment(x, cfg)
        target = canon[idx]
        cos = model(x) @ bank.T  # (B, N): every document is a class, the batch's own one is the target
        cos = cos.masked_fill(shadowed[None], -1e4) - cfg.margin * F.one_hot(target, N)
        loss = F.cross_entropy(cfg.logit_scale * cos, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss_ema:.3f}")
    bar.close()
    seconds = time.time() - t0
    model.eval()
    model.reference.copy_(_embed_all(model, images))
    metrics = {"steps": step, "cut_short": step < cfg.steps, "train_seconds": round(seconds, 1), "loss": round(loss_ema or float("nan"), 4),
               "classes": N, "identical_images": int(shadowed.sum()), **evaluator_accuracy(model, images, cfg)}
    if out_dir is not None:
        model.save_pretrained(out_dir)
        atomic_write_json(Path(out_dir) / "metrics.json", metrics)
    log.info("evaluator: %d classes, %d steps in %.0fs, accuracy clean %.3f, augmented %.3f", N, step, seconds,
             metrics["accuracy_clean"], metrics["accuracy_augmented"])
    return model, metrics


@torch.no_grad()
def evaluator_accuracy(model: Evaluator, images: torch.Tensor, cfg: EvaluatorConfig, seed: int = 12345,
                       limit: int = 2048) -> dict:
    """Exact-identity accuracy (the nearest real image is the document's own, or a pixel-identical copy)
    of up to `limit` clean images and of one fresh augmented view of each (a generator seeded apart
    from training's)."""
    images = images.cpu()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(images), generator=gen)[:limit]
    gallery = torch.from_numpy(model.embed_image(images))
    out = {}
    for name, x in (("clean", images[idx]), ("augmented", augment(images[idx], cfg, gen))):
        sims = torch.from_numpy(model.embed_image(x)) @ gallery.T
        own = sims.gather(1, idx[:, None])[:, 0]
        out[f"accuracy_{name}"] = round(float((own >= sims.max(1).values - TIE).float().mean()), 4)
    return out
