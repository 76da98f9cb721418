"""What every training recipe does before its data: lock the output folder, check the config, seed, make
the folder and save the config in it, so a run's folder always says how it was made, even if the run is
stopped, and two trainings never write one folder."""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

from ramm.config import save_config
from ramm.utils import exclusive_lock, output_dir, seed_everything

LOCK_FILE = ".lock"


def run_lock(out: str | os.PathLike, rank: int | None = None):
    """Hold the training folder `out` (created) for this process: another training into it raises
    `ramm.utils.Locked` naming the holder's pid. Nests within one process (a recipe, then its Trainer);
    only rank 0 of a torchrun job takes it (`rank`, default $RANK)."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    if rank != 0:
        return contextlib.nullcontext()
    out = output_dir(out)
    return exclusive_lock(out / LOCK_FILE, lambda pid: f"{out} is being trained into by pid {pid}: wait for it "
                                                       f"to finish, or give another output folder", reentrant=True)


def holds_run_folder(recipe):
    """Run `recipe(cfg, ...)` holding cfg.out (`run_lock`), so a second training into it fails before it
    writes anything there."""
    @functools.wraps(recipe)
    def locked(cfg, *args, **kwargs):
        if hasattr(cfg, "require_paths"):  # names a missing --out before a lock is made anywhere
            cfg.require_paths()
        with run_lock(cfg.out):
            return recipe(cfg, *args, **kwargs)
    return locked


def start_run(cfg, config_name: str) -> Path:
    """cfg.out, created, with `config_name` (JSON) holding cfg; seeds every RNG from cfg.trainer.seed."""
    if hasattr(cfg, "require_paths"):
        cfg.require_paths()
    seed_everything(cfg.trainer.seed)
    out = output_dir(cfg.out)
    save_config(cfg, out / config_name)
    return out
