"""`ramm eval --run DIR`: re-render a run's report from its results.json (the options of the bare `eval` group,
beside the library's `ramm eval retrieval`)."""
from __future__ import annotations

from ramm_lab.jobs import ReportJob


def register(cli):
    cli.config_command(None, "re-render a run's report", ReportJob, _run, group="eval")


def _run(job: ReportJob) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm_lab.report import headline_table, load_results, write_report

    results, examples = load_results(job.run)
    md, page = write_report(job.run, results, examples)
    print(headline_table(results))
    print(f"\nreport: {md}\n        {page}")
    return 0
