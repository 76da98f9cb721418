"""`ramm demo`: the whole EmojiBench pipeline (corpus -> tokenizers -> retriever -> memory ->
RA and vanilla generators -> generation -> evaluation -> report), each stage cached."""
from __future__ import annotations

from ramm_lab.jobs import DemoJob


def register(cli) -> None:
    cli.config_command("demo", "run the headline experiment end to end on EmojiBench (stages are cached)", DemoJob,
                       _run, job_file=False)


def _run(job: DemoJob) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm_lab.report import headline_table, load_results
    from ramm_lab.demo import DemoConfig, run_demo

    cfg = DemoConfig.load(job.config)
    md = run_demo(cfg, job.data, job.run, report=lambda s: print(s, flush=True))
    results, _ = load_results(job.run)
    print()
    print(headline_table(results))
    print(f"\nreport: {md}\n        {md.with_suffix('.html')}")
    return 0
