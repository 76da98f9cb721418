"""How much can the other art style's image tell a generator about the target's image codes?

RA-CM3's gain on EmojiBench's heldout concepts can only come from the leave-one-out partner: the same
concept drawn in the other style. This estimates that gain from the data, with no captions, no retrieval
noise and no k sampling, two ways:

- `cell_count_gain`: per grid cell, p(target code | partner code at that cell) against p(target code)
  alone, counted on train pairs and scored on held-out pairs (a lower bound: one cell, no neighbours).
- `ar_partner_gain`: the same decoder as the generator, trained on train pairs to predict the target's
  codes autoregressively, once with the partner's whole code grid in front and once without; the
  checkpoint is chosen on val, the reported split is scored there. Its gain is what a model can learn to
  take from the partner at that budget (neighbourhoods, warps and colours included).

    python -m ramm_lab.cross_style --corpus data/emojibench --tokenizer runs/demo/tokenizer
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ramm.corpus.document import Document
from ramm.model.transformer import Transformer, TransformerConfig
from ramm.tokenizers.code_cache import encode_images_cached
from ramm.tokenizers.image_tokenizer import ImageTokenizer
from ramm.training.trainer import Trainer, TrainerConfig
from ramm_lab.emojibench import is_flag, load_emojibench

log = logging.getLogger(__name__)


@dataclass
class StylePairs:
    """Both directions of every two-style concept of a split: row i is (target codes, partner codes)."""

    target: np.ndarray  # (N, T) codes of the image to predict
    partner: np.ndarray  # (N, T) codes of the same concept in the other style
    style: np.ndarray  # (N,) index of the target's style in `styles`
    flag: np.ndarray  # (N,) bool: the concept is a flag
    styles: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.target)


def style_pairs(docs: Sequence[Document], codes: dict[str, np.ndarray], split: str) -> StylePairs:
    """Pairs of `split`'s concepts that have exactly two styles (EmojiBench's Google and Twitter)."""
    by_concept: dict[str, dict[str, Document]] = {}
    for d in docs:
        if d.metadata.get("split") == split and d.id in codes:
            by_concept.setdefault(d.metadata.get("concept", d.id), {})[d.metadata.get("style", "")] = d
    styles = tuple(sorted({s for v in by_concept.values() for s in v}))
    rows = []
    for v in by_concept.values():
        if len(v) != 2:
            continue
        (sa, a), (sb, b) = sorted(v.items())
        for tgt, s, par in ((a, sa, b), (b, sb, a)):
            rows.append((codes[tgt.id], codes[par.id], styles.index(s), is_flag(tgt)))
    if not rows:
        raise ValueError(f"split {split!r} has no concept drawn in exactly two styles")
    t, p, s, f = zip(*rows)
    return StylePairs(np.stack(t).astype(np.int64), np.stack(p).astype(np.int64), np.array(s), np.array(f), styles)


def cell_count_gain(train: StylePairs, test: StylePairs, n_codes: int, smoothing: float = 0.5) -> dict[str, float]:
    """Mean nats per code on `test` of the per-cell prior and of the per-cell partner-conditional model."""
    T = train.target.shape[1]
    cells = np.arange(T)
    cond = np.full((T, n_codes, n_codes), smoothing)
    prior = np.full((T, n_codes), smoothing)
    for t in range(T):
        np.add.at(cond[t], (train.partner[:, t], train.target[:, t]), 1)
        np.add.at(prior[t], train.target[:, t], 1)
    cond /= cond.sum(-1, keepdims=True)
    prior /= prior.sum(-1, keepdims=True)
    return {"prior": float(-np.log(prior[cells, test.target]).mean()),
            "partner": float(-np.log(cond[cells, test.partner, test.target]).mean()),
            "same code": float((test.target == test.partner).mean())}


def _sequences(pairs: StylePairs, n_codes: int, with_partner: bool) -> torch.Tensor:
    """[style] (<img> partner codes) <img> target codes; ids: codes, then one per style, then <img>."""
    open_id = n_codes + len(pairs.styles)
    style = torch.as_tensor(n_codes + pairs.style)[:, None]
    img = torch.full_like(style, open_id)
    parts = [style] + ([img, torch.as_tensor(pairs.partner)] if with_partner else []) + [img, torch.as_tensor(pairs.target)]
    return torch.cat(parts, 1)


def _target_nll(model, seqs: torch.Tensor, tokens: int, batch: int = 256) -> torch.Tensor:
    """(N,) mean nats per target code."""
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(seqs), batch):
            x = seqs[i:i + batch].to(device)
            logits = model(x[:, :-1])[0][:, -tokens:]
            out.append(torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), x[:, -tokens:],
                                                         reduction="none").mean(1).cpu())
    return torch.cat(out)


def ar_partner_gain(train: StylePairs, val: StylePairs, test: StylePairs, n_codes: int, *, size: str = "small",
                    steps: int = 400, eval_every: int = 100, batch_size: int = 32, lr: float = 2e-3,
                    seed: int = 0) -> dict[str, dict[str, float]]:
    """{"no partner" | "partner": {"step", "val", "test", "test flags"}} at each arm's best val evaluation."""
    if val.styles != train.styles or test.styles != train.styles:  # style ids are indices into `styles`
        raise ValueError(f"splits have different styles: train {train.styles}, val {val.styles}, test {test.styles}")
    tokens = train.target.shape[1]
    flags = torch.as_tensor(test.flag)
    results = {}
    for arm, with_partner in (("no partner", False), ("partner", True)):
        torch.manual_seed(seed)
        tr, va, te = (_sequences(p, n_codes, with_partner) for p in (train, val, test))
        targets = tr[:, 1:].clone()
        targets[:, :-tokens] = -100  # the loss is on the target's codes only
        data = [{"idx": x[:-1], "targets": y} for x, y in zip(tr, targets)]
        cfg = TransformerConfig.preset(size, vocab_size=n_codes + len(train.styles) + 1, max_seq_len=tr.shape[1],
                                       image_tokens=tokens, image_open_id=n_codes + len(train.styles))
        evals = []

        def evaluate(model):
            nll = _target_nll(model, te, tokens)
            row = {"val": _target_nll(model, va, tokens).mean().item(), "test": nll.mean().item(),
                   "test flags": nll[flags].mean().item() if flags.any() else float("nan")}
            evals.append({"step": trainer.step, **row})
            return row

        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(Transformer(cfg), data, TrainerConfig(
                out_dir=out, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=max(1, min(50, steps // 10)),
                eval_every=eval_every, ckpt_every=steps, log_every=max(1, eval_every // 4), seed=seed), eval_fn=evaluate)
            trainer.fit()
        results[arm] = min(evals, key=lambda r: r["val"])
        log.info("%s: best val %.3f at step %d", arm, results[arm]["val"], results[arm]["step"])
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="data/emojibench", help="EmojiBench directory")
    ap.add_argument("--tokenizer", required=True, help="trained image tokenizer directory")
    ap.add_argument("--split", default="heldout", help="split to score (the checkpoint is chosen on val)")
    ap.add_argument("--size", default="small", help="decoder size for the model-based estimate")
    ap.add_argument("--steps", type=int, default=400, help="training steps per arm (0: counts only)")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    docs = load_emojibench(args.corpus)
    tok = ImageTokenizer.from_pretrained(args.tokenizer)
    codes = encode_images_cached(tok, args.tokenizer, docs)
    train, val, test = (style_pairs(docs, codes, s) for s in ("train", "val", args.split))
    K = tok.codebook_size
    c = cell_count_gain(train, test, K)
    print(f"{args.split}, {K}-code tokenizer, {len(test)} pairs: same code at a cell {c['same code']:.1%}; per-cell "
          f"prior {c['prior']:.3f} nats, given the partner's code {c['partner']:.3f} (gain {c['prior'] - c['partner']:.3f})")
    if args.steps:
        r = ar_partner_gain(train, val, test, K, size=args.size, steps=args.steps, eval_every=args.eval_every)
        a, b = r["no partner"], r["partner"]
        for name, key in (("all", "test"), ("flags", "test flags")):
            print(f"{args.split} {name}: autoregressive nats per code without the partner {a[key]:.3f} (step {a['step']}), "
                  f"with it {b[key]:.3f} (step {b['step']}): {1 - b[key] / a[key]:.1%} lower")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
