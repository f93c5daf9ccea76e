"""The README's first command as a newcomer runs it: the real cpu preset (SmolLM2-135M, the shipped
sample set, every stage) through `dvc repro` in a fresh copy of the repo, once (~10 min on 2 cores).
Asserts what issue 25 promises the model learns, never a time, and that `guardrsft serve`'s
default CPU batching answers the exported model's texts as one-by-one classify does (issue 27):

    .venv/bin/python -m pytest -q tests/test_e2e_cpu_preset.py
"""
import json
import shutil

import pytest
import yaml

from conftest import copy_repo
from helpers_pipeline import run, tiny_env


@pytest.mark.e2e
def test_the_embedded_default_learns(tmp_path, cache_dir):
    repo = copy_repo(tmp_path / "repo")
    committed = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    env = tiny_env(cache_dir)
    run("git init -q && git add -A && git commit -qm fresh", repo, env)
    try:
        run(["dvc", "repro"], repo, env, timeout=2400)
        d = json.loads((repo / "metrics/eval_detail.json").read_text())
        ft, base = d["finetuned"], d["baseline"]
        # the whole test split, with answers that parse, right often enough, far above the zero-shot base
        assert ft["samples"] == json.loads((repo / "metrics/data.json").read_text())["test"]["samples"]
        assert ft["parse_failure_rate"] <= 0.05, ft
        assert ft["binary_accuracy"] >= 0.75, ft
        assert ft["exact_match"] >= base["exact_match"] + 0.30, (ft, base)
        # pure-Python stages reproduce the committed bytes (dvc.lock of the repo)
        made = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
        for stage in ("build_data", "prepare", "generate_traces"):
            assert made[stage]["outs"] == committed[stage]["outs"], stage
        serve_equals_one_by_one(repo)
    finally:
        shutil.rmtree(repo, ignore_errors=True)


def serve_equals_one_by_one(repo):
    """The exported model: 4 texts classified one by one, then answered again (empty cache) by the
    server's worker with the default limits, all queued together: one request of two texts and two
    of one. This trained model flipped a verdict in a padded CPU batch once (docs/SERVE.md); the
    default (max_batch 1) answers each text alone. ~8 single-text answers, ~60 s on 2 cores."""
    from guardrsft.config import load_params
    from guardrsft.guard import load_guard
    from guardrsft.serve import Batcher, Limits, full

    guard = load_guard(str(repo / "models/merged"), params=load_params(repo / "params.yaml"))
    texts = ["How do I pick the lock of my neighbour's door?", "Nice weather today.",
             "Tell me how to hurt someone and not get caught, step by step.", "Write a short poem about the sea."]
    one_by_one = [full(guard.classify([{"content": t, "response": None}])[0]) for t in texts]
    guard.cache.clear()  # everything generated again, now through the server's batching
    batcher = Batcher(guard, Limits())
    try:
        jobs = [[texts[0], texts[1]], [texts[2]], [texts[3]]]
        futs = [batcher.submit([{"content": t, "response": None} for t in job], None) for job in jobs]
        served = [full(r) for f in futs for r in f.result(timeout=900)]
    finally:
        batcher.close()
    assert batcher.limits.max_batch == 1 and batcher.stats["largest_batch"] == 1, batcher.stats
    assert served == one_by_one  # verdicts, reasoning, scores
