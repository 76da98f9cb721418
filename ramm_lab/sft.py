"""`make demo-sft`: CM3Leon's second stage on EmojiBench, evaluated on heldout concepts.

    finished `make demo` run (RA generator, tokenizers, memory, evaluation network; run first when absent)
      -> `ramm train sft` from its RA generator -> heldout cases per task -> metrics + pictures -> report.md

Every heldout concept was never seen in pretraining or SFT (splits are by base concept). Per task the
SFT model is compared with the pretrained model prompted the same way and with the trivial baseline
the issue names (return the input, retrieval-only, no silhouette). Recognition is the evaluation
network's nearest real image (ramm.evaluation.evaluator), FID is on its features. Each image task is
decoded with every seed in `evaluation.seeds`; the cases alternate between a training template and
a held-out one, so both wordings are scored on the same kind of cases.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ramm.config import DecodeConfig, SFTConfig, from_dict, to_dict
from ramm.corpus.document import encode_png
from ramm.evaluation.captioning import cider
from ramm.evaluation.fid import FID
from ramm.pipeline import RAMM
from ramm.training.sft_data import image_to_mask, mask_image, mask_iou, split_templates, with_templates
from ramm.training.sft_recipe import train_sft
from ramm.utils import atomic_write_bytes, atomic_write_json, atomic_write_text
from ramm_lab.demo import DemoConfig, Stage, run_demo
from ramm_lab.emojibench import emoji_references, load_emojibench, load_masks, sft_pairings, strip_style_prefix
from ramm_lab.evaluation_network import identity, load_evaluator
from ramm_lab.sft_tasks import EMOJIBENCH_TEMPLATES

log = logging.getLogger(__name__)
GREEDY = DecodeConfig(method="greedy")  # the lab's decodes say their settings whole: a bundle's defaults may differ


@dataclass
class SFTEvalConfig:
    """How the heldout cases are drawn, decoded and shown."""

    cases: int = 32  # heldout cases per task (a fixed hash-ordered subset)
    shown: int = 16  # cases per task drawn in the report (input, instruction, output, reference)
    seeds: tuple[int, ...] = (0, 1)  # decoding seeds of the image tasks (means and per-seed values reported)
    image: DecodeConfig = field(default_factory=lambda: DecodeConfig(top_p=0.9))  # how the image tasks decode: sample or greedy (greedy image decoding collapses); text -> image adds CFG 3
    task_top_p: dict[str, float] = field(default_factory=dict)  # per image task (edit, style, segment, controlled), overriding image.top_p; chosen on val
    split: str = "heldout"  # concepts evaluated: heldout for the report, val to choose settings
    regression_cases: int = 128  # cases of the no-regression checks (captioning CIDEr, text -> image FID): FID needs more than 32

    def __post_init__(self):
        self.seeds = tuple(self.seeds)
        ps = [self.image.top_p, *self.task_top_p.values()]
        if min(self.cases, self.regression_cases) < 2 or self.shown < 0 or not self.seeds or not all(0 < p <= 1 for p in ps):
            raise ValueError("evaluation: need cases >= 2, regression_cases >= 2, shown >= 0, a seed, 0 < top_p <= 1")
        if self.image.method not in ("sample", "greedy"):
            raise ValueError(f"evaluation: image.method must be sample or greedy (edits take no CFG), not {self.image.method!r}")
        unknown = set(self.task_top_p) - {"edit", "style", "segment", "controlled"}
        if unknown or self.split not in ("val", "test", "heldout"):
            raise ValueError(f"evaluation: task_top_p keys must be image tasks (not {sorted(unknown)}), "
                             f"split val, test or heldout (not {self.split!r})")

    def p(self, task: str) -> float:
        return self.task_top_p.get(task, self.image.top_p)

    def decoding(self, task: str) -> DecodeConfig:
        """How an image task decodes: `image`, at the task's top-p."""
        return self.image.with_overrides(f"evaluation {task}", top_p=self.p(task))


