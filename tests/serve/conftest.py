"""Serve fixtures: the tiny random bundle of tests/decoding/test_pipeline.py, an app over it with its own
copy of the memory (the API adds documents), and a live uvicorn server on a free loopback port."""
import importlib.util
import shutil
import threading
import time
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("ramm_test_pipeline", Path(__file__).parents[1] / "decoding" / "test_pipeline.py")
pipeline_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pipeline_tests)
bundle = pipeline_tests.bundle  # the same fixture, reused
square, COLOURS, SIZE = pipeline_tests.square, pipeline_tests.COLOURS, pipeline_tests.SIZE


@pytest.fixture(scope="module")
def facade(bundle, tmp_path_factory):
    from ramm.pipeline import RAMM
    memory = tmp_path_factory.mktemp("serve") / "memory"
    shutil.copytree(bundle / "memory", memory)
    return RAMM.load(bundle / "gen", memory_dir=memory, device="cpu")


def make_app(facade, **overrides):
    from ramm.serve import ServeConfig, create_app
    cfg = ServeConfig(model="tiny-test-bundle", memory=str(facade.memory.root), **overrides)
    return create_app(cfg, ramm=facade)


@pytest.fixture(scope="module")
def client(facade):
    from fastapi.testclient import TestClient
    with TestClient(make_app(facade, max_upload_bytes=64 * 1024, max_image_pixels=256 * 256)) as c:
        yield c


class LiveServer:
    """uvicorn in a thread, bound to 127.0.0.1 on a free port."""

    def __init__(self, app):
        import uvicorn
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not (self.server.started and self.server.servers):
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=20)
