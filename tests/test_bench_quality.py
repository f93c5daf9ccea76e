"""bench/quality.py: --set reaches the validated Params (bad keys named); an adapter left in
--work is reused only when what it was trained from is the same."""
import json

import pytest
from helpers_bench import bench_module

from guardrsft.config import ParamsError


@pytest.fixture(scope="module")
def quality():
    yield from bench_module("quality")


def args(quality, *argv):
    return quality.parse_args(["--out", "/tmp/unused", *argv])


def test_set_overrides_reach_params(quality):
    a = args(quality, "--set", "train.lora_r=128", "--set", "train.lora_alpha=64", "--lr", "5e-4")
    p = quality.params_with(quality.overrides(a))
    assert (p.train.lora_r, p.train.lora_alpha, p.lr) == (128, 64, 5e-4)


def test_set_unknown_key_is_named(quality):
    a = args(quality, "--set", "train.lora_rank=8")
    with pytest.raises(ParamsError, match="lora_rank"):
        quality.params_with(quality.overrides(a))
    a = args(quality, "--set", "trian.lora_r=8")
    with pytest.raises(ParamsError, match="trian"):
        quality.params_with(quality.overrides(a))


def test_set_without_value_exits_2(quality, capsys):
    a = args(quality, "--set", "train.lora_r")
    with pytest.raises(SystemExit) as e:
        quality.overrides(a)
    assert e.value.code == 2 and "KEY=VALUE" in capsys.readouterr().err


def test_finished_adapter_is_reused_only_for_the_same_params_and_traces(quality, tmp_path, monkeypatch):
    monkeypatch.setenv("GUARDRSFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GUARDRSFT_BASE_MODEL", "/root/gpu/smollm2-135m-instruct")
    traces = tmp_path / "train.jsonl"
    traces.write_text('{"id": "a"}\n')

    def key(*argv, path=traces):
        return quality.adapter_key(quality.params_with(quality.overrides(args(quality, *argv))), path)

    k = key()
    # what changes the trained adapter changes the key: lr, seed, a train.* key, the traces, the base
    assert k != key("--lr", "5e-4") and k != key("--seed", "1") and k != key("--epochs", "1")
    assert k != key("--set", "train.balance_per_policy=false")
    traces2 = tmp_path / "other.jsonl"
    traces2.write_text('{"id": "b"}\n')
    assert k != key(path=traces2)
    monkeypatch.setenv("GUARDRSFT_BASE_MODEL", "/root/gpu/other-model")
    assert k != key()
    monkeypatch.setenv("GUARDRSFT_BASE_MODEL", "/root/gpu/smollm2-135m-instruct")
    # evaluation and HS-DPO options do not: a second call may evaluate or mine differently
    assert k == key("--max-new-tokens", "64", "--eval-batch", "64", "--test-items", "0", "--hsdpo-items", "400",
                    "--set", "evaluate.max_new_tokens=10")

    adapter = tmp_path / "adapter_rsft"
    record = {"key": k, "train": {"steps": 986}, "train_metrics": {}, "loss_csv": "", "phases": {}}
    assert quality.reusable(adapter, k) is None  # nothing trained yet
    adapter.mkdir()
    quality.meta_path(adapter).write_text(json.dumps(record))
    assert quality.meta_path(adapter) == tmp_path / "adapter_rsft.json"
    assert quality.reusable(adapter, k) is None  # a folder without adapter_config.json is unfinished
    (adapter / "adapter_config.json").write_text("{}")
    assert quality.reusable(adapter, k) == record
    assert quality.reusable(adapter, k, retrain=True) is None  # --retrain
    assert quality.reusable(adapter, "0" * 16) is None  # trained with other params: train again


def test_extra_train_items_go_to_the_train_split_only(quality, tmp_path, monkeypatch):
    from guardrsft.data import DataError
    from guardrsft.io import read_jsonl
    from guardrsft.pipeline import _prepare

    monkeypatch.setenv("GUARDRSFT_BASE_MODEL", "/root/gpu/smollm2-135m-instruct")
    p = quality.params_with(quality.overrides(args(quality, "--test-fraction", "0.25")))
    base = [{"content": f"base item {i}", "labels": ["violence"] if i % 2 else []} for i in range(16)]
    (tmp_path / "data.json").write_text(json.dumps({"samples": base}))
    _prepare(p, str(tmp_path / "data.json"), str(tmp_path / "prep"), str(tmp_path / "m.json"))
    test_before = (tmp_path / "prep/test.jsonl").read_text()
    n_train = len(read_jsonl(tmp_path / "prep/train.jsonl"))
    extra = [{"content": f"pseudo item {i}", "labels": ["illegal"], "source": "pseudo:gr_harmful"} for i in range(3)]
    (tmp_path / "pseudo.json").write_text(json.dumps({"samples": extra}))
    (tmp_path / "pseudo.counts.json").write_text(json.dumps({"added": 3}))
    rep = quality.add_extra_train(p, tmp_path / "pseudo.json", tmp_path / "prep")
    train = read_jsonl(tmp_path / "prep/train.jsonl")
    assert len(train) == n_train + 3 and {r["content"] for r in train[-3:]} == {e["content"] for e in extra}
    assert (tmp_path / "prep/test.jsonl").read_text() == test_before  # the same test items as --data alone
    assert rep["items"] == 3 and rep["labels"]["policy_illegal"] == 3 and rep["made_by"] == {"added": 3}
    # an item already in --data (any split) is refused, by name
    (tmp_path / "dup.json").write_text(json.dumps({"samples": [base[0]]}))
    with pytest.raises(DataError, match="dup.json.*already in --data"):
        quality.add_extra_train(p, tmp_path / "dup.json", tmp_path / "prep")
