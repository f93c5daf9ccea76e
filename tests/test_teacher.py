"""The `openai` teacher against a real HTTP server on 127.0.0.1 (tests/openai_server.py),
through the official `openai` client."""
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from guardrsft.config import load_params
from guardrsft.data import load_notebook_file, split
from guardrsft.io import read_jsonl, write_jsonl
from guardrsft.pipeline import generate_traces
from guardrsft.teacher import TeacherError
from conftest import ROOT
from openai_server import FakeOpenAI

KEY = "sk-canary-7f3a9c1e5b"


def teacher_params(tmp_path, base_url, **over):
    text = (ROOT / "params.yaml").read_text().replace("  teacher: template ", "  teacher: openai ")
    text = text.replace("    base_url: null ", f"    base_url: {base_url} ").replace("  enabled: true", "  enabled: false")
    defaults = {"concurrency": 4, "max_retries": 3, "timeout_s": 5}
    defaults.update(over)
    for k, v in defaults.items():
        text, n = re.subn(rf"(?m)^    {k}: [^#\n]*", f"    {k}: {v} ", text)
        assert n == 1, k
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return load_params(path)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("GUARDRSFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture
def server():
    with FakeOpenAI(api_key=KEY) as s:
        yield s


def prepared(tmp_path, n=None, start=0):
    """Prepared train/val splits from the shipped sample set (n samples from `start`)."""
    samples, _ = load_notebook_file(ROOT / "data/raw/training_data.json")
    if n:
        samples = samples[start:start + n]
    for r in samples:
        r.pop("index")
    parts = split(samples, 0.2, 0.2, 1)
    d = tmp_path / "prepared"
    for name, rows in parts.items():
        write_jsonl(d / f"{name}.jsonl", rows)
    n_items = sum(6 - len(r["traces"]) for name in ("train", "val") for r in parts[name])
    return d, n_items


def run_traces(p, tmp_path, d):
    return generate_traces(p, str(d), str(tmp_path / "traces"), str(tmp_path / "traces.json"))


def test_happy_path_then_rerun_sends_nothing(tmp_path, env, server):
    d, n = prepared(tmp_path, 12)
    p = teacher_params(tmp_path, server.base_url)
    m = run_traces(p, tmp_path, d)
    assert server.counts["chat"] == n and m["teacher"]["requested"] == n and m["teacher"]["accepted"] == n
    assert m["teacher"]["prompt_tokens"] > 0 and m["teacher"]["cost_usd"] > 0
    rows = read_jsonl(tmp_path / "traces/train.jsonl")
    assert {r["origin"] for r in rows} <= {"openai", "given"} and "openai" in {r["origin"] for r in rows}
    for r in rows:
        assert "Step 1" in r["reasoning"] and "Classification" not in r["reasoning"]
    # the gold label was passed as a hint, the model name and sampling params were sent
    body = server.chat_log[0]
    assert body["model"] == "gpt-4o-mini" and body["temperature"] == 0.7
    assert re.search(r"Gold label: (SAFE|UNSAFE)", body["messages"][-1]["content"])
    m2 = run_traces(p, tmp_path, d)
    assert server.counts["chat"] == n  # nothing requested again
    assert m2["teacher"]["requested"] == 0 and m2["teacher"]["cache_hits"] == n
    assert read_jsonl(tmp_path / "traces/train.jsonl") == rows


def test_transient_faults_are_retried(tmp_path, env, server):
    d, n = prepared(tmp_path, 6)
    server.faults += [{"status": 429, "retry_after": 0.2}, {"status": 500}, {"status": 503}, {"delay": 2.5}]
    p = teacher_params(tmp_path, server.base_url, timeout_s=1, concurrency=1, max_retries=5)
    t0 = time.time()
    m = run_traces(p, tmp_path, d)
    t = m["teacher"]
    assert t["accepted"] == n and t["rejected"] == 0
    assert t["retries"] == {"RateLimitError": 1, "InternalServerError": 2, "APITimeoutError": 1}
    assert t["requested"] == n + 4 and server.counts["chat"] == n + 4
    assert time.time() - t0 >= 0.2  # Retry-After was honored


def test_invalid_answers_are_retried_then_rejected(tmp_path, env, server):
    d, n = prepared(tmp_path, 8)
    rows = [r for r in read_jsonl(d / "train.jsonl") if "violence" not in r["traces"]]
    bad_content = rows[0]["content"]
    gold_v = "UNSAFE" if "violence" in rows[0]["labels"] else "SAFE"
    wrong = "SAFE" if gold_v == "UNSAFE" else "UNSAFE"

    def responder(body):
        u = body["messages"][-1]["content"]
        if bad_content in u and '"violence"' in u:
            return f"Reasoning:\nStep 1 (intent): x.\nStep 2 (harms): y.\nStep 3 (policy criteria): z.\nClassification: {wrong}"
        g = re.search(r"Gold label: (SAFE|UNSAFE)", u).group(1)
        return f"Reasoning:\nStep 1 (intent): x.\nStep 2 (harms): y.\nStep 3 (policy criteria): z.\nClassification: {g}"

    server.responder = responder
    # one malformed answer and one truncated answer elsewhere: both recover on a fresh sample
    server.faults += [{"content": "I cannot help with that."}, {"finish_reason": "length"}]
    p = teacher_params(tmp_path, server.base_url, concurrency=1)
    m = run_traces(p, tmp_path, d)
    t = m["teacher"]
    assert t["rejected"] == 1 and t["rejected_by_reason"] == {"wrong_label": 1}
    assert t["accepted"] == n - 1
    assert t["requested"] == n - 1 + 3 + 2  # 3 attempts on the rejected item, 2 re-samples
    rej = read_jsonl(tmp_path / "traces/rejected.jsonl")
    assert len(rej) == 1 and rej[0]["reason"] == "wrong_label" and rej[0]["policy"] == "violence"
    train = read_jsonl(tmp_path / "traces/train.jsonl")
    assert not any(r["id"] == rows[0]["id"] and r["policy"] == "violence" for r in train)
    assert m["train"]["rejected"] == 1


def test_missing_key_and_unreachable_server_fail_at_start(tmp_path, env, monkeypatch, server):
    d, _ = prepared(tmp_path, 4)
    p = teacher_params(tmp_path, server.base_url)
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(TeacherError, match=r"\$OPENAI_API_KEY is not set.*teacher: template"):
        run_traces(p, tmp_path, d)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    p = teacher_params(tmp_path, f"http://127.0.0.1:{port}/v1")
    with pytest.raises(TeacherError, match=rf"cannot reach the teacher at http://127.0.0.1:{port}/v1"):
        run_traces(p, tmp_path, d)
    assert server.counts["chat"] == 0 and not (tmp_path / "traces").exists()


def test_budget_cap_stops_cleanly_and_resumes(tmp_path, env, server):
    d, n = prepared(tmp_path, 12)
    # the worst case of one item: 2000 prompt + 512 completion tokens, 3 attempts = $0.00182
    p = teacher_params(tmp_path, server.base_url, max_usd=0.004, concurrency=2)
    with pytest.raises(TeacherError, match=r"max_usd=0.004 would be passed.*rerun to continue"):
        run_traces(p, tmp_path, d)
    first = server.counts["chat"]
    assert 0 < first < n and not (tmp_path / "traces").exists()  # declared output not half-written
    p = teacher_params(tmp_path, server.base_url, max_usd=10)
    m = run_traces(p, tmp_path, d)
    assert server.counts["chat"] == n  # the finished items were not requested again
    assert m["teacher"]["cache_hits"] == first and m["teacher"]["accepted"] == n


def test_estimate_sends_nothing(tmp_path, env, server):
    d, n = prepared(tmp_path, 6)
    p = teacher_params(tmp_path, server.base_url)
    est = generate_traces(p, str(d), str(tmp_path / "t"), str(tmp_path / "m.json"), estimate=True)
    assert est["requests"] == n and est["usd"] > 0 and est["prompt_tokens"] > 0
    assert server.counts["chat"] == 0 and not (tmp_path / "t").exists()


def test_kill_9_then_rerun_loses_nothing(tmp_path, server):
    d, n = prepared(tmp_path, 40)

    def slow(body):
        time.sleep(0.05)
        g = re.search(r"Gold label: (SAFE|UNSAFE)", body["messages"][-1]["content"]).group(1)
        return f"Reasoning:\nStep 1 (intent): a.\nStep 2 (harms): b.\nStep 3 (policy criteria): c.\nClassification: {g}"

    server.responder = slow
    teacher_params(tmp_path, server.base_url, concurrency=2)
    # this run also logs to MLflow, so the canary check below covers its store too
    text = (tmp_path / "params.yaml").read_text().replace("  enabled: false", "  enabled: true")
    text = text.replace("  tracking_uri: null ", f"  tracking_uri: sqlite:///{tmp_path / 'mlflow.db'} ")
    (tmp_path / "params.yaml").write_text(text)
    cache = tmp_path / "cache"
    env = dict(os.environ, GUARDRSFT_CACHE=str(cache), OPENAI_API_KEY=KEY)
    cmd = [sys.executable, "-m", "guardrsft.cli", "traces", "--prepared", str(d), "--out-dir",
           str(tmp_path / "traces"), "--metrics", str(tmp_path / "traces.json"), "--params", str(tmp_path / "params.yaml")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while server.counts["chat"] < 30 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "traces").exists()
    cached = len([line for line in (cache / "traces/gpt-4o-mini.jsonl").read_text().splitlines() if line.strip()])
    sent_before = server.counts["chat"]
    assert 0 < cached < n
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert server.counts["chat"] - sent_before == n - cached  # only the unfinished items
    m = json.loads((tmp_path / "traces.json").read_text())
    assert m["teacher"]["cache_hits"] == cached and m["teacher"]["accepted"] == n
    total = sum(len(read_jsonl(tmp_path / f"traces/{s}.jsonl")) for s in ("train", "val"))
    assert total == 6 * sum(len(read_jsonl(d / f"{s}.jsonl")) for s in ("train", "val"))
    # the key never lands in an artifact: traces, metrics, cache, params, MLflow's database
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("guardrsft").experiment_id])
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert finished[0].data.metrics["traces.teacher.cost_usd"] == m["teacher"]["cost_usd"] > 0
    for f in list((tmp_path).rglob("*")):
        if f.is_file():
            assert KEY not in f.read_text(errors="ignore"), f


