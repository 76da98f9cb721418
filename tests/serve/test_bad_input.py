"""Each kind of bad input gets its status and a message naming the problem; the server keeps serving."""
import base64
import io
import zlib

import numpy as np
import pytest
from PIL import Image

from ramm.corpus.document import encode_png

GOOD = encode_png(np.full((16, 16, 3), 200, np.uint8))


def bomb_png(side: int = 20000) -> bytes:
    """A valid PNG header claiming side x side pixels, its data a few KB of zlib'd zeros."""
    import struct

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = zlib.compress(b"\0" * (side + 1) * 64, 9)  # the first rows only: the header alone must refuse it
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def upload(client, data: bytes, name="x.png"):
    return client.post("/v1/captions", files={"file": (name, data, "image/png")}, data={"n": "1", "max_tokens": "4"})


def image_request(**overrides):
    return {"caption": "a emoji: red square", "n": 1, **overrides}


@pytest.mark.parametrize("body, field", [
    (image_request(caption=""), "caption"), (image_request(caption="   "), "caption"),
    (image_request(caption="x" * 501), "caption"), (image_request(n=0), "n"), (image_request(n=17), "n"),
    (image_request(k=-1), "k"), (image_request(k=99), "k"), (image_request(seed=-3), "seed"),
    (image_request(seed=2**40), "seed"), (image_request(guidance_scale=-1), "guidance_scale"),
    (image_request(guidance_scale=1e9), "guidance_scale"), (image_request(guidance=-1), "guidance"),
    (image_request(top_p=0), "top_p"), (image_request(top_p=1.5), "top_p"), (image_request(top_k=-1), "top_k"),
    (image_request(cd_k=0), "cd_k"), (image_request(cd_alpha=2), "cd_alpha"), (image_request(temperature=-1), "temperature"),
    (image_request(method="beam"), "method"), (image_request(path="/etc/passwd"), "path"), ({"n": 2}, "caption"),
])
def test_out_of_range_image_requests_are_422_naming_the_field(client, body, field):
    r = client.post("/v1/images", json=body)
    assert r.status_code == 422, r.text
    assert field in {str(part) for e in r.json()["detail"] for part in e["loc"]}


def test_malformed_json_is_422(client):
    r = client.post("/v1/images", content=b'{"caption": "a", "n": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "json" in r.text.lower()


def test_bad_uploads_are_400_or_413_naming_the_problem(client):
    r = upload(client, b"\0" * (64 * 1024 + 1))  # the test app's limit is 64 KiB
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = upload(client, b"this is not an image", "notes.txt")
    assert r.status_code == 400 and "notes.txt" in r.json()["detail"] and "not a readable image" in r.json()["detail"]
    r = upload(client, GOOD[: len(GOOD) // 2], "cut.png")
    assert r.status_code == 400 and "cut.png" in r.json()["detail"]
    r = upload(client, bomb_png(), "bomb.png")
    assert r.status_code == 400 and "image_too_large" in r.json()["detail"]
    big = io.BytesIO()
    Image.new("RGB", (300, 300)).save(big, "PNG")  # over the test app's 256x256 pixel limit, under its byte limit
    assert upload(client, big.getvalue(), "big.png").status_code == 400
    r = client.post("/v1/memory/search", files={"file": ("e.png", b"", "image/png")})
    assert r.status_code == 400


def test_a_streamed_body_over_the_limit_is_413(client):
    def chunks():
        for _ in range(80):
            yield b"x" * 1024
    r = client.post("/v1/images", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_bad_memory_documents(client):
    r = client.post("/v1/memory/documents", json={"documents": [{"id": "blank"}]})
    assert r.status_code == 422 and "needs a text, an image or both" in r.text
    assert client.post("/v1/memory/documents", json={"documents": []}).status_code == 422
    r = client.post("/v1/memory/documents", json={"documents": [{"id": "../../etc/x", "text": "t"}]})
    assert r.status_code == 422
    r = client.post("/v1/memory/documents", json={"documents": [{"text": "t", "image": "%%%not base64"}]})
    assert r.status_code == 400 and "documents[0].image" in r.json()["detail"] and "base64" in r.json()["detail"]
    bad_png = base64.b64encode(b"GIF89a").decode()
    r = client.post("/v1/memory/documents", json={"documents": [{"text": "t", "image": bad_png}]})
    assert r.status_code == 400 and "documents[0].image" in r.json()["detail"]
    r = client.post("/v1/memory/documents", json={"documents": [{"text": f"t{i}"} for i in range(65)]})
    assert r.status_code == 413


def test_adding_while_another_writer_holds_the_memory_is_503_naming_the_holder(client, facade):
    import os

    from ramm.retrieval.faiss_memory import writer_lock
    with writer_lock(facade.memory.root):  # as `ramm memory build` into the served memory would
        r = client.post("/v1/memory/documents", json={"documents": [{"id": "held", "text": "a held memory"}]})
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert f"being written by pid {os.getpid()}" in r.json()["detail"] and r.json()["holder_pid"] == str(os.getpid())
    r = client.post("/v1/memory/documents", json={"documents": [{"id": "held", "text": "a held memory"}]})
    assert r.status_code == 200 and r.json()["added"] == 1


def test_nan_guidance_is_422_naming_the_field(client):
    r = client.post("/v1/images", content=b'{"caption": "a emoji: red square", "guidance": NaN}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "guidance" in {str(p) for e in r.json()["detail"] for p in e["loc"]}


def test_gif_uploads_and_invisible_or_dot_only_fields_are_refused(client):
    gif = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 0, 0)).save(gif, "GIF")
    r = upload(client, gif.getvalue(), "anim.gif")
    assert r.status_code == 400 and "PNG or JPEG" in r.json()["detail"]
    assert client.post("/v1/images", json=image_request(caption="\u200b")).status_code == 422
    for doc in ({"id": "..", "text": "t"}, {"id": ".", "text": "t"}, {"text": "\u200b\u200d"}):
        assert client.post("/v1/memory/documents", json={"documents": [doc]}).status_code == 422, doc


def test_expected_refusals_are_not_logged_as_errors(client, caplog):
    import logging
    with caplog.at_level(logging.INFO):
        r = upload(client, b"this is not an image", "notes.txt")
    assert r.status_code == 400
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR or rec.exc_info]


def test_bad_search_queries_are_422(client):
    assert client.get("/v1/memory/search", params={"q": ""}).status_code == 422
    assert client.get("/v1/memory/search", params={"q": "x", "k": 0}).status_code == 422
    assert client.get("/v1/memory/search").status_code == 422


def test_the_server_still_serves_after_all_of_them(client):
    test_out_of_range_image_requests_are_422_naming_the_field(client, image_request(n=99), "n")
    test_malformed_json_is_422(client)
    test_bad_uploads_are_400_or_413_naming_the_problem(client)
    test_bad_memory_documents(client)
    assert client.get("/healthz").json()["status"] == "ok"
    assert len(client.post("/v1/images", json=image_request(n=2)).json()["samples"]) == 2
    assert upload(client, GOOD).status_code == 200
