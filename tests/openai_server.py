"""A small, faithful OpenAI-compatible HTTP server for tests (stdlib only).

Serves the subset of the OpenAI REST API that a trace-generation client uses through
the official ``openai`` Python client:

* ``POST /v1/chat/completions``
* ``POST /v1/files`` (multipart), ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``,
  ``DELETE /v1/files/{id}``
* ``POST /v1/batches``, ``GET /v1/batches`` (list, newest first, ``after``/``limit``),
  ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``

Usage in tests::

    with FakeOpenAI() as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key=srv.api_key, max_retries=0)
        srv.faults.append({"status": 429, "retry_after": 0.2})
        ...

or as a separate process (prints the base_url on stdout, then serves until killed)::

    python tests/openai_server.py --port 0 --api-key sk-test
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

GOLD_RE = re.compile(r"(?i)gold label:\s*(SAFE|UNSAFE)")

_ERR_TEXT = {
    400: ("Bad request.", "invalid_request_error", None),
    401: (
        "Incorrect API key provided. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    ),
    404: ("Not found.", "invalid_request_error", None),
    429: (
        "Rate limit reached for requests. Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


def error_body(status: int, message: str | None = None, type_: str | None = None,
               param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error JSON shape: {"error": {"message", "type", "param", "code"}}."""
    d_msg, d_type, d_code = _ERR_TEXT.get(status, ("Error.", "api_error", None))
    return {
        "error": {
            "message": message if message is not None else d_msg,
            "type": type_ if type_ is not None else d_type,
            "param": param,
            "code": code if code is not None else d_code,
        }
    }


def _text_of(content: Any) -> str:
    """Message content as text: a string, or the text parts of a content-part list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
            elif isinstance(part, str):
                out.append(part)
        return "\n".join(out)
    return str(content)


def _user_texts(body: dict) -> list[str]:
    msgs = body.get("messages") or []
    return [_text_of(m.get("content")) for m in msgs
            if isinstance(m, dict) and m.get("role") == "user"]


def last_user_message(body: dict) -> str:
    texts = _user_texts(body)
    return texts[-1] if texts else ""


def default_responder(body: dict) -> str:
    m = GOLD_RE.search(last_user_message(body))
    label = m.group(1).upper() if m else "SAFE"
    return (
        "Reasoning:\n"
        "Step 1 (intent): The user asks something.\n"
        "Step 2 (harms): Potential harms were considered.\n"
        "Step 3 (policy criteria): The policy criteria were checked.\n"
        "Classification: " + label
    )


def _ntok(text: str) -> int:
    return len(text.split())


def _new_id(prefix: str, n: int = 24) -> str:
    return prefix + uuid.uuid4().hex[:n]


def parse_multipart(content_type: str, data: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Parse multipart/form-data into {field: (filename or None, bytes)}."""
    m = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', content_type)
    if not m:
        raise ValueError("multipart body without boundary")
    boundary = (m.group(1) or m.group(2)).encode("latin-1")
    fields: dict[str, tuple[str | None, bytes]] = {}
    chunks = (b"\r\n" + data).split(b"\r\n--" + boundary)
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # closing delimiter
        nl = chunk.find(b"\r\n")  # skip transport padding after the delimiter
        if nl < 0:
            continue
        part = chunk[nl + 2:]
        head, sep, payload = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        name = filename = None
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() != "content-disposition":
                continue
            nm = re.search(r'(?<![\w*])name="((?:[^"\\]|\\.)*)"', value) or re.search(
                r"(?<![\w*])name=([^;\s]+)", value)
            fn = re.search(r'filename="((?:[^"\\]|\\.)*)"', value) or re.search(
                r"filename=([^;\s]+)", value)
            name = nm.group(1) if nm else None
            filename = fn.group(1) if fn else None
        if name is not None:
            fields[name] = (filename, payload)
    return fields


