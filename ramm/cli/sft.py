"""`ramm train sft --from GENERATOR --corpus C --out DIR`: multi-task instruction tuning (CM3Leon's second stage).

Flags and `--config FILE` are the fields of `ramm.config.SFTConfig` (`--mixture.edit`, `--trainer.steps`, ...).
"""
from __future__ import annotations

from ramm.config import SFTConfig


def register(cli) -> None:
    cli.config_command("sft", "instruction-tune a pretrained generator on editing, style transfer, silhouettes, "
                       "segmentation, questions, captioning and infilling", SFTConfig, _run, group="train")


def _run(cfg) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm.training.sft_recipe import train_sft

    result = train_sft(cfg)
    print(f"saved the instruction-tuned generator to {cfg.out} after {result['steps']} steps "
          f"({result['minutes']:.1f} min)")
    for key, value in result.items():
        if key.endswith(("_trained", "_heldout")):
            print(f"  val response loss {key}: {value:.4f}")
    return 0
