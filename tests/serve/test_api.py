"""The API on a tiny random bundle: every endpoint answers with its outputs and the retrieved evidence."""
import base64
import io
from dataclasses import asdict

import numpy as np
from PIL import Image

from ramm.config import DecodeConfig
from ramm.corpus.document import encode_png

RED = np.full((16, 16, 3), 255, np.uint8)
RED[3:-3, 3:-3] = (220, 30, 30)


def decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_images_returns_n_pngs_best_first_and_the_evidence(client):
    r = client.post("/v1/images", json={"caption": "a emoji: red square", "n": 3, "k": 2, "method": "cfg"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["samples"]) == 3 and all(decode(s["image"]).shape == (16, 16, 3) for s in out["samples"])
    scores = [s["score"] for s in out["samples"]]
    assert scores == sorted(scores, reverse=True)
    assert len(out["retrieved"]) == 2
    for doc in out["retrieved"]:
        assert doc["id"] and doc["text"].endswith("square") and decode(doc["thumbnail"]).shape == (16, 16, 3)
    sims = [d["similarity"] for d in out["retrieved"]]
    assert sims == sorted(sims, reverse=True)


def test_a_request_decoded_alone_is_the_facades_generate_image(client, facade):
    body = {"caption": "b emoji: blue square", "n": 2, "k": 1, "seed": 5}
    served = [decode(s["image"]) for s in client.post("/v1/images", json=body).json()["samples"]]
    direct = facade.generate_image("b emoji: blue square", n=2, k=1, seed=5, guidance_scale=3.0)
    assert all(np.array_equal(a, b) for a, b in zip(served, direct.outputs))


def test_captions_from_an_upload_with_evidence(client):
    r = client.post("/v1/captions", files={"file": ("red.png", encode_png(RED), "image/png")},
                    data={"n": "2", "max_tokens": "6", "k": "1"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["samples"]) == 2 and all(isinstance(s["text"], str) for s in out["samples"])
    assert len(out["retrieved"]) == 1


def test_memory_search_by_text_and_by_image(client):
    r = client.get("/v1/memory/search", params={"q": "a emoji: green square", "k": 3})
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    r = client.post("/v1/memory/search", files={"file": ("q.png", encode_png(RED), "image/png")}, data={"k": "2"})
    assert r.status_code == 200 and len(r.json()["results"]) == 2


def test_added_documents_are_retrieved_by_the_next_request_and_are_on_disk(client, facade):
    from ramm.retrieval.memory import Memory
    before = len(facade.memory)
    img = base64.b64encode(encode_png(RED)).decode()
    docs = [{"text": "c emoji: crimson lantern square", "image": img}, {"id": "only-text", "text": "violet kite"}]
    r = client.post("/v1/memory/documents", json={"documents": docs})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["added"] == 2 and out["memory_size"] == before + 2 and out["ids"][1] == "only-text"
    again = client.post("/v1/memory/documents", json={"documents": docs}).json()  # a retried add is a no-op
    assert again["added"] == 0 and again["already_present"] == 2 and again["ids"] == out["ids"]
    hits = client.get("/v1/memory/search", params={"q": "violet kite", "k": 1}).json()["results"]
    assert hits[0]["id"] == "only-text"
    evidence = client.post("/v1/images", json={"caption": "violet kite", "n": 1, "k": 1}).json()["retrieved"]
    assert evidence[0]["id"] == "only-text"
    on_disk = Memory.load(facade.memory.root)
    assert set(out["ids"]) <= set(on_disk.ids) and len(on_disk) == before + 2


def test_sft_endpoints_name_the_missing_capability(client):
    img = base64.b64encode(encode_png(RED)).decode()
    r = client.post("/v1/edits", json={"instruction": "make it blue", "image": img})
    assert r.status_code == 400 and "instruction-tuned" in r.json()["detail"] and "edit_image" in r.json()["detail"]
    r = client.post("/v1/answers", json={"question": "what colour?"})
    assert r.status_code == 400 and "RAMM.answer" in r.json()["detail"]
    library = asdict(DecodeConfig())  # the test bundle records no decoding: the library's defaults
    assert client.get("/v1/capabilities").json() == {"images": True, "captions": True, "memory": True, "k": 2,
                                                     "decode": {"image": library, "caption": library},
                                                     "edit": False, "answer": False}


def test_health_metrics_page_and_openapi(client):
    assert client.get("/healthz").json()["status"] == "ok"
    client.post("/v1/images", json={"caption": "a emoji: red square", "n": 1})
    text = client.get("/metrics").text
    for name in ("ramm_requests_total{", "ramm_request_latency_seconds_bucket{", "ramm_queue_depth",
                 "ramm_batch_requests_bucket", "ramm_batch_rows_bucket", "ramm_memory_documents"):
        assert name in text, name
    assert 'ramm_requests_total{route="/v1/images",status="200"}' in text
    page = client.get("/").text
    for element in ('id="image-form"', 'id="caption-form"', 'id="search-form"', 'id="add-form"', 'id="error"'):
        assert element in page
    assert "/v1/images" in client.get("/openapi.json").json()["paths"]


def test_sft_endpoints_serve_a_model_that_has_the_capability(facade):
    import copy

    from fastapi.testclient import TestClient
    from serve_helpers import make_app

    from ramm.pipeline import Result
    tuned = copy.copy(facade)
    tuned.instruction_tuned = True
    tuned.edit_image = lambda pixels, instruction, seed=0: Result([255 - pixels], [], [0.5], [])
    tuned.answer = lambda image, question: Result([f"{question} -> red"], [], [], [])  # RAMM.answer's signature
    img = base64.b64encode(encode_png(RED)).decode()
    with TestClient(make_app(tuned)) as client:
        edit = client.post("/v1/edits", json={"instruction": "invert", "image": img})
        assert edit.status_code == 200, edit.text
        assert np.array_equal(decode(edit.json()["samples"][0]["image"]), 255 - RED)
        answer = client.post("/v1/answers", json={"question": "what colour?", "image": img}).json()
        assert answer["samples"][0]["text"] == "what colour? -> red"
        assert client.get("/v1/capabilities").json()["edit"] is True
