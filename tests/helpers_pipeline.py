"""Shared by the tests that run the tiny pipeline through real `dvc` (test_e2e, test_team):
the tiny params, a repo copy that uses them, subprocess and server helpers."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from conftest import copy_repo

# params.yaml edits that make the cpu preset a minutes-long pipeline check
TINY = {
    "  max_steps: null ": "  max_steps: 2 ",
    "  batch_size: null    # null: preset": "  batch_size: 2",
    "  save_steps: 10": "  save_steps: 1",
    "  max_samples: null ": "  max_samples: 2 ",
    "  max_new_tokens: null": "  max_new_tokens: 12",
}


def run(cmd, cwd, env, check=True, timeout=1800):
    """Run a command; a hang fails after `timeout` s with what it printed (its whole process
    group is killed: dvc's workers and stage scripts too) instead of stalling the test run."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            shell=isinstance(cmd, str), start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"{cmd} still running after {timeout} s, killed:\n{stdout[-3000:]}\n{stderr[-5000:]}")
    out = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out


def tiny_env(cache_dir, **extra) -> dict:
    """The environment of a `dvc` run: the venv first on PATH, a private guardrsft cache, a git identity."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               GUARDRSFT_CACHE=str(cache_dir), DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def make_tiny_repo(dst: Path) -> Path:
    """A copy of the repo's files with the tiny params and no dvc.lock (git not initialized)."""
    repo = copy_repo(dst)
    text = (repo / "params.yaml").read_text()
    for old, new in TINY.items():
        assert old in text, old
        text = text.replace(old, new)
    (repo / "params.yaml").write_text(text)
    (repo / "dvc.lock").unlink(missing_ok=True)
    return repo


def exp_rows(shown: list) -> list[dict]:
    """`dvc exp show --json` flattened: one dict per commit or experiment with its name, lr,
    eval metrics and output hashes."""
    rows = []
    for entry in shown:
        rows.append(entry)
        for e in entry.get("experiments") or []:
            rows += e.get("revs", [])
    out = []
    for r in rows:
        data = r.get("data") or {}
        lr = (data.get("params") or {}).get("params.yaml", {}).get("data", {}).get("lr")
        out.append({"name": r.get("name"), "rev": r.get("rev"), "lr": None if lr is None else float(lr),
                    "eval": (data.get("metrics") or {}).get("metrics/eval.json", {}).get("data"),
                    "outs": {k: v.get("hash") for k, v in (data.get("outs") or {}).items()}})
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server subprocess on 127.0.0.1 in its own process group, stopped by its PID."""

    def __init__(self, cmd: list[str], ready_url: str, log: Path, env: dict | None = None):
        self.ready_url, self.log = ready_url, log
        self.proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"{self.ready_url} not ready after {timeout} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own group: only what it started
                self.proc.wait()
        try:  # workers left behind in its group (mlflow's uvicorn)
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
