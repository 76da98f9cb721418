"""EmojiBench as a ramm corpus format: how `ramm.corpus.open_corpus` recognises and reads an EmojiBench folder,
and the corpus hooks the library's recipes and CLI use on it.

Installed as the `emojibench` entry point of `ramm.corpus_formats` (pyproject.toml), so the library finds it
without importing the lab.
"""
from __future__ import annotations

from pathlib import Path

from ramm.config import SPLITS
from ramm.corpus.formats import CorpusFormat
from ramm.corpus.hooks import CorpusHooks
from ramm_lab import emojibench as eb
from ramm_lab.sft_tasks import EMOJIBENCH_TEMPLATES, QUESTION_WEIGHTS


def hooks(path: Path) -> CorpusHooks:
    """EmojiBench's hooks: a hit is the same concept (the other style); the retriever's name view and GRACE's
    pseudo-queries are the style-free names; generator contexts rename concepts and count skin-tone variants
    as relatives; SFT gets the tone / style / question pairs, the alpha masks and their wordings."""
    return CorpusHooks(
        match_key=eb.MATCH_KEY,
        alt_text=eb.name_query,
        pseudo_queries=eb.pseudo_queries,
        pseudo_namer=eb.pseudo_namer,
        sibling_key=eb.sibling_key,
        sft_tasks=lambda docs: (eb.sft_pairings(docs), eb.load_masks(path, [d.id for d in docs])),
        sft_templates=EMOJIBENCH_TEMPLATES,
        sft_questions=QUESTION_WEIGHTS,
        describe=lambda: emojibench_table(eb.read_manifest(path)),
        verify=lambda: (len(eb.read_manifest(path)), eb.verify_emojibench(path)),
    )


EMOJIBENCH = CorpusFormat(name="emojibench", detect=eb.is_emojibench_dir,
                          read=lambda path, skips: eb.iter_emojibench(path), hooks=hooks)


def emojibench_table(rows: list[dict]) -> str:
    """Documents per split: per style, in all, per track (variants / cross-style) and with a skin tone;
    concepts (each variant its own) and base concepts; then base concepts per category and split."""
    def docs(split):
        return [r for r in rows if split in ("total", r["split"])]

    cells = {"documents": len, "concepts": lambda h: len({r["concept"] for r in h}),
             "bases": lambda h: len({r.get("base", r["concept"]) for r in h}),
             "tones": lambda h: sum(bool(r.get("tone")) for r in h),
             **{t: (lambda h, t=t: sum(eb.track(r) == t for r in h)) for t in eb.TRACKS}}
    styles = sorted({r["style"] for r in rows})
    return "\n".join([
        _table("split (documents)", [*SPLITS, "total"], [*styles, *cells],
               lambda sp, c: cells[c](docs(sp)) if c in cells else sum(r["style"] == c for r in docs(sp))),
        "(tones: documents of a skin-tone variant; variants: documents of concepts with skin tones, default "
        "tone included; cross-style: all others)",
        "",
        _table("category (base concepts)", [*sorted({r["category"] for r in rows}), "total"], [*SPLITS, "total"],
               lambda cat, sp: len({r.get("base", r["concept"]) for r in docs(sp) if cat in ("total", r["category"])})),
    ])


def _table(head: str, rows: list[str], cols: list[str], cell) -> str:
    width = max(map(len, [head, *rows])) + 2
    widths = [max(10, len(c) + 2) for c in cols]
    lines = [f"{head:<{width}}" + "".join(f"{c:>{w}}" for c, w in zip(cols, widths))]
    lines += [f"{r:<{width}}" + "".join(f"{cell(r, c):>{w}}" for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(lines)
