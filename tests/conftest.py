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
