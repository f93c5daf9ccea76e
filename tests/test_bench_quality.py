"""bench/quality.py's params overrides: --set reaches the validated Params, bad keys are named."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from guardrsft.config import ParamsError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench/quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_quality", None)


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
    traces = tmp_path / "train.jsonl"
    traces.write_text('{"id": "a"}\n')
    p = quality.params_with(quality.overrides(args(quality)))
    key = quality.adapter_key(p, traces)
    # another lr, another seed, or other traces: another key
    assert key != quality.adapter_key(quality.params_with(quality.overrides(args(quality, "--lr", "5e-4"))), traces)
    assert key != quality.adapter_key(quality.params_with(quality.overrides(args(quality, "--seed", "1"))), traces)
    assert key != quality.adapter_key(
        quality.params_with(quality.overrides(args(quality, "--set", "train.balance_per_policy=false"))), traces)
    traces2 = tmp_path / "other.jsonl"
    traces2.write_text('{"id": "b"}\n')
    assert key != quality.adapter_key(p, traces2)
    assert key == quality.adapter_key(quality.params_with(quality.overrides(args(quality))), traces)

    adapter = tmp_path / "adapter_rsft"
    assert quality.reusable(adapter, key) is None  # nothing trained yet
    adapter.mkdir()
    (tmp_path / "adapter_rsft.json").write_text(json.dumps({"key": key, "train": {"steps": 986}}))
    assert quality.reusable(adapter, key) is None  # a folder without adapter_config.json is unfinished
    (adapter / "adapter_config.json").write_text("{}")
    assert quality.reusable(adapter, key) == {"steps": 986}
    assert quality.reusable(adapter, "0" * 16) is None  # trained with other params: train again


def test_retrain_flag(quality):
    assert args(quality).retrain is False and args(quality, "--retrain").retrain is True
