"""The HTTP API and web page over one `RAMM` facade (FastAPI; OpenAPI page at /docs).

Every model or memory call goes through the `DynamicBatcher`: one worker thread, a bounded queue,
deadlines; image requests with the same decoding settings share one decode. Uploads are decoded on
other threads, so nothing heavy runs on the event loop. Errors map to status codes here: bad input
400 / 413 / 422, a full queue 503 with Retry-After, a missed deadline 504.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import hmac
import logging
import math
import time
from contextlib import asynccontextmanager
from dataclasses import astuple
from pathlib import Path
from typing import Literal, Optional

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ramm.config import METHODS, DecodeConfig, ServeConfig, to_dict
from ramm.corpus.document import (MAX_IMAGE_PIXELS, BadItem, Document, ImageSegment, TextSegment, decode_image_bytes,
                                  encode_png)
from ramm.pipeline import RAMM, image_size
from ramm.retrieval.memory import Memory
from ramm.serve.batcher import Cancelled, DeadlineExceeded, DynamicBatcher, QueueFull
from ramm.serve.schemas import (AnswerRequest, DocumentsAdded, DocumentsIn, EditRequest, Evidence, ImageRequest, Sample,
                                SearchResponse, TaskResponse)
from ramm.utils import Locked

log = logging.getLogger(__name__)
PAGE = Path(__file__).with_name("static") / "index.html"
OPEN_PATHS = ("/healthz",)  # the only path served without the API key
# what a loaded model must offer for the SFT endpoints: (facade method, capability flag)
CAPABILITIES = {"edit": ("edit_image", "instruction_tuned"), "answer": ("answer", "instruction_tuned")}


class CapabilityMissing(ValueError):
    pass


def has_capability(ramm, task: str) -> bool:
    method, flag = CAPABILITIES[task]
    return callable(getattr(ramm, method, None)) and bool(getattr(ramm, flag, False))


def png_b64(pixels) -> str:
    return base64.b64encode(encode_png(pixels)).decode("ascii")


class Engine:
    """The loaded model and what runs a batch of one task on it (on the batcher's worker thread)."""

    def __init__(self, cfg: ServeConfig, ramm):
        """Runs on the worker thread: the memory's SQLite connection must be opened by the thread using it."""
        if ramm is None:
            ramm = RAMM.load(cfg.model, memory_dir=cfg.memory, device=cfg.device)
        elif ramm.memory is not None:  # a caller's facade: same model, the memory reopened on this thread
            ramm = copy.copy(ramm)
            ramm.memory = Memory.load(ramm.memory.root, encoder=ramm.memory.encoder)
        self.cfg, self.ramm = cfg, ramm
        self.image_size = image_size(ramm.format.image_tokenizer)
        self.last_batch_s = 0.0
        self._codes: dict[str, list] = {}  # document id -> VQ codes per segment (None for text)
        self.memory_size = len(ramm.memory) if ramm.memory is not None else 0  # read by the event loop

    def decode_image(self, data: bytes, item: str):
        """Uploaded bytes -> uint8 (size, size, 3); the pixel count is checked from the header first."""
        if not data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
            raise ValueError(f"{item}: not a readable image (the API takes PNG or JPEG)")
        try:
            return decode_image_bytes(data, item, self.image_size,
                                      max_pixels=min(self.cfg.max_image_pixels, MAX_IMAGE_PIXELS))
        except BadItem as e:
            if e.reason == "image_too_large":
                raise ValueError(f"{item}: image_too_large ({e.detail})") from None
            raise ValueError(f"{item}: not a readable image ({e.detail or e.reason})") from None

    def decode_b64_image(self, text: str, item: str):
        data = text.split(",", 1)[1] if text.startswith("data:") else text
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{item}: not valid base64") from None
        return self.decode_image(raw, item)

    def k_for(self, k: int | None) -> int:
        """A request's k; left out, as the bundle trained (a vanilla bundle retrieves nothing)."""
        return self.ramm.default_k if k is None else k

    def evidence(self, query, k: int | None) -> list[tuple]:
        """(document, similarity) for one query, the documents carrying their VQ codes."""
        k = self.k_for(k)
        if k == 0 or self.ramm.memory is None:
            return []
        return [(self._with_codes(d), s) for d, s in self.ramm.memory.search(query, k)]

    def text_evidence(self, captions: list[str], ks: list[int]) -> list[list[tuple]]:
        """`evidence` for many captions with one text-encoder call (Memory.search's rule, batched)."""
        memory, want = self.ramm.memory, [i for i, k in enumerate(ks) if k]
        out: list[list[tuple]] = [[] for _ in captions]
        if memory is None or not want:
            return out
        hits = memory.neighbours(memory.encoder.embed_text([captions[i] for i in want]), max(ks[i] for i in want))
        for i, row in zip(want, hits):
            out[i] = [(self._with_codes(memory.get(doc_id)), s) for doc_id, s in row[:ks[i]]]
        return out

    def _with_codes(self, doc):
        """The document with its images' VQ codes, computed once per document id: every prompt that
        retrieves it would otherwise re-encode its pixels (memory documents never change under an id)."""
        if doc.id not in self._codes:
            if len(self._codes) > 100_000:
                self._codes.clear()
            self._codes[doc.id] = [self.ramm.format.image_codes(s) if isinstance(s, ImageSegment) else None
                                   for s in doc.segments]
        segments = [ImageSegment(pixels=s.pixels, tokens=c) if c is not None else s
                    for s, c in zip(doc.segments, self._codes[doc.id])]
        return Document(doc.id, segments, source=doc.source, metadata=doc.metadata)

    def run(self, key, payloads: list, check) -> list:
        start = time.monotonic()
        check()
        try:
            return getattr(self, f"_{key[0]}")(key, payloads, check)
        finally:
            self.last_batch_s = time.monotonic() - start

    def _images(self, key, reqs: list[ImageRequest], check) -> list:
        hits = self.text_evidence([r.caption for r in reqs], [self.k_for(r.k) for r in reqs])
        try:
            results = self.ramm.generate_images(
                [r.caption for r in reqs], [r.n for r in reqs], retrieved=[[d for d, _ in h] for h in hits],
                decode=DecodeConfig(*key[1]), seed=reqs[0].seed, batch_size=self.cfg.max_batch_rows,
                progress=lambda _: check())
        except ValueError:
            if len(reqs) == 1:
                raise
            out = []  # one bad request (e.g. a prompt past the context) fails alone, not its batch mates
            for r in reqs:
                try:
                    out += self._images(key, [r], check)
                except ValueError as e:
                    out.append(e)
            return out
        return [_task_response([Sample(image=png_b64(im), score=s) for im, s in _scored(res)], h, len(reqs))
                for res, h in zip(results, hits)]

    def _captions(self, key, payloads: list[dict], check) -> list:
        out = []
        for p in payloads:
            check()
            hits = self.evidence(p["pixels"], p["k"])
            res = self.ramm.caption_image(p["pixels"], n=p["n"], retrieved=[d for d, _ in hits], seed=p["seed"],
                                          max_new_tokens=p["max_tokens"],
                                          **({"method": p["method"]} if p["method"] else {}))
            out.append(_task_response([Sample(text=t, score=s) for t, s in _scored(res)], hits, 1))
        return out

    def _search(self, key, payloads: list[dict], check) -> list:
        if self.ramm.memory is None:
            raise ValueError("no memory loaded: start the server with --memory DIR")
        return [SearchResponse(results=[_evidence(d, s) for d, s in self.ramm.memory.search(p["query"], p["k"])])
                for p in payloads]

    def _add(self, key, payloads: list[list], check) -> list:
        if self.ramm.memory is None:
            raise ValueError("no memory loaded: start the server with --memory DIR")
        out = []
        for docs in payloads:  # Memory.add commits the store, then saves the index: acknowledged = on disk
            stats = self.ramm.memory.add(docs)
            self.memory_size = len(self.ramm.memory)
            out.append(DocumentsAdded(ids=[d.id for d in docs], added=stats["added"],
                                      already_present=stats["already_present"], memory_size=len(self.ramm.memory)))
        return out

    def _edit(self, key, payloads: list[dict], check) -> list:
        return [_result_response(self.ramm.edit_image(p["pixels"], p["instruction"], seed=p["seed"]))
                for p in payloads]

    def _answer(self, key, payloads: list[dict], check) -> list:
        return [_result_response(self.ramm.answer(p["pixels"], p["question"]))
                for p in payloads]


def _scored(res):
    return zip(res.outputs, res.scores or [None] * len(res.outputs))


def _result_response(res) -> TaskResponse:
    """A facade `Result` of images or texts (the SFT tasks') as the API's answer."""
    samples = [Sample(image=png_b64(o), score=s) if hasattr(o, "shape") else Sample(text=str(o), score=s)
               for o, s in _scored(res)]
    return _task_response(samples, [(d, None) for d in res.retrieved], 1)


def _evidence(doc, similarity: float | None) -> Evidence:
    thumb = png_b64(doc.image) if doc.image is not None else None
    return Evidence(id=doc.id, text=doc.text, thumbnail=thumb, similarity=None if similarity is None else float(similarity))


def _task_response(samples, hits, batch_requests: int) -> TaskResponse:
    return TaskResponse(samples=samples, retrieved=[_evidence(d, s) for d, s in hits], batch_requests=batch_requests)


class _Metrics:
    def __init__(self, batcher_depth, memory_size):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("ramm_requests", "HTTP requests", ["route", "status"], registry=r)
        self.latency = Histogram("ramm_request_latency_seconds", "request latency", ["route"], registry=r,
                                 buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        Gauge("ramm_queue_depth", "requests waiting for the model", registry=r).set_function(batcher_depth)
        Gauge("ramm_memory_documents", "documents in the memory", registry=r).set_function(memory_size)
        self.batch_requests = Histogram("ramm_batch_requests", "requests per model batch", registry=r,
                                        buckets=(1, 2, 4, 8, 16, 32, 64))
        self.batch_rows = Histogram("ramm_batch_rows", "samples per model batch", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))

    def on_batch(self, requests: int, rows: int) -> None:
        self.batch_requests.observe(requests)
        self.batch_rows.observe(rows)


class _BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413, whether announced or streamed. The body
    is read up front (at most `limit` bytes held), so no handler ever starts on a request it would refuse."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._refuse(scope, send)
        body, more = [], True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":  # the client went away
                return
            body.append(msg.get("body", b""))
            more = msg.get("more_body", False)
            if sum(map(len, body)) > self.limit:
                return await self._refuse(scope, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, send):
        response = JSONResponse({"detail": f"request body over the limit of {self.limit} bytes"}, 413)
        await response(scope, None, send)


def create_app(cfg: ServeConfig, ramm=None) -> FastAPI:
    """The app; `ramm` (a loaded facade) skips loading `cfg.model` (tests pass their tiny one)."""
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app):
        batcher = DynamicBatcher(lambda *a: state["engine"].run(*a), max_rows=cfg.max_batch_rows if cfg.batching else 1,
                                 max_wait_s=cfg.max_wait_ms / 1000 if cfg.batching else 0.0,
                                 max_queue=cfg.max_queue, on_batch=metrics.on_batch)
        engine = await asyncio.get_running_loop().run_in_executor(batcher.executor, Engine, cfg, ramm)
        state.update(engine=engine, batcher=batcher)
        await batcher.start()
        log.info("serving %s (memory: %s)", cfg.model, engine.ramm.memory.root if engine.ramm.memory is not None else None)
        yield
        await batcher.stop()

    metrics = _Metrics(lambda: state["batcher"].depth if "batcher" in state else 0,
                       lambda: state["engine"].memory_size if "engine" in state else 0)
    app = FastAPI(title="ramm", description="retrieval-augmented multimodal generation with its evidence",
                  lifespan=lifespan)
    page = PAGE.read_text()

    async def submit(key, payload, rows: int = 1):
        return await state["batcher"].submit(key, payload, rows, cfg.timeout_s)

    @app.middleware("http")
    async def guard_and_measure(request: Request, call_next):
        start = time.monotonic()
        if cfg.api_key and request.url.path not in OPEN_PATHS and not _key_ok(request, cfg.api_key):
            response = JSONResponse({"detail": "missing or wrong API key (X-API-Key or Authorization: Bearer)"}, 401)
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.monotonic() - start)
        return response

    app.add_middleware(_BodyLimit, limit=cfg.max_upload_bytes)

    @app.exception_handler(QueueFull)
    async def _full(request, e):
        wait = max(1, math.ceil(2 * state["engine"].last_batch_s))
        return JSONResponse({"detail": f"server busy: {e}"}, 503, headers={"Retry-After": str(wait)})

    @app.exception_handler(Locked)
    async def _locked(request, e):  # another process writes the memory (`ramm memory build` / add): not our fault
        return JSONResponse({"detail": str(e), "holder_pid": e.pid}, 503, headers={"Retry-After": "5"})

    @app.exception_handler(DeadlineExceeded)
    @app.exception_handler(Cancelled)
    async def _late(request, e):
        return JSONResponse({"detail": f"request cancelled: {e}"}, 504)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e):  # FastAPI's own answer, less each error's input (a NaN is not JSON)
        errors = [{k: v for k, v in err.items() if k in ("type", "loc", "msg")} for err in e.errors()]
        return JSONResponse({"detail": errors}, 422)

    @app.exception_handler(ValueError)
    async def _bad(request, e):
        return JSONResponse({"detail": str(e)}, 400)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return page

    @app.get("/healthz")
    async def healthz():
        engine = state.get("engine")
        return {"status": "ok" if engine else "starting", "queue": state["batcher"].depth if engine else 0,
                "memory_documents": engine.memory_size if engine else 0}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/capabilities")
    async def capabilities():
        facade = state["engine"].ramm
        return {"images": True, "captions": True, "memory": facade.memory is not None,
                "k": state["engine"].k_for(None),  # documents a request retrieves when it leaves k out
                "decode": to_dict(facade.decode),  # decoding settings a request uses for the fields it leaves out
                **{task: has_capability(facade, task) for task in CAPABILITIES}}

    @app.post("/v1/images", response_model=TaskResponse)
    async def images(req: ImageRequest):
        settings = state["engine"].ramm.decode.image.with_overrides("request", **req.overrides())
        return await submit(("images", astuple(settings)), req, rows=req.n)  # one decode per settings

    @app.post("/v1/captions", response_model=TaskResponse)
    async def captions(file: UploadFile = File(description="PNG or JPEG"), n: int = Form(4, ge=1, le=16),
                       method: Optional[Literal[tuple(m for m in METHODS if m != "mix")]] = Form(
                           None, description="decoding method (left out: the bundle's for captions)"),
                       seed: int = Form(0, ge=0, le=2**31 - 1),
                       k: Optional[int] = Form(None, ge=0, le=16), max_tokens: int = Form(32, ge=1, le=128)):
        pixels = await asyncio.to_thread(state["engine"].decode_image, await file.read(), file.filename or "upload")
        payload = dict(pixels=pixels, n=n, method=method, seed=seed, k=k, max_tokens=max_tokens)
        return await submit(("captions",), payload, rows=n)

    @app.get("/v1/memory/search", response_model=SearchResponse)
    async def search_text(q: str = Query(min_length=1, max_length=500), k: int = Query(5, ge=1, le=50)):
        return await submit(("search",), dict(query=q, k=k))

    @app.post("/v1/memory/search", response_model=SearchResponse)
    async def search_image(file: UploadFile = File(description="PNG or JPEG"), k: int = Form(5, ge=1, le=50)):
        pixels = await asyncio.to_thread(state["engine"].decode_image, await file.read(), file.filename or "upload")
        return await submit(("search",), dict(query=pixels, k=k))

    @app.post("/v1/memory/documents", response_model=DocumentsAdded)
    async def add_documents(body: DocumentsIn):
        if len(body.documents) > cfg.max_documents:
            raise HTTPException(413, f"{len(body.documents)} documents in one request (limit {cfg.max_documents})")
        docs = []
        for i, d in enumerate(body.documents):
            segments = [TextSegment(d.text)] if d.text else []
            if d.image:
                pixels = await asyncio.to_thread(state["engine"].decode_b64_image, d.image, f"documents[{i}].image")
                segments.append(ImageSegment(pixels=pixels))
            content_id = f"user-{Document('new', segments).content_hash()[:16]}"
            docs.append(Document(d.id or content_id, segments, source="api"))
        return await submit(("add",), docs)

    @app.post("/v1/edits", response_model=TaskResponse)
    async def edits(req: EditRequest):
        _require(state["engine"].ramm, "edit")
        pixels = await asyncio.to_thread(state["engine"].decode_b64_image, req.image, "image")
        return await submit(("edit",), dict(pixels=pixels, instruction=req.instruction, seed=req.seed))

    @app.post("/v1/answers", response_model=TaskResponse)
    async def answers(req: AnswerRequest):
        _require(state["engine"].ramm, "answer")
        pixels = None
        if req.image:
            pixels = await asyncio.to_thread(state["engine"].decode_b64_image, req.image, "image")
        return await submit(("answer",), dict(pixels=pixels, question=req.question, seed=req.seed))

    return app


def _require(facade, task: str) -> None:
    if not has_capability(facade, task):
        method, flag = CAPABILITIES[task]
        raise CapabilityMissing(f"the loaded model cannot serve /v1/{task}s: it needs an instruction-tuned "
                                f"generator (RAMM.{method} with {flag}); train one with the SFT recipe")


def _key_ok(request: Request, key: str) -> bool:
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        given = given or auth[7:]
    return hmac.compare_digest(given.encode(), key.encode())
