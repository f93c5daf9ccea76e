"""A killed train_rsft resumes from its last checkpoint, with the same data order; two
uninterrupted CPU runs write the same bytes (adapter and tracked metrics)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT

from guardrsft.io import timings_path, write_jsonl

TINY = {"  max_steps: null ": "  max_steps: 4 ", "  batch_size: null    # null: preset": "  batch_size: 1",
        "  save_steps: 10": "  save_steps: 1", "  enabled: true": "  enabled: false"}


def setup(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    for a, b in TINY.items():
        assert a in text
        text = text.replace(a, b)
    (tmp_path / "params.yaml").write_text(text)
    # every policy of every item: the joint prompt (params.yaml's default) trains one example per item
    policies = ("hate_speech", "violence", "self_harm", "sexual_minors", "harassment", "illegal")
    rows = [{"id": f"s{i}", "policy": q, "content": f"sample text number {i}",
             "reasoning": "Step 1 (intent): x.\nStep 2 (harms): y.\nStep 3 (policy criteria): z.",
             "classification": "UNSAFE" if q == "violence" and i % 2 == 0 else "SAFE", "origin": "template"}
            for i in range(8) for q in policies]
    write_jsonl(tmp_path / "train.jsonl", rows)


def cmd(tmp_path, name):
    return [str(Path(sys.executable).parent / "guardrsft"), "train", "--traces", str(tmp_path / "train.jsonl"),
            "--adapter", str(tmp_path / name / "adapter"), "--metrics", str(tmp_path / name / "train.json"),
            "--plot", str(tmp_path / name / "loss.csv"), "--params", str(tmp_path / "params.yaml")]


def losses(path):
    return {int(line.split(",")[0]): float(line.split(",")[1]) for line in path.read_text().splitlines()[1:]}


def test_kill_then_resume_matches_an_uninterrupted_run(tmp_path, embedded_model, cache_dir):
    setup(tmp_path)
    env = dict(os.environ, GUARDRSFT_CACHE=str(cache_dir))
    ref = subprocess.run(cmd(tmp_path, "ref"), env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-3000:]
    # another user: the same converted base under another cache path (PEFT records that path)
    other = tmp_path / "other-cache"
    other.mkdir()
    (other / "models").symlink_to(Path(cache_dir) / "models", target_is_directory=True)
    again = subprocess.run(cmd(tmp_path, "again"), env=dict(env, GUARDRSFT_CACHE=str(other)),
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    for f in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/README.md",
              "adapter/guardrsft.json", "train.json", "loss.csv"):  # bit for bit: what git and dvc.lock track of two runs
        assert (tmp_path / "ref" / f).read_bytes() == (tmp_path / "again" / f).read_bytes(), f
    assert "train_seconds" in json.loads(timings_path(tmp_path / "ref/train.json").read_text())
    # the checkpoint dir is removed after success, so the same params train afresh here
    proc = subprocess.Popen(cmd(tmp_path, "run"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900  # a hang guard: slow CI boxes too
    ckpts = []
    while time.time() < deadline and proc.poll() is None:
        ckpts = list(Path(cache_dir, "checkpoints").glob("*/checkpoint-2/trainer_state.json"))
        if ckpts:
            break
        time.sleep(0.2)
    assert ckpts, "no checkpoint-2 before the run ended"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run/adapter").exists()  # nothing half-written
    out = subprocess.run(cmd(tmp_path, "run"), env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from" in out.stderr
    m = json.loads((tmp_path / "run/train.json").read_text())
    m.update(json.loads(timings_path(tmp_path / "run/train.json").read_text()))  # speed, resume: not tracked
    assert m["resumed"] is True and m["steps"] == 4
    start = m["resumed_from_step"]
    assert 2 <= start <= 4  # killed at checkpoint-2 or just after it
    # samples/s over the steps this process ran, not the 4 of the whole run (train_seconds is rounded
    # to 0.1 s and samples/s to 0.001: the product can be off by both roundings, no more)
    done = (4 - start) * m["global_batch"]
    assert abs(m["samples_per_second"] * m["train_seconds"] - done) <= 0.05 * m["samples_per_second"] \
        + 0.0005 * m["train_seconds"] + 1e-6
    a, b = losses(tmp_path / "ref/loss.csv"), losses(tmp_path / "run/loss.csv")
    assert set(b) >= {3, 4}
    for step in (3, 4):  # same data order and state after the resume
        assert abs(a[step] - b[step]) <= 1e-3 * abs(a[step]), (step, a[step], b[step])
    assert (tmp_path / "run/adapter/adapter_model.safetensors").exists()
