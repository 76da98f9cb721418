"""Shared output for bench scripts: a printed table, and JSON rows for bench/run_all.py.

Each row compares ours against a named peer measured in the same run:
{"bench", "metric", "ours", "peer_name", "peer", "ratio", "target", "unit", "note"}.
"""
from __future__ import annotations

import json
import os
import platform


def machine() -> str:
    import torch
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
    return f"{platform.machine()} {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}"


def emit(rows: list[dict]) -> None:
    """Print the rows; also write them where run_all.py asked ($RAMM_BENCH_JSON)."""
    for r in rows:
        ratio = r.get("ratio")
        print(f"[{r['bench']}] {r['metric']}: ours={_fmt(r.get('ours'))} {r.get('peer_name', 'peer')}={_fmt(r.get('peer'))}"
              f" ratio={_fmt(ratio)} target={r.get('target', '-')} {r.get('unit', '')} {r.get('note', '')}")
    path = os.environ.get("RAMM_BENCH_JSON")
    if path:
        with open(path, "w") as f:
            json.dump({"machine": machine(), "rows": rows}, f, indent=2)


def _fmt(x):
    return f"{x:.4g}" if isinstance(x, float) else str(x)
