"""GRACE query latency as the memorized set grows 1k -> 10k -> 100k identifiers (issue 7; target: flat within 1.5x).

The trie is built from synthetic structured-style identifiers (4 tokens drawn from 64 text ids, then </doc>),
the model is the real generator architecture (a trained GRACE model with --model, else the `small` preset,
random weights: latency does not depend on the weights), and each query is a trie-constrained beam search.
Peer: the same search over 1k identifiers.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import emit


def synthetic_identifiers(n: int, end: int, depth: int = 4, alphabet: int = 64, seed: int = 0) -> list[tuple]:
    rng = np.random.default_rng(seed)
    seqs: set[tuple] = set()
    while len(seqs) < n:
        seqs.update(map(tuple, rng.integers(0, alphabet, size=(n - len(seqs), depth)).tolist()))
    return [(*s, end) for s in sorted(seqs)[:n]]


def main() -> int:
    from ramm.decoding.constrained_beam import constrained_beam_search
    from ramm.decoding.trie import PrefixTrie
    from ramm.model.transformer import Transformer, TransformerConfig

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None, help="trained GRACE/generator dir (default: small preset)")
    ap.add_argument("--sizes", default="1000,10000,100000", help="identifier counts")
    ap.add_argument("--queries", type=int, default=30, help="queries per size")
    ap.add_argument("--beams", type=int, default=10, help="beam width")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Transformer.from_pretrained(args.model) if args.model else \
        Transformer(TransformerConfig.preset("small", vocab_size=2048 + 512 + 17))
    model.eval()
    V = model.cfg.vocab_size
    end = V - 1
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 2048, size=12).tolist() for _ in range(args.queries)]
    sizes = [int(s) for s in args.sizes.split(",")]
    tries, builds = {}, {}
    for n in sizes:
        t0 = time.perf_counter()
        tries[n] = PrefixTrie(synthetic_identifiers(n, end))
        builds[n] = time.perf_counter() - t0
        constrained_beam_search(model, prompts[0], tries[n], args.beams)  # warm-up
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for p in prompts:  # round-robin over the sizes, so that load on a shared CPU hits them alike
        for n in sizes:
            t0 = time.perf_counter()
            hyps = constrained_beam_search(model, p, tries[n], args.beams)
            times[n].append(time.perf_counter() - t0)
            assert all(tries[n].get(h.tokens) is not None for h in hyps)
    results = {n: (float(np.median(times[n])) * 1000, builds[n]) for n in sizes}
    for n, (ms, build) in results.items():
        print(f"{n:>7d} identifiers: trie build {build:.2f}s, median query {ms:.1f} ms")
    base = results[sizes[0]][0]
    emit([{"bench": "grace_latency", "metric": f"median query latency, {n} identifiers, beam {args.beams}",
           "ours": round(ms, 2), "peer_name": f"{sizes[0]} identifiers", "peer": round(base, 2),
           "ratio": round(ms / base, 3), "target": "<= 1.5", "unit": "ms",
           "note": f"trie build {build:.2f}s"} for n, (ms, build) in results.items() if n != sizes[0]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
