"""bench/quality.py's params overrides: --set reaches the validated Params, bad keys are named."""
import importlib.util
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
