"""The memory's ANN index (ramm.retrieval.index.choose_index) against exact IndexFlatIP search.

Data: n unit vectors of dim 512 from a Gaussian mixture (clusters on the sphere, not uniform noise),
queries drawn fresh from the same mixture. Measured in one run: recall@10 of the ANN index against
exact top-10, queries per second of both (ratio), the ANN build time (train + add) and its bytes per
vector. Target: recall@10 >= 0.95 at >= 20x exact's QPS. `--n 100000` runs small.

`--milvus URI` also measures the Milvus backend (ramm.retrieval.milvus_memory) on the same vectors: a
collection at URI (a path ending in .db: Milvus Lite in this process; http://host:port: a server) with the
memory's approximate index (`--milvus-index`, HNSW by default, over inner product), its recall@10 against
the same exact top-10, its queries/s and build time (insert + index + load) beside FAISS's. The
collection `bench_memory_search` at URI is dropped and rebuilt.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import emit  # noqa: E402

from ramm.retrieval.index import IndexSpec, choose_index, new_index  # noqa: E402


def mixture(n: int, dim: int, clusters: int, spread: float, rng: np.random.Generator,
            centers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 unit vectors around `clusters` random unit centres; returns (vectors, centres)."""
    if centers is None:
        centers = rng.standard_normal((clusters, dim), dtype=np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):  # chunks keep the temporary noise small
        m = min(n - s, 100_000)
        x = centers[rng.integers(len(centers), size=m)] + spread / np.sqrt(dim) * rng.standard_normal((m, dim), dtype=np.float32)
        out[s: s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, centers


def timed_search(index, q: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    _, ids = index.search(q, k)
    return ids, len(q) / (time.perf_counter() - t)


def _reusable(client, name: str, n: int, index_type: str) -> bool:
    """The collection holds n rows under a finished index of this type (a previous run's build)."""
    if not client.has_collection(name) or client.get_collection_stats(name)["row_count"] != n:
        return False
    indexes = client.list_indexes(name)
    if not indexes:
        return False
    info = client.describe_index(name, indexes[0])
    return info.get("index_type") == index_type and info.get("state") == "Finished" and info.get("indexed_rows") == n


def milvus_run(uri: str, index_type: str, xb: np.ndarray, xq: np.ndarray, gt: np.ndarray, keep: bool = False) -> dict:
    """Build a collection of xb with the memory's index parameters at `uri`; recall@10 against gt, QPS, build s.

    keep: reuse the collection a previous run left at `uri` when it holds len(xb) rows under a finished index
    of this type (the vectors are the same: the mixture is seeded), so a search-only rerun skips the build.
    """
    from pymilvus import DataType, MilvusClient
    from pymilvus.exceptions import MilvusException

    from ramm.retrieval.milvus_memory import INDEXES
    build_params, search_params = INDEXES[index_type]
    client, name = MilvusClient(uri=uri, timeout=7200), "bench_memory_search"
    reused = keep and _reusable(client, name, len(xb), index_type)
    t0 = time.perf_counter()
    if not reused:
        if client.has_collection(name):
            client.drop_collection(name)
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=xb.shape[1])
        client.create_collection(name, schema=schema, consistency_level="Strong")
        for s in tqdm(range(0, len(xb), 10_000), desc="milvus insert", unit="batch", file=sys.stderr):
            client.insert(name, [{"id": s + i, "vector": v.tolist()} for i, v in enumerate(xb[s: s + 10_000])])
        client.flush(name)
        print(f"milvus: inserted {len(xb)} in {time.perf_counter() - t0:.0f} s; building {index_type}", file=sys.stderr)
        index = MilvusClient.prepare_index_params()
        index.add_index(field_name="vector", index_type=index_type, metric_type="IP", params=build_params)
        try:
            client.create_index(name, index)
        except MilvusException as e:  # pymilvus retries a call whose connection dropped: the first one built it
            if "already exists" not in str(e):
                raise
        while (info := client.describe_index(name, "vector")).get("state") != "Finished":
            time.sleep(5)
        print(f"milvus: indexed {info.get('indexed_rows')} rows at {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    client.load_collection(name)
    search = {"metric_type": "IP", "params": search_params}
    client.search(name, data=[xq[0].tolist()], limit=10, anns_field="vector", search_params=search)  # waits for the index
    build_s = None if reused else time.perf_counter() - t0
    t = time.perf_counter()
    ids = []
    for s in range(0, len(xq), 100):
        res = client.search(name, data=[v.tolist() for v in xq[s: s + 100]], limit=10, anns_field="vector",
                            search_params=search)
        ids += [[h["id"] for h in row] for row in res]
    qps = len(xq) / (time.perf_counter() - t)
    recall = float(np.mean([len(set(a) & set(g)) / 10 for a, g in zip(ids, gt)]))
    client.close()
    return {"recall": recall, "qps": qps, "build_s": build_s,
            "note": f"Milvus {index_type} {build_params} {search_params} at {uri}" + (" (reused build)" if reused else "")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000, help="database vectors")
    ap.add_argument("--dim", type=int, default=512, help="vector dimension")
    ap.add_argument("--queries", type=int, default=1000, help="query vectors")
    ap.add_argument("--clusters", type=int, default=1000, help="Gaussian mixture components")
    ap.add_argument("--spread", type=float, default=1.0, help="noise norm relative to the unit centres")
    ap.add_argument("--threads", type=int, default=2, help="faiss OpenMP threads (both indexes)")
    ap.add_argument("--factory", default=None, help="override the index choice (faiss factory string)")
    ap.add_argument("--params", default=None, help="override the search parameters, e.g. nprobe=32,k_factor_rf=8")
    ap.add_argument("--milvus", default=None, help="also measure Milvus at this URI (a .db path: Milvus Lite)")
    ap.add_argument("--milvus-index", default="HNSW", help="the Milvus index (ramm.retrieval.milvus_memory.INDEXES)")
    ap.add_argument("--milvus-keep", action="store_true",
                    help="reuse the collection a previous run built at the URI (same n and index): search only")
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    xb, centers = mixture(args.n, args.dim, args.clusters, args.spread, rng)
    xq, _ = mixture(args.queries, args.dim, args.clusters, args.spread, rng, centers)
    spec = choose_index(args.n, args.dim, flat_below=0)  # the choice the memory makes past its Flat threshold
    if args.factory:
        spec = IndexSpec(args.factory, args.params or "", min(args.n, 64 * 4096))
    elif args.params is not None:
        spec.params = args.params

    exact = faiss.IndexFlatIP(args.dim)
    exact.add(xb)
    gt, exact_qps = timed_search(exact, xq, 10)

    t0 = time.perf_counter()
    train = xb[rng.choice(args.n, size=min(args.n, spec.train_size), replace=False)] if spec.train_size else None
    ann = new_index(spec, args.dim, train)
    t_train = time.perf_counter() - t0
    for s in range(0, args.n, 200_000):
        ann.add(xb[s: s + 200_000])
    build_s = time.perf_counter() - t0
    ids, ann_qps = timed_search(ann, xq, 10)
    recall = float(np.mean([len(set(a) & set(g)) / 10 for a, g in zip(ids, gt)]))
    bytes_per_vec = len(faiss.serialize_index(ann)) / args.n

    note = f"{spec.factory} {spec.params}; n={args.n} dim={args.dim} {args.clusters} clusters; {args.threads} threads"
    rows = []
    if args.milvus:
        m = milvus_run(args.milvus, args.milvus_index, xb, xq, gt, keep=args.milvus_keep)
        rows = [
            {"bench": "memory_search_milvus", "metric": "recall@10", "ours": m["recall"], "peer_name": "FAISS " + spec.factory,
             "peer": recall, "ratio": m["recall"], "target": ">=0.95", "unit": "", "note": m["note"]},
            {"bench": "memory_search_milvus", "metric": "QPS", "ours": m["qps"], "peer_name": "FAISS " + spec.factory,
             "peer": ann_qps, "ratio": m["qps"] / ann_qps, "target": "-", "unit": "queries/s",
             "note": f"exact IndexFlatIP: {exact_qps:.0f} queries/s"},
            {"bench": "memory_search_milvus", "metric": "build time", "ours": m["build_s"], "peer_name": "FAISS " + spec.factory,
             "peer": build_s, "ratio": m["build_s"] / build_s if m["build_s"] else None, "target": "-", "unit": "s",
             "note": "insert + index + load" if m["build_s"] else "reused a previous run's build (--milvus-keep)"},
        ]
    emit([
        {"bench": "memory_search", "metric": "recall@10", "ours": recall, "peer_name": "IndexFlatIP", "peer": 1.0,
         "ratio": recall, "target": ">=0.95", "unit": "", "note": note},
        {"bench": "memory_search", "metric": "QPS", "ours": ann_qps, "peer_name": "IndexFlatIP", "peer": exact_qps,
         "ratio": ann_qps / exact_qps, "target": ">=20x", "unit": "queries/s", "note": note},
        {"bench": "memory_search", "metric": "build time", "ours": build_s, "peer_name": "IndexFlatIP", "peer": None,
         "ratio": None, "target": "-", "unit": "s", "note": f"train {t_train:.1f}s on {spec.train_size} vectors"},
        {"bench": "memory_search", "metric": "bytes/vector", "ours": bytes_per_vec, "peer_name": "IndexFlatIP",
         "peer": 4.0 * args.dim, "ratio": bytes_per_vec / (4.0 * args.dim), "target": "-", "unit": "B", "note": ""},
    ] + rows)


if __name__ == "__main__":
    main()