def test_persistent_server_errors_fail_the_stage_without_caching(tmp_path, env, server):
    d, n = prepared(tmp_path, 6)
    rows = read_jsonl(d / "train.jsonl")
    server.always_fail_match = rows[0]["content"]
    p = teacher_params(tmp_path, server.base_url, max_retries=1)
    with pytest.raises(TeacherError, match=r"6 requests still failed after 1 retries.*rerun to continue"):
        run_traces(p, tmp_path, d)
    server.always_fail_match = None  # the server recovers: only the failed items are requested
    before = server.counts["chat"]
    m = run_traces(p, tmp_path, d)
    assert server.counts["chat"] - before == 6 and m["teacher"]["accepted"] == n


def test_batch_lifecycle_with_partial_failures_and_expiry(tmp_path, env, server):
    d, n = prepared(tmp_path, 10)
    rows = [r for r in read_jsonl(d / "train.jsonl") if "illegal" not in r["traces"]]
    # one line fails in the first batch (a one-shot fault), and the second batch expires
    server.faults.append({"status": 500, "match": rows[0]["content"]})
    p = teacher_params(tmp_path, server.base_url, batch_poll_s=0.05, batch_max_lines=1000)
    p.traces.teacher = "batch"
    server.expire_next_batch = False
    m = run_traces(p, tmp_path, d)
    t = m["teacher"]
    assert t["accepted"] == n and t["rejected"] == 0
    # first batch: n lines, 1 failed (the faulted line) -> re-queued in a second batch of failed lines
    assert server.counts["batches_create"] >= 2
    assert t["requested"] == server.counts["batch_lines"]
    assert server.counts["chat"] == 0  # nothing went through the synchronous endpoint
    train = read_jsonl(tmp_path / "traces/train.jsonl")
    assert {r["origin"] for r in train} <= {"batch", "given"}
    # a batch that expires is re-queued whole
    d2, n2 = prepared(tmp_path / "two", 4, start=100)
    server.expire_next_batch = True
    before = server.counts["batches_create"]
    m2 = generate_traces(p, str(d2), str(tmp_path / "two/traces"), str(tmp_path / "two/m.json"))
    assert m2["teacher"]["accepted"] == n2 and server.counts["batches_create"] - before == 2


