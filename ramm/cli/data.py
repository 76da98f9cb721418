"""`ramm data emojibench` and `ramm data stats` (flags: the fields of `ramm.jobs.EmojiBenchJob`, `DataStatsJob`)."""
from __future__ import annotations

import sys
from collections import Counter


def register(cli) -> None:
    from ramm.jobs import DataStatsJob, EmojiBenchJob
    cli.config_command("emojibench", "build the EmojiBench corpus (npm emoji-datasource google/twitter 16.0.0)",
                       EmojiBenchJob, _emojibench, group="data")
    cli.config_command("stats", "count documents per split, style, track and category (or stream-check any corpus)",
                       DataStatsJob, _stats, group="data", positional=("path",))


def _emojibench(cfg) -> int:
    from tqdm import tqdm

    from ramm.corpus.emojibench import EmojiBenchConfig, FetchError, build_emojibench, read_manifest
    from ramm.corpus.skips import SkipCounter

    build = EmojiBenchConfig(size=cfg.size, styles=cfg.style_list, seed=cfg.seed, skin_tones=cfg.skin_tones)
    skips = SkipCounter()
    try:
        meta = build_emojibench(cfg.out, build, cache_dir=cfg.cache, skips=skips,
                                progress=lambda it: tqdm(it, desc="render", unit="img", leave=False))
    except FetchError as e:
        print(f"ramm: error: {e}", file=sys.stderr)
        return 1
    print(f"EmojiBench in {cfg.out}: {meta['n_documents']} documents, {meta['n_concepts']} concepts "
          f"({meta['n_base_concepts']} base, the rest skin-tone variants) "
          f"({skips.summary() if skips.read or skips.skipped else 'already complete'})")
    _print_emojibench_table(read_manifest(cfg.out))
    return 0


def _stats(cfg) -> int:
    from pathlib import Path

    from ramm.corpus.emojibench import is_emojibench_dir, read_manifest, verify_emojibench

    if is_emojibench_dir(cfg.path):
        rows = read_manifest(cfg.path)
        _print_emojibench_table(rows)
        if cfg.verify:
            problems = verify_emojibench(cfg.path)
            for p in problems[:20]:
                print(f"  {p}")
            print(f"verify: {len(rows) - len(problems)} of {len(rows)} images match the manifest")
            return 1 if problems else 0
        return 0

    from tqdm import tqdm

    from ramm.corpus.loaders import open_corpus

    corpus = open_corpus(Path(cfg.path), strict=cfg.strict, images=cfg.images)
    sizes, n_img = Counter(), 0
    for doc in tqdm(corpus, desc="read", unit="doc"):
        for img in doc.images:
            n_img += 1
            sizes[f"{img.pixels.shape[1]}x{img.pixels.shape[0]}"] += 1
    print(f"{cfg.path} ({corpus.kind}): {corpus.skips.summary()}; {n_img} images")
    for size, n in sizes.most_common(5):
        print(f"  {size}: {n}")
    return 0


def _print_emojibench_table(rows: list[dict]) -> None:
    """Documents per split: per style, in all, per track (variants / cross-style) and with a skin tone;
    concepts (each variant its own) and base concepts; then base concepts per category and split."""
    from ramm.corpus.emojibench import TRACKS, track
    from ramm.corpus.splits import SPLITS

    def docs(split):
        return [r for r in rows if split in ("total", r["split"])]

    cells = {"documents": len, "concepts": lambda h: len({r["concept"] for r in h}),
             "bases": lambda h: len({r.get("base", r["concept"]) for r in h}),
             "tones": lambda h: sum(bool(r.get("tone")) for r in h),
             **{t: (lambda h, t=t: sum(track(r) == t for r in h)) for t in TRACKS}}
    styles = sorted({r["style"] for r in rows})
    print(_table("split (documents)", [*SPLITS, "total"], [*styles, *cells],
                 lambda sp, c: cells[c](docs(sp)) if c in cells else sum(r["style"] == c for r in docs(sp))))
    print("(tones: documents of a skin-tone variant; variants: documents of concepts with skin tones, default "
          "tone included; cross-style: all others)")
    print()
    print(_table("category (base concepts)", [*sorted({r["category"] for r in rows}), "total"], [*SPLITS, "total"],
                 lambda cat, sp: len({r.get("base", r["concept"]) for r in docs(sp)
                                      if cat in ("total", r["category"])})))


def _table(head: str, rows: list[str], cols: list[str], cell) -> str:
    width = max(map(len, [head, *rows])) + 2
    widths = [max(10, len(c) + 2) for c in cols]
    lines = [f"{head:<{width}}" + "".join(f"{c:>{w}}" for c, w in zip(cols, widths))]
    lines += [f"{r:<{width}}" + "".join(f"{cell(r, c):>{w}}" for c, w in zip(cols, widths)) for r in rows]
    return "\n".join(lines)
