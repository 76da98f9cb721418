"""`ramm demo-sft`: instruction tuning on EmojiBench from a finished `ramm demo` run, evaluated on heldout concepts."""
from __future__ import annotations


def register(cli) -> None:
    p = cli.command("demo-sft", "instruction-tune the demo's RA generator (edit, style, silhouettes, questions) "
                    "and evaluate it on heldout concepts (stages are cached)")
    p.add_argument("--config", default="configs/demo-sft.json", help="SFT demo config JSON (mixture, budget, cases)")
    p.add_argument("--data", default="data/emojibench", help="where EmojiBench is (or will be) built")
    p.add_argument("--base", default="runs/demo", help="a `ramm demo` run to start from (run first when unfinished)")
    p.add_argument("--run", default="runs/demo-sft", help="run directory: the SFT model, metrics and the report")
    p.set_defaults(func=_run)


def _run(args) -> int:
    # lazy: `ramm --help` imports this module and stays free of torch and numpy
    from ramm_lab.sft import SFTDemoConfig, run_sft_demo

    md = run_sft_demo(SFTDemoConfig.load(args.config), args.data, args.base, args.run,
                      report=lambda s: print(s, flush=True))
    print(f"\nreport: {md}")
    return 0
