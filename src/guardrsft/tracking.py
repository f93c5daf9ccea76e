"""MLflow logging for the pipeline.

One *parent* run per pipeline run (one `dvc repro`, or one experiment of `dvc exp run`),
named after the DVC experiment (or `repro-<time>`), holding what a reader compares at a
glance: all params, the headline metrics (eval vs the 57% notebook baseline and vs the
measured zero-shot base), tags (git commit, DVC experiment, dvc.lock hashes of data,
traces and adapter), the adapter and PNG plots. One *child* run per stage holds that
stage's details (`<parent name>/<stage>`).

Stages run as separate processes, so the parent is found again by a key: the DVC
experiment name plus the `dvc` process that runs the stages (its pid and start time).
Default store: sqlite at the repo root (absolute path, so runs from `dvc exp run --queue`
temp dirs land in the same database)."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import unquote

import yaml

from .config import Params

# MLflow's limits: a param value's length, params and metrics per log_batch call
_MAX_PARAM = 6000
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
# pipeline order: at a stage, dvc.lock entries of the stages before it are current
_ORDER = ("check_params", "build_data", "prepare", "generate_traces", "train_rsft", "evaluate", "export",
          "mine_hard_samples", "train_hsdpo", "evaluate_hsdpo")
# tag -> (stage, "outs"/"deps", path) in dvc.lock
LOCK_TAGS = {
    "dvc.data_md5": ("build_data", "outs", "data/built/training_data.json"),
    "dvc.prepared_md5": ("prepare", "outs", "data/prepared"),
    "dvc.traces_md5": ("generate_traces", "outs", "data/traces"),
    "dvc.adapter_md5": ("train_rsft", "outs", "models/adapter"),
    "dvc.hsdpo_adapter_md5": ("train_hsdpo", "outs", "models/adapter_hsdpo"),
}
PIPELINE_TAG = "guardrsft.pipeline"
# query parameters that carry credentials (signed S3/GCS URLs, API gateways); X-Amz-* all go
_SECRET_QUERY = re.compile(r"(?i)^(key|token|secret|password|passwd|sig|signature|api[_-]?key|access[_-]?token"
                           r"|auth|x-amz-.*|x-goog-.*)$")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
REDACTED = "***"

# the current stage's parent run (one stage per process)
_parent: dict = {}


def repo_root() -> Path:
    for var in ("GUARDRSFT_ROOT", "DVC_ROOT"):  # DVC_ROOT: the real repo, also for queued experiments
        if os.environ.get(var):
            return Path(os.environ[var]).resolve()
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        top = Path(out.stdout.strip())
        # a queued experiment runs in <repo>/.dvc/tmp/exps/<tmp>: log to the real repo
        parts = top.parts
        if ".dvc" in parts:
            top = Path(*parts[: parts.index(".dvc")])
        return top
    except (subprocess.CalledProcessError, FileNotFoundError):
        return Path.cwd()


def repo_path(path: str) -> Path:
    """A params path: `~` expanded, a relative one anchored at the repository root."""
    q = Path(path).expanduser()
    return q if q.is_absolute() else repo_root() / q


def tracking_uri(p: Params) -> str:
    return p.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{repo_root() / 'mlflow.db'}"


def _git_commit() -> Optional[str]:
    # an experiment's temp workspace has a stash commit checked out: its baseline is what users know
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        return os.environ["DVC_EXP_BASELINE_REV"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


def _dvc_process() -> tuple[int, float, bool]:
    """(pid, start time, found) of the nearest `dvc` ancestor (`dvc repro`, `dvc exp run`, or
    the `dvc exp exec-run` of one queued experiment); this process itself when there is none."""
    import psutil  # a dependency of dvc

    me = psutil.Process()
    for proc in me.parents():
        try:
            argv = proc.cmdline()
        except psutil.Error:
            continue
        if any(Path(a).name in ("dvc", "dvc.exe") for a in argv[:2]) or argv[1:3] == ["-m", "dvc"]:
            return proc.pid, proc.create_time(), True
    return me.pid, me.create_time(), False


def pipeline_id() -> tuple[str, str]:
    """(key, run name) of the pipeline run this stage belongs to."""
    exp = os.environ.get("DVC_EXP_NAME")
    pid, started, under_dvc = _dvc_process()
    raw = f"{socket.gethostname()}|{repo_root()}|{exp}|{pid}|{started}"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    name = exp or (f"repro-{stamp}" if under_dvc else f"manual-{stamp}")
    return hashlib.sha1(raw.encode()).hexdigest(), name


def lock_hashes(stage: str, lock_path: str | os.PathLike = "dvc.lock") -> dict:
    """LOCK_TAGS values from dvc.lock for the stages that run before `stage` (DVC writes a
    stage's lock entry after it finishes, so later entries may still be the previous run's)."""
    path = Path(lock_path)
    if stage not in _ORDER or not path.exists():
        return {}
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages", {})
    out = {}
    for tag, (owner, kind, rel) in LOCK_TAGS.items():
        if _ORDER.index(owner) >= _ORDER.index(stage):
            continue
        for entry in stages.get(owner, {}).get(kind, []):
            if entry.get("path") == rel and entry.get("md5"):
                out[tag] = entry["md5"]
    return out


def _redact_url(m: re.Match) -> str:
    # string surgery, not urlunsplit: everything but the secrets stays byte for byte
    # (urlunsplit would turn sqlite:////abs into sqlite://abs)
    url = m.group(0)
    head, _, rest = url.partition("://")
    cut = min([i for i in (rest.find(c) for c in "/?#") if i >= 0], default=len(rest))
    netloc, rest = rest[:cut], rest[cut:]
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    path, hashmark, fragment = rest.partition("#")
    path, qmark, query = path.partition("?")
    if query:
        query = "&".join(f"{k}={REDACTED}" if _SECRET_QUERY.match(unquote(k)) else f"{k}{eq}{v}"
                         for k, eq, v in (x.partition("=") for x in query.split("&")))
    return f"{head}://{netloc}{path}{qmark}{query}{hashmark}{fragment}"


def redact(value):
    """`value` with the credentials of every URL inside it replaced by ***: userinfo
    (user:password@) and secret-looking query parameters (key, token, signature, X-Amz-*...).
    Applied to everything sent to MLflow (params, tags, metric names) and to
    metrics/params_resolved.json, which git keeps: a token in traces.openai.base_url or
    mlflow.tracking_uri must not end up in a shared tracking server or in the repo's history.
    Lists and dicts are redacted item by item; other types are returned as they are."""
    if isinstance(value, str):
        return _URL.sub(_redact_url, value) if "://" in value else value
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, dict):
        return {redact(k): redact(v) for k, v in value.items()}
    return value


def flat_params(p: Params) -> dict:
    """Every effective value as an MLflow param (strings within MLflow's length limit), redacted."""
    return {k: (str(redact(v))[:_MAX_PARAM] if v is not None else "null") for k, v in p.resolved().items()}


def _log_params(client, run_id: str, p: Params) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in flat_params(p).items()]
    for i in range(0, len(items), _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i:i + _PARAMS_PER_BATCH])


