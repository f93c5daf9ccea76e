"""The `openai` teacher: reasoning traces from any OpenAI-compatible server.

Trust: every answer is validated (three steps, a parsable verdict that agrees with the
gold label, finish_reason == "stop", length bounds); an invalid answer is retried with
a fresh sample up to `max_attempts`, then rejected with its reason, never trained on.
Money and data: a content-addressed cache outside DVC's outputs, appended and fsynced
per item, so `kill -9` loses nothing and a rerun sends no request for finished items;
token usage priced per model; `max_usd` stops the stage before the cap is passed.
The API key is read from the environment only and never written anywhere.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from .io import append_cache, read_jsonl_tolerant
from .models import cache_dir
from .prompts import parse_verdict, reasoning_of, title

TEACHER_TEMPLATE_VERSION = 1
STEPS = ("Step 1", "Step 2", "Step 3")


class TeacherError(RuntimeError):
    """Set-up problems (no key, server down) and stopped runs (budget, wall time)."""


@dataclass
class Item:
    key: str
    id: str
    policy: str
    content: str
    gold: str


def teacher_messages(o, policy: str, definition: str, content: str, gold: str) -> list[dict]:
    hint = (f"\nGold label: {gold}. Explain the reasoning that leads to this label; do not mention that "
            "you were given it.") if o.give_gold_label else ""
    return [
        {"role": "system", "content": "You write step-by-step reasoning for a content safety classifier."},
        {"role": "user", "content": (
            f'Policy "{title(policy)}": {" ".join(definition.split())}\n\nContent: {content}\n{hint}\n\n'
            "Answer in exactly this format:\nReasoning:\nStep 1 (intent): <the intent behind the content>\n"
            "Step 2 (harms): <the harms it could cause>\nStep 3 (policy criteria): <whether it meets this "
            "policy's criteria>\nClassification: SAFE or UNSAFE")},
    ]


def teacher_policies(policies: dict[str, str], info: dict) -> dict[str, str]:
    """The definitions the teacher is shown: params.yaml's, plus a policy's `examples` where given
    (they key only that policy's cached answers, so adding examples to one policy regenerates its
    traces and no other's)."""
    out = {}
    for q, d in policies.items():
        ex = (info.get(q) or {}).get("examples") or []
        out[q] = d + ("" if not ex else " Examples of content it covers: " + " | ".join(ex))
    return out


def server_urls(o) -> list[str]:
    """The servers answering: traces.openai.base_urls, else base_url, else OpenAI's."""
    return list(o.base_urls) or [o.base_url or "https://api.openai.com/v1"]


@functools.lru_cache(maxsize=1)
def _validation_version() -> str:
    # the rules an answer is accepted or rejected by: their code, not a hand-bumped number
    import inspect

    return hashlib.sha256((inspect.getsource(validate) + inspect.getsource(reasoning_of)).encode()).hexdigest()[:12]


def item_key(o, policy: str, definition: str, content: str, gold: str) -> str:
    """Everything that can change a cached answer (accepted or rejected): the exact messages
    sent, who answers (model and servers: another server may serve another model under the
    same name), sampling, and the validation rules and bounds a rejection was decided by."""
    msgs = teacher_messages(o, policy, definition, content, gold)
    blob = json.dumps([o.model, TEACHER_TEMPLATE_VERSION, msgs, policy, gold, o.temperature, o.max_tokens,
                       sorted(u.rstrip("/") for u in server_urls(o)), o.min_chars, o.max_chars, o.max_attempts,
                       _validation_version()])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def validate(text: str, finish_reason: Optional[str], gold: str, o) -> Optional[str]:
    """None when the answer is a usable trace, else the rejection reason."""
    if finish_reason != "stop":
        return f"finish_reason_{finish_reason}"
    if not (o.min_chars <= len(text) <= o.max_chars):
        return "length"
    verdict = parse_verdict(text)
    if verdict is None:
        return "no_verdict"
    if any(s not in text for s in STEPS):
        return "missing_steps"
    if verdict != gold:
        return "wrong_label"
    return None


def estimate_usd(o, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * o.usd_per_1m_input + completion_tokens * o.usd_per_1m_output) / 1e6


class Server:
    def __init__(self, url: str, client):
        self.url, self.client = url, client
        self.in_flight, self.max_in_flight, self.requests, self.down = 0, 0, 0, None


class Servers:
    """Several OpenAI-compatible servers of one model (traces.openai.base_urls): each request
    goes to the live server with the fewest requests in flight, never more than `concurrency`
    on one server. A server that refuses connections mid-run is reported by URL and skipped;
    the request (and later ones) go to the others. No live server left: the request fails,
    and the run stops with its progress cached."""

    def __init__(self, servers: list[Server], concurrency: int):
        self.servers, self.concurrency = servers, concurrency
        self.cond = threading.Condition()
        self.turn = 0  # round robin among equally loaded servers

    def live(self) -> list[Server]:
        return [s for s in self.servers if s.down is None]

    def acquire(self, avoid: Optional[Server] = None) -> Server:
        with self.cond:
            while True:
                live = self.live()
                if not live:
                    raise ConnectionError("every teacher server is down: " + ", ".join(
                        f"{s.url} ({s.down})" for s in self.servers))
                pick = [s for s in live if s is not avoid] or live
                free = [s for s in pick if s.in_flight < self.concurrency]
                if free:
                    n = len(self.servers)
                    s = min(free, key=lambda x: (x.in_flight, (self.servers.index(x) - self.turn) % n))
                    self.turn = (self.servers.index(s) + 1) % n
                    s.in_flight += 1
                    s.requests += 1
                    s.max_in_flight = max(s.max_in_flight, s.in_flight)
                    return s
                self.cond.wait()

    def release(self, s: Server) -> None:
        with self.cond:
            s.in_flight -= 1
            self.cond.notify_all()

    def connection_failed(self, s: Server, err: Exception) -> bool:
        """True when the server is down (refuses connections); it then gets no more requests."""
        if s.down is not None:
            return True
        u = urlparse(s.url)
        try:
            socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=3).close()
            return False  # reachable: a transient error, retried as before
        except OSError as e:
            with self.cond:
                if s.down is None:
                    s.down = e.strerror or str(e)
                    left = [x.url for x in self.live()]
                    log(f"teacher server {s.url} is down ({s.down}); its requests go to "
                        f"{', '.join(left) if left else 'no other server (none is left)'}")
                self.cond.notify_all()
            return True


