"""`ramm demo-sft`: instruction tuning on EmojiBench from a finished `ramm demo` run, evaluated on heldout concepts."""
from __future__ import annotations

from ramm_lab.jobs import DemoSFTJob


def register(cli) -> None:
    cli.config_command("demo-sft", "instruction-tune the demo's RA generator (edit, style, silhouettes, questions) "
                       "and evaluate it on heldout concepts (stages are cached)", DemoSFTJob, _run, job_file=False)


def _run(job: DemoSFTJob) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm_lab.sft import SFTDemoConfig, run_sft_demo

    md = run_sft_demo(SFTDemoConfig.load(job.config), job.data, job.base, job.run,
                      report=lambda s: print(s, flush=True))
    print(f"\nreport: {md}")
    return 0
