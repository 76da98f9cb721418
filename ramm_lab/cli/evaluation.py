"""`ramm eval --run DIR`: re-render a run's report from its results.json.

This module creates the `eval` group (it sorts before the other modules that add `ramm eval <sub>`
commands), so that the bare group takes `--run`.
"""
from __future__ import annotations


def register(cli):
    p = cli.group_parser("eval")
    p.add_argument("--run", metavar="DIR", help="run directory holding results.json; writes report.md and report.html there")
    p.set_defaults(func=lambda args, p=p: _run(args) if args.run else p.print_help() or 2)


def _run(args) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm_lab.report import headline_table, load_results, write_report

    results, examples = load_results(args.run)
    md, page = write_report(args.run, results, examples)
    print(headline_table(results))
    print(f"\nreport: {md}\n        {page}")
    return 0
