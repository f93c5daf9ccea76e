"""Tests of the fake OpenAI server (tests/openai_server.py) through the real openai client."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from openai_server import FakeOpenAI

MODEL = "gpt-4o-mini"


@pytest.fixture
def srv():
    with FakeOpenAI(api_key="sk-test", batch_polls_to_complete=2) as s:
        yield s


@pytest.fixture
def client(srv):
    c = openai.OpenAI(base_url=srv.base_url, api_key="sk-test", max_retries=0, timeout=10)
    yield c
    c.close()


def ask(client, text, **kw):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "You are a judge."},
                               {"role": "user", "content": text}], **kw)


def test_happy_path_content_and_usage(srv, client):
    assert srv.base_url.startswith("http://127.0.0.1:") and srv.base_url.endswith("/v1")
    r = ask(client, "Is this ok? Gold label: unsafe", temperature=0.7, max_tokens=256)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == MODEL
    c = r.choices[0]
    assert c.index == 0 and c.finish_reason == "stop" and c.message.role == "assistant"
    assert c.message.content.startswith("Reasoning:\nStep 1 (intent):")
    assert c.message.content.endswith("Classification: UNSAFE")
    assert r.usage.prompt_tokens == len("You are a judge.".split()) + 6
    assert r.usage.completion_tokens == len(c.message.content.split())
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert ask(client, "no hint").choices[0].message.content.endswith("Classification: SAFE")
    assert srv.counts["chat"] == 2
    assert srv.chat_log[0]["temperature"] == 0.7 and srv.chat_log[0]["max_tokens"] == 256
    assert len(ask(client, "x", n=3).choices) == 3


def test_custom_responder():
    with FakeOpenAI(responder=lambda body: "echo " + body["messages"][-1]["content"]) as s:
        c = openai.OpenAI(base_url=s.base_url, api_key="sk-test", max_retries=0)
        assert ask(c, "hi there").choices[0].message.content == "echo hi there"


def test_wrong_key(srv):
    c = openai.OpenAI(base_url=srv.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as ei:
        ask(c, "hi")
    assert ei.value.status_code == 401
    assert set(ei.value.response.json()["error"]) == {"message", "type", "param", "code"}
    assert srv.counts["chat"] == 0


def test_rate_limit_fault_has_retry_after(srv, client):
    srv.faults.append({"status": 429, "retry_after": 0.2})
    with pytest.raises(openai.RateLimitError) as ei:
        ask(client, "hi")
    assert ei.value.response.headers["retry-after"] == "0.2"
    assert ei.value.code == "rate_limit_exceeded"
    # the fault is consumed: the next request succeeds
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert raw.status_code == 200 and raw.parse().choices[0].message.content


def test_server_error_faults(srv, client):
    srv.faults += [{"status": 500}, {"status": 503}]
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            ask(client, "hi")
    assert ask(client, "hi").choices[0].finish_reason == "stop"
    assert srv.counts["chat"] == 3


def test_match_fault_only_hits_matching_request(srv, client):
    srv.faults.append({"status": 500, "match": "poison"})
    assert ask(client, "harmless").choices[0].message.content  # skipped, not consumed
    assert len(srv.faults) == 1
    with pytest.raises(openai.InternalServerError):
        ask(client, "this has poison in it")
    assert srv.faults == []
    assert ask(client, "poison again").choices[0].message.content  # used once only


def test_always_fail_match(srv, client):
    srv.always_fail_match = "BAD"
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            ask(client, "a BAD prompt")
    assert ask(client, "a good prompt").choices[0].message.content


def test_content_and_finish_reason_faults(srv, client):
    srv.faults += [{"content": "garbage output"}, {"finish_reason": "length"}]
    r = ask(client, "hi")
    assert r.choices[0].message.content == "garbage output"
    assert r.usage.completion_tokens == 2
    assert ask(client, "hi").choices[0].finish_reason == "length"


def test_delay_fault_times_out(srv, client):
    srv.faults.append({"delay": 1.5})
    t0 = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        ask(client.with_options(timeout=0.3), "hi")
    assert time.monotonic() - t0 < 1.4


def test_files_roundtrip(srv, client, tmp_path):
    p = tmp_path / "in.jsonl"
    data = b'{"a": 1}\n{"b": "\xc3\xa9\\r\\n"}\r\n\x00\xff tail\n'
    p.write_bytes(data)
    with open(p, "rb") as f:
        fo = client.files.create(file=f, purpose="batch")
    assert fo.id.startswith("file-") and fo.bytes == len(data)
    assert fo.filename == "in.jsonl" and fo.purpose == "batch" and fo.status == "processed"
    assert client.files.content(fo.id).content == data
    assert client.files.retrieve(fo.id).bytes == len(data)
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-nope")
    assert srv.counts["files_upload"] == 1 and srv.counts["files_content"] == 1


def _upload_batch(client, tmp_path, prompts):
    p = tmp_path / "batch.jsonl"
    with open(p, "w") as f:
        for i, text in enumerate(prompts):
            f.write(json.dumps({"custom_id": f"req-{i}", "method": "POST",
                                "url": "/v1/chat/completions",
                                "body": {"model": MODEL, "messages": [
                                    {"role": "user", "content": text}]}}) + "\n")
    with open(p, "rb") as f:
        fo = client.files.create(file=f, purpose="batch")
    return client.batches.create(input_file_id=fo.id, endpoint="/v1/chat/completions",
                                 completion_window="24h", metadata={"run": "t"})


def _jsonl(client, file_id):
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_batch_with_one_failing_line(srv, client, tmp_path):
    srv.always_fail_match = "FAILME"
    b = _upload_batch(client, tmp_path,
                      ["ok Gold label: UNSAFE", "please FAILME", "fine Gold label: SAFE"])
    assert b.status == "validating" and b.id.startswith("batch_") and b.object == "batch"
    assert b.output_file_id is None and b.metadata == {"run": "t"}
    assert client.batches.retrieve(b.id).status == "in_progress"
    b = client.batches.retrieve(b.id)
    assert b.status == "completed"
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (3, 2, 1)
    out = _jsonl(client, b.output_file_id)
    assert [o["custom_id"] for o in out] == ["req-0", "req-2"]
    assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in out)
    assert out[0]["response"]["body"]["choices"][0]["message"]["content"].endswith("UNSAFE")
    assert out[0]["response"]["body"]["object"] == "chat.completion"
    err = _jsonl(client, b.error_file_id)
    assert len(err) == 1 and err[0]["custom_id"] == "req-1"
    assert err[0]["response"]["status_code"] == 500
    assert "error" in err[0]["response"]["body"]
    assert srv.counts["batch_lines"] == 3 and srv.counts["chat"] == 0
    assert srv.counts["batches_create"] == 1 and srv.counts["batches_get"] == 2
    assert client.batches.retrieve(b.id).status == "completed"  # stays terminal


def test_batch_all_ok_has_no_error_file(srv, client, tmp_path):
    b = _upload_batch(client, tmp_path, ["a", "b"])
    for _ in range(2):
        b = client.batches.retrieve(b.id)
    assert b.status == "completed" and b.error_file_id is None
    assert len(_jsonl(client, b.output_file_id)) == 2


def test_expired_batch(srv, client, tmp_path):
    srv.expire_next_batch = True
    b = _upload_batch(client, tmp_path, ["a", "b"])
    for _ in range(2):
        b = client.batches.retrieve(b.id)
    assert b.status == "expired" and b.output_file_id is None
    assert b.request_counts.completed == 0 and b.request_counts.failed == 0
    assert srv.counts["batch_lines"] == 0
    assert srv.expire_next_batch is False  # only the next batch
    b2 = _upload_batch(client, tmp_path, ["c"])
    for _ in range(2):
        b2 = client.batches.retrieve(b2.id)
    assert b2.status == "completed"


def test_cancel_batch(srv, client, tmp_path):
    b = _upload_batch(client, tmp_path, ["a"])
    assert client.batches.cancel(b.id).status == "cancelled"
    assert client.batches.retrieve(b.id).status == "cancelled"
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")


def test_unknown_route_is_404_json(srv):
    req = urllib.request.Request(srv.base_url + "/nope",
                                 headers={"Authorization": "Bearer sk-test"})
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(req, timeout=5)
    assert ei.value.code == 404
    assert set(json.loads(ei.value.read())["error"]) == {"message", "type", "param", "code"}


def test_cli_foreground_process():
    script = Path(__file__).with_name("openai_server.py")
    proc = subprocess.Popen([sys.executable, str(script), "--port", "0", "--api-key", "sk-cli"],
                            stdout=subprocess.PIPE, text=True)
    try:
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:")
        c = openai.OpenAI(base_url=base_url, api_key="sk-cli", max_retries=0, timeout=5)
        assert ask(c, "Gold label: UNSAFE").choices[0].message.content.endswith("UNSAFE")
    finally:
        proc.terminate()
        proc.wait(timeout=5)