def _reachable(url: str) -> Optional[str]:
    u = urlparse(url)
    try:
        socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=5).close()
        return None
    except OSError as e:
        return str(e.strerror or e)


class Teacher:
    def __init__(self, o, policies: dict[str, str], cache_path: Optional[Path] = None):
        self.o, self.policies = o, policies
        safe_model = re.sub(r"[^A-Za-z0-9_.-]", "_", o.model)
        self.cache_path = Path(cache_path or cache_dir() / "traces" / f"{safe_model}.jsonl")
        self.cache = {r["key"]: r for r in read_jsonl_tolerant(self.cache_path)}
        self.lock = threading.Lock()
        self.stats = Counter()

    def _usd(self, usage: dict) -> float:
        return estimate_usd(self.o, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))

    # ------------------------------------------------------------------ set-up
    def items(self, rows: list[dict]) -> list[Item]:
        out = []
        for r in rows:
            for policy, definition in self.policies.items():
                if policy in r["traces"]:
                    continue
                gold = "UNSAFE" if policy in r["labels"] else "SAFE"
                out.append(Item(item_key(self.o, policy, definition, r["content"], gold), r["id"], policy,
                                r["content"], gold))
        return out

    def estimate(self, items: list[Item]) -> dict:
        todo = [it for it in items if it.key not in self.cache]
        # ~4 characters per token; answers assumed to use half their budget
        pt = sum(len(json.dumps(teacher_messages(self.o, it.policy, self.policies[it.policy], it.content, it.gold)))
                 // 4 for it in todo)
        ct = len(todo) * self.o.max_tokens // 2
        return {"items": len(items), "cached": len(items) - len(todo), "requests": len(todo),
                "prompt_tokens": pt, "completion_tokens": ct,
                # self._usd: the Batch API teacher's discount applies to its estimate too
                "usd": round(self._usd({"prompt_tokens": pt, "completion_tokens": ct}), 4)}

    def urls(self) -> list[str]:
        return server_urls(self.o)

    def client(self):
        """An OpenAI client for the first server (the Batch API uses one server)."""
        return self.servers().servers[0].client

    def servers(self) -> Servers:
        """Clients for every server in traces.openai.base_urls (or base_url); each must be reachable."""
        key = os.environ.get(self.o.api_key_env)
        if not key:
            raise TeacherError(f"traces.teacher is `openai` but ${self.o.api_key_env} is not set. Export it "
                               f"(`export {self.o.api_key_env}=...`; a local server accepts any value), or set "
                               "`traces.teacher: template` in params.yaml for the offline teacher.")
        urls = self.urls()
        down = {u: why for u in urls if (why := _reachable(u))}
        if down:
            field = "traces.openai.base_urls" if self.o.base_urls else "traces.openai.base_url"
            raise TeacherError(f"cannot reach the teacher at {', '.join(f'{u} ({w})' for u, w in down.items())}"
                               f"{f' ({len(urls) - len(down)} of {len(urls)} servers are up)' if len(urls) > 1 else ''}"
                               f". Start the server, or fix `{field}` in params.yaml.")
        from openai import OpenAI

        # retries are ours (they honor Retry-After and are counted), so the client's are off
        return Servers([Server(u, OpenAI(api_key=key, base_url=u, max_retries=0, timeout=self.o.timeout_s))
                        for u in urls], self.o.concurrency)

    # ------------------------------------------------------------------ one item
    def _call(self, servers: Servers, it: Item):
        """One answer from the least-loaded live server: transient errors are retried up to
        max_retries (honoring Retry-After); a request to a server found down moves to another
        one at once (counted as retry `failover`, not against max_retries)."""
        import openai

        msgs = teacher_messages(self.o, it.policy, self.policies[it.policy], it.content, it.gold)
        delay, retry, avoid = 1.0, 0, None
        while True:
            try:
                srv = servers.acquire(avoid)
            except ConnectionError as e:
                return e
            with self.lock:
                self.stats["requests"] += 1
            try:
                return srv.client.chat.completions.create(model=self.o.model, messages=msgs,
                                                          temperature=self.o.temperature, max_tokens=self.o.max_tokens)
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError) as e:
                refused = isinstance(e, openai.APIConnectionError) and not isinstance(e, openai.APITimeoutError) \
                    and servers.connection_failed(srv, e)
                if refused and servers.live():
                    with self.lock:
                        self.stats["retry_failover"] += 1
                    avoid = srv
                    continue
                with self.lock:
                    self.stats[f"retry_{type(e).__name__}"] += 1
                if retry == self.o.max_retries:
                    return e
                retry += 1
                wait_s = delay
                resp = getattr(e, "response", None)
                if resp is not None and resp.headers.get("retry-after"):
                    try:
                        wait_s = float(resp.headers["retry-after"])
                    except ValueError:
                        pass
                time.sleep(min(wait_s, 60.0))
                delay = min(delay * 2, 30.0)
            except openai.APIStatusError as e:  # 4xx other than 429: retrying will not help
                return e
            finally:
                servers.release(srv)

    def _one(self, servers: Servers, it: Item) -> dict:
        usage = Counter()
        reasons = []
        for _ in range(self.o.max_attempts):
            r = self._call(servers, it)
            if isinstance(r, Exception):
                # transient or server-side: not a verdict on the item, so never cached as rejected
                return {"key": it.key, "status": "error", "reason": f"{type(r).__name__}: {r}"[:300],
                        "usage": dict(usage)}
            if r.usage:
                usage["prompt_tokens"] += r.usage.prompt_tokens or 0
                usage["completion_tokens"] += r.usage.completion_tokens or 0
            choice = r.choices[0]
            text = choice.message.content or ""
            why = validate(text, choice.finish_reason, it.gold, self.o)
            if why is None:
                return {"key": it.key, "status": "accepted", "reasoning": reasoning_of(text),
                        "classification": it.gold, "attempts": len(reasons) + 1, "usage": dict(usage)}
            reasons.append(why)
        return {"key": it.key, "status": "rejected", "reason": reasons[-1], "reasons": reasons,
                "attempts": len(reasons), "usage": dict(usage)}

    def _progress(self, total: int, failed: int, spent: float, t0: float, shown: float) -> float:
        """A progress line on stderr (at most every 2 s, and the last one): items done, requests
        sent, retries, dollars spent. Returns when it last printed."""
        done = self.stats["accepted"] + self.stats["rejected"] + failed
        now = time.time()
        if done < total and now - shown < 2.0:
            return shown
        retries = sum(v for k, v in self.stats.items() if k.startswith("retry_"))
        log(f"{done}/{total} items done ({self.stats['accepted']} accepted, {self.stats['rejected']} rejected"
            f"{f', {failed} failed' if failed else ''}), {self.stats['requests']} requests, {retries} retries, "
            f"${spent:.4f} spent, {now - t0:.0f} s")
        return now

    # ------------------------------------------------------------------ the run
    def run(self, items: list[Item]) -> dict[str, dict]:
        """Resolve every item (accepted or rejected) or raise TeacherError with progress kept."""
        todo = [it for it in items if it.key not in self.cache]
        self.stats["cache_hits"] = len(items) - len(todo)
        spent = sum(self._usd(r.get("usage") or {}) for r in self.cache.values())
        self.stats["usd_before"] = round(spent, 6)
        if todo:
            servers = self.servers()
            # `concurrency` per server; Servers.acquire keeps each server at or under it
            slots = self.o.concurrency * len(servers.servers)
            t0 = time.time()
            # the most one item can cost: bounded prompt + max_tokens answers, every attempt
            worst = estimate_usd(self.o, 2000, self.o.max_tokens) * self.o.max_attempts
            stop, errors, shown = None, [], 0.0
            with ThreadPoolExecutor(max_workers=slots) as pool:
                pending, queue = set(), list(todo)
                while queue or pending:
                    while queue and len(pending) < slots and stop is None:
                        if self.o.max_usd is not None and spent + (len(pending) + 1) * worst > self.o.max_usd:
                            stop = (f"traces.openai.max_usd={self.o.max_usd} would be passed (spent "
                                    f"${spent:.4f}); raise it to continue")
                            break
                        if self.o.wall_time_s and time.time() - t0 > self.o.wall_time_s:
                            stop = f"traces.openai.wall_time_s={self.o.wall_time_s} reached"
                            break
                        it = queue.pop(0)
                        pending.add(pool.submit(self._one, servers, it))
                    if not pending:
                        break
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    rows = [f.result() for f in done]
                    errors += [r for r in rows if r["status"] == "error"]
                    rows = [r for r in rows if r["status"] != "error"]
                    # flushed and fsynced before anything else; never bounded: these answers were paid for
                    append_cache(self.cache_path, rows, max_bytes=0)
                    for r in rows:
                        self.cache[r["key"]] = r
                        self.stats[r["status"]] += 1
                        spent += self._usd(r["usage"])
                    shown = self._progress(len(todo), len(errors), spent, t0, shown)
                    if stop is not None:
                        queue.clear()
            if self.o.base_urls:  # per server: requests, most in flight at once, why it went down
                self.stats["servers"] = {s.url: {"requests": s.requests, "max_in_flight": s.max_in_flight,
                                                 **({"down": s.down} if s.down else {})} for s in servers.servers}
            if errors and stop is None:
                stop = (f"{len(errors)} requests still failed after {self.o.max_retries} retries (last: "
                        f"{errors[-1]['reason']})")
            if stop is not None:
                left = sum(1 for it in items if it.key not in self.cache)
                raise TeacherError(f"{stop}. {len(items) - left} of {len(items)} items are done and cached in "
                                   f"{self.cache_path}; rerun to continue ({left} left).")
        self.stats["usd_total"] = round(spent, 6)
        return {it.key: self.cache[it.key] for it in items}


