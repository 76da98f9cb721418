"""`ramm train chameleon`: RA fine-tuning of a transformers Chameleon / Anole checkpoint (full or LoRA).

Flags and `--config FILE` are the fields of `ramm.config.ChameleonFinetuneConfig` (`--lora_rank 16`,
`--trainer.steps`, `--ra.alpha`, ...). Runs under `torchrun --nproc_per_node N` as DDP.
"""
from __future__ import annotations

from dataclasses import replace

from ramm.config import ChameleonFinetuneConfig


def register(cli) -> None:
    cli.config_command("chameleon", "RA fine-tune a Chameleon / Anole checkpoint (transformers directory) on a "
                       "corpus with a memory; saves a directory transformers loads", ChameleonFinetuneConfig, _run,
                       group="train")


def _run(cfg) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm.corpus import open_corpus
    from ramm.training.chameleon_recipe import finetune_chameleon

    hooks = open_corpus(cfg.corpus).hooks  # the corpus' answer key: leave-one-out partners of its documents
    result = finetune_chameleon(replace(cfg, ra=replace(cfg.ra, group_by=hooks.match_or(cfg.ra.group_by))))
    print(f"saved the fine-tuned checkpoint to {cfg.out} ({result['minutes']:.1f} min, "
          f"final loss {result['train_loss'] or float('nan'):.4f})")
    return 0