@dataclass
class SFTDemoConfig:
    """The SFT stage on top of a finished demo run (configs/demo-sft.json)."""

    name: str = "demo-sft"  # run name, the report title
    threads: int = 0  # torch threads (0: torch's default)
    base_config: str = "configs/demo.json"  # the demo config that builds the base run when it is not finished
    sft: SFTConfig = field(default_factory=SFTConfig)  # mixture, templates, budget (paths are set by the stage)
    evaluation: SFTEvalConfig = field(default_factory=SFTEvalConfig)  # heldout cases and pictures

    @classmethod
    def load(cls, path: str | Path) -> "SFTDemoConfig":
        return from_dict(cls, json.loads(Path(path).read_text()), str(path))


def _pick(rows: list, n: int) -> list:
    """A fixed, spread-out subset: the n rows with the smallest hash of their repr."""
    return sorted(rows, key=lambda r: hashlib.sha256(repr(r).encode()).hexdigest())[:n]


def run_sft_demo(cfg: SFTDemoConfig, data_dir: str | Path, base_dir: str | Path, run_dir: str | Path,
                 report: Callable[[str], None] = print) -> Path:
    """Train (cached) and evaluate; returns the path of report.md."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data, base, run = Path(data_dir), Path(base_dir), Path(run_dir)
    if not all((base / s / "done.json").exists() for s in ("generator_ra", "evaluator")):
        report(f"[base] {base} is not a finished demo run: running the demo ({cfg.base_config}) first")
        run_demo(DemoConfig.load(cfg.base_config), data, base, report=report)
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run / "config.json", to_dict(cfg))
    sft_cfg = replace(cfg.sft, pretrained=str(base / "generator_ra"), corpus=str(data), out=str(run / "sft"))
    Stage(run, "sft", [to_dict(sft_cfg)], report).run(lambda out: train_sft(sft_cfg))
    result = Stage(run, "evaluate", [to_dict(sft_cfg), to_dict(cfg.evaluation)], report).run(
        lambda out: evaluate_sft(run / "sft", base, data, cfg.evaluation, out, report))
    return write_report(cfg, result, run)


def evaluate_sft(sft_dir: Path, base: Path, data: Path, cfg: SFTEvalConfig, out: Path,
                 report: Callable[[str], None] = print) -> dict:
    """Heldout metrics per task for the SFT model, the pretrained one and the trivial baselines, plus
    the picture grids (out/<task>.png)."""
    TEMPLATES = with_templates(EMOJIBENCH_TEMPLATES)  # every task's wordings on EmojiBench

    docs = {d.id: d for d in load_emojibench(data, cfg.split)}
    masks = load_masks(data, list(docs))
    pairs = sft_pairings(docs.values())
    sft = RAMM.load(sft_dir, memory_dir=base / "memory")
    pre = RAMM.load(base / "generator_ra", memory_dir=base / "memory")
    ev = load_evaluator(base / "evaluator")
    fid = FID.from_encoder(ev, "FID on evaluation-network features")
    res: dict = {"cases": cfg.cases, "seeds": list(cfg.seeds), "split": cfg.split,
                 "top_p": {t: cfg.p(t) for t in ("edit", "style", "segment", "controlled", "text_to_image")}}
    pictures: dict[str, list] = {}

    def template(task, i):
        """Even cases: the first training template; odd: the first held-out one."""
        trained, held = split_templates(task, 1, TEMPLATES)
        return ("trained", trained[0]) if i % 2 == 0 or not held else ("heldout", held[0])

    def recognised(images, wanted) -> np.ndarray:
        return np.array([c == w for c, w in zip(ev.classify(np.stack(images)), wanted)])

    def image_task(task, cases, source, target, wanted, models, baselines, evidence=None):
        """cases -> instruction images per model and seed; accuracy of recognition as `wanted`. `evidence(case)`:
        the retrieved documents when the query is not the input image (None: the model's own default)."""
        outs = {}
        for name, model in models.items():
            for seed in cfg.seeds:
                rows = []
                for i, case in enumerate(cases):
                    group, t = template(task, i)
                    text = TEMPLATES[task][t].format(**case[2])
                    rows.append((group, text, model.edit_image(
                        source(case), text, seed=seed, decode=cfg.decoding(task), exclude_ids=case[:2],
                        retrieved=evidence(case) if evidence else None).outputs[0]))
                outs[(name, seed)] = rows
        stats = {}
        for (name, seed), rows in outs.items():
            hit = recognised([r[2] for r in rows], [wanted(c) for c in cases]) if wanted else None
            if hit is not None:
                stats.setdefault(f"{name}_recognised", []).append(float(hit.mean()))
                for g in ("trained", "heldout"):
                    sel = [h for h, r in zip(hit, rows) if r[0] == g]
                    if sel:
                        stats.setdefault(f"{name}_recognised_{g}_templates", []).append(float(np.mean(sel)))
        stats.update(baselines)
        first = outs[("sft", cfg.seeds[0])]
        pictures[task] = [(source(c), text, o, target(c)) for c, (_, text, o) in zip(cases, first)][:cfg.shown]
        return {k: _mean(v) for k, v in stats.items()}, outs

    t0 = time.time()
    # --- tone editing: recognised as exactly the requested variant (concept and tone, same style) ---
    edits = _pick(pairs["edit"], cfg.cases)
    src = lambda c: docs[c[0]].image  # noqa: E731
    tgt = lambda c: docs[c[1]].image  # noqa: E731
    want = lambda c: identity(docs[c[1]])  # noqa: E731
    res["edit"], _ = image_task("edit", edits, src, tgt, want, {"sft": sft, "pretrained": pre},
                                {"input_recognised": float(recognised([src(c) for c in edits], map(want, edits)).mean())})
    report(f"[evaluate] edit done ({time.time() - t0:.0f}s)")
    # --- style transfer: FID against the target style's references, recognition in the target style ---
    styles = _pick(pairs["style"], cfg.cases)
    retrieval_only = []
    for c in styles:
        hits = sft.retrieve(docs[c[0]].image, k=10, exclude_ids=[c[1]])
        same = [d for d in hits if d.metadata.get("style") == c[2]["style"]]
        retrieval_only.append(same[0].image if same else docs[c[0]].image)
    base_stats = {"input_recognised": float(recognised([src(c) for c in styles], map(want, styles)).mean()),
                  "retrieval_only_recognised": float(recognised(retrieval_only, map(want, styles)).mean())}
    res["style"], outs = image_task("style", styles, src, tgt, want, {"sft": sft}, base_stats)
    refs = np.stack([tgt(c) for c in styles])  # the target-style references of the cases
    res["style"]["fid_input"] = fid(refs, np.stack([src(c) for c in styles]))
    res["style"]["fid_sft"] = _mean([fid(refs, np.stack([r[2] for r in outs[("sft", s)]])) for s in cfg.seeds])
    report(f"[evaluate] style done ({time.time() - t0:.0f}s)")
    # --- segmentation: IoU of the generated silhouette with the alpha mask ---
    seg_cases = [(i, i, {}) for i in _pick(sorted(docs), cfg.cases)]
    seg_outs = {}
    for name, model in (("sft", sft), ("pretrained", pre)):
        ious = {"trained": [], "heldout": []}
        for i, c in enumerate(seg_cases):
            group, t = template("segment", i)
            o = model.edit_image(docs[c[0]].image, TEMPLATES["segment"][t], seed=cfg.seeds[0], decode=cfg.decoding("segment"),
                                 exclude_ids=[c[0]]).outputs[0]
            ious[group].append(mask_iou(image_to_mask(o), masks[c[0]]))
            seg_outs.setdefault(name, []).append((TEMPLATES["segment"][t], o))
        res.setdefault("segment", {})[f"{name}_iou"] = float(np.mean(ious["trained"] + ious["heldout"]))
        for g, v in ious.items():
            res["segment"][f"{name}_iou_{g}_templates"] = float(np.mean(v))
    res["segment"]["all_foreground_iou"] = float(np.mean([mask_iou(np.ones_like(masks[c[0]], bool), masks[c[0]])
                                                          for c in seg_cases]))
    pictures["segment"] = [(docs[c[0]].image, text, o, mask_image(masks[c[0]]))
                           for c, (text, o) in zip(seg_cases, seg_outs["sft"])][:cfg.shown]
    report(f"[evaluate] segment done ({time.time() - t0:.0f}s)")
    # --- silhouette-controlled generation vs the same caption without the silhouette ---
    ctl = [(i, i, {"caption": docs[i].text}) for i in _pick(sorted(docs), cfg.cases)]
    sil = lambda c: mask_image(masks[c[0]])  # noqa: E731
    plain = [sft.generate_image(c[2]["caption"], n=1, retrieve=False, seed=cfg.seeds[0],
                                decode=cfg.decoding("controlled")).outputs[0]
             for c in ctl]
    no_sil = {"no_silhouette_recognised": float(recognised(plain, map(want, ctl)).mean())}
    by_caption = (lambda c: sft.retrieve(c[2]["caption"], sft.instruction_k, exclude_ids=[c[0]])) if sft.instruction_k else None
    res["controlled"], outs = image_task("controlled", ctl, sil, tgt, want, {"sft": sft}, no_sil, by_caption)
    real = np.stack([tgt(c) for c in ctl])
    res["controlled"]["fid_sft"] = fid(real, np.stack([r[2] for r in outs[("sft", cfg.seeds[0])]]))
    res["controlled"]["fid_no_silhouette"] = fid(real, np.stack(plain))
    report(f"[evaluate] controlled done ({time.time() - t0:.0f}s)")
    # --- questions: exact answers; captions: CIDEr and exact names (no regression) ---
    for task in ("vqa_category", "vqa_tone", "vqa_country"):
        cases = _pick(pairs[task], cfg.cases)
        answers = {a for _, a in pairs[task]}
        stats = {"chance": 1 / max(len(answers), 1), "n": len(cases)}
        shown = []
        for name, model in (("sft", sft), ("pretrained", pre)):
            per = {"trained": [], "heldout": []}
            for i, (doc_id, answer) in enumerate(cases):
                group, t = template(task, i)
                got = model.answer(docs[doc_id].image, TEMPLATES[task][t], exclude_ids=[doc_id]).outputs[0]
                per[group].append(got.strip().lower() == answer)
                if name == "sft":
                    shown.append((docs[doc_id].image, TEMPLATES[task][t], got, answer))
            stats[f"{name}_accuracy"] = float(np.mean(per["trained"] + per["heldout"])) if cases else None
            for g, v in per.items():
                stats[f"{name}_accuracy_{g}_templates"] = float(np.mean(v)) if v else None
        res[task] = stats
        pictures[task] = shown[:cfg.shown]
    report(f"[evaluate] questions done ({time.time() - t0:.0f}s)")
    cap_ids = _pick(sorted(docs), cfg.regression_cases)
    refs_c = {i: emoji_references(docs[i].metadata) for i in cap_ids}
    sft_caps = {i: _strip(sft.answer(docs[i].image, TEMPLATES["caption"][0], max_new_tokens=24, exclude_ids=[i]).outputs[0])
                for i in cap_ids}
    pre_caps = {i: _strip(pre.caption_image(docs[i].image, n=1, retrieve=False, decode=GREEDY, rerank=False).outputs[0])
                for i in cap_ids}
    res["caption"] = {"sft_cider": cider(sft_caps, refs_c)[0], "pretrained_cider": cider(pre_caps, refs_c)[0]}
    # the CM3 captioning path (`caption_image`) of both models, without and with retrieval (leave-one-out)
    for name, model in (("sft", sft), ("pretrained", pre)):
        for label, retrieve in (("cm3", False), ("cm3_retrieval", True)):
            if name == "pretrained" and label == "cm3":
                continue  # pre_caps above
            caps = {i: _strip(model.caption_image(docs[i].image, n=1, retrieve=retrieve, exclude_ids=[i], decode=GREEDY,
                                                  rerank=False).outputs[0]) for i in cap_ids}
            res["caption"][f"{name}_{label}_cider"] = cider(caps, refs_c)[0]
    report(f"[evaluate] captions done ({time.time() - t0:.0f}s)")
    # text -> image, the pretrained model's own task and format: no regression (retrieval on, leave-one-out)
    t2i = {}
    for name, model in (("sft", sft), ("pretrained", pre)):
        t2i[name] = np.stack([model.generate_image(docs[i].text, n=1, exclude_ids=[i], seed=cfg.seeds[0], rerank=False,
                                                   decode=cfg.image.with_overrides(method="cfg", guidance_scale=3.0)
                                                   ).outputs[0]
                              for i in cap_ids])
    real = np.stack([docs[i].image for i in cap_ids])
    res["text_to_image"] = {f"{n}_fid": fid(real, v) for n, v in t2i.items()}
    res["text_to_image"].update({f"{n}_recognised": float(recognised(list(v), [identity(docs[i]) for i in cap_ids]).mean())
                                 for n, v in t2i.items()})
    blank = np.full_like(real[0], 255)  # the input is the caption (in <task>.json)
    pictures["text_to_image"] = [(blank, docs[i].text, o, docs[i].image) for i, o in zip(cap_ids, t2i["sft"])][:cfg.shown]
    pictures["caption"] = [(docs[i].image, TEMPLATES["caption"][0], sft_caps[i], refs_c[i][0]) for i in cap_ids][:cfg.shown]
    res["minutes"] = (time.time() - t0) / 60
    _save_pictures(pictures, out)
    atomic_write_json(out / "results.json", res)
    return res


def _strip(caption: str) -> str:
    """Captions are scored as names (the references carry no "<style> emoji:" prefix)."""
    return strip_style_prefix(caption)


def _mean(v):
    return float(np.mean(v)) if isinstance(v, list) else v


def _save_pictures(pictures: dict[str, list], out: Path) -> None:
    """<task>.png: one row per case (input | output | reference, 4x); <task>.json: the instructions and texts."""
    for task, rows in pictures.items():
        if not rows:
            continue
        cells = []
        for inp, text, output, ref in rows:
            row = [inp] + [x for x in (output, ref) if isinstance(x, np.ndarray)]
            cells.append(np.concatenate([np.pad(x, ((2, 2), (2, 2), (0, 0)), constant_values=255) for x in row], 1))
        width = max(c.shape[1] for c in cells)
        cells = [np.pad(c, ((0, 0), (0, width - c.shape[1]), (0, 0)), constant_values=255) for c in cells]
        atomic_write_bytes(out / f"{task}.png", encode_png(np.concatenate(cells, 0).repeat(3, 0).repeat(3, 1)))
        atomic_write_json(out / f"{task}.json", [{"instruction": t, "output": o if isinstance(o, str) else None,
                                                   "reference": r if isinstance(r, str) else None}
                                                  for _, t, o, r in rows])


def write_report(cfg: SFTDemoConfig, result: dict, run: Path) -> Path:
    """report.md: the numbers per task and the picture grids."""
    lines = [f"# {cfg.name}", "", "Instruction tuning (CM3Leon's second stage), evaluated on EmojiBench "
             f"{result.get('split', 'heldout')} concepts: "
             f"{result['cases']} cases per task, decoding seeds {result['seeds']}, image top-p {result.get('top_p')}; "
             "pictures: one row per case, input | output | reference (3x).", ""]
    for task in ("edit", "style", "segment", "controlled", "vqa_category", "vqa_tone", "vqa_country", "caption",
                 "text_to_image"):
        if task not in result:
            continue
        lines += [f"## {task}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in result[task].items()]
        pic = run / "evaluate" / f"{task}.png"
        if pic.exists():
            lines += ["", f"![{task}](evaluate/{task}.png)", ""]
            texts = json.loads((run / "evaluate" / f"{task}.json").read_text())
            lines += ["| case | instruction | output | reference |", "|---|---|---|---|"]
            lines += [f"| {i} | {t['instruction']} | {t['output'] or '(image)'} | {t['reference'] or '(image)'} |"
                      for i, t in enumerate(texts)]
        lines.append("")
    path = run / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
