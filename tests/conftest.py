"""Shared fixtures. The real EmojiBench is built once per machine into the ramm cache (the npm
tarballs are cached there too), so slow tests run in CI's fresh clone as well."""
from pathlib import Path

import pytest

from milvus_server import milvus_server  # noqa: F401 (a fixture: one Milvus server for the whole session)


@pytest.fixture(scope="session")
def emojibench_dir() -> Path:
    from ramm_lab.emojibench_build import build_emojibench
    from ramm.utils import default_cache_dir

    out = default_cache_dir() / "emojibench-tests"
    build_emojibench(out)  # a no-op when already complete and current
    return out


@pytest.fixture
def torch_on_every_core():
    """torch on every CPU core for one test, then back: test modules set one thread when imported (right for
    tiny models), so without this the end-to-end EmojiBench tests run single-threaded, unlike `ramm demo`."""
    import os

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(threads)
