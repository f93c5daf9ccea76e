"""MLflow runs: one parent per pipeline run, one child per stage; FINISHED, FAILED on an
exception, KILLED on SIGTERM; dvc.lock hashes as tags; PNG plots (real subprocesses, sqlite)."""
import os
import signal
import stat
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = """
import sys, time
from guardrsft.config import load_params
from guardrsft.tracking import log_history, log_parent_artifacts, log_summary, stage_run
p = load_params(sys.argv[1])
with stage_run(p, sys.argv[2]) as ml:
    ml.log_metric("x", 1.0)
    log_summary({"eval": {"exact_match": 0.25}})
    log_history(ml, [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}])
    log_parent_artifacts(sys.argv[1], "cfg")
    if sys.argv[2] == "boom":
        raise RuntimeError("boom")
    if sys.argv[2] == "slow":
        print("started", flush=True)
        time.sleep(60)
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating its tables takes ~15 s here); each test logs
    to its own MLflow experiment in it."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


def all_runs(uri, experiment):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    return c, c.search_runs([c.get_experiment_by_name(experiment).experiment_id])


def setup(tmp_path, uri, experiment):
    text = (ROOT / "params.yaml").read_text().replace("  tracking_uri: null ", f"  tracking_uri: {uri} ")
    text = text.replace("  experiment: guardrsft", f"  experiment: {experiment}")
    (tmp_path / "params.yaml").write_text(text)
    (tmp_path / "s.py").write_text(SCRIPT)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(f"git init -q && {' '.join(git)} commit -q --allow-empty -m t", shell=True, cwd=tmp_path, check=True)
    return uri, [sys.executable, str(tmp_path / "s.py"), str(tmp_path / "params.yaml")]


def test_run_status_finished_failed_killed(tmp_path, store):
    uri, cmd = setup(tmp_path, store, "status")
    env = dict(os.environ, DVC_EXP_NAME="exp-abc")
    assert subprocess.run(cmd + ["ok"], env=env, cwd=tmp_path).returncode == 0
    assert subprocess.run(cmd + ["boom"], env=env, cwd=tmp_path, capture_output=True).returncode != 0
    proc = subprocess.Popen(cmd + ["slow"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    client, runs = all_runs(uri, "status")
    children = {r.data.tags["stage"]: r for r in runs if r.data.tags["stage"] != "pipeline"}
    parents = {r.info.run_id: r for r in runs if r.data.tags["stage"] == "pipeline"}
    assert {k: v.info.status for k, v in children.items()} == {"ok": "FINISHED", "boom": "FAILED", "slow": "KILLED"}
    # no dvc process above them: each script is its own pipeline run, and its parent ends as its stage did
    assert len(parents) == 3
    for stage, child in children.items():
        parent = parents[child.data.tags["mlflow.parentRunId"]]
        assert parent.info.status == child.info.status, stage
        assert parent.info.run_name == "exp-abc" and parent.data.tags["dvc_exp_name"] == "exp-abc"
        assert parent.data.params["lr"] == "0.002" and parent.data.metrics["eval.exact_match"] == 0.25
        assert [(m.step, m.value) for m in client.get_metric_history(parent.info.run_id, "loss")] == [(1, 2.0), (2, 1.5)]
        assert [a.path for a in client.list_artifacts(parent.info.run_id, "cfg")] == ["cfg/params.yaml"]
    ok = children["ok"]
    assert ok.info.run_name == "exp-abc/ok" and ok.data.tags["dvc_exp_name"] == "exp-abc"
    assert ok.data.params["lr"] == "0.002" and ok.data.metrics["x"] == 1.0 and "eval.exact_match" not in ok.data.metrics
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert ok.data.tags["git_commit"] == parents[ok.data.tags["mlflow.parentRunId"]].data.tags["git_commit"] == head


LOCK = """schema: '2.0'
stages:
  build_data:
    outs:
    - path: data/built/training_data.json
      md5: aaa
  prepare:
    deps:
    - path: data/built/training_data.json
      md5: aaa
    outs:
    - path: data/prepared
      md5: bbb.dir
  generate_traces:
    outs:
    - path: data/traces
      md5: ccc.dir
  train_rsft:
    outs:
    - path: models/adapter
      md5: ddd.dir
