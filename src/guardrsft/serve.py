"""`guardrsft serve`: the guard as an OpenAI-compatible moderation endpoint (docs/SERVE.md).

    app = create_app(guard, name="guardrsft")     # FastAPI; run_server(app, host, port) serves it

One worker thread owns the guard (a Guard is not thread-safe): requests put their items in a
bounded queue, the worker takes everything waiting (up to `max_batch` items) and answers it
with `Guard.classify` calls of at most `max_batch` items per policy set, so concurrent requests
share batches (the slot engine's continuous batching on a GPU). On the CPU the default
`max_batch` is 1 (default_max_batch): padded batches there are not batch-invariant, so each
item is answered alone and its answer never depends on its neighbours. Greedy answers are
cached by the guard (in memory, and in `cache_path` when given), so a repeated input costs nothing.

Scores: a result with `scores` {policy: P(UNSAFE)} gives category_scores; otherwise a policy
scores 1.0 when its verdict is UNSAFE and 0.0 when it is SAFE or has none (a parse error,
listed in the result's `parse_errors`; /v1/classify gives the full answer).
"""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import math
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

# OpenAI's moderation categories (the `openai` client's Categories model) ...
OPENAI_CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
                     "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
                     "sexual/minors", "violence", "violence/graphic")
# ... and the one each of params.yaml's policies answers for (the same correspondence as the
# openai_moderation benchmark's policy_columns). Categories no policy answers for are always
# false / 0.0; every policy also appears under its own id.
POLICY_CATEGORY = {"hate_speech": "hate", "violence": "violence", "self_harm": "self-harm",
                   "sexual_minors": "sexual/minors", "harassment": "harassment", "illegal": "illicit"}


@dataclass
class Limits:
    max_items: int = 64           # texts per request
    max_chars: int = 8000         # characters per text (content + response), as classify-file
    max_body_bytes: int = 4 << 20  # request body
    max_queue: int = 1024         # items waiting for the worker; more is answered 503
    max_batch: Optional[int] = None  # items per classify call; None: default_max_batch(guard)
    timeout_s: float = 120.0      # per request, queueing included
    cache_entries: int = 200_000  # answers kept in memory (oldest dropped first)


# Items per classify call on a GPU (the slot engine, vLLM): its answers were measured the same at 1,
# 64 and 512 concurrent clients as in one call of all texts (docs/BENCHMARKS.md).
GPU_MAX_BATCH = 256


def default_max_batch(guard) -> int:
    """1 where the guard decodes with transformers' padded `generate` (the CPU): the padding changes
    the float summation order of a batch, which flipped 1 of 8 texts' verdicts of the trained cpu
    model (docs/SERVE.md), so each item is decoded alone there (batch-invariant by construction)."""
    return 1 if guard.backend == "plain" else GPU_MAX_BATCH


def resolve_limits(guard, limits: Optional[Limits]) -> Limits:
    """`limits` with max_batch filled in for this guard (an explicit value wins)."""
    limits = limits or Limits()
    return dataclasses.replace(limits, max_batch=limits.max_batch or default_max_batch(guard))


