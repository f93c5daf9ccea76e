"""MLflow run status: FINISHED, FAILED on an exception, KILLED on SIGTERM."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

SCRIPT = """
import sys, time
from guardrsft.config import load_params
from guardrsft.tracking import stage_run
p = load_params(sys.argv[1])
with stage_run(p, sys.argv[2]) as ml:
    ml.log_metric("x", 1.0)
    if sys.argv[2] == "boom":
        raise RuntimeError("boom")
    if sys.argv[2] == "slow":
        print("started", flush=True)
        time.sleep(60)
"""


def runs(uri):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    return {r.data.tags["stage"]: r for r in c.search_runs([c.get_experiment_by_name("guardrsft").experiment_id])}


def test_run_status_finished_failed_killed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    text = (ROOT / "params.yaml").read_text().replace("  tracking_uri: null ", f"  tracking_uri: {uri} ")
    (tmp_path / "params.yaml").write_text(text)
    (tmp_path / "s.py").write_text(SCRIPT)
    env = dict(os.environ, DVC_EXP_NAME="exp-abc")
    cmd = [sys.executable, str(tmp_path / "s.py"), str(tmp_path / "params.yaml")]
    assert subprocess.run(cmd + ["ok"], env=env).returncode == 0
    assert subprocess.run(cmd + ["boom"], env=env, capture_output=True).returncode != 0
    proc = subprocess.Popen(cmd + ["slow"], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    r = runs(uri)
    assert {k: v.info.status for k, v in r.items()} == {"ok": "FINISHED", "boom": "FAILED", "slow": "KILLED"}
    assert r["ok"].info.run_name == "exp-abc/ok" and r["ok"].data.tags["dvc_exp_name"] == "exp-abc"
    assert r["ok"].data.params["lr"] == "5e-05" and r["ok"].data.metrics["x"] == 1.0