"""


def test_stages_under_one_dvc_process_share_a_parent_with_lock_hashes(tmp_path, store):
    """A stand-in `dvc` (a shell script of that name) runs two stages like `dvc repro` does:
    both children hang under one parent, tagged with the dvc.lock hashes known before each stage."""
    uri, cmd = setup(tmp_path, store, "shared")
    (tmp_path / "dvc.lock").write_text(LOCK)
    fake = tmp_path / "bin" / "dvc"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nset -e\n{' '.join(cmd)} train_rsft\n{' '.join(cmd)} evaluate\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_EXP")}
    assert subprocess.run([str(fake)], env=env, cwd=tmp_path).returncode == 0
    _, runs = all_runs(uri, "shared")
    parents = [r for r in runs if r.data.tags["stage"] == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.info.run_name.startswith("repro-") and "dvc_exp_name" not in parent.data.tags
    children = {r.data.tags["stage"]: r for r in runs if r.data.tags["stage"] != "pipeline"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children.values()} == {parent.info.run_id}
    assert children["evaluate"].info.run_name == f"{parent.info.run_name}/evaluate"
    # train_rsft's own lock entry is written after it runs: only upstream hashes are trusted
    assert "dvc.adapter_md5" not in children["train_rsft"].data.tags
    assert children["train_rsft"].data.tags["dvc.traces_md5"] == "ccc.dir"
    assert {k: parent.data.tags[k] for k in ("dvc.data_md5", "dvc.prepared_md5", "dvc.traces_md5",
                                             "dvc.adapter_md5")} == {
        "dvc.data_md5": "aaa", "dvc.prepared_md5": "bbb.dir", "dvc.traces_md5": "ccc.dir",
        "dvc.adapter_md5": "ddd.dir"}


def test_flat_params_within_mlflow_limits(params):
    from guardrsft.tracking import flat_params

    flat = flat_params(params)
    assert flat["lr"] == "0.002" and flat["train.lora_r"] == "16" and flat["mlflow.tracking_uri"] == "null"
    assert flat["policies.violence"].startswith("Threatens")
    assert all(len(k) <= 250 and len(v) <= 6000 for k, v in flat.items())
    params.prompt.system = "x" * 7000
    assert len(flat_params(params)["prompt.system"]) == 6000


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_png_plots_from_the_stage_csvs(tmp_path):
    from guardrsft import plots

    (tmp_path / "loss.csv").write_text("step,loss,learning_rate\n1,2.0,0.0\n2,1.5,5e-05\n3,1.2,4e-05\n")
    (tmp_path / "confusion.csv").write_text("actual,predicted,model\nharmful,harmful,finetuned\n"
                                            "harmful,parse_error,baseline\nbenign,benign,finetuned\n"
                                            "benign,harmful,baseline\n")
    (tmp_path / "per_policy_f1.csv").write_text("policy,model,f1\nviolence,finetuned,1.0\nillegal,finetuned,0.0\n"
                                                "violence,baseline,0.5\nillegal,baseline,0.0\n")
    loss = plots.loss_curve(tmp_path / "loss.csv", tmp_path / "loss.png")
    assert _png_size(loss) == (600, 350)
    first = loss.read_bytes()
    plots.loss_curve(tmp_path / "loss.csv", loss)
    assert loss.read_bytes() == first  # no timestamp inside: reruns give the same file
    out = plots.render_eval(tmp_path)
    assert [p.name for p in out] == ["confusion.png", "per_policy_f1.png"]
    assert _png_size(out[0]) == (840, 360)  # one panel per model, baseline and fine-tuned
    assert not list(tmp_path.glob(".*.tmp"))
    (tmp_path / "bad.csv").write_text("step,los\n1,2\n")
    with pytest.raises(KeyError):
        plots.loss_curve(tmp_path / "bad.csv", tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_redact_strips_userinfo_and_secret_query_parameters():
    from guardrsft.tracking import redact

    assert redact("http://user:CANARY@127.0.0.1:8000/v1?api_key=CANARY2&model=x") == \
        "http://***@127.0.0.1:8000/v1?api_key=***&model=x"
    signed = "https://b.s3.amazonaws.com/o?X-Amz-Credential=AKIA&X-Amz-Signature=ab12&versionId=3"
    assert redact(signed) == "https://b.s3.amazonaws.com/o?X-Amz-Credential=***&X-Amz-Signature=***&versionId=3"
    assert redact("postgresql://mlflow:pw@db:5432/mlflow") == "postgresql://***@db:5432/mlflow"
    # URLs inside text and containers; everything else untouched
    assert redact(["see https://t:s@h/x?token=a b", {"u": "https://h/?sig=1"}, 3, None]) == \
        ["see https://***@h/x?token=*** b", {"u": "https://h/?sig=***"}, 3, None]
    for same in ("http://127.0.0.1:8000/v1", "sqlite:////tmp/a b/mlflow.db", "unsloth/Llama-3.2-3B-Instruct",
                 "Classification: SAFE", "https://h/p?q=a%20b&page=2"):
        assert redact(same) == same


CANARY_SCRIPT = """
import sys
from guardrsft.config import load_params
from guardrsft.tracking import log_flat_metrics, log_summary, stage_run
p = load_params(sys.argv[1])
with stage_run(p, "generate_traces") as ml:
    # what generate_traces logs with traces.openai.base_urls: request counts keyed by server URL
    servers = {u: {"requests": 3} for u in p.traces.openai.base_urls}
    log_flat_metrics(ml, {"teacher": {"servers": servers}}, prefix="traces.")
    log_summary({"teacher": {"servers": servers}}, prefix="traces.")
