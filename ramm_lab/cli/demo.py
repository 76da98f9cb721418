"""`ramm demo`: the whole EmojiBench pipeline (corpus -> tokenizers -> retriever -> memory ->
RA and vanilla generators -> generation -> evaluation -> report), each stage cached."""
from __future__ import annotations


def register(cli) -> None:
    p = cli.command("demo", "run the headline experiment end to end on EmojiBench (stages are cached)")
    p.add_argument("--config", default="configs/demo.json", help="demo config JSON (sizes, budgets, decoding)")
    p.add_argument("--data", default="data/emojibench", help="where EmojiBench is (or will be) built")
    p.add_argument("--run", default="runs/demo", help="run directory: every stage's outputs and the report")
    p.set_defaults(func=_run)


def _run(args) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm_lab.report import headline_table, load_results
    from ramm_lab.demo import DemoConfig, run_demo

    cfg = DemoConfig.load(args.config)
    md = run_demo(cfg, args.data, args.run, report=lambda s: print(s, flush=True))
    results, _ = load_results(args.run)
    print()
    print(headline_table(results))
    print(f"\nreport: {md}\n        {md.with_suffix('.html')}")
    return 0
