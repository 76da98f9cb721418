"""kill -9 a server while documents are being added: after a restart every acknowledged document is in
the memory exactly once, and none is half-written."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle, memory, port, wait_s: float = 60):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ramm", "serve", "--model", str(bundle / "gen"), "--memory", str(memory),
           "--device", "cpu", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not come up")


def test_acknowledged_documents_survive_kill_9_exactly_once(bundle, tmp_path):
    from fastapi.testclient import TestClient
    from serve_helpers import make_app

    from ramm.pipeline import RAMM
    from ramm.retrieval.memory import Memory

    memory = tmp_path / "memory"
    shutil.copytree(bundle / "memory", memory)
    before = set(Memory.load(memory).ids)
    proc, url = start_server(bundle, memory, free_port())
    acked, stop = [], threading.Event()

    def add_forever(worker):
        with httpx.Client(base_url=url, timeout=10) as c:
            for i in range(10_000):
                if stop.is_set():
                    return
                docs = [{"id": f"w{worker}-{i}-{j}", "text": f"document {worker} {i} {j}"} for j in range(3)]
                try:
                    r = c.post("/v1/memory/documents", json={"documents": docs})
                except httpx.TransportError:
                    return  # the server died mid-request: not acknowledged
                if r.status_code == 200:
                    acked.extend(r.json()["ids"])

    threads = [threading.Thread(target=add_forever, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 30 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # mid-add: requests are in flight
    proc.wait()
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) >= 30

    # restart: the server's own start-up path (Memory.load reconciles the index with the store)
    facade = RAMM.load(bundle / "gen", memory_dir=memory, device="cpu")
    with TestClient(make_app(facade)) as client:
        health = client.get("/healthz").json()
        hit = client.get("/v1/memory/search", params={"q": f"document {acked[-1][1:].replace('-', ' ')}", "k": 1})
    mem = Memory.load(memory)
    ids = mem.ids
    assert len(ids) == len(set(ids)) and set(acked) <= set(ids) and before <= set(ids)
    assert mem.index.ntotal == len(ids) == health["memory_documents"]
    for doc_id in set(ids) - before:  # every added document whole: the text it was sent with
        worker, i, j = doc_id[1:].split("-")
        assert mem.get(doc_id).text == f"document {worker} {i} {j}"
    assert hit.status_code == 200 and hit.json()["results"][0]["id"] == acked[-1]
