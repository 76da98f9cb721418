"""`ramm train generator`: the RA-CM3 generator (--retrieval) or its vanilla baseline (--no-retrieval).

Flags and `--config FILE` are the fields of `ramm.config.GeneratorConfig` (`--trainer.steps`, `--ra.alpha`, ...).
"""
from __future__ import annotations

from dataclasses import replace

from ramm.config import GeneratorConfig


def register(cli) -> None:
    cli.config_command("generator", "train the retrieval-augmented CM3 generator (or the no-retrieval baseline) "
                       "on any corpus `open_corpus` reads", GeneratorConfig, _run, group="train")


def _run(cfg) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm.corpus import open_corpus
    from ramm.training.generator_recipe import train_generator

    hooks = open_corpus(cfg.corpus).hooks  # EmojiBench: concept partners, renamed concepts, skin-tone siblings
    cfg = replace(cfg, ra=replace(cfg.ra, group_by=hooks.match_or(cfg.ra.group_by)))
    result = train_generator(cfg, pseudo_namer=hooks.pseudo_namer, sibling_key=hooks.sibling_key)
    print(f"saved generator to {cfg.out} after {result['steps']} steps ({result['minutes']:.1f} min, "
          f"{result['tokens_per_s'] or 0:.0f} tokens/s at the end)")
    for key, value in result.items():
        if key.endswith(tuple(f"_k{k}" for k in range(10))):
            print(f"  {key}: {value:.4f}")
    return 0