class ServeError(Exception):
    """An error answered as OpenAI's error JSON with this HTTP status."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}


class Batcher:
    """The worker thread that owns the guard and the bounded queue in front of it."""

    def __init__(self, guard, limits: Limits):
        self.guard, self.limits = guard, resolve_limits(guard, limits)
        self.q: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.pending = 0  # items queued, not yet taken by the worker
        self.seconds_per_item = 0.0  # of the last generated batch (for Retry-After)
        self.stats = {"requests": 0, "items": 0, "batches": 0, "largest_batch": 0}
        self._too_long: dict = {}
        self.thread = threading.Thread(target=self._run, name="guardrsft-serve-worker", daemon=True)
        self.thread.start()

    def submit(self, items: list[dict], policies: Optional[list[str]]) -> Future:
        fut: Future = Future()
        with self.lock:
            if self.pending + len(items) > self.limits.max_queue:
                wait = max(1, min(60, math.ceil(self.pending * self.seconds_per_item)))
                raise ServeError(503, f"the queue is full ({self.pending} items waiting, --max-queue "
                                      f"{self.limits.max_queue}); retry after {wait} s",
                                 headers={"Retry-After": str(wait)})
            self.pending += len(items)
        self.q.put((items, policies, fut))
        return fut

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()

    def _take(self) -> Optional[list]:
        """Everything waiting (at least one job, at most max_batch items unless one job is larger)."""
        first = self.q.get()
        if first is None:
            return None
        jobs, n = [first], len(first[0])
        while n < self.limits.max_batch:
            try:
                job = self.q.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self.q.put(None)  # stop after this batch
                break
            jobs.append(job)
            n += len(job[0])
        with self.lock:
            self.pending -= n
        # a request that timed out while queued is not answered
        return [j for j in jobs if j[2].set_running_or_notify_cancel()]

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            groups: dict = {}
            for job in jobs:
                groups.setdefault(tuple(job[1]) if job[1] else None, []).append(job)
            for policies, group in groups.items():
                try:
                    self._answer(list(policies) if policies else None, group)
                except Exception as e:  # noqa: BLE001 (each request gets the error, the worker lives on)
                    for _, _, fut in group:
                        if not fut.done():
                            fut.set_exception(e)
            self._trim_cache()

    def _answer(self, policies: Optional[list[str]], group: list) -> None:
        from .classify_file import _too_long
        from .guard import render_content

        pols = policies or list(self.guard.p.policies)
        key = tuple(pols)
        if key not in self._too_long:
            self._too_long[key] = _too_long(self.guard, pols)
        ok = []
        for items, _, fut in group:
            # the context window is checked here, where the tokenizer is used by one thread only
            why = next(((i, w) for i, it in enumerate(items) if (w := self._too_long[key](render_content(it)))), None)
            if why:
                fut.set_exception(ServeError(413, f"input[{why[0]}]: {why[1]}; shorten it", param=f"input[{why[0]}]"))
            else:
                ok.append((items, fut))
        if not ok:
            return
        flat = [it for items, _ in ok for it in items]
        t0, results, generated, size = time.time(), [], 0, self.limits.max_batch
        # at most max_batch items per call, also within one request (max_batch 1: each item alone)
        for b in range(0, len(flat), size):
            results += self.guard.classify(flat[b:b + size], policies=pols)
            generated += self.guard.last_stats.get("generated_pairs", 0)
            self.stats["batches"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(flat[b:b + size]))
        if generated:
            self.seconds_per_item = (time.time() - t0) / len(flat)
        self.stats["requests"] += len(ok)
        self.stats["items"] += len(flat)
        at = 0
        for items, fut in ok:
            fut.set_result(results[at:at + len(items)])
            at += len(items)

    def _trim_cache(self) -> None:
        """Bound the guard's in-memory answers (a server runs for months); the file keeps them all."""
        cache = self.guard.cache
        if len(cache) > self.limits.cache_entries * 1.1:
            self.guard.cache = dict(list(cache.items())[-self.limits.cache_entries:])


