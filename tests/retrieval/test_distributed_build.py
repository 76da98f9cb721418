"""`ramm memory build` under torchrun: 2 CPU ranks give the memory 1 rank gives."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from milvus_server import needs_milvus
from ramm.retrieval.distributed_build import embedding_report
from ramm.retrieval.memory import Memory

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args):
    path = os.pathsep.join(filter(None, [str(HERE.parents[1]), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                          str(HERE / "_dist_build.py"), *map(str, args)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]


def test_two_ranks_build_the_memory_one_rank_builds(tmp_path, docs, encoder_dir):
    one = Memory.build(docs, encoder_dir, tmp_path / "one", batch_size=8, progress=False)
    _torchrun(encoder_dir, tmp_path / "two")
    two = Memory.load(tmp_path / "two")
    assert two.ids == one.ids == [d.id for d in docs]
    assert [two.get(i).content_hash() for i in two.ids] == [one.get(i).content_hash() for i in one.ids]
    assert two.spec.factory == one.spec.factory == "Flat" and two.index.ntotal == len(docs)
    reports = embedding_report(tmp_path / "two")
    assert [r["documents"] for r in reports] == [(len(docs) + 1) // 2, len(docs) // 2]
    assert all(r["docs_per_s"] > 0 for r in reports)
    for query in ("red heart", "a smiling face", docs[3]):
        a, b = one.search(query, k=5), two.search(query, k=5)
        assert [d.id for d, _ in a] == [d.id for d, _ in b]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-5)


@needs_milvus
def test_two_ranks_fill_one_milvus_collection_as_one_process_would(tmp_path, docs, encoder_dir, milvus_server):
    """Rank 0 creates the memory, the collection and its index; each rank upserts its shard into it."""
    one = Memory.build(docs, encoder_dir, tmp_path / "one", batch_size=8, progress=False)
    _torchrun(encoder_dir, tmp_path / "two", milvus_server.url)
    two = Memory.load(tmp_path / "two")
    assert two.config.backend == "milvus" and two.ids == sorted(one.ids) and len(two) == len(docs)
    assert [r["documents"] for r in embedding_report(tmp_path / "two")] == [(len(docs) + 1) // 2, len(docs) // 2]
    for query in ("red heart", "a smiling face", docs[3]):
        a, b = one.search(query, k=5), two.search(query, k=5)
        assert [d.content_hash() for d, _ in a] == [d.content_hash() for d, _ in b]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-5)
