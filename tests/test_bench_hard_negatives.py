"""bench/hard_negatives.py's mining rule and bench/quality.py --hard-negatives' marking, on hand-made rows."""
import json

import pytest
from helpers_bench import bench_module

from guardrsft.balance import balance
from guardrsft.io import read_jsonl, write_jsonl

POLICIES = ["hate_speech", "violence", "self_harm", "sexual_minors", "harassment", "illegal"]


@pytest.fixture(scope="module")
def hn():
    yield from bench_module("hard_negatives")


@pytest.fixture(scope="module")
def q():
    yield from bench_module("quality")


def _rows(unsafe_of: dict, n: int = 4) -> list[dict]:
    return [{"id": f"s{i}", "policy": p, "content": f"text {i}", "reasoning": "r",
             "classification": "UNSAFE" if p in unsafe_of.get(i, ()) else "SAFE"} for i in range(n) for p in POLICIES]


def test_only_items_benign_for_every_policy_are_mined(hn):
    rows = _rows({1: ["violence"]}) + [{"id": "half", "policy": "violence", "content": "x", "reasoning": "r",
                                        "classification": "SAFE"}]  # not every policy: unknown gold elsewhere
    items = hn.benign_items(rows, POLICIES)
    assert [it["id"] for it in items] == ["s0", "s2", "s3"]
    results = [{"verdicts": {"hate_speech": "UNSAFE", "violence": "SAFE", **{p: "SAFE" for p in POLICIES[2:]}}},
               {"verdicts": {p: "SAFE" for p in POLICIES}},
               {"verdicts": {**{p: "SAFE" for p in POLICIES}, "illegal": "UNSAFE", "harassment": None}}]
    assert hn.hard_pairs(items, results) == [{"id": "s0", "policy": "hate_speech"}, {"id": "s3", "policy": "illegal"}]


def test_trained_pairs_are_the_balance_of_the_adapters_run(hn, q):
    rows = _rows({1: ["violence"]}, n=10)
    p = q.params_with({"train.safe_per_item": 2, "train.unsafe_share": 0.0, "seed": 5})
    kept, _ = balance(rows, 2, 0.0, 5, per_policy=p.train.balance_per_policy)
    assert hn.trained_pairs(rows, p) == {(r["id"], r["policy"]) for r in kept if r["classification"] == "SAFE"}
    assert len(hn.trained_pairs(rows, p)) == 20


def test_mark_hard_marks_the_pairs_and_refuses_pairs_of_another_run(q, tmp_path, capsys):
    traces = tmp_path / "train.jsonl"
    write_jsonl(traces, _rows({1: ["violence"]}))
    hard = tmp_path / "hard.json"
    hard.write_text(json.dumps({"pairs": [{"id": "s0", "policy": "hate_speech"}, {"id": "s2", "policy": "illegal"}]}))
    assert q.mark_hard(traces, hard) == {"file": str(hard), "pairs": 2, "items": 2}
    rows = read_jsonl(traces)
    assert {(r["id"], r["policy"]) for r in rows if r.get("hard")} == {("s0", "hate_speech"), ("s2", "illegal")}
    assert len(rows) == 24
    before = traces.read_bytes()
    hard.write_text(json.dumps({"pairs": [{"id": "s1", "policy": "violence"}]}))  # an UNSAFE pair here
    with pytest.raises(SystemExit) as e:
        q.mark_hard(traces, hard)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "1 of 1 pairs have no SAFE row" in err and str(hard) in err and "('s1', 'violence')" in err
    assert traces.read_bytes() == before  # nothing half-written