# ------------------------------------------------------------------ request parsing
def _items(body, limits: Limits, exchanges: bool) -> list[dict]:
    """`input` as a string, or a list of strings (also OpenAI's {"type": "text", "text"} parts;
    /v1/classify also takes {"content", "response"} objects) -> guard items."""
    if not isinstance(body, dict):
        raise ServeError(400, 'the body must be a JSON object like {"input": "text to check"}')
    if "input" not in body:
        raise ServeError(400, "`input` is missing: give a string or a list of strings", param="input")
    raw = body["input"]
    one = isinstance(raw, (str, dict))
    raw = [raw] if one else raw
    if not isinstance(raw, list):
        raise ServeError(400, f"`input` must be a string or a list of strings, not {type(body['input']).__name__}",
                         param="input")
    if not raw:
        raise ServeError(400, "`input` is an empty list: give at least one text", param="input")
    if len(raw) > limits.max_items:
        raise ServeError(413, f"`input` has {len(raw)} items; the limit is {limits.max_items} per request "
                              "(--max-items): split the request", param="input")
    items = []
    for i, x in enumerate(raw):
        where = "input" if one else f"input[{i}]"
        if isinstance(x, dict) and x.get("type") == "text" and exchanges is False:
            x = x.get("text")
        if isinstance(x, dict) and exchanges:
            item = {"content": x.get("content"), "response": x.get("response")}
        elif isinstance(x, str):
            item = {"content": x, "response": None}
        else:
            kind = "an object with `content` (and optionally `response`)" if exchanges else '{"type": "text", "text"}'
            raise ServeError(400, f"`{where}` must be a string or {kind}; got {json.dumps(x)[:80]}", param=where)
        for f in ("content", "response"):
            v = item[f]
            if f == "response" and v is None:
                continue
            if not isinstance(v, str):
                raise ServeError(400, f"`{where}.{f}` must be a string", param=where)
            if not v.strip():
                raise ServeError(400, f"`{where}` is empty: give non-blank text", param=where)
        size = len(item["content"]) + len(item["response"] or "")
        if size > limits.max_chars:
            raise ServeError(413, f"`{where}` has {size} characters; the limit is {limits.max_chars} per item "
                                  "(--max-chars)", param=where)
        items.append(item)
    return items


def _policies(body: dict, known) -> Optional[list[str]]:
    pol = body.get("policies")
    if pol is None:
        return None
    if not isinstance(pol, list) or not pol or not all(isinstance(q, str) for q in pol):
        raise ServeError(400, "`policies` must be a non-empty list of policy ids", param="policies")
    unknown = [q for q in pol if q not in known]
    if unknown:
        raise ServeError(400, f"unknown policy {unknown[0]!r}; known: {', '.join(known)}", param="policies")
    return list(dict.fromkeys(pol))


# ------------------------------------------------------------------ answers
def scores_of(res: dict) -> dict[str, float]:
    """P(UNSAFE) per policy where the guard gives one, else 1.0 for UNSAFE and 0.0 otherwise."""
    given = res.get("scores") or {}
    return {q: float(given[q]) if given.get(q) is not None else (1.0 if v == "UNSAFE" else 0.0)
            for q, v in res["verdicts"].items()}


def moderation(res: dict) -> dict:
    """One guard result as an OpenAI moderation result (plus the guard's own policy ids)."""
    scores = scores_of(res)
    cats = {c: False for c in OPENAI_CATEGORIES}
    cat_scores = {c: 0.0 for c in OPENAI_CATEGORIES}
    for q, v in res["verdicts"].items():
        c = POLICY_CATEGORY.get(q)
        if c:
            cats[c] = cats[c] or v == "UNSAFE"
            cat_scores[c] = max(cat_scores[c], scores[q])
        cats[q] = v == "UNSAFE"
        cat_scores[q] = scores[q]
    return {"flagged": bool(res["flagged"]), "categories": cats, "category_scores": cat_scores,
            "category_applied_input_types": {c: ["text"] for c in cats},
            "parse_errors": res["parse_errors"]}


def full(res: dict) -> dict:
    keep = ("verdict", "flagged", "verdicts", "reasoning", "parse_errors", "is_parse_error")
    return dict({k: res[k] for k in keep}, scores=scores_of(res))