def test_batch_resumes_across_processes(tmp_path, env, server):
    d, n = prepared(tmp_path, 5)
    server.batch_polls_to_complete = 1000  # never finishes while the first run waits
    p = teacher_params(tmp_path, server.base_url, batch_poll_s=0.05, wall_time_s=0.3)
    p.traces.teacher = "batch"
    with pytest.raises(TeacherError, match="rerun to resume polling"):
        run_traces(p, tmp_path, d)
    assert server.counts["batches_create"] == 1
    server.batch_polls_to_complete = 1
    m = run_traces(p, tmp_path, d)  # a new Teacher: reads the persisted batch id
    assert server.counts["batches_create"] == 1 and m["teacher"]["accepted"] == n


# ------------------------------------------------------------------ several servers (base_urls)
# tests/openai_server.py in its own process, with a responder that holds each request DELAY s
# and records the most requests it had in flight at once (the server's view, not the client's);
# DIE_AFTER=n: the process exits at its n-th request (a server that goes down mid-run).
SERVER = '''
import json, os, sys, threading, time
sys.path.insert(0, sys.argv[1])
from openai_server import FakeOpenAI, default_responder
stats, lock = {"now": 0, "max": 0, "n": 0}, threading.Lock()
def responder(body):
    with lock:
        stats["now"] += 1; stats["n"] += 1; stats["max"] = max(stats["max"], stats["now"])
        tmp = sys.argv[2] + ".tmp"; open(tmp, "w").write(json.dumps(stats)); os.replace(tmp, sys.argv[2])
        if stats["n"] == int(os.environ.get("DIE_AFTER", 0)):
            os._exit(3)
    time.sleep(float(os.environ.get("DELAY", "0.15")))
    with lock:
        stats["now"] -= 1
    return default_responder(body)
FakeOpenAI(api_key=sys.argv[3], responder=responder).serve_forever(0)
'''


