"""Serve fixtures: the tiny random bundle of tests/decoding/test_pipeline.py, an app over it with its own
copy of the memory (the API adds documents), with its facade and a test client."""
import importlib.util
import shutil
from pathlib import Path

import pytest

from serve_helpers import make_app

_spec = importlib.util.spec_from_file_location("ramm_test_pipeline", Path(__file__).parents[1] / "decoding" / "test_pipeline.py")
pipeline_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pipeline_tests)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    """The same tiny bundle, built once for all serve tests."""
    return pipeline_tests.bundle.__wrapped__(tmp_path_factory)


@pytest.fixture(scope="session")
def facade(bundle, tmp_path_factory):
    from ramm.pipeline import RAMM
    memory = tmp_path_factory.mktemp("serve") / "memory"
    shutil.copytree(bundle / "memory", memory)
    return RAMM.load(bundle / "gen", memory_dir=memory, device="cpu")


@pytest.fixture(scope="module")
def client(facade):
    from fastapi.testclient import TestClient
    with TestClient(make_app(facade, max_upload_bytes=64 * 1024, max_image_pixels=256 * 256)) as c:
        yield c
