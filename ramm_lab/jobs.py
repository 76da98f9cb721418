"""The lab's jobs: one dataclass per `ramm` command the lab adds (`ramm data emojibench`, `ramm demo`,
`ramm demo-sft`, `ramm eval --run`), as `ramm.config` holds the library's. No heavy imports here."""
from __future__ import annotations

from dataclasses import dataclass

from ramm.config import require


@dataclass
class EmojiBenchJob:
    """`ramm data emojibench`: fetch the npm emoji packages and build EmojiBench."""

    out: str  # output folder (tar shards + manifest.jsonl + meta.json)
    size: int = 32  # image side in pixels
    styles: str = "google,twitter"  # comma-separated art styles
    seed: int = 0  # seed of the concept-level splits
    skin_tones: bool = True  # one document per skin-tone variant (--no-skin-tones: default tones only)
    cache: str | None = None  # download cache (None: $RAMM_CACHE or ~/.cache/ramm)

    def __post_init__(self):
        require(self, ("out",))

    @property
    def style_list(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.styles.split(",") if s.strip())


@dataclass
class DemoJob:
    """`ramm demo`: the headline experiment end to end."""

    config: str = "configs/demo.json"  # demo config JSON (sizes, budgets, decoding)
    data: str = "data/emojibench"  # where EmojiBench is (or will be) built
    run: str = "runs/demo"  # run directory: every stage's outputs and the report


@dataclass
class DemoSFTJob:
    """`ramm demo-sft`: instruction-tune the demo's RA generator and evaluate it."""

    config: str = "configs/demo-sft.json"  # SFT demo config JSON (mixture, budget, cases)
    data: str = "data/emojibench"  # where EmojiBench is (or will be) built
    base: str = "runs/demo"  # a `ramm demo` run to start from (run first when unfinished)
    run: str = "runs/demo-sft"  # run directory: the SFT model, metrics and the report


@dataclass
class ReportJob:
    """`ramm eval --run DIR`: re-render a run's report."""

    run: str | None = None  # run directory holding results.json; writes report.md and report.html there