def start_server(tmp_path, name, **env):
    script = tmp_path / "srv.py"
    script.write_text(SERVER)
    stats = tmp_path / f"{name}.json"
    proc = subprocess.Popen([sys.executable, str(script), str(ROOT / "tests"), str(stats), KEY],
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, **env))
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    return proc, url, stats


def stop(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


def multi_params(tmp_path, urls, **over):
    p = teacher_params(tmp_path, "null", **over)
    return dataclasses.replace(p, traces=dataclasses.replace(
        p.traces, openai=dataclasses.replace(p.traces.openai, base_urls=urls)))


def test_two_servers_share_the_load_within_concurrency(tmp_path, env, server, monkeypatch):
    d, n = prepared(tmp_path, 10)
    procs = [start_server(tmp_path, name) for name in ("a", "b")]
    try:
        p = multi_params(tmp_path, [u for _, u, _ in procs], concurrency=3)
        m = run_traces(p, tmp_path, d)
    finally:
        for proc, _, _ in procs:
            stop(proc)
    seen = [json.loads(s.read_text()) for _, _, s in procs]
    assert m["teacher"]["accepted"] == n and sum(s["n"] for s in seen) == n
    assert all(s["n"] >= n // 3 for s in seen), seen  # both served a fair share
    assert [s["max"] for s in seen] == [3, 3], seen  # concurrency per server: reached, never passed
    servers = m["teacher"]["servers"]
    assert [servers[u]["requests"] for _, u, _ in procs] == [s["n"] for s in seen]
    # the same traces as from one server
    rows = read_jsonl(tmp_path / "traces/train.jsonl")
    one = tmp_path / "one"
    one.mkdir()
    monkeypatch.setenv("GUARDRSFT_CACHE", str(one / "cache"))
    m1 = generate_traces(teacher_params(one, server.base_url), str(d), str(one / "traces"), str(one / "t.json"))
    assert m1["teacher"]["accepted"] == n and read_jsonl(one / "traces/train.jsonl") == rows


def test_server_down_at_start_and_mid_run(tmp_path, env):
    d, n = prepared(tmp_path, 10)
    a, url_a, stats_a = start_server(tmp_path, "a")
    b, url_b, stats_b = start_server(tmp_path, "b")
    stop(b)
    try:
        p = multi_params(tmp_path, [url_a, url_b], concurrency=2)
        with pytest.raises(TeacherError, match=rf"cannot reach the teacher at {url_b} .*1 of 2 servers are up.*"
                                               r"traces.openai.base_urls"):
            run_traces(p, tmp_path, d)
        # b comes back, then dies at its 3rd request: its items go to a, the run completes
        b, url_b2, stats_b = start_server(tmp_path, "b", DIE_AFTER="3")
        p = multi_params(tmp_path, [url_a, url_b2], concurrency=2)
        m = run_traces(p, tmp_path, d)
    finally:
        stop(a)
        stop(b)
    t = m["teacher"]
    assert t["accepted"] == n and t["rejected"] == 0
    assert "down" in t["servers"][url_b2] and "down" not in t["servers"][url_a]
    assert t["retries"]["failover"] >= 1
    # b answered at most its first 2 requests (the 3rd killed it, maybe with one more in flight)
    assert n - 2 <= json.loads(stats_a.read_text())["n"] <= n
