"""train_rsft under `accelerate launch`: the launcher command, the global-batch rule, the errors,
and two real CPU processes (gloo) of the DDP path on a tiny random Llama: same loss curve as
one process, only rank 0 writes, a run killed while writing a checkpoint resumes."""
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, per_policy_text
from fixtures.tiny_model import build_tiny_model
from guardrsft import distributed
from guardrsft.config import ParamsError
from guardrsft.io import timings_path, write_jsonl


def with_train(params, **kw):
    return dataclasses.replace(params, train=dataclasses.replace(params.train, **kw))


# ------------------------------------------------------------------ fast: rules and messages
def test_global_batch_is_kept_by_dividing_grad_accum(params):
    a100 = dataclasses.replace(params, preset="a100")  # 4 x 2
    assert distributed.plan(a100, 2) == {"processes": 2, "per_device_batch": 4, "grad_accum": 1, "global_batch": 8}
    assert distributed.plan(with_train(params, batch_size=2, grad_accum=8), 4)["grad_accum"] == 2
    with pytest.raises(ParamsError) as e:
        distributed.plan(a100, 4)  # 2 micro-batches cannot be split over 4 GPUs
    msg = str(e.value)
    # the fix keeps the global batch 8: per-device 2 x accumulation 1 x 4 GPUs
    assert "train.grad_accum=2" in msg and "train.batch_size: 2 and train.grad_accum: 4" in msg
    assert "params.yaml" in msg and "train.num_processes" in msg


def test_distributed_on_the_cpu_preset_is_refused(params, monkeypatch):
    monkeypatch.delenv(distributed.CPU_ENV, raising=False)
    with pytest.raises(ParamsError, match=r"train.distributed: ddp.*preset `cpu`.*train.distributed: none"):
        distributed.check(with_train(params, distributed="ddp"))


def test_gpu_preset_without_gpus_is_refused(params, monkeypatch):
    monkeypatch.delenv(distributed.CPU_ENV, raising=False)
    if distributed.visible_gpus():
        pytest.skip("this machine has a GPU")
    p = with_train(dataclasses.replace(params, preset="a100"), distributed="fsdp")
    with pytest.raises(ParamsError, match=r"no CUDA GPU is visible.*train.distributed: none"):
        distributed.check(p)


def test_missing_deepspeed_and_4bit_sharding_are_refused(params, monkeypatch):
    import importlib.util

    monkeypatch.setenv(distributed.CPU_ENV, "1")  # get past the device checks
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(ParamsError, match=r"needs DeepSpeed.*guardrsft\[deepspeed\].*fsdp"):
            distributed.check(with_train(params, distributed="deepspeed_zero3", grad_accum=2))
    t4 = with_train(dataclasses.replace(params, preset="t4"), distributed="fsdp")
    with pytest.raises(ParamsError, match=r"4-bit.*train.distributed: ddp"):
        distributed.check(t4)


def test_launch_command(params, monkeypatch):
    p = with_train(dataclasses.replace(params, preset="a100"), distributed="fsdp")
    cmd = distributed.launch_command(p, "/r/stages/train_rsft.py", ["a", "b"], 2, port=29777)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--config_file") + 1].endswith("configs/accelerate/fsdp.yaml")
    assert Path(cmd[cmd.index("--config_file") + 1]).exists()
    assert cmd[cmd.index("--num_processes") + 1] == "2" and cmd[cmd.index("--mixed_precision") + 1] == "bf16"
    assert cmd[cmd.index("--main_process_port") + 1] == "29777" and cmd[-3:] == ["/r/stages/train_rsft.py", "a", "b"]
    for name in ("ddp", "fsdp", "deepspeed_zero3"):  # every shipped config parses as accelerate's
        from accelerate.commands.config.config_args import load_config_from_file

        cfg = load_config_from_file(str(distributed.CONFIG_DIRS[1] / f"{name}.yaml"))
        assert cfg.num_machines == 1


