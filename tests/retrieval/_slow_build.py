"""Child process for the kill -9 test: builds a memory, slowly when SLOW=1, printing progress."""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import make_docs  # noqa: E402

from ramm.retrieval.memory import Memory  # noqa: E402


def corpus():
    for i, d in enumerate(make_docs()):
        if os.environ.get("SLOW"):
            time.sleep(0.02)
        print(i, flush=True)
        yield d


torch.set_num_threads(1)
Memory.build(corpus(), sys.argv[1], sys.argv[2], batch_size=4, progress=False)
