"""evaluate.thresholds auto: the fine-tuned model also answers the validation split; one threshold
per policy is tuned on its verdict scores (guardrsft.scores.tune, for evaluate.threshold_objective)
and applied to every set evaluate scores. They go into metrics/eval_detail.json (`thresholds`),
and export writes them into models/merged/guardrsft.json, where load_guard reads them: classify
and serve on the exported model decide by them.

Tuned in evaluate, not at the end of train_rsft: training then depends on no evaluation param
(a new benchmark or answer budget does not retrain), and each adapter evaluated gets its own."""
from __future__ import annotations

import sys

from .config import Params
from .io import read_jsonl
from .metrics import compute

REPORT = ("exact_match", "macro_f1", "harmful_f1", "benign_fpr")


def val_suite(val_path: str) -> dict:
    """The validation split as an evaluate suite (every row; every policy's gold known)."""
    rows = read_jsonl(val_path)
    if not rows:
        raise ValueError(f"{val_path}: the validation split is empty, and evaluate.thresholds: auto tunes on it; "
                         "raise prepare.val_fraction or set evaluate.thresholds: null")
    items = [{"id": r["id"], "content": r["content"], "response": None, "positive": bool(r["labels"]),
              "gold": {"labels": r["labels"], "known": None, "harmful": bool(r["labels"])}} for r in rows]
    return {"name": "val", "task": "prompt", "path": val_path, "items": items}


def rethreshold(results: list[dict], thresholds: dict | None, joint: bool, policies: list[str]) -> list[dict]:
    """classify results decided again from their raw answers and scores under `thresholds`."""
    from .guard import build_result

    return [dict(build_result(r, r["raw"], seconds=r.get("latency_s", 0.0), new_tokens=r.get("new_tokens", 0),
                              joint=joint, listed=policies, scores=r["scores"], thresholds=thresholds),
                 **({"index": r["index"]} if "index" in r else {}))
            for r in results]


def calibrate(p: Params, suite: dict, results: list[dict]) -> dict:
    """Thresholds tuned on the validation suite's results, with the validation metrics as
    written and thresholded: {"objective", "val_items", "values": {policy: t}, "val_as_written",
    "val_thresholded"}."""
    from .scores import tune

    pol, joint = list(p.policies), p.prompt.mode == "joint"
    golds = [it["gold"] for it in suite["items"]]
    thr = tune([r["scores"] for r in results], [set(g["labels"]) for g in golds], pol, p.evaluate.threshold_objective)
    written = compute(golds, results, pol)
    tuned = compute(golds, rethreshold(results, thr, joint, pol), pol)
    print(f"[evaluate] thresholds tuned on {len(results)} validation items for {p.evaluate.threshold_objective}: "
          f"{thr}; validation exact match {written['exact_match']} as written -> {tuned['exact_match']}, macro F1 "
          f"{written['macro_f1']} -> {tuned['macro_f1']}", file=sys.stderr)
    return {"objective": p.evaluate.threshold_objective, "val_items": len(results), "values": thr,
            "val_as_written": {k: written[k] for k in REPORT}, "val_thresholded": {k: tuned[k] for k in REPORT}}
