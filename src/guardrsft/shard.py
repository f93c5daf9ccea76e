"""Items sharded over P worker processes (one per GPU), results merged in input order.

Generic API, for evaluation and for hard-sample mining alike:

    results, shard_stats = run_sharded("package.module:function", items, processes,
                                       kwargs={...}, label="evaluate")

Each worker is a fresh `python -m guardrsft.shard SPEC` process that sees one GPU
(CUDA_VISIBLE_DEVICES = one id of the visible list, round robin when P exceeds the GPUs; on a
CPU machine no GPU and a share of the cores). Worker k gets items[k::P] (round robin, so sets
sorted by source or length stay balanced) and calls

    function(items_k, shard={"index": k, "count": P}, **kwargs) -> (results_k, stats_k)

results_k: one JSON-serializable result per item, in order; stats_k: a dict of numbers. Items
and kwargs travel as JSON. Resume is the function's business: it caches per item in a file of
its own (classify_worker below: one guard cache per shard, every shard's file read back), so
a killed worker, rerun, redoes only what it had not finished. A failed worker makes
run_sharded raise ShardError naming the shard and its device, after the others finished.

classify_sharded(load_kwargs, items, processes, params, cache_dir) is the guard's classify
over P processes: exactly the results of one process's `guard.classify(items)`.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .io import write_json, write_text


class ShardError(RuntimeError):
    pass


def gpu_ids() -> list[str]:
    """The visible GPUs as CUDA_VISIBLE_DEVICES entries ([] on a CPU machine)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [x for x in env.split(",") if x.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except ImportError:
        return []


def resolve_processes(requested: int | None) -> int:
    """`null`: one process per visible GPU (1 on a CPU machine); else the number asked for."""
    return requested if requested else max(1, len(gpu_ids()))


def run_sharded(fn: str, items: list, processes: int, kwargs: dict | None = None, label: str = "shard",
                workdir: str | os.PathLike | None = None) -> tuple[list, list[dict]]:
    """Results of `fn` over items, computed by `processes` workers, merged in input order."""
    processes = max(1, min(processes, len(items)))
    if not items:
        return [], []
    gpus = gpu_ids()
    from .models import cache_dir

    root = Path(workdir) if workdir else cache_dir() / "shards"
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=root))
    procs = []
    try:
        for k in range(processes):
            spec = {"fn": fn, "items": items[k::processes], "kwargs": kwargs or {},
                    "shard": {"index": k, "count": processes}, "out": str(work / f"out-{k}.json")}
            write_json(work / f"spec-{k}.json", spec)
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = gpus[k % len(gpus)]
            else:  # CPU: split the cores instead of oversubscribing them
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
            device = f"GPU {env['CUDA_VISIBLE_DEVICES']}" if gpus else "CPU"
            p = subprocess.Popen([sys.executable, "-m", "guardrsft.shard", str(work / f"spec-{k}.json")], env=env)
            procs.append((k, device, p))
        failed = []
        for k, device, p in procs:
            if p.wait() != 0:
                failed.append(f"shard {k + 1}/{processes} ({device}) exited with status {p.returncode}")
        if failed:
            raise ShardError(f"[{label}] {'; '.join(failed)} (its output is above). Finished work is cached: "
                             "rerun to resume.")
        outs = [json.loads((work / f"out-{k}.json").read_text()) for k in range(processes)]
    finally:
        for _, _, p in procs:  # an interrupted parent leaves no worker behind
            if p.poll() is None:
                p.terminate()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)  # specs and outputs only: the work is cached by fn
    results: list = [None] * len(items)
    for k, o in enumerate(outs):
        if len(o["results"]) != len(range(k, len(items), processes)):
            raise ShardError(f"[{label}] shard {k + 1} returned {len(o['results'])} results for "
                             f"{len(items[k::processes])} items ({fn})")
        results[k::processes] = o["results"]
    return results, [o["stats"] for o in outs]


def _worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    mod, _, name = spec["fn"].partition(":")
    fn = getattr(importlib.import_module(mod), name)
    results, stats = fn(spec["items"], shard=spec["shard"], **spec["kwargs"])
    write_text(spec["out"], json.dumps({"results": results, "stats": stats or {}}))