def summarize(stats: Counter, results: dict[str, dict]) -> dict:
    rejected = Counter(r["reason"] for r in results.values() if r["status"] == "rejected")
    tokens = Counter()
    for r in results.values():
        tokens.update(r.get("usage") or {})
    return {"requested": stats["requests"], "cache_hits": stats["cache_hits"],
            "accepted": sum(r["status"] == "accepted" for r in results.values()),
            "rejected": sum(rejected.values()), "rejected_by_reason": dict(rejected),
            "retries": {k[6:]: v for k, v in stats.items() if k.startswith("retry_")},
            "prompt_tokens": tokens["prompt_tokens"], "completion_tokens": tokens["completion_tokens"],
            "cost_usd": stats["usd_total"], **({"servers": stats["servers"]} if stats.get("servers") else {})}


def log(msg: str) -> None:
    print(f"[teacher] {msg}", file=sys.stderr, flush=True)


class BatchTeacher(Teacher):
    """The OpenAI Batch API (half the price): request JSONL with custom_id = the item's key,
    upload, create, persist the batch id at once, poll, download output and error files,
    re-queue failed or expired items. A killed process resumes the batches it left."""

    def __init__(self, o, policies, cache_path=None):
        super().__init__(o, policies, cache_path)
        self.state_path = self.cache_path.with_suffix(".batches.json")
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {"batches": [], "tries": {}}

    def _save_state(self) -> None:
        from .io import write_json

        write_json(self.state_path, self.state)

    def _usd(self, usage: dict) -> float:
        return super()._usd(usage) * self.o.batch_discount

    def _submit(self, client, items: list[Item]) -> None:
        import tempfile

        lines, size = [], 0
        chunks = []
        for it in items:
            body = {"model": self.o.model, "temperature": self.o.temperature, "max_tokens": self.o.max_tokens,
                    "messages": teacher_messages(self.o, it.policy, self.policies[it.policy], it.content, it.gold)}
            line = json.dumps({"custom_id": it.key, "method": "POST", "url": "/v1/chat/completions", "body": body})
            if lines and (len(lines) >= self.o.batch_max_lines or size + len(line) + 1 > 190 * 2**20):
                chunks.append(lines)
                lines, size = [], 0
            lines.append(line)
            size += len(line) + 1
        if lines:
            chunks.append(lines)
        for chunk in chunks:
            with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
                f.write("\n".join(chunk) + "\n")
            with open(f.name, "rb") as fh:
                up = client.files.create(file=fh, purpose="batch")
            os.unlink(f.name)
            # intent first: a kill between create and saving its id would otherwise submit (and
            # bill) these requests twice; a rerun finds the batch by its input file (_adopt)
            entry = {"id": None, "input_file_id": up.id, "keys": [json.loads(x)["custom_id"] for x in chunk],
                     "status": "submitting", "intent_at": int(time.time())}
            self.state["batches"].append(entry)
            self._save_state()
            self._create(client, entry)

    def _create(self, client, entry: dict) -> None:
        self.stats["requests"] += len(entry["keys"])  # batch lines: what the server will answer (and bill)
        b = client.batches.create(input_file_id=entry["input_file_id"], endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"tool": "guardrsft"})
        entry.update(id=b.id, status=b.status)
        self._save_state()  # persisted before waiting: a killed run resumes this batch
        log(f"batch {b.id}: {len(entry['keys'])} requests submitted")

    def _adopt(self, client, entry: dict) -> None:
        """A batch whose create may or may not have reached the server before a kill: the
        server's batch for this input file if there is one (newest first), else create it now."""
        for b in client.batches.list(limit=100):
            if b.created_at < entry["intent_at"] - 600:  # older than the intent (10 min of clock skew)
                break
            if b.input_file_id == entry["input_file_id"]:
                entry.update(id=b.id, status=b.status)
                self._save_state()
                log(f"batch {b.id}: found on the server (created before the last run was killed); not resubmitted")
                return
        self._create(client, entry)

    def _collect(self, client, entry: dict, by_key: dict[str, Item]) -> list[dict]:
        """Rows for the cache from a finished batch; items not answered validly are left to re-queue."""
        b = client.batches.retrieve(entry["id"])
        rows = []
        answered = {}
        if b.output_file_id:
            for line in client.files.content(b.output_file_id).text.splitlines():
                if line.strip():
                    rec = json.loads(line)
                    resp = rec.get("response") or {}
                    if resp.get("status_code") == 200:
                        answered[rec["custom_id"]] = resp["body"]
        for key in entry["keys"]:
            it = by_key.get(key)
            if it is None or key in self.cache:
                continue
            tries = self.state["tries"].get(key, 0) + 1
            self.state["tries"][key] = tries
            body = answered.get(key)
            if body is None:  # failed line, expired or cancelled batch: try again in the next batch
                self.stats["retry_batch_line"] += 1
                if tries >= self.o.max_attempts + self.o.max_retries:
                    rows.append({"key": key, "status": "rejected", "reason": "batch_failed", "attempts": tries,
                                 "usage": {}})
                continue
            choice = body["choices"][0]
            text = choice["message"].get("content") or ""
            usage = body.get("usage") or {}
            why = validate(text, choice.get("finish_reason"), it.gold, self.o)
            u = {"prompt_tokens": usage.get("prompt_tokens", 0), "completion_tokens": usage.get("completion_tokens", 0)}
            if why is None:
                rows.append({"key": key, "status": "accepted", "reasoning": reasoning_of(text),
                             "classification": it.gold, "attempts": tries, "usage": u, "batch": True})
            elif tries >= self.o.max_attempts:
                rows.append({"key": key, "status": "rejected", "reason": why, "attempts": tries, "usage": u,
                             "batch": True})
        return rows

    def run(self, items: list[Item]) -> dict[str, dict]:
        by_key = {it.key: it for it in items}
        todo = [it for it in items if it.key not in self.cache]
        self.stats["cache_hits"] = len(items) - len(todo)
        spent = sum(self._usd(r.get("usage") or {}) for r in self.cache.values())
        if todo:
            client = self.client()
            for entry in self.state["batches"]:
                if entry["id"] is None:
                    self._adopt(client, entry)
            t0 = time.time()
            while True:
                active = [b for b in self.state["batches"] if b["status"] not in ("collected",)]
                in_flight = {k for b in active for k in b["keys"]}
                fresh = [it for it in items if it.key not in self.cache and it.key not in in_flight]
                if fresh:
                    worst = estimate_usd(self.o, 2000, self.o.max_tokens) * self.o.batch_discount * len(fresh)
                    if self.o.max_usd is not None and spent + worst > self.o.max_usd:
                        raise TeacherError(f"traces.openai.max_usd={self.o.max_usd} would be passed by the next batch "
                                           f"(spent ${spent:.4f}, next up to ${worst:.4f}); raise it to continue")
                    self._submit(client, fresh)
                    continue
                if not active:
                    break
                for b in active:
                    st = client.batches.retrieve(b["id"]).status
                    self.stats["polls"] += 1
                    if st in ("completed", "failed", "expired", "cancelled"):
                        rows = self._collect(client, b, by_key)
                        append_cache(self.cache_path, rows, max_bytes=0)
                        for r in rows:
                            self.cache[r["key"]] = r
                            self.stats[r["status"]] += 1
                            spent += self._usd(r.get("usage") or {})
                        b["status"] = "collected"
                        b["final_status"] = st
                        self._save_state()
                        log(f"batch {b['id']} {st}: {sum(r['status'] == 'accepted' for r in rows)} accepted")
                if all(it.key in self.cache for it in items):
                    break
                if self.o.wall_time_s and time.time() - t0 > self.o.wall_time_s:
                    left = sum(1 for it in items if it.key not in self.cache)
                    raise TeacherError(f"traces.openai.wall_time_s={self.o.wall_time_s} reached with {left} items in "
                                       f"batches {[b['id'] for b in active]}; rerun to resume polling them")
                time.sleep(self.o.batch_poll_s)
        self.stats["usd_total"] = round(spent, 6)
        return {it.key: self.cache[it.key] for it in items}
