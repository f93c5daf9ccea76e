"""Sharded classification and the generic runner, with real worker processes on the CPU:
2 processes give exactly one process's results; a killed shard resumes from its own cache."""
import json
import os
from pathlib import Path

import pytest

from conftest import ROOT
from fixtures.tiny_model import build_tiny_model
from guardrsft.guard import load_guard
from guardrsft.shard import ShardError, classify_sharded, run_sharded

TIMING = ("latency_s",)  # wall-clock per answer: the only field allowed to differ


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def strip(results):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in results]


def items(n=7):
    # different lengths (the guard sorts by length) and one repeated text
    out = [{"content": f"policy content {i} " + "word " * (3 * i), "response": None} for i in range(n - 1)]
    return out + [dict(out[2]), ]


def test_two_processes_equal_one_and_resume(tmp_path, tiny, params, monkeypatch):
    """Through evaluate's own entry point: evaluate.processes: 2 shards the items."""
    import dataclasses

    from guardrsft.evaluate import _classify

    monkeypatch.setenv("GUARDRSFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GUARDRSFT_BASE_MODEL", tiny)
    its = items()
    p1 = dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, max_new_tokens=10, batch_size=2))
    one = load_guard(tiny, params=p1).classify(its)  # in-process, no cache
    p2 = dataclasses.replace(p1, evaluate=dataclasses.replace(p1.evaluate, processes=2))
    suites = [{"name": "test", "items": its}]
    two, stats = _classify(p2, suites, None, "zero-shot base model")
    assert strip(two["test"]) == strip(one)
    assert stats["processes"] == 2 and stats["items"] == len(its) and stats["generated_pairs"] > 0
    cache = tmp_path / "cache" / "predictions-shards"
    files = sorted(p.name for p in cache.glob("*.jsonl"))
    assert files == ["shard-0.jsonl", "shard-1.jsonl"]
    # a shard killed mid-write: half its answers kept, the last line torn
    lines = (cache / "shard-1.jsonl").read_text().splitlines()
    kept = len(lines) // 2
    (cache / "shard-1.jsonl").write_text("\n".join(lines[:kept]) + "\n" + lines[kept][: len(lines[kept]) // 2])
    again, st2 = classify_sharded({"base": tiny, "adapter": None}, its, 2, p2, cache)
    assert strip(again) == strip(one)
    assert st2["generated_pairs"] == len(lines) - kept  # only the lost answers were generated again


# a generic worker for the runner itself (importable by the workers through PYTHONPATH)
def square_worker(items, shard, log_dir, die_at=None):
    """Squares items, appending each to its shard's log; dies once at `die_at` (a kill)."""
    log = Path(log_dir) / f"shard-{shard['index']}.jsonl"
    done = {json.loads(x)["i"]: json.loads(x)["sq"] for x in log.read_text().splitlines()} if log.exists() else {}
    marker = Path(log_dir) / "died"
    computed = 0
    for i in items:
        if i in done:
            continue
        if i == die_at and not marker.exists():
            marker.write_text("x")
            os._exit(9)
        with open(log, "a") as f:
            f.write(json.dumps({"i": i, "sq": i * i}) + "\n")
        done[i] = i * i
        computed += 1
    return [done[i] for i in items], {"computed": computed}


def test_runner_merges_in_order_and_a_killed_shard_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("GUARDRSFT_CACHE", str(tmp_path / "cache"))
    data = list(range(11))
    kw = {"log_dir": str(tmp_path), "die_at": 7}  # 7 is shard 1's 3rd item (1, 4, 7, 10)
    with pytest.raises(ShardError, match=r"shard 2/3 \(CPU\) exited with status 9.*rerun to resume"):
        run_sharded("test_shard:square_worker", data, 3, kwargs=kw, label="t")
    assert len((tmp_path / "shard-1.jsonl").read_text().splitlines()) == 2  # 1 and 4 were done
    out, stats = run_sharded("test_shard:square_worker", data, 3, kwargs=kw, label="t")
    assert out == [i * i for i in data]
    # shards 0 and 2 had finished; shard 1 computed only 7 and 10
    assert [s["computed"] for s in stats] == [0, 2, 0]
    assert not list((tmp_path / "cache" / "shards").iterdir())  # work folders removed, failed run's too
