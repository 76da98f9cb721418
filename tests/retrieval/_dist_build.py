"""Run by torchrun in the distributed-build tests: every rank builds its shard, rank 0 merges; with a third
argument (a Milvus URI) every rank upserts its shard into one collection."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import make_docs  # noqa: E402

from ramm.retrieval.distributed_build import build_distributed  # noqa: E402
from ramm.utils import end_distributed_process  # noqa: E402

torch.set_num_threads(1)
milvus = {"backend": "milvus", "uri": sys.argv[3], "collection": "two_ranks", "index_type": "FLAT"} if len(sys.argv) > 3 else {}
build_distributed(iter(make_docs()), sys.argv[1], sys.argv[2], batch_size=8, **milvus)
end_distributed_process(0)