# ------------------------------------------------------------------ the app
def create_app(guard, name: str, limits: Optional[Limits] = None, token: Optional[str] = None):
    """The FastAPI app. token: when set, every route but /health needs `Authorization: Bearer <token>`."""
    from contextlib import asynccontextmanager

    limits = resolve_limits(guard, limits)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        app.state.batcher = Batcher(guard, limits)
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, app.state.batcher.close)

    app = FastAPI(title="guardrsft", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.draining = False

    def error(e: ServeError) -> JSONResponse:
        kind = "invalid_request_error" if e.status < 500 else "server_error"
        return JSONResponse({"error": {"message": e.message, "type": kind, "param": e.param, "code": e.status}},
                            status_code=e.status, headers=e.headers)

    @app.middleware("http")
    async def guard_door(request: Request, call_next):
        if app.state.draining:
            return error(ServeError(503, "the server is shutting down", headers={"Connection": "close"}))
        if token is not None and request.url.path != "/health":
            got = request.headers.get("authorization", "")
            # constant time: the comparison does not leak how much of the token matched
            if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
                return error(ServeError(401, "missing or wrong API key: send `Authorization: Bearer <key>`"))
        return await call_next(request)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, e: ServeError):
        return error(e)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):  # unknown path, wrong method
        return error(ServeError(e.status_code, f"{request.method} {request.url.path}: {e.detail}; the routes are "
                                               "POST /v1/moderations, POST /v1/classify, GET /health, GET /v1/models",
                                headers=e.headers))

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        return error(ServeError(500, f"{type(e).__name__}: {e}"))

    async def read_json(request: Request):
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > limits.max_body_bytes:
            raise ServeError(413, f"the body has {size} bytes; the limit is {limits.max_body_bytes} (--max-body-bytes)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise ServeError(413, f"the body exceeds {limits.max_body_bytes} bytes (--max-body-bytes)")
        if not body.strip():
            raise ServeError(400, 'the body is empty: send JSON like {"input": "text to check"}')
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ServeError(400, f"the body is not valid JSON: {e}") from None

    async def answer(items: list[dict], policies: Optional[list[str]]) -> list[dict]:
        fut = app.state.batcher.submit(items, policies)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), limits.timeout_s)
        except asyncio.TimeoutError:
            raise ServeError(504, f"not answered within {limits.timeout_s:g} s (--timeout); the server is busy, "
                                  "retry later") from None
        except ValueError as e:  # the guard refused the items (guard.check_items)
            raise ServeError(400, str(e)) from None

    @app.post("/v1/moderations")
    async def moderations(request: Request):
        body = await read_json(request)
        items = _items(body, limits, exchanges=False)
        results = await answer(items, None)
        return {"id": f"modr-{uuid.uuid4().hex}", "model": name, "results": [moderation(r) for r in results]}

    @app.post("/v1/classify")
    async def classify(request: Request):
        body = await read_json(request)
        items = _items(body, limits, exchanges=True)
        policies = _policies(body, list(guard.p.policies))
        results = await answer(items, policies)
        return {"id": f"clsf-{uuid.uuid4().hex}", "model": name, "results": [full(r) for r in results]}

    @app.get("/health")
    async def health():
        b = app.state.batcher
        return {"status": "draining" if app.state.draining else "ok", "model": name, "backend": guard.backend,
                "policies": list(guard.p.policies),
                # the model's taxonomy (its guardrsft.json): what each category id means, its severity
                "taxonomy": {q: {"definition": " ".join(d.split()), **guard.p.policy_info.get(q, {})}
                             for q, d in guard.p.policies.items()},
                "max_batch": limits.max_batch, "queued_items": b.pending, "served": dict(b.stats)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "guardrsft"}]}

    return app


def make_server(app, host: str = "127.0.0.1", port: int = 8000, timeout_s: float = 120.0, log_level: str = "info"):
    """A uvicorn server whose SIGTERM/SIGINT first refuses new requests (503, then the socket
    closes), then lets the requests in flight finish, then stops the worker."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            app.state.draining = True
            super().handle_exit(sig, frame)

    # in-flight requests are bounded by the per-request timeout, so the drain is too
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=timeout_s + 10,
                            lifespan="on")
    return Server(config)


class BackgroundServer:
    """Serve `app` from a thread (tests, benchmarks): `with BackgroundServer(app) as s: s.url`.
    port 0 takes a free port; leaving the block drains and stops the server."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 120.0):
        self.server = make_server(app, host, port, timeout_s, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, name="guardrsft-serve", daemon=True)
        self.host = host

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            if not self.thread.is_alive() or time.time() - t0 > 120:
                raise RuntimeError(f"the server did not start on {self.host}")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=300)
