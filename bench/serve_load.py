"""`ramm serve` under load: 64 concurrent clients x 4 image requests (n = 4) against a live server on loopback,
with dynamic batching and without, against the same requests sent one at a time.

    python bench/serve_load.py [--model DIR --memory DIR] [--clients 64] [--requests 4] [--n 4]

Without --model it builds the test suite's tiny random bundle (tests/decoding/test_pipeline.py) in a temp
dir. The server runs as its own process (`python -m ramm serve`), the clients are asyncio + httpx here.
Target (issue "ramm serve"): batching gives >= 2x the sequential images/s, at the unbatched p99 or better.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402


# the tiny bundle's captions (any text works for a real model), cycled over the requests
CAPTIONS = [f"{style} emoji: {colour} square" for style in "ab" for colour in ("red", "green", "blue", "yellow")]


def tiny_bundle(root: Path) -> Path:
    spec = importlib.util.spec_from_file_location("ramm_test_pipeline", ROOT / "tests" / "decoding" / "test_pipeline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    class Factory:
        def mktemp(self, name):
            path = root / name
            path.mkdir()
            return path
    return mod.bundle.__wrapped__(Factory())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model, memory, batching: bool, threads: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen([sys.executable, "-m", "ramm", "serve", "--model", str(model), "--memory", str(memory),
                                      "--port", str(self.port), "--batching" if batching else "--no-batching", "--threads",
                                      str(threads), "--max-queue", "1024", "--timeout-s", "600"],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self):
        for _ in range(600):
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=30)


async def load(url: str, clients: int, per_client: int, body: dict) -> dict:
    """`clients` concurrent clients, each sending `per_client` requests back to back."""
    latencies, failures = [], 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
        async def client(i):
            nonlocal failures
            for j in range(per_client):
                t = time.perf_counter()
                caption = CAPTIONS[(i * per_client + j) % len(CAPTIONS)]
                r = await c.post("/v1/images", json={**body, "caption": caption, "seed": i * per_client + j})
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200 or len(r.json()["samples"]) != body["n"]:
                    failures += 1
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    done = clients * per_client
    return {"requests": done, "failed": failures, "wall_s": wall, "images_per_s": done * body["n"] / wall,
            "requests_per_s": done / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)), "p99_ms": float(np.percentile(lat, 99))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model")
    p.add_argument("--memory")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=4, help="per client")
    p.add_argument("--n", type=int, default=4, help="images per request")
    p.add_argument("--method", default="sample")
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    args = p.parse_args()
    body = {"n": args.n, "k": 2, "method": args.method}
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model, memory = Path(args.model), Path(args.memory)
        else:
            bundle = tiny_bundle(Path(tmp))
            model, memory = bundle / "gen", bundle / "memory"
        runs = {}
        with Server(model, memory, batching=False, threads=args.threads) as s:
            asyncio.run(load(s.url, 4, 2, body))  # warm-up
            runs["sequential"] = asyncio.run(load(s.url, 1, args.clients * args.requests, body))
            runs["concurrent, no batching"] = asyncio.run(load(s.url, args.clients, args.requests, body))
        with Server(model, memory, batching=True, threads=args.threads) as s:
            asyncio.run(load(s.url, 4, 2, body))
            runs["concurrent, dynamic batching"] = asyncio.run(load(s.url, args.clients, args.requests, body))
    print(f"{args.clients} clients x {args.requests} requests x n={args.n} ({args.method}), server threads {args.threads}")
    print(f"{'run':30s} {'req':>5s} {'failed':>6s} {'img/s':>8s} {'req/s':>7s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s}")
    for name, r in runs.items():
        print(f"{name:30s} {r['requests']:5d} {r['failed']:6d} {r['images_per_s']:8.1f} {r['requests_per_s']:7.2f} "
              f"{r['p50_ms']:8.0f} {r['p95_ms']:8.0f} {r['p99_ms']:8.0f}")
    seq, plain, batched = runs["sequential"], runs["concurrent, no batching"], runs["concurrent, dynamic batching"]
    what = f"{args.clients} clients x {args.requests} image requests, n={args.n}"
    emit([
        dict(bench="serve_load", metric=f"images/s, {what}", ours=batched["images_per_s"], peer_name="same requests one at a time",
             peer=seq["images_per_s"], ratio=batched["images_per_s"] / seq["images_per_s"], target=">= 2", unit="images/s"),
        dict(bench="serve_load", metric=f"images/s, {what}", ours=batched["images_per_s"], peer_name="concurrent, no batching",
             peer=plain["images_per_s"], ratio=batched["images_per_s"] / plain["images_per_s"], target="-", unit="images/s"),
        dict(bench="serve_load", metric=f"p99 latency, {what}", ours=batched["p99_ms"], peer_name="concurrent, no batching",
             peer=plain["p99_ms"], ratio=plain["p99_ms"] / batched["p99_ms"], target=">= 1", unit="ms (ratio = peer/ours)"),
        dict(bench="serve_load", metric=f"p50 latency, {what}", ours=batched["p50_ms"], peer_name="concurrent, no batching",
             peer=plain["p50_ms"], ratio=plain["p50_ms"] / batched["p50_ms"], target="-", unit="ms (ratio = peer/ours)"),
        dict(bench="serve_load", metric="failed or lost requests (batched + unbatched)", ours=batched["failed"] + plain["failed"],
             peer_name="-", peer=0, ratio=None, target="0", unit="requests"),
    ])
    return 0 if batched["failed"] + plain["failed"] + seq["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