class _ChatError(Exception):
    def __init__(self, status: int, body: dict, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


class FakeOpenAI:
    """In-process fake of the OpenAI API. Public state (all guarded by ``self.lock``):

    counts             Counter: chat, files_upload, files_content, batches_create,
                       batches_get, batch_lines (+ files_get, files_delete, batches_cancel)
    chat_log           JSON bodies received at /v1/chat/completions (HTTP only)
    faults             FIFO list of per-request fault dicts (see ``_take_fault``)
    always_fail_match  substring: chat requests whose user message contains it get 500
    expire_next_batch  True: the next created batch ends "expired"
    files, batches     stored objects, by id
    """

    def __init__(self, api_key: str = "sk-test",
                 responder: Callable[[dict], str] | None = None,
                 batch_polls_to_complete: int = 2):
        self.api_key = api_key
        self.responder = responder
        self.batch_polls_to_complete = batch_polls_to_complete
        self.lock = threading.RLock()
        self.counts: collections.Counter = collections.Counter()
        self.chat_log: list[dict] = []
        self.faults: list[dict] = []
        self.always_fail_match: str | None = None
        self.expire_next_batch = False
        self.files: dict[str, dict] = {}  # id -> {"obj": file object, "data": bytes}
        self.batches: dict[str, dict] = {}  # id -> {"obj": batch object, "polls", "expire"}
        self.base_url: str | None = None
        self.port: int | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def _bind(self, port: int = 0) -> None:
        self._httpd = _Server(("127.0.0.1", port), _Handler)
        self._httpd.fake = self
        self.port = self._httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def start(self, port: int = 0) -> str:
        """Bind 127.0.0.1:port (0 = any free port), serve in a daemon thread; return base_url."""
        if self._httpd is not None:
            return self.base_url  # type: ignore[return-value]
        self._bind(port)
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="FakeOpenAI", daemon=True)
        self._thread.start()
        return self.base_url  # type: ignore[return-value]

    def serve_forever(self, port: int = 0) -> None:
        """Foreground mode (used by ``__main__``): prints base_url, serves until interrupted."""
        self._bind(port)
        print(self.base_url, flush=True)
        try:
            self._httpd.serve_forever(poll_interval=0.1)  # type: ignore[union-attr]
        except KeyboardInterrupt:
            pass
        finally:
            self._httpd.server_close()  # type: ignore[union-attr]
            self._httpd = None

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeOpenAI":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ chat logic
    def _take_fault(self, body: dict) -> dict | None:
        """Pop the first fault that applies: one without "match", or one whose "match"
        substring occurs in the request's last user message."""
        last = last_user_message(body)
        with self.lock:
            for i, f in enumerate(self.faults):
                m = f.get("match")
                if m is None or m in last:
                    return self.faults.pop(i)
        return None

    def chat_completion(self, body: Any, *, sleep: bool = True) -> dict:
        """Produce a chat.completion object, or raise _ChatError (status, error JSON, headers).
        Shared by the HTTP endpoint and by batch processing (where delays are not slept)."""
        if not isinstance(body, dict):
            raise _ChatError(400, error_body(400, "The request body must be a JSON object."))
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            raise _ChatError(400, error_body(400, "you must provide a model parameter",
                                             param="model"))
        if not isinstance(messages, list) or not messages:
            raise _ChatError(400, error_body(400, "'messages' must be a non-empty array.",
                                             param="messages"))
        fault = self._take_fault(body) or {}
        if fault.get("delay") and sleep:
            time.sleep(float(fault["delay"]))
        status = fault.get("status")
        fail = self.always_fail_match
        if status is None and fail is not None and any(fail in t for t in _user_texts(body)):
            status = 500
        if status is not None and int(status) != 200:
            status = int(status)
            headers = {}
            if status == 429:
                ra = float(fault.get("retry_after", 1))
                headers["Retry-After"] = f"{ra:g}"
                headers["retry-after-ms"] = str(int(round(ra * 1000)))
            raise _ChatError(status, error_body(status), headers)

        n = body.get("n") or 1
        try:
            n = max(1, int(n))
        except (TypeError, ValueError):
            raise _ChatError(400, error_body(400, "'n' must be an integer.", param="n"))
        finish = fault.get("finish_reason", "stop")
        choices, completion_tokens = [], 0
        for i in range(n):
            if "content" in fault:
                text = str(fault["content"])
            else:
                text = (self.responder or default_responder)(body)
            completion_tokens += _ntok(text)
            choices.append({
                "index": i,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "finish_reason": finish,
                "logprobs": None,
            })
        prompt_tokens = sum(_ntok(_text_of(m.get("content"))) for m in messages
                            if isinstance(m, dict))
        return {
            "id": _new_id("chatcmpl-", 29),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": None,
        }

    # ------------------------------------------------------------------ files
    def add_file(self, data: bytes, filename: str, purpose: str) -> dict:
        obj = {
            "id": _new_id("file-"),
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        with self.lock:
            self.files[obj["id"]] = {"obj": obj, "data": data}
        return obj

    # ------------------------------------------------------------------ batches
    def _create_batch(self, body: dict) -> dict:
        fid = body.get("input_file_id")
        endpoint = body.get("endpoint")
        window = body.get("completion_window")
        with self.lock:
            if fid not in self.files:
                raise _ChatError(404, error_body(404, f"No such File object: {fid}",
                                                 param="input_file_id"))
            if endpoint != "/v1/chat/completions":
                raise _ChatError(400, error_body(
                    400, f"Invalid endpoint: {endpoint!r} (only /v1/chat/completions)",
                    param="endpoint"))
            if window != "24h":
                raise _ChatError(400, error_body(400, "completion_window must be '24h'",
                                                 param="completion_window"))
            now = int(time.time())
            obj = {
                "id": _new_id("batch_"),
                "object": "batch",
                "endpoint": endpoint,
                "errors": None,
                "input_file_id": fid,
                "completion_window": window,
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": now,
                "in_progress_at": None,
                "expires_at": now + 24 * 3600,
                "finalizing_at": None,
                "completed_at": None,
                "failed_at": None,
                "expired_at": None,
                "cancelling_at": None,
                "cancelled_at": None,
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "metadata": body.get("metadata"),
            }
            self.batches[obj["id"]] = {"obj": obj, "polls": 0, "expire": self.expire_next_batch}
            self.expire_next_batch = False
            return json.loads(json.dumps(obj))

    def _list_batches(self, query: dict) -> dict:
        """GET /v1/batches: a cursor page, newest first, as the real API."""
        with self.lock:
            self.counts["batches_list"] += 1
            objs = [r["obj"] for r in reversed(list(self.batches.values()))]
            after = (query.get("after") or [None])[0]
            if after:
                ids = [o["id"] for o in objs]
                objs = objs[ids.index(after) + 1:] if after in ids else []
            limit = int((query.get("limit") or ["20"])[0])
            page = objs[:limit]
            return json.loads(json.dumps({
                "object": "list", "data": page, "has_more": len(objs) > limit,
                "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}))

    def _poll_batch(self, bid: str) -> dict:
        with self.lock:
            rec = self.batches.get(bid)
            if rec is None:
                raise _ChatError(404, error_body(404, f"No such Batch object: {bid}", param="id"))
            obj = rec["obj"]
            if obj["status"] in ("validating", "in_progress"):
                rec["polls"] += 1
                if rec["polls"] >= self.batch_polls_to_complete:
                    self._finish_batch(rec)
                else:
                    obj["status"] = "in_progress"
                    obj["in_progress_at"] = obj["in_progress_at"] or int(time.time())
            return json.loads(json.dumps(obj))

    def _finish_batch(self, rec: dict) -> None:
        """Run every input line through the chat logic (called with self.lock held)."""
        obj = rec["obj"]
        now = int(time.time())
        obj["in_progress_at"] = obj["in_progress_at"] or now
        raw = self.files[obj["input_file_id"]]["data"].decode("utf-8", "replace")
        lines, errors = [], []
        for i, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                req = json.loads(line)
                if not isinstance(req, dict) or "custom_id" not in req or not isinstance(
                        req.get("body"), dict):
                    raise ValueError("missing custom_id or body")
                if req.get("url") != obj["endpoint"] or req.get("method", "POST") != "POST":
                    errors.append({"code": "invalid_url", "line": i, "param": "url",
                                   "message": f"The URL provided for this request does not "
                                              f"match the batch endpoint {obj['endpoint']}."})
                    continue
                lines.append(req)
            except ValueError as e:
                errors.append({"code": "invalid_json_line", "line": i, "param": None,
                               "message": f"This line is not a valid request: {e}"})
        if not lines and not errors:
            errors.append({"code": "empty_file", "line": None, "param": None,
                           "message": "The input file is empty."})
        obj["request_counts"]["total"] = len(lines)
        if errors:
            obj["status"] = "failed"
            obj["failed_at"] = now
            obj["errors"] = {"object": "list", "data": errors}
            return
        if rec["expire"]:
            err_lines = [{"id": _new_id("batch_req_"), "custom_id": r["custom_id"],
                          "response": None,
                          "error": {"code": "batch_expired",
                                    "message": "This request could not be executed before "
                                               "the completion window expired."}}
                         for r in lines]
            obj["error_file_id"] = self._jsonl_file(err_lines, obj["id"], "error")
            obj["status"] = "expired"
            obj["expired_at"] = now
            return
        out_lines, err_lines = [], []
        for r in lines:
            self.counts["batch_lines"] += 1
            line = {"id": _new_id("batch_req_"), "custom_id": r["custom_id"], "error": None}
            try:
                comp = self.chat_completion(r["body"], sleep=False)
                line["response"] = {"status_code": 200, "request_id": _new_id("req_", 32),
                                    "body": comp}
                out_lines.append(line)
            except _ChatError as e:
                line["response"] = {"status_code": e.status, "request_id": _new_id("req_", 32),
                                    "body": e.body}
                err_lines.append(line)
        obj["finalizing_at"] = now
        if out_lines:
            obj["output_file_id"] = self._jsonl_file(out_lines, obj["id"], "output")
        if err_lines:
            obj["error_file_id"] = self._jsonl_file(err_lines, obj["id"], "error")
        obj["request_counts"] = {"total": len(lines), "completed": len(out_lines),
                                 "failed": len(err_lines)}
        obj["status"] = "completed"
        obj["completed_at"] = now

    def _jsonl_file(self, rows: list[dict], bid: str, kind: str) -> str:
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        return self.add_file(data, f"{bid}_{kind}.jsonl", f"batch_{kind}")["id"]

    def _cancel_batch(self, bid: str) -> dict:
        with self.lock:
            rec = self.batches.get(bid)
            if rec is None:
                raise _ChatError(404, error_body(404, f"No such Batch object: {bid}", param="id"))
            obj = rec["obj"]
            if obj["status"] not in ("validating", "in_progress", "cancelling", "cancelled"):
                raise _ChatError(400, error_body(
                    400, f"Cannot cancel a batch with status '{obj['status']}'."))
            now = int(time.time())
            obj["cancelling_at"] = obj["cancelling_at"] or now
            obj["cancelled_at"] = obj["cancelled_at"] or now
            obj["status"] = "cancelled"
            return json.loads(json.dumps(obj))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeOpenAI

    def handle_error(self, request, client_address):  # quiet on client disconnects
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeOpenAI/1.0"
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - silence request logging
        pass

    # -- io helpers
    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, status: int, payload: Any = None, *, raw: bytes | None = None,
              content_type: str = "application/json", headers: dict | None = None) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", _new_id("req_", 32))
        self.send_header("openai-processing-ms", "1")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()

    def _error(self, status: int, message: str | None = None, **kw) -> None:
        self._send(status, error_body(status, message, **kw))

    # -- dispatch
    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _dispatch(self) -> None:
        fake = self.server.fake
        body = self._read_body()  # always drain the body to keep the connection usable
        auth = self.headers.get("Authorization") or ""
        if auth != f"Bearer {fake.api_key}":
            if not auth.startswith("Bearer "):
                return self._error(401, "You didn't provide an API key. You need to provide "
                                        "your API key in an Authorization header using Bearer "
                                        "auth (i.e. Authorization: Bearer YOUR_KEY).",
                                   code="missing_api_key" if not auth else "invalid_api_key")
            return self._error(401)
        path = urlsplit(self.path).path.rstrip("/")
        method = self.command
        try:
            if method == "POST" and path == "/v1/chat/completions":
                return self._chat(body)
            if method == "POST" and path == "/v1/files":
                return self._files_upload(body)
            m = re.fullmatch(r"/v1/files/([^/]+)(/content)?", path)
            if m:
                return self._files(method, m.group(1), bool(m.group(2)))
            if method == "POST" and path == "/v1/batches":
                with fake.lock:
                    fake.counts["batches_create"] += 1
                return self._send(200, fake._create_batch(self._json(body)))
            if method == "GET" and path == "/v1/batches":
                return self._send(200, fake._list_batches(parse_qs(urlsplit(self.path).query)))
            m = re.fullmatch(r"/v1/batches/([^/]+)(/cancel)?", path)
            if m and method == "GET" and not m.group(2):
                with fake.lock:
                    fake.counts["batches_get"] += 1
                return self._send(200, fake._poll_batch(m.group(1)))
            if m and method == "POST" and m.group(2):
                with fake.lock:
                    fake.counts["batches_cancel"] += 1
                return self._send(200, fake._cancel_batch(m.group(1)))
        except _ChatError as e:
            return self._send(e.status, e.body, headers=e.headers)
        return self._error(404, f"Invalid URL ({method} {path})")

    @staticmethod
    def _json(body: bytes) -> Any:
        try:
            return json.loads(body or b"null")
        except ValueError:
            raise _ChatError(400, error_body(
                400, "We could not parse the JSON body of your request."))

    def _chat(self, raw: bytes) -> None:
        fake = self.server.fake
        body = self._json(raw)
        with fake.lock:
            fake.counts["chat"] += 1
            fake.chat_log.append(body)
        comp = fake.chat_completion(body)
        self._send(200, comp)

    def _files_upload(self, raw: bytes) -> None:
        fake = self.server.fake
        ctype = self.headers.get("Content-Type") or ""
        if not ctype.lower().startswith("multipart/form-data"):
            raise _ChatError(400, error_body(400, "Expected multipart/form-data."))
        try:
            fields = parse_multipart(ctype, raw)
        except ValueError as e:
            raise _ChatError(400, error_body(400, str(e)))
        if "file" not in fields:
            raise _ChatError(400, error_body(400, "Missing file.", param="file"))
        if "purpose" not in fields:
            raise _ChatError(400, error_body(400, "Missing purpose.", param="purpose"))
        filename, data = fields["file"]
        purpose = fields["purpose"][1].decode("utf-8", "replace")
        with fake.lock:
            fake.counts["files_upload"] += 1
        self._send(200, fake.add_file(data, filename or "upload", purpose))

    def _files(self, method: str, fid: str, content: bool) -> None:
        fake = self.server.fake
        with fake.lock:
            rec = fake.files.get(fid)
            if rec is not None and method == "DELETE" and not content:
                del fake.files[fid]
                fake.counts["files_delete"] += 1
        if method not in ("GET", "DELETE") or (content and method != "GET"):
            return self._error(404, f"Invalid URL ({method} {self.path})")
        if rec is None:
            return self._error(404, f"No such File object: {fid}", param="id")
        if method == "DELETE":
            return self._send(200, {"id": fid, "object": "file", "deleted": True})
        if content:
            with fake.lock:
                fake.counts["files_content"] += 1
            ctype = ("application/jsonl" if rec["obj"]["filename"].endswith(".jsonl")
                     else "application/octet-stream")
            return self._send(200, raw=rec["data"], content_type=ctype)
        with fake.lock:
            fake.counts["files_get"] += 1
        return self._send(200, rec["obj"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Fake OpenAI-compatible server for tests.")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--api-key", default="sk-test")
    ap.add_argument("--batch-polls-to-complete", type=int, default=2)
    args = ap.parse_args(argv)
    FakeOpenAI(api_key=args.api_key,
               batch_polls_to_complete=args.batch_polls_to_complete).serve_forever(args.port)


if __name__ == "__main__":
    main()
