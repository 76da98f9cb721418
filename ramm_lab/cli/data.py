"""`ramm data emojibench` (flags: the fields of `ramm_lab.jobs.EmojiBenchJob`): fetch the npm emoji packages and
build EmojiBench.

`ramm data stats data/emojibench` is the library's command; it prints the table of `ramm_lab.corpus_format`.
"""
from __future__ import annotations

import sys

from ramm_lab.jobs import EmojiBenchJob


def register(cli) -> None:
    cli.config_command("emojibench", "build the EmojiBench corpus (npm emoji-datasource google/twitter 16.0.0)",
                       EmojiBenchJob, _emojibench, group="data")


def _emojibench(cfg: EmojiBenchJob) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from tqdm import tqdm

    from ramm.corpus.skips import SkipCounter
    from ramm_lab.corpus_format import emojibench_table
    from ramm_lab.emojibench import read_manifest
    from ramm_lab.emojibench_build import EmojiBenchConfig, FetchError, build_emojibench

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
    print(emojibench_table(read_manifest(cfg.out)))
    return 0
