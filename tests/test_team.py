"""The team workflow end to end (docs/TEAM.md), with real servers on 127.0.0.1: a local S3 API
(moto's server) as the DVC remote, a bare git repo as `origin`, an `mlflow server` (sqlite).

Teammate A runs the tiny pipeline and pushes data, adapter and metrics to S3; teammate B
clones, pulls, queues two `lr` experiments, runs them and pushes them; A pulls them. One
pipeline run and two experiment runs in all: every test below reads what they left."""
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers_pipeline import Server, exp_rows, free_port, make_tiny_repo, run, tiny_env

pytestmark = pytest.mark.e2e

BUCKET = "guardrsft-team"
# made up at run time: found in git or MLflow only if something leaked it there
KEY_ID, SECRET = f"AKIA{uuid.uuid4().hex[:16].upper()}", f"secret-{uuid.uuid4().hex}"
LRS = (1e-5, 2e-4)
KEEP = "Experiment|^lr$|^exact_match$|^delta_vs_notebook$|^harmful_f1$"  # docs/TEAM.md
SHARED = ("models/adapter/adapter_model.safetensors", "models/adapter/adapter_config.json",
          "models/merged/model.safetensors", "data/prepared/train.jsonl", "data/traces/train.jsonl",
          "data/predictions/test.jsonl", "metrics/eval.json", "metrics/train.json", "metrics/plots/train_loss.png",
          "metrics/plots/eval/confusion.png", "dvc.lock")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    d = tmp_path_factory.mktemp("servers")
    s3_port, ml_port = free_port(), free_port()
    bindir = Path(sys.executable).parent
    # started first: the MLflow server takes 20-35 s to answer, ready by the time A's repo is set up
    mlflow = Server([str(bindir / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}",
                     "--artifacts-destination", str(d / "artifacts"), "--host", "127.0.0.1", "--port", str(ml_port),
                     "--workers", "1"], f"http://127.0.0.1:{ml_port}/health", d / "mlflow.log",
                    # no GenAI job runner (8 more processes): runs and artifacts need none
                    env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    s3 = Server([str(bindir / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                f"http://127.0.0.1:{s3_port}/moto-api/", d / "moto.log")
    try:
        s3.wait_ready(180)
        import boto3

        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}", aws_access_key_id=KEY_ID,
                              aws_secret_access_key=SECRET, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)  # DVC does not create buckets
        yield SimpleNamespace(s3_url=f"http://127.0.0.1:{s3_port}", s3=client, mlflow=mlflow,
                              mlflow_url=f"http://127.0.0.1:{ml_port}")
    finally:
        s3.stop()
        mlflow.stop()


@pytest.fixture(scope="module")
def team(servers, cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("team")
    env = tiny_env(cache_dir, AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1",
                   MLFLOW_TRACKING_URI=servers.mlflow_url)
    times = {}

    def timed(name, cmd, cwd):
        t0 = time.time()
        out = run(cmd, cwd, env)
        times[name] = round(time.time() - t0, 1)
        return out

    # A: the team's repo, its S3 remote committed, the endpoint only in .dvc/config.local
    run("git init -q --bare -b main origin.git", root, env)
    a = make_tiny_repo(root / "A")
    run("git init -q -b main && git remote add origin ../origin.git", a, env)
    run(["dvc", "remote", "add", "-d", "team", f"s3://{BUCKET}/guardrsft"], a, env)
    run(["dvc", "remote", "modify", "--local", "team", "endpointurl", servers.s3_url], a, env)
    run("git add -A && git commit -qm tiny", a, env)
    servers.mlflow.wait_ready(600)
    repro_a = timed("repro A", ["dvc", "repro"], a)
    run("git add dvc.lock metrics '*.gitignore' && git commit -qm 'tiny run' && git push -q origin main", a, env)
    assert run("git status --porcelain", a, env).stdout == ""  # nothing else to commit
    timed("dvc push", ["dvc", "push"], a)
    # B: a fresh clone pulls everything and queues two lr values
    b = root / "B"
    run(["git", "clone", "-q", str(root / "origin.git"), str(b)], root, env)
    run(["dvc", "remote", "modify", "--local", "team", "endpointurl", servers.s3_url], b, env)
    timed("dvc pull", ["dvc", "pull"], b)
    repro_b = timed("repro B (no-op)", ["dvc", "repro"], b)
    for lr in LRS:  # a sweep stops after evaluate: merging and GGUF export are not needed to compare
        run(["dvc", "exp", "run", "--queue", "-S", f"lr={lr}", "evaluate"], b, env)
    timed("exp run --run-all -j 1 (2 experiments)", ["dvc", "exp", "run", "--run-all", "-j", "1"], b)
    rows_b = exp_rows(json.loads(run(["dvc", "exp", "show", "--json"], b, env).stdout))
    names = {r["lr"]: r["name"] for r in rows_b if r["lr"] in LRS and r["eval"]}
    assert set(names) == set(LRS), rows_b
    timed("exp push", ["dvc", "exp", "push", "origin", *names.values()], b)
    timed("exp pull", ["dvc", "exp", "pull", "origin", *names.values()], a)
    print(f"\n[test_team] seconds: {times}")
    yield SimpleNamespace(root=root, a=a, b=b, env=env, repro_a=repro_a, repro_b=repro_b, names=names,
                          head=run(["git", "rev-parse", "HEAD"], a, env).stdout.strip(),
                          first=run(["git", "rev-parse", "HEAD~1"], a, env).stdout.strip())
    shutil.rmtree(root, ignore_errors=True)  # 4-5 GB of repos, caches and remotes, freed now


def test_fresh_clone_pulls_identical_outputs_from_s3_and_reruns_nothing(team, servers):
    for stage in ("prepare", "generate_traces", "train_rsft", "evaluate", "export"):
        assert f"Running stage '{stage}'" in team.repro_a.stdout
    for f in SHARED:
        assert (team.b / f).read_bytes() == (team.a / f).read_bytes(), f
    # only the root, check_params (always_changed: it validates params.yaml before anything is skipped)
    assert [x for x in team.repro_b.stdout.splitlines() if x.startswith("Running stage")] == [
        "Running stage 'check_params':"]
    # the data went to the S3 bucket, not to the repo's default folder remote
    keys = [o["Key"] for page in servers.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]
    assert len(keys) >= 10 and all(k.startswith("guardrsft/files/md5/") for k in keys)
    assert not (team.root / "guardrsft-dvc-remote").exists()


def test_no_endpoint_or_credentials_in_git(team, servers):
    config = run(["git", "show", "HEAD:.dvc/config"], team.a, team.env).stdout
    assert f"url = s3://{BUCKET}/guardrsft" in config and "remote = team" in config
    assert "endpointurl" not in config and servers.s3_url not in config
    assert servers.s3_url in (team.a / ".dvc/config.local").read_text()
    assert run(["git", "check-ignore", ".dvc/config.local"], team.a, team.env).returncode == 0
    for secret in (KEY_ID, SECRET):
        # every commit on origin, experiments included
        hits = run(f"git grep -l {secret} $(git rev-list --all) || true", team.root / "origin.git", team.env)
        assert hits.stdout == "", hits.stdout


def test_experiments_from_b_show_up_in_a(team):
    rows = exp_rows(json.loads(run(["dvc", "exp", "show", "--json"], team.a, team.env).stdout))
    by_name = {r["name"]: r for r in rows}
    base = next(r for r in rows if r["rev"] == team.head)
    assert base["lr"] == 2e-3 and base["eval"]["delta_vs_notebook"] == pytest.approx(base["eval"]["exact_match"] - 0.57,
                                                                           abs=1e-4)
    for lr, name in team.names.items():
        assert by_name[name]["lr"] == lr
        assert 0 <= by_name[name]["eval"]["exact_match"] <= 1
        # a new adapter (lr changed), same data and traces
        assert by_name[name]["outs"]["models/adapter"] != base["outs"]["models/adapter"]
        assert by_name[name]["outs"]["data/traces"] == base["outs"]["data/traces"]
    # the table as a user reads it: a few columns (all of them do not fit a terminal)
    table = run(["dvc", "exp", "show", "--no-pager", "--drop", ".*", "--keep", KEEP], team.a,
                dict(team.env, COLUMNS="160")).stdout
    assert all(name in table for name in team.names.values()) and "delta_vs_notebook" in table


def test_metrics_params_and_plots_diff_between_experiments(team, tmp_path):
    lo, hi = team.names[LRS[0]], team.names[LRS[1]]
    params = json.loads(run(["dvc", "params", "diff", lo, hi, "--json"], team.a, team.env).stdout)
    assert params["params.yaml"]["lr"]["old"] == LRS[0] and params["params.yaml"]["lr"]["new"] == LRS[1]
    assert set(params["params.yaml"]) == {"lr"}
    metrics = json.loads(run(["dvc", "metrics", "diff", lo, hi, "--all", "--json"], team.a, team.env).stdout)
    assert "metrics/eval.json" in metrics and set(metrics) <= {"metrics/eval.json", "metrics/eval_hsdpo.json"}
    ev = metrics["metrics/eval.json"]
    shown = {r["name"]: r["eval"] for r in exp_rows(json.loads(run(["dvc", "exp", "show", "--json"],
                                                                    team.a, team.env).stdout))}
    assert ev["exact_match"]["old"] == shown[lo]["exact_match"] and ev["exact_match"]["new"] == shown[hi]["exact_match"]
    # the loss curves in one vega plot; the PNGs as images per experiment (they show offline)
    plots = json.loads(run(["dvc", "plots", "diff", lo, hi, "--json", "-o", str(tmp_path / "j")],
                           team.a, team.env).stdout)["data"]
    assert plots["metrics/plots/train_loss.csv"][0]["revisions"] == [lo, hi]
    assert {"metrics/plots/eval/confusion.csv", "metrics/plots/eval/per_policy_f1.csv"} <= set(plots)
    for png in ("metrics/plots/train_loss.png", "metrics/plots/eval/confusion.png",
                "metrics/plots/eval/per_policy_f1.png"):
        assert sorted(p["revisions"][0] for p in plots[png]) == sorted([lo, hi]), png
    run(["dvc", "plots", "diff", lo, hi, "-o", str(tmp_path / "html")], team.a, team.env)
    html = (tmp_path / "html/index.html").read_text()
    for name in (lo, hi):
        img = f"static/{name}_metrics_plots_eval_confusion.png"
        assert f'<img src="{img}">' in html and (tmp_path / "html" / img).read_bytes()[:4] == b"\x89PNG"


def _runs(mlflow_url):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_url)
    runs = client.search_runs([client.get_experiment_by_name("guardrsft").experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    children = {}
    for r in runs:
        if "mlflow.parentRunId" in r.data.tags:
            children.setdefault(r.data.tags["mlflow.parentRunId"], {})[r.data.tags["stage"]] = r
    return client, parents, children


def test_mlflow_server_has_one_parent_per_pipeline_run(team, servers, tmp_path):
    import yaml

    client, parents, children = _runs(servers.mlflow_url)
    repro = [r for r in parents if "dvc_exp_name" not in r.data.tags]
    assert len(repro) == 1 and len(parents) == 3  # A's repro and B's two experiments; B's no-op repro logs nothing
    parent = repro[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name.startswith("repro-")
    kids = children[parent.info.run_id]
    assert set(kids) == {"build_data", "prepare", "generate_traces", "train_rsft", "evaluate", "export"}
    assert all(k.info.status == "FINISHED" and k.info.run_name == f"{parent.info.run_name}/{s}"
               for s, k in kids.items())
    # tags: the commit the pipeline ran from and what dvc.lock recorded for data, traces, adapter
    tags = parent.data.tags
    assert tags["git_commit"] == team.first
    lock = yaml.safe_load((team.a / "dvc.lock").read_text())["stages"]
    assert tags["dvc.adapter_md5"] == next(o["md5"] for o in lock["train_rsft"]["outs"] if o["path"] == "models/adapter")
    assert tags["dvc.traces_md5"] == next(o["md5"] for o in lock["generate_traces"]["outs"] if o["path"] == "data/traces")
    assert tags["dvc.data_md5"] == next(o["md5"] for o in lock["build_data"]["outs"]
                                        if o["path"] == "data/built/training_data.json")
    # params: flattened, resolved values included
    assert parent.data.params["lr"] == "0.002" and parent.data.params["resolved.max_steps"] == "2"
    assert parent.data.params["policies.violence"].startswith("Threatens")
    # metrics: vs the notebook's 57% and vs the zero-shot base measured in the same run
    ev = json.loads((team.a / "metrics/eval_detail.json").read_text())
    m = parent.data.metrics
    assert m["eval.exact_match"] == ev["exact_match"] and m["eval.delta_vs_baseline"] == ev["delta_vs_notebook_baseline"]
    assert m["eval.delta_vs_measured_baseline.exact_match"] == ev["delta_vs_measured_baseline"]["exact_match"]
    assert m["eval.baseline.harmful_f1"] == ev["baseline"]["harmful_f1"]
    train = json.loads((team.a / "metrics/train.json").read_text())
    assert m["train.final_loss"] == train["final_loss"]
    assert [h.step for h in client.get_metric_history(parent.info.run_id, "loss")] == [1, 2]
    # artifacts: the adapter (byte-identical) and the PNG plots
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert arts >= {"plots/train_loss.png", "plots/confusion.png", "plots/per_policy_f1.png"}
    got = Path(client.download_artifacts(parent.info.run_id, "adapter/adapter_model.safetensors", str(tmp_path)))
    assert got.read_bytes() == (team.a / "models/adapter/adapter_model.safetensors").read_bytes()
    # the stage runs hold the details; nothing from the environment's secrets
    assert kids["evaluate"].data.metrics["eval.baseline.samples"] == 2 and "eval.baseline.samples" not in m
    for r in [parent, *kids.values()]:
        assert not any(SECRET in v for v in {**r.data.params, **r.data.tags}.values())


def test_mlflow_experiment_runs_carry_the_dvc_experiment(team, servers, tmp_path):
    client, parents, children = _runs(servers.mlflow_url)
    by_exp = {r.data.tags["dvc_exp_name"]: r for r in parents if "dvc_exp_name" in r.data.tags}
    assert set(by_exp) == set(team.names.values())
    rows = {r["name"]: r for r in exp_rows(json.loads(run(["dvc", "exp", "show", "--json"], team.a, team.env).stdout))}
    for lr, name in team.names.items():
        parent = by_exp[name]
        assert parent.info.run_name == name and parent.info.status == "FINISHED"
        assert float(parent.data.params["lr"]) == lr
        assert parent.data.tags["git_commit"] == team.head  # the experiment's baseline commit
        assert parent.data.tags["dvc.adapter_md5"] == rows[name]["outs"]["models/adapter"]
        assert parent.data.metrics["eval.exact_match"] == rows[name]["eval"]["exact_match"]
        # only the stages that lr invalidates ran, up to the target
        assert set(children[parent.info.run_id]) == {"train_rsft", "evaluate"}
    # A applies B's experiment: the adapter it gets is the one in the experiment's MLflow run
    name = team.names[LRS[1]]
    run(["dvc", "exp", "apply", name], team.a, team.env)
    got = Path(client.download_artifacts(by_exp[name].info.run_id, "adapter/adapter_model.safetensors",
                                         str(tmp_path)))
    assert got.read_bytes() == (team.a / "models/adapter/adapter_model.safetensors").read_bytes()
    assert json.loads((team.a / "metrics/eval.json").read_text())["exact_match"] == rows[name]["eval"]["exact_match"]