def _experiment_id(client, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    kw = {}
    if uri.startswith("sqlite:///"):
        # explicit and absolute: a queued experiment's cwd is deleted after it runs
        kw["artifact_location"] = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, **kw)
    except Exception:  # created concurrently by a parallel queued experiment
        return client.get_experiment_by_name(name).experiment_id


def _parent_run(client, exp_id: str, p: Params, tags: dict) -> tuple[str, str]:
    """Find this pipeline run's parent run, or create it; mark it RUNNING."""
    key, name = pipeline_id()
    found = client.search_runs([exp_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{key}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        note = f"DVC experiment `{tags['dvc_exp_name']}`" if "dvc_exp_name" in tags else "dvc repro"
        if "git_commit" in tags:
            note += f" from commit {tags['git_commit'][:10]}"
        run_id = client.create_run(exp_id, run_name=name, tags={
            **tags, PIPELINE_TAG: key, "stage": "pipeline", "mlflow.note.content": note}).info.run_id
        _log_params(client, run_id, p)
    return run_id, name


@contextmanager
def stage_run(p: Params, stage: str) -> Iterator[Optional[object]]:
    """The stage's child run, active while the block runs; yields the mlflow module (None when
    disabled). An exception marks it (and its parent) FAILED, SIGTERM or Ctrl-C KILLED; the
    parent takes the status of its latest stage, so a finished pipeline reads FINISHED."""
    if not p.mlflow.enabled:
        yield None
        return
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow
    from mlflow.tracking import MlflowClient

    # the first logging stage of a fresh clone creates the sqlite store, which MLflow announces at
    # INFO ("Creating initial MLflow database tables..."): a notice with nothing to act on
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    uri = tracking_uri(p)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    exp_id = _experiment_id(client, p.mlflow.experiment, uri)
    mlflow.set_experiment(experiment_id=exp_id)
    tags = {"preset": p.preset, "base_model": redact(p.model)}
    exp_name = os.environ.get("DVC_EXP_NAME")
    if exp_name:
        tags["dvc_exp_name"] = redact(exp_name)
    commit = _git_commit()
    if commit:
        tags["git_commit"] = commit
    hashes = lock_hashes(stage)
    parent_id, parent_name = _parent_run(client, exp_id, p, tags)
    for k, v in hashes.items():
        client.set_tag(parent_id, k, v)
    _parent.update(client=client, run_id=parent_id, p=p)

    ended = []

    def end(status: str) -> None:
        if ended:  # the SIGTERM handler already said KILLED
            return
        ended.append(status)
        if mlflow.active_run() is not None:
            mlflow.end_run(status=status)
        client.set_terminated(parent_id, status=status)

    def on_sigterm(signum, frame):
        # `dvc exp` cancellation and schedulers send SIGTERM: say KILLED, not RUNNING forever
        end("KILLED")
        raise SystemExit(128 + signum)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main else None
    status = "FAILED"
    try:
        mlflow.start_run(run_name=f"{parent_name}/{stage}", parent_run_id=parent_id,
                         tags={**tags, **hashes, "stage": stage})
        _log_params(client, mlflow.active_run().info.run_id, p)
        yield mlflow
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except SystemExit as e:
        status = "FINISHED" if e.code in (0, None) else "FAILED"
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        _parent.clear()
        end(status)


def _metric_part(key) -> str:
    """One part of a metric name: redacted, and in the characters MLflow accepts (a teacher
    server's URL names its request counts: `/` runs would make MLflow refuse the name)."""
    return re.sub(r"/+", "/", re.sub(r"[^/\w.\- :]", "_", str(redact(str(key))))).strip("/")


def _flatten_numbers(metrics: dict, prefix: str) -> dict:
    flat = {}
    for k, v in metrics.items():
        k = _metric_part(k)
        if isinstance(v, dict):
            flat.update(_flatten_numbers(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:  # skip NaN
            flat[f"{prefix}{k}"] = v
    return flat


def log_flat_metrics(ml, metrics: dict, prefix: str = "", step: Optional[int] = None) -> None:
    """Every number in a (nested) metrics dict on the stage's run, keys joined by dots."""
    if ml is None:
        return
    flat = _flatten_numbers(metrics, prefix)
    if flat:
        ml.log_metrics(flat, step=step)


def log_summary(metrics: dict, prefix: str = "") -> None:
    """Headline numbers on the pipeline's parent run (no-op when MLflow is off)."""
    if not _parent:
        return
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, 0) for k, v in _flatten_numbers(metrics, prefix).items()]
    for i in range(0, len(items), _METRICS_PER_BATCH):
        _parent["client"].log_batch(_parent["run_id"], metrics=items[i:i + _METRICS_PER_BATCH])


def log_history(ml, history: list[dict], keys=("loss", "learning_rate")) -> None:
    """Per-step training curves on the stage's run and its parent, in a few batched calls."""
    if ml is None or not history:
        return
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(h[k]), now, int(h["step"])) for h in history for k in keys if h.get(k) is not None]
    client = _parent["client"]
    for run_id in (ml.active_run().info.run_id, _parent["run_id"]):
        for i in range(0, len(items), _METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=items[i:i + _METRICS_PER_BATCH])


def log_parent_artifacts(path: str | os.PathLike, artifact_path: Optional[str] = None) -> None:
    """A file or folder into the parent run's artifacts (adapter, plots)."""
    if not _parent or not Path(path).exists():
        return
    client, run_id = _parent["client"], _parent["run_id"]
    if Path(path).is_dir():
        client.log_artifacts(run_id, str(path), artifact_path)
    else:
        client.log_artifact(run_id, str(path), artifact_path)

