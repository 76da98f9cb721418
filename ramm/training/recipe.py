"""What every training recipe does before its data: check the config, seed, make the output folder and save
the config in it, so a run's folder always says how it was made, even if the run is stopped."""
from __future__ import annotations

from pathlib import Path

from ramm.config import save_config
from ramm.utils import output_dir, seed_everything


def start_run(cfg, config_name: str) -> Path:
    """cfg.out, created, with `config_name` (JSON) holding cfg; seeds every RNG from cfg.trainer.seed."""
    if hasattr(cfg, "require_paths"):
        cfg.require_paths()
    seed_everything(cfg.trainer.seed)
    out = output_dir(cfg.out)
    save_config(cfg, out / config_name)
    return out
