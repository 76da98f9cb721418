"""The lab's `ramm` commands: `ramm demo`, `ramm demo-sft`, `ramm eval --run DIR` and `ramm data emojibench`.

Installed as the `lab` entry point of `ramm.cli` (pyproject.toml): the library's CLI calls `register(cli)`
after its own commands, without importing the lab.
"""
from __future__ import annotations

from ramm_lab.cli import data, demo, demo_sft, evaluation


def register(cli) -> None:
    for module in (data, demo, demo_sft, evaluation):
        module.register(cli)
