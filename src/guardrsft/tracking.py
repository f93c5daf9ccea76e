"""MLflow logging for stages. Default store: sqlite at the repo root (absolute path,
so runs from `dvc exp run --queue` temp dirs land in the same database)."""
from __future__ import annotations

import os
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from .config import Params

# MLflow's limit on a param value
_MAX_PARAM = 6000


def repo_root() -> Path:
    if os.environ.get("GUARDRSFT_ROOT"):
        return Path(os.environ["GUARDRSFT_ROOT"]).resolve()
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


def tracking_uri(p: Params) -> str:
    return p.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{repo_root() / 'mlflow.db'}"


def _git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


@contextmanager
def stage_run(p: Params, stage: str) -> Iterator[Optional[object]]:
    """One MLflow run per stage execution, named after the DVC experiment when there is one.
    Yields the mlflow module (or None when disabled). An exception marks the run FAILED."""
    if not p.mlflow.enabled:
        yield None
        return
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow

    uri = tracking_uri(p)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(p.mlflow.experiment) is None:
        kw = {}
        if uri.startswith("sqlite:///"):
            kw["artifact_location"] = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        try:
            mlflow.create_experiment(p.mlflow.experiment, **kw)
        except Exception:  # created concurrently by a parallel queued experiment
            pass
    mlflow.set_experiment(p.mlflow.experiment)
    exp_name = os.environ.get("DVC_EXP_NAME")
    name = f"{exp_name or 'repro'}/{stage}"
    tags = {"stage": stage, "preset": p.preset, "base_model": p.model}
    if exp_name:
        tags["dvc_exp_name"] = exp_name
    commit = _git_commit()
    if commit:
        tags["git_commit"] = commit
    def on_sigterm(signum, frame):
        # `dvc exp` cancellation and schedulers send SIGTERM: say KILLED, not RUNNING forever
        mlflow.end_run(status="KILLED")
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        # an exception inside marks the run FAILED (mlflow.start_run's own handling)
        with mlflow.start_run(run_name=name, tags=tags):
            flat = {k: (str(v)[:_MAX_PARAM] if v is not None else "null") for k, v in p.resolved().items()}
            items = list(flat.items())
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                mlflow.log_params(dict(items[i:i + 100]))
            yield mlflow
    finally:
        signal.signal(signal.SIGTERM, previous)


def log_flat_metrics(ml, metrics: dict, prefix: str = "", step: Optional[int] = None) -> None:
    if ml is None:
        return
    flat = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                if isinstance(v2, dict):
                    for k3, v3 in v2.items():
                        if isinstance(v3, (int, float)) and not isinstance(v3, bool):
                            flat[f"{prefix}{k}.{k2}.{k3}"] = v3
                elif isinstance(v2, (int, float)) and not isinstance(v2, bool):
                    flat[f"{prefix}{k}.{k2}"] = v2
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[f"{prefix}{k}"] = v
    if flat:
        ml.log_metrics(flat, step=step)
