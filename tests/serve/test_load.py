"""A live server under concurrent load: batching, a full queue (503 + Retry-After), deadlines (504), API keys."""
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from serve_helpers import LiveServer, make_app


def burst(url, bodies, workers=16):
    with httpx.Client(base_url=url, timeout=60) as c, ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda b: c.post("/v1/images", json=b), bodies))


def test_concurrent_requests_are_batched_and_none_is_lost(facade):
    bodies = [{"caption": f"a emoji: {c} square", "n": 2, "seed": i} for i, c in enumerate(["red", "blue"] * 8)]
    with LiveServer(make_app(facade, max_wait_ms=20)) as server:
        responses = burst(server.url, bodies)
        metrics = httpx.get(server.url + "/metrics").text
    assert [r.status_code for r in responses] == [200] * 16
    assert all(len(r.json()["samples"]) == 2 for r in responses)
    assert max(r.json()["batch_requests"] for r in responses) > 1
    count = float(next(line.split()[1] for line in metrics.splitlines() if line.startswith("ramm_batch_requests_count")))
    assert count < 16  # fewer decodes than requests


def test_a_full_queue_answers_503_with_retry_after_and_recovers(facade):
    bodies = [{"caption": "b emoji: green square", "n": 16, "method": "cfg"}] * 16
    with LiveServer(make_app(facade, batching=False, max_queue=1)) as server:
        responses = burst(server.url, bodies, workers=16)
        busy = [r for r in responses if r.status_code == 503]
        assert busy and all(int(r.headers["retry-after"]) >= 1 and "busy" in r.json()["detail"] for r in busy)
        assert {r.status_code for r in responses} == {200, 503}
        assert httpx.post(server.url + "/v1/images", json=bodies[0], timeout=60).status_code == 200


def test_a_request_past_its_deadline_is_504(facade):
    with TestClient(make_app(facade, timeout_s=0.001)) as client:
        r = client.post("/v1/images", json={"caption": "a emoji: red square", "n": 8})
        assert r.status_code == 504 and "cancelled" in r.json()["detail"]
        assert client.get("/healthz").status_code == 200


def test_an_api_key_guards_every_path_but_healthz(facade, monkeypatch):
    from ramm.serve import ServeConfig
    monkeypatch.delenv("RAMM_API_KEY", raising=False)
    with pytest.raises(ValueError, match="needs an API key"):
        ServeConfig(model="m", host="0.0.0.0")
    monkeypatch.setenv("RAMM_API_KEY", "from-env")
    assert ServeConfig(model="m", host="0.0.0.0").api_key == "from-env"
    with TestClient(make_app(facade, api_key="s3cret")) as client:
        assert client.get("/healthz").status_code == 200
        for path in ("/", "/metrics", "/docs", "/v1/memory/search?q=x"):
            assert client.get(path).status_code == 401, path
        assert client.get("/", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/v1/memory/search?q=x", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200
