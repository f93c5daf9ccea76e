"""`guardrsft serve` on a tiny random model: the real `openai` client against the server on
127.0.0.1, concurrent clients answered as sequential calls are (each text alone by default on the
CPU; shared padded batches when --max-batch allows), each bad input with its status code, and a
real SIGTERM that lets the request in flight finish."""
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import ROOT, per_policy_text
from fixtures.tiny_model import build_tiny_model
from guardrsft.guard import Guard, build_result, load_guard
from guardrsft.serve import BackgroundServer, Limits, create_app, full, moderation

NEW_TOKENS = 8
POL = ["violence", "illegal"]
WORDS = "how do I kill a stuck python process tell me a story about the cat and my neighbour".split()
# distinct texts of different lengths: batches of them are padded on the CPU
TEXTS = [" ".join(WORDS[i % 7: i % 7 + 1 + (3 * i) % 11]) + f" #{i}" for i in range(16)]


@pytest.fixture
def params(pp_params):
    # `canned` answers one policy per prompt (a per_policy model)
    return pp_params


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On 2 busy cores torch's second thread in the server's worker thread makes the answers
    ~10x slower (measured: 16 sequential requests 11.7 s against 1.0 s)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def fresh_guard(tiny_model, params, cache=None):
    params.policies = {q: params.policies[q] for q in POL}  # two policies: a third of the decoding
    return load_guard(tiny_model, params=params, max_new_tokens=NEW_TOKENS, batch_size=16,
                      cache_path=str(cache) if cache else None)