"""


def test_no_credential_reaches_mlflow_or_params_resolved(tmp_path, store):
    """A canary password and token in traces.openai.base_url(s) (and in the git remote) appear in
    no param, tag or metric name of the parent and stage runs, nor in metrics/params/*.json."""
    import json

    uri, cmd = setup(tmp_path, store, "canary")
    url = "http://user:CANARY1@127.0.0.1/v1?api_key=CANARY2"
    urls = ["https://u:CANARY3@10.0.0.2:8000/v1?X-Amz-Signature=CANARY4&X-Amz-Date=1", "http://10.0.0.3:8000/v1"]
    text = (tmp_path / "params.yaml").read_text()
    assert "  base_url: null " in text and "  base_urls: [] " in text
    text = text.replace("  base_url: null ", f"  base_url: '{url}' ").replace("  base_urls: [] ", f"  base_urls: {urls} ")
    (tmp_path / "params.yaml").write_text(text)
    (tmp_path / "s.py").write_text(CANARY_SCRIPT)
    subprocess.run(["git", "remote", "add", "origin", "https://me:CANARY5@git.example/r.git"], cwd=tmp_path, check=True)
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    _, runs = all_runs(uri, "canary")
    assert len(runs) == 2
    for r in runs:
        logged = [*r.data.params.items(), *r.data.tags.items(), *r.data.metrics]
        assert not [x for x in logged if "CANARY" in str(x)], r.data.tags.get("stage")
        assert r.data.params["traces.openai.base_url"] == "http://***@127.0.0.1/v1?api_key=***"
        assert "traces.teacher.servers.http:/10.0.0.3:8000/v1.requests" in r.data.metrics
        assert len([k for k in r.data.metrics if k.startswith("traces.teacher.servers.")]) == 2
    out = tmp_path / "params"  # check_params: the resolved params per stage, kept by git
    check = subprocess.run([sys.executable, str(ROOT / "stages/check_params.py"), str(tmp_path / "params.yaml"),
                            str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    files = sorted(out.glob("*.json"))
    assert len(files) > 2 and not [f for f in files if "CANARY" in f.read_text()]
    resolved = json.loads((out / "all.json").read_text())
    assert resolved["traces.openai.base_urls"][1] == urls[1]
    assert resolved["traces.openai.base_url"] == "http://***@127.0.0.1/v1?api_key=***"


def test_flat_params_redact_the_tracking_uri(params):
    from guardrsft.tracking import flat_params

    params.mlflow.tracking_uri = "https://admin:CANARY@mlflow.example:5000/?access_token=CANARY2"
    assert flat_params(params)["mlflow.tracking_uri"] == "https://***@mlflow.example:5000/?access_token=***"
