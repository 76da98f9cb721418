"""`ramm data stats` (flags: the fields of `ramm.config.DataStatsConfig`); corpus formats installed with a lab add
their own `ramm data` commands (`ramm data emojibench`)."""
from __future__ import annotations

from collections import Counter

from ramm.config import DataStatsConfig


def register(cli) -> None:
    cli.config_command("stats", "count documents per split, style, track and category (or stream-check any corpus)",
                       DataStatsConfig, _stats, group="data", positional=("path",))


def _stats(cfg) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from tqdm import tqdm

    from ramm.corpus.loaders import open_corpus

    corpus = open_corpus(cfg.path, strict=cfg.strict, images=cfg.images)
    hooks = corpus.hooks
    if hooks.describe is not None:  # the format's own table (EmojiBench: per split, style, track, category)
        print(hooks.describe())
        if not cfg.verify:
            return 0
        if hooks.verify is None:
            raise ValueError(f"--verify: {cfg.path} ({corpus.kind}) keeps no checksums to verify")
        checked, problems = hooks.verify()
        for p in problems[:20]:
            print(f"  {p}")
        print(f"verify: {checked - len(problems)} of {checked} images match their recorded checksums")
        return 1 if problems else 0
    sizes, n_img = Counter(), 0
    for doc in tqdm(corpus, desc="read", unit="doc"):
        for img in doc.images:
            n_img += 1
            sizes[f"{img.pixels.shape[1]}x{img.pixels.shape[0]}"] += 1
    print(f"{cfg.path} ({corpus.kind}): {corpus.skips.summary()}; {n_img} images")
    for size, n in sizes.most_common(5):
        print(f"  {size}: {n}")
    return 0
