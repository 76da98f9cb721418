"""`make bench`: run every bench/*.py script and collect one bench/results.md table of ratios vs peers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# quality evaluations that need trained models: listed in results.md with the command, not run
NEEDS_MODELS = {"grace_recall.py": "python bench/grace_recall.py runs/grace-<scheme> --retriever runs/demo/retriever "
                                   "runs/retriever runs/retriever-clip (docs/results.md: GRACE against the dense retriever)"}


def main() -> int:
    work = HERE / "_work"
    work.mkdir(exist_ok=True)
    scripts = sorted(p for p in HERE.glob("*.py") if not p.name.startswith("_") and p.name != "run_all.py")
    lines = ["# ramm benchmarks", "", "| bench | metric | ours | peer | peer value | ratio | target | unit |",
             "|---|---|---|---|---|---|---|---|"]
    machine, failures = "", []
    for script in scripts:
        if script.name in NEEDS_MODELS:
            lines.append(f"| {script.stem} | not run (needs trained models): `{NEEDS_MODELS[script.name]}` | | | | | | |")
            continue
        out = work / f"{script.stem}.json"
        out.unlink(missing_ok=True)
        print(f"== {script.name}", flush=True)
        t0 = time.time()
        proc = subprocess.run([sys.executable, str(script)], env={**os.environ, "RAMM_BENCH_JSON": str(out)})
        print(f"== {script.name}: exit {proc.returncode} in {time.time() - t0:.0f}s", flush=True)
        if proc.returncode != 0 or not out.exists():
            failures.append(script.name)
            lines.append(f"| {script.stem} | FAILED (exit {proc.returncode}) | | | | | | |")
            continue
        data = json.loads(out.read_text())
        machine = data.get("machine", machine)
        for r in data["rows"]:
            lines.append("| {bench} | {metric} | {ours} | {peer_name} | {peer} | {ratio} | {target} | {unit} |".format(
                **{k: _fmt(r.get(k, "")) for k in ("bench", "metric", "ours", "peer_name", "peer", "ratio", "target", "unit")}))
    lines += ["", f"Machine: {machine}", ""]
    (HERE / "results.md").write_text("\n".join(lines))
    print((HERE / "results.md").read_text())
    return 1 if failures else 0


def _fmt(x):
    return f"{x:.4g}" if isinstance(x, float) else str(x)


if __name__ == "__main__":
    sys.exit(main())