# ------------------------------------------------------------------ the guard, sharded
def params_file(p, folder: Path) -> str:
    """A params.yaml equal to `p` (workers re-validate it); also for Params built in code."""
    from .config import DERIVED

    raw = dataclasses.asdict(p)
    # a policy's examples/severity go back into its params.yaml form; derived fields are no keys
    raw["policies"] = {q: dict(p.policy_info[q], definition=d) if p.policy_info.get(q) else d
                       for q, d in p.policies.items()}
    for k in DERIVED:
        raw.pop(k, None)
    path = folder / "params.yaml"
    write_text(path, json.dumps(raw, indent=1))  # JSON is YAML
    return str(path)


def shard_guard(shard: dict, base: str, adapter: str | None, p, cache_dir: str, read_also: list | None = None,
                **load):
    """The guard of one shard, on this process's device: its answers go to
    <cache_dir>/shard-<k>.jsonl (a torn last line is ended by the next append); every *.jsonl
    there (and the read_also files) is read first, so a rerun (even with another process
    count) reuses whatever was finished."""
    from .guard import load_guard
    from .io import read_jsonl_tolerant

    own = Path(cache_dir) / f"shard-{shard['index']}.jsonl"
    own.parent.mkdir(parents=True, exist_ok=True)
    guard = load_guard(base, adapter=adapter, params=p, cache_path=str(own), **load)
    for f in sorted(Path(cache_dir).glob("*.jsonl")) + [Path(x) for x in read_also or []]:
        if f != own:
            guard.cache.update({r["key"]: r for r in read_jsonl_tolerant(f) if "key" in r})
    return guard


def classify_worker(items: list, shard: dict, base: str, adapter: str | None, params_path: str, cache_dir: str,
                    load: dict | None = None, read_also: list | None = None) -> tuple[list, dict]:
    """One shard of classify_sharded: the shard's guard (shard_guard) answers its items."""
    from .config import load_params

    guard = shard_guard(shard, base, adapter, load_params(params_path), cache_dir, read_also, **(load or {}))
    print(f"  [shard {shard['index'] + 1}/{shard['count']}] {len(items)} items", file=sys.stderr, flush=True)
    return guard.classify(items, progress=True), guard.last_stats


def merge_stats(stats: list[dict]) -> dict:
    """Shard stats as one run's: counts summed, times the slowest shard's (they ran in parallel)."""
    out = {k: sum(s.get(k) or 0 for s in stats) for k in ("items", "pairs", "cached_pairs", "generated_pairs",
                                                          "batches", "new_tokens")}
    for k in ("generate_seconds", "wall_seconds"):
        out[k] = max((s.get(k) or 0 for s in stats), default=0)
    gen = out["generate_seconds"]
    out["new_tokens_per_second"] = round(out["new_tokens"] / gen, 2) if gen else None
    out["items_per_second"] = round(out["items"] / out["wall_seconds"], 4) \
        if out["wall_seconds"] and out["generated_pairs"] else None
    out["processes"] = len(stats)
    return out


def classify_sharded(load_kwargs: dict, items: list[dict], processes: int, params, cache_dir: str | os.PathLike,
                     label: str = "classify", read_also: list | None = None) -> tuple[list[dict], dict]:
    """guard.classify(items) over `processes` workers. load_kwargs: base, adapter (and optionally
    load_guard's max_new_tokens / batch_size); cache_dir: the shards' cache files; read_also:
    other guard cache files whose answers are reused (e.g. a one-process run's)."""
    kw = dict(load_kwargs)
    base, adapter = kw.pop("base"), kw.pop("adapter", None)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        results, stats = run_sharded(
            "guardrsft.shard:classify_worker", items, processes, label=label,
            kwargs={"base": base, "adapter": adapter, "params_path": params_file(params, Path(d)),
                    "cache_dir": str(cache_dir), "load": kw, "read_also": [str(x) for x in read_also or []]})
    merged = merge_stats(stats)
    merged["wall_seconds_sharded"] = round(time.time() - t0, 3)
    return results, merged


if __name__ == "__main__":
    _worker(sys.argv[1])