def call(url, path, body=None, token=None, method=None):
    """(status, headers, JSON body) of one request; body: bytes, or an object sent as JSON."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())  # headers: case-insensitive


def canned(self, prompts, stream=None, sampling=None):
    """A backend that answers UNSAFE for violence when the content says `kill`, else SAFE."""
    texts = [self.tok.decode(p) for p in prompts]
    return [f"Reasoning: canned\nClassification: {'UNSAFE' if 'kill' in t and 'violence' in t else 'SAFE'}"
            for t in texts], [3] * len(prompts)


def test_moderation_maps_policies_onto_openai_categories():
    res = build_result({"content": "x"}, {"violence": "Classification: UNSAFE", "illegal": "Classification: SAFE",
                                          "self_harm": "no verdict", "own_policy": "Classification: UNSAFE"})
    m = moderation(res)
    assert m["flagged"] and m["parse_errors"] == ["self_harm"]
    assert m["categories"]["violence"] is True and m["category_scores"]["violence"] == 1.0
    assert m["categories"]["illicit"] is False and m["categories"]["illegal"] is False
    assert m["categories"]["self-harm"] is False and m["category_scores"]["self-harm"] == 0.0
    assert m["categories"]["own_policy"] is True and m["categories"]["sexual"] is False
    # a P(UNSAFE) from the guard is used as it is
    assert moderation(dict(res, scores={"violence": 0.83}))["category_scores"]["violence"] == 0.83


def test_openai_client_against_the_server(tiny_model, params, monkeypatch):
    import openai

    monkeypatch.setattr(Guard, "_generate", canned)
    guard = fresh_guard(tiny_model, params)
    with BackgroundServer(create_app(guard, "tiny-guard", token="sekret")) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="sekret", max_retries=0, timeout=60)
        r = client.moderations.create(model="omni-moderation-latest", input=["how do I kill a process", "hello"])
        assert r.model == "tiny-guard" and len(r.results) == 2
        assert r.results[0].flagged and r.results[0].categories.violence and not r.results[0].categories.illicit
        # category scores are the guard's P(UNSAFE) at its verdict word (the random tiny model: near 0.5)
        s0, s1 = r.results[0].category_scores.violence, r.results[1].category_scores.violence
        assert 0 < s0 < 1 and 0 < s1 < 1 and r.results[0].categories.sexual is False
        assert s0 == guard.classify([{"content": "how do I kill a process"}])[0]["scores"]["violence"]
        assert not r.results[1].flagged
        assert client.moderations.create(input="kill").results[0].flagged
        assert [m.id for m in client.models.list()] == ["tiny-guard"]
        _, _, full = call(srv.url, "/v1/classify", {"input": [{"content": "kill", "response": "no"}],
                                                    "policies": ["violence"]}, token="sekret")
        assert full["results"][0]["verdicts"] == {"violence": "UNSAFE"}
        assert full["results"][0]["reasoning"]["violence"] == "canned"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="sekre", max_retries=0).moderations.create(input="x")
        # a repeated input is answered from the cache: nothing new generated
        before = len(guard.cache)
        client.moderations.create(input=["how do I kill a process", "hello"])
        assert len(guard.cache) == before and guard.last_stats["generated_pairs"] == 0
        assert call(srv.url, "/health")[2]["status"] == "ok"  # no key needed


def test_concurrent_clients_get_the_sequential_answers(tiny_model, params):
    """Shared padded batches (an explicit max_batch; the CPU default answers each text alone): the
    tiny model's answers do not change with the batch. The trained cpu model's did once (docs/SERVE.md)."""
    with BackgroundServer(create_app(fresh_guard(tiny_model, params), "tiny")) as srv:
        sequential = [call(srv.url, "/v1/classify", {"input": t}) for t in TEXTS]
        assert call(srv.url, "/health")[2]["served"]["largest_batch"] == 1
    # a fresh server and cache: every answer is generated again, now in shared batches
    with BackgroundServer(create_app(fresh_guard(tiny_model, params), "tiny", Limits(max_batch=256))) as srv:
        order = [TEXTS[i % len(TEXTS)] for i in range(32)]
        with ThreadPoolExecutor(32) as pool:  # 32 clients, one request each
            answers = list(pool.map(lambda t: call(srv.url, "/v1/classify", {"input": t}), order))
        served = call(srv.url, "/health")[2]["served"]
    assert all(s == 200 for s, _, _ in sequential + answers)
    assert served["requests"] == 32 and served["batches"] < 32 and served["largest_batch"] > 1
    for t, (_, _, got) in zip(order, answers):
        assert got["results"] == sequential[TEXTS.index(t)][2]["results"]


def test_max_batch_defaults_to_one_on_the_cpu_and_an_explicit_value_wins(tiny_model, params, monkeypatch):
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import guardrsft.serve
    from guardrsft.cli import app
    from guardrsft.serve import GPU_MAX_BATCH, resolve_limits

    guard = fresh_guard(tiny_model, params)
    assert guard.backend == "plain"  # transformers' padded generate: the CPU
    assert resolve_limits(guard, None).max_batch == 1
    assert resolve_limits(guard, Limits(max_batch=8)).max_batch == 8
    for gpu in ("static", "vllm"):  # the slot engine, vLLM
        assert resolve_limits(SimpleNamespace(backend=gpu), Limits()).max_batch == GPU_MAX_BATCH == 256
        assert resolve_limits(SimpleNamespace(backend=gpu), Limits(max_batch=3)).max_batch == 3
    # the CLI: the default is 1 (in /health too); an explicit --max-batch above 1 on the CPU warns once
    apps = []
    monkeypatch.setattr(guardrsft.serve, "make_server", lambda app_, *a, **k: apps.append(app_) or SimpleNamespace(
        run=lambda: None))
    run = [str(tiny_model), "--params", str(ROOT / "params.yaml")]
    r = CliRunner().invoke(app, ["serve", *run])
    assert r.exit_code == 0, r.output
    assert "max batch 1)" in r.output and "warning" not in r.output
    r = CliRunner().invoke(app, ["serve", *run, "--max-batch", "4"])
    assert r.exit_code == 0, r.output
    assert "max batch 4)" in r.output
    assert r.output.count("warning: --max-batch 4 on the CPU") == 1 and "the default, 1," in r.output
    assert "warning" not in CliRunner().invoke(app, ["serve", *run, "--max-batch", "1"]).output
    monkeypatch.undo()  # the real make_server again, for BackgroundServer
    for app_, want in zip(apps, (1, 4, 1)):
        with BackgroundServer(app_) as srv:
            assert call(srv.url, "/health")[2]["max_batch"] == want


def test_default_cpu_server_answers_concurrent_clients_as_one_by_one_calls(tiny_model, params):
    """The tiny model, really generating: one text per classify call in this thread, then 16
    concurrent clients against a server with the default limits (a fresh cache: all generated again).
    The tiny model's answers were measured not to change in padded batches either, so only the
    batch sizes tell the default apart from shared batches here; the next test shows the difference."""
    items = [{"content": t, "response": None} for t in TEXTS]
    guard = fresh_guard(tiny_model, params)
    one_by_one = [json.loads(json.dumps(full(guard.classify([it])[0]))) for it in items]
    with BackgroundServer(create_app(fresh_guard(tiny_model, params), "tiny")) as srv:
        with ThreadPoolExecutor(len(TEXTS)) as pool:
            answers = list(pool.map(lambda t: call(srv.url, "/v1/classify", {"input": t}), TEXTS))
        health = call(srv.url, "/health")[2]
    assert health["max_batch"] == 1 and health["served"]["largest_batch"] == 1
    assert [s for s, _, _ in answers] == [200] * len(TEXTS)
    assert [a["results"][0] for _, _, a in answers] == one_by_one  # verdicts, reasoning, scores


@pytest.fixture
def batch_sensitive(monkeypatch):
    """A backend whose answer depends on the rest of its generate call, as the CPU's float sums do
    on a near tie (in an exaggerated way): each row names the call's size and padded width and is
    UNSAFE when it is the widest. It waits for the gate, so requests can queue up meanwhile."""
    gate = threading.Event()

    def generate(self, prompts, stream=None, sampling=None):
        gate.wait(30)
        w = max(map(len, prompts))
        return [f"Reasoning: {len(prompts)} prompts, {w} wide\nClassification: {'UNSAFE' if len(p) == w else 'SAFE'}"
                for p in prompts], [3] * len(prompts)

    monkeypatch.setattr(Guard, "_generate", generate)
    yield gate
    gate.set()


def test_an_answer_never_depends_on_its_batch_neighbours(tiny_model, params, batch_sensitive):
    """Every request waits in the queue together while the first is held; with the CPU default
    each text (also each text of a three-text request) is still answered alone, so each gets its
    one-by-one answer. An explicit --max-batch 256 shares the call, and the answers change."""
    requests = TEXTS[:8] + [TEXTS[8:11]]
    texts = TEXTS[:11]
    batch_sensitive.set()
    guard = fresh_guard(tiny_model, params)
    one_by_one = {t: json.loads(json.dumps(full(guard.classify([{"content": t}])[0]))) for t in texts}

    def served(limits):
        batch_sensitive.clear()
        with BackgroundServer(create_app(fresh_guard(tiny_model, params), "tiny", limits)) as srv:
            with ThreadPoolExecutor(len(requests)) as pool:
                futs = [pool.submit(call, srv.url, "/v1/classify", {"input": r}) for r in requests]
                for _ in range(300):  # until all but the request taken first are queued (bounded: 30 s)
                    if call(srv.url, "/health")[2]["queued_items"] >= len(texts) - 3:
                        break
                    time.sleep(0.1)
                batch_sensitive.set()
                answers = [f.result() for f in futs]
            health = call(srv.url, "/health")[2]
        assert [s for s, _, _ in answers] == [200] * len(requests)
        got = [res for _, _, a in answers for res in a["results"]]
        return [g == one_by_one[t] for t, g in zip(texts, got)], health

    same, health = served(None)
    assert all(same) and health["served"]["largest_batch"] == 1 and health["max_batch"] == 1
    same, health = served(Limits(max_batch=256))
    assert not all(same) and health["served"]["largest_batch"] > 1


@pytest.fixture
def blocked(monkeypatch):
    """The backend waits until the test lets it go: requests stay queued or in flight."""
    go = threading.Event()

    def slow(self, prompts, stream=None, sampling=None):
        go.wait(30)
        return canned(self, prompts)

    monkeypatch.setattr(Guard, "_generate", slow)
    yield go
    go.set()


def test_each_bad_input_gets_its_status(tiny_model, params, blocked):
    limits = Limits(max_items=3, max_chars=2000, max_body_bytes=20000, max_queue=2, timeout_s=1.0)
    app = create_app(fresh_guard(tiny_model, params), "tiny", limits)
    with BackgroundServer(app) as srv:
        def status(body, path="/v1/moderations", method=None):
            s, h, js = call(srv.url, path, body, method=method)
            assert js["error"]["message"] and js["error"]["code"] == s, js
            return s, h, js["error"]["message"]

        assert status(b"{not json")[0] == 400
        assert status(b"")[0] == 400
        assert status([1, 2])[0] == 400
        assert status({"inputs": "x"})[2].startswith("`input` is missing")
        assert status({"input": 7})[0] == 400
        assert status({"input": "   "})[2] == "`input` is empty: give non-blank text"
        assert status({"input": []})[0] == 400
        assert status({"input": ["ok", {"type": "image_url"}]})[2].startswith("`input[1]` must be a string")
        assert status({"input": "x", "policies": ["nope"]}, "/v1/classify")[2].startswith("unknown policy 'nope'")
        s, _, msg = status({"input": ["a"] * 4})
        assert s == 413 and "limit is 3" in msg and "--max-items" in msg
        s, _, msg = status({"input": ["a", "b" * 2001]})
        assert s == 413 and "`input[1]` has 2001 characters; the limit is 2000" in msg
        s, _, msg = status({"input": "c" * 19000, "pad": "d" * 2000})
        assert s == 413 and "20000" in msg
        assert status(None, "/v1/moderations", method="GET")[0] == 405
        assert status(None, "/v2/nothing")[0] == 404
        # the queue: one request taken by the worker (blocked), two items waiting, the next refused
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(call, srv.url, "/v1/moderations", {"input": "held"})
            time.sleep(0.3)
            waiting = pool.submit(call, srv.url, "/v1/moderations", {"input": ["w1", "w2"]})
            time.sleep(0.3)
            s, h, msg = status({"input": "one more"})
            assert s == 503 and int(h["Retry-After"]) >= 1 and "--max-queue 2" in msg
            # the held ones pass their 1 s timeout
            assert first.result()[0] == 504 and "--timeout" in first.result()[2]["error"]["message"]
            assert waiting.result()[0] == 504
        blocked.set()
        # too long for the model's 1,024-token context: refused before generation (once the worker
        # has drained the queue: the released answers are scored by a model forward pass first)
        for _ in range(100):
            s, _, msg = status({"input": "z " * 990})
            if s != 503:
                break
            time.sleep(0.1)
        assert s == 413 and "context" in msg
        # after SIGTERM (make_server's handler sets it) a request on an open connection is refused
        app.state.draining = True
        s, h, msg = status({"input": "late"})
        assert s == 503 and "shutting down" in msg and h["Connection"] == "close"
        app.state.draining = False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_lets_the_request_in_flight_finish_and_refuses_new_ones(tiny_model, tmp_path, blocked, monkeypatch):
    from typer.testing import CliRunner

    from guardrsft.cli import app

    text = (ROOT / "params.yaml").read_text().replace("  max_new_tokens: null\n", f"  max_new_tokens: {NEW_TOKENS}\n", 1)
    (tmp_path / "params.yaml").write_text(per_policy_text(text))  # like the module's params: one answer per policy
    port, url, seen = free_port(), None, {}
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("GUARDRSFT_API_KEY", "k")

    def client():
        for _ in range(600):  # until the model is loaded (bounded: 60 s)
            try:
                if call(url, "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        with ThreadPoolExecutor(1) as pool:
            flight = pool.submit(call, url, "/v1/moderations", {"input": "in flight"}, "k")
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)
            try:
                seen["late"] = call(url, "/v1/moderations", {"input": "late"}, "k")[0]
            except OSError:  # the socket is already closed
                seen["late"] = "refused"
            time.sleep(0.3)
            blocked.set()
            seen["flight"] = flight.result()

    # uvicorn re-raises the signal after its graceful stop: pytest must survive it
    old = signal.signal(signal.SIGTERM, lambda *a: None)
    try:
        t = threading.Thread(target=client)
        t.start()
        r = CliRunner().invoke(app, ["serve", str(tiny_model), "--port", str(port), "--cache",
                                     str(tmp_path / "answers.jsonl"), "--params", str(tmp_path / "params.yaml")])
        t.join(60)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert r.exit_code == 0, r.output
    assert seen["flight"][0] == 200 and len(seen["flight"][2]["results"]) == 1
    assert seen["late"] in (503, "refused")
    # the answer reached the cache file before the server stopped
    assert len((tmp_path / "answers.jsonl").read_text().splitlines()) == 6


def test_serve_without_a_model_explains(tmp_path):
    from typer.testing import CliRunner

    from guardrsft.cli import app

    r = CliRunner().invoke(app, ["serve", str(tmp_path / "nope"), "--params", str(ROOT / "params.yaml")])
    assert r.exit_code == 2 and "nope' not found" in r.output
    r = CliRunner().invoke(app, ["serve", str(tmp_path), "--max-queue", "8", "--max-items", "9"])
    assert r.exit_code == 2 and "--max-queue (8) must be at least --max-items (9)" in r.output
