"""Milvus for the tests: skip reasons when pymilvus / milvus-lite are not installed (`pip install ramm[milvus]`),
and a server for tests that need many client processes (Milvus Lite's embedded mode, a `.db` path, serves
one process).

The server is a real Milvus standalone when the `milvus` package (embedded Milvus, ~60 MB) is installed,
else `milvus-lite server` in a subprocess on a free port with one worker thread: Milvus Lite's server does
not support concurrent writers (its README), so its calls are made to run one at a time; Milvus orders
concurrent writes itself. Imported as a plain module by the tests (tests/ is on sys.path)."""
import importlib.util
import os
import socket
import subprocess
import sys
import time

import pytest

MISSING = [m for m in ("pymilvus", "milvus_lite") if importlib.util.find_spec(m) is None]
needs_milvus = pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed: pip install 'ramm[milvus]'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MilvusServer:
    def __init__(self, data_dir):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.standalone = None
        if importlib.util.find_spec("milvus") is not None:  # the real engine: concurrent writers included
            from milvus import MilvusServer as Standalone
            self.kind, self.standalone = "milvus standalone", Standalone()
            self.standalone.set_base_dir(str(data_dir))
            self.standalone.listen_port = self.port
            self.standalone.start()
            return
        self.kind = "milvus-lite server"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir),
                                      "--host", "127.0.0.1", "--port", str(self.port), "--max-workers", "1"],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120  # seconds when idle; a loaded machine needs more
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("milvus-lite server did not come up in 120 s")
                time.sleep(0.1)

    def stop(self):
        if self.standalone is not None:
            self.standalone.stop()
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    if MISSING:
        pytest.skip(f"{' and '.join(MISSING)} not installed: pip install 'ramm[milvus]'")
    server = MilvusServer(tmp_path_factory.mktemp("milvus-server") / "data")
    yield server
    server.stop()
