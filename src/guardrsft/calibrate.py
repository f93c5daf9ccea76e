"""evaluate.thresholds auto: after train_rsft, the model answers the validation split, one
threshold per policy is tuned on its verdict scores (guardrsft.scores.tune, for
evaluate.threshold_objective) and written into the model's guardrsft.json, where load_guard reads
them: evaluate, classify, serve and export then decide by them."""
from __future__ import annotations

import sys

from . import spec
from .config import Params
from .io import read_jsonl, write_json
from .metrics import compute
from .models import cache_dir

REPORT = ("exact_match", "macro_f1", "harmful_f1", "benign_fpr")


def rethreshold(results: list[dict], thresholds: dict | None, joint: bool, policies: list[str]) -> list[dict]:
    """classify results decided again from their raw answers and scores under `thresholds`."""
    from .guard import build_result

    return [build_result(r, r["raw"], joint=joint, listed=policies, scores=r["scores"], thresholds=thresholds)
            for r in results]


def calibrate(p: Params, model_dir: str, val_path: str) -> dict:
    """Tune, store in model_dir/guardrsft.json, and return the report (thresholds, the objective
    and the validation metrics as written and thresholded)."""
    from .guard import load_guard

    rows = read_jsonl(val_path)
    if not rows:
        raise ValueError(f"{val_path}: the validation split is empty, and evaluate.thresholds: auto tunes on it; "
                         "raise prepare.val_fraction or set evaluate.thresholds: null")
    guard = load_guard(p.model, adapter=model_dir, params=p, cache_path=str(cache_dir() / "predictions.jsonl"),
                       strict=True)
    guard.thresholds = None  # tuned on the raw scores
    print(f"[calibrate] {len(rows)} validation items: tuning verdict thresholds for "
          f"{p.evaluate.threshold_objective}", file=sys.stderr, flush=True)
    results = guard.classify([{"content": r["content"]} for r in rows], progress=True)
    del guard
    pol, joint = list(p.policies), p.prompt.mode == "joint"
    golds = [set(r["labels"]) for r in rows]
    from .scores import tune

    thr = tune([r["scores"] for r in results], golds, pol, p.evaluate.threshold_objective)
    written = compute([sorted(g) for g in golds], results, pol)
    tuned = compute([sorted(g) for g in golds], rethreshold(results, thr, joint, pol), pol)
    d = spec.describe(p, thresholds=thr)
    write_json(f"{model_dir}/{spec.FILE}", d)
    report = {"objective": p.evaluate.threshold_objective, "val_items": len(rows), "thresholds": thr,
              "val_as_written": {k: written[k] for k in REPORT}, "val_thresholded": {k: tuned[k] for k in REPORT}}
    print(f"[calibrate] thresholds {thr}; validation exact match {written['exact_match']} as written -> "
          f"{tuned['exact_match']}, macro F1 {written['macro_f1']} -> {tuned['macro_f1']}", file=sys.stderr)
    return report