def test_partial_checkpoint_is_not_resumed(tmp_path):
    from guardrsft.train import last_checkpoint

    assert last_checkpoint(tmp_path / "none") is None
    for n, complete in ((2, True), (4, False), (10, True), (12, False)):
        d = tmp_path / f"checkpoint-{n}"
        d.mkdir()
        (d / "adapter_model.safetensors").write_bytes(b"x")
        if complete:
            (d / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")


# ------------------------------------------------------------------ slow: 2 real CPU processes
# Loaded at start-up by every launched worker (PYTHONPATH): records the files each rank opens
# for writing, renames, creates or removes under the watched folders, and can SIGKILL rank 0
# when it starts writing a given path (a crash in the middle of a checkpoint).
AUDIT = textwrap.dedent('''
    import os, sys
    LOG, KILL = os.environ.get("AUDIT_DIR"), os.environ.get("AUDIT_KILL")
    WATCH = [w for w in os.environ.get("AUDIT_WATCH", "").split(os.pathsep) if w]
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND
    if LOG and "RANK" in os.environ:
        RANK, busy = os.environ["RANK"], []
        def hook(event, args):
            if busy:
                return
            if event == "open":
                if isinstance(args[0], int) or not (args[2] or 0) & WRITE:
                    return
                path = args[0]
            elif event == "os.rename":
                path = args[1]
            elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
                path = args[0]
            else:
                return
            path = os.path.abspath(os.fsdecode(path))
            if not any(path.startswith(w) for w in WATCH):
                return
            busy.append(1)
            with open(os.path.join(LOG, "writes.%s.txt" % RANK), "a") as f:
                f.write(event + "\\t" + path + "\\n")
            busy.pop()
            if KILL and RANK == "0" and KILL in path:
                os.kill(os.getpid(), 9)
        sys.addaudithook(hook)
''')

EDITS = {"  max_steps: null ": "  max_steps: 6 ", "  batch_size: null    # null: preset": "  batch_size: 1",
         "  grad_accum: null": "  grad_accum: 2", "  save_steps: 10": "  save_steps: 2",
         "  max_length: null": "  max_length: 1536"}


def make_run_dir(d: Path, distributed_name: str, mlflow: bool) -> Path:
    d.mkdir(parents=True)
    text = (ROOT / "params.yaml").read_text()
    for a, b in {**EDITS, "  distributed: none ": f"  distributed: {distributed_name} ",
                 "  num_processes: null ": "  num_processes: 2 "}.items():
        assert a in text, a
        text = text.replace(a, b)
    if not mlflow:
        text = text.replace("  enabled: true\n  log_adapter", "  enabled: false\n  log_adapter")
    (d / "params.yaml").write_text(per_policy_text(text))  # the rows below are one policy's
    rows = [{"id": f"s{i}", "policy": "violence", "content": f"policy content number {i}" + " word" * (i % 5),
             "reasoning": "Step 1 (intent): x.\nStep 2 (harms): y.\nStep 3 (policy criteria): z.",
             "classification": "SAFE" if i % 2 else "UNSAFE", "origin": "template"} for i in range(8)]
    write_jsonl(d / "train.jsonl", rows)
    return d


def stage(d: Path, env: dict, timeout=900):  # a hang guard, not a speed check
    cmd = [sys.executable, str(ROOT / "stages/train_rsft.py"), "train.jsonl", "out/adapter", "out/train.json",
           "out/loss.csv"]
    proc = subprocess.Popen(cmd, cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher's own group: it and its ranks
        proc.wait()
        raise
    return proc.returncode, out


def losses(path: Path) -> dict[int, float]:
    return {int(r.split(",")[0]): float(r.split(",")[1]) for r in path.read_text().splitlines()[1:]}


def written(audit: Path, rank: int) -> list[str]:
    f = audit / f"writes.{rank}.txt"
    return f.read_text().splitlines() if f.exists() else []


def test_two_cpu_processes_ddp_rank0_writes_and_resume(tmp_path, params, monkeypatch):
    model = build_tiny_model(tmp_path / "tiny")
    cache, audit, hook = tmp_path / "cache", tmp_path / "audit", tmp_path / "hook"
    audit.mkdir()
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(AUDIT)
    env = dict(os.environ, GUARDRSFT_CACHE=str(cache), GUARDRSFT_BASE_MODEL=model, HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               GUARDRSFT_ROOT=str(tmp_path))
    env.pop(distributed.CPU_ENV, None)
    # reference: one process (this one: spares a start-up), the same global batch (1 x grad_accum 2)
    from guardrsft.config import load_params
    from guardrsft.train import train

    ref = make_run_dir(tmp_path / "ref", "none", mlflow=False)
    monkeypatch.setenv("GUARDRSFT_CACHE", str(cache))
    monkeypatch.setenv("GUARDRSFT_BASE_MODEL", model)
    train(load_params(ref / "params.yaml"), str(ref / "train.jsonl"), *(str(ref / "out" / f)
                                                                      for f in ("adapter", "train.json", "loss.csv")))

    run = make_run_dir(tmp_path / "ddp", "ddp", mlflow=True)
    denv = dict(env, **{distributed.CPU_ENV: "1"}, PYTHONPATH=f"{hook}{os.pathsep}{env.get('PYTHONPATH', '')}",
                AUDIT_DIR=str(audit), AUDIT_WATCH=f"{run}{os.pathsep}{cache / 'checkpoints'}",
                AUDIT_KILL="checkpoint-4/adapter_config.json")
    rc, out = stage(run, denv)  # rank 0 dies while writing checkpoint-4
    assert rc != 0, out[-4000:]
    assert "grad_accum 1 x 2 = global batch 2" in out and "accelerate.commands.launch" in out
    assert not (run / "out").exists()  # nothing half-written
    ckpts = sorted(p.name for p in cache.glob("checkpoints/*/checkpoint-*"))
    assert ckpts == ["checkpoint-2", "checkpoint-4"], ckpts  # checkpoint-4 cut short

    denv.pop("AUDIT_KILL")
    rc, out = stage(run, denv)
    assert rc == 0, out[-4000:]
    assert "checkpoint-2" in out and "resuming from" in out  # not the partial checkpoint-4
    m = json.loads((run / "out/train.json").read_text())
    m.update(json.loads(timings_path(run / "out/train.json").read_text()))  # speed and resume: not tracked
    assert m["processes"] == 2 and m["distributed"] == "ddp" and m["resumed"] and m["steps"] == 6
    assert m["global_batch"] == 2 and m["grad_accum_per_process"] == 1
    assert (run / "out/adapter/adapter_model.safetensors").exists()
    assert not list(cache.glob("checkpoints/*"))  # removed once the adapter is written
    # same examples per optimizer step: the two-process loss curve is the one-process one
    one, two = losses(ref / "out/loss.csv"), losses(run / "out/loss.csv")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5, 6]
    assert max(abs(one[s] - two[s]) for s in one) < 1e-4 * max(one.values()), (one, two)

    # rank 0 wrote the outputs and the checkpoints; rank 1 wrote nothing there (Trainer's
    # per-rank RNG file is written by torch's C++ writer, unseen here and allowed anyway)
    w0, w1 = written(audit, 0), written(audit, 1)
    assert any(line.endswith(str(run / "out/adapter")) for line in w0)
    assert any("train.json" in line for line in w0) and any("trainer_state.json" in line for line in w0)
    # (Trainer's RNG save makes the checkpoint folder on every rank, exist_ok)
    assert [x for x in w1 if "rng_state_1" not in x and not re.fullmatch(r"os.mkdir\t.*/checkpoint-\d+", x)] == [], w1
    # MLflow: one train_rsft run per launch (the killed one and the resumed one), from rank 0 only
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.stage = 'train_rsft'")
    assert len(runs) == 2, [r.info.run_name for r in runs]
