"""evaluate: the zero-shot base model (the measured baseline) and the fine-tuned
adapter on the test split, same prompt, greedy decoding; metrics, deltas,
predictions and plots."""
from __future__ import annotations

import gc
import hashlib
import sys
import time
from pathlib import Path

from .config import Params
from .data import subsample
from .guard import load_guard
from .io import read_jsonl, write_json, write_jsonl, write_text
from .metrics import compute
from .models import cache_dir

HEADLINE = ("exact_match", "binary_accuracy", "harmful_f1", "macro_f1", "benign_fpr", "parse_failure_rate")


def _run(p: Params, rows: list[dict], adapter: str | None, label: str) -> tuple[list[dict], dict]:
    print(f"[evaluate] {label}: {len(rows)} samples x {len(p.policies)} policies", file=sys.stderr, flush=True)
    guard = load_guard(p.model, adapter=adapter, params=p, cache_path=str(cache_dir() / "predictions.jsonl"))
    t0 = time.time()
    results = guard.classify([{"content": r["content"]} for r in rows], progress=True)
    wall = time.time() - t0
    m = compute([r["labels"] for r in rows], results, list(p.policies))
    gen_seconds = sum(r["latency_s"] for r in results)
    m["latency_per_item_s"] = round(gen_seconds / max(len(rows), 1), 3)
    m["items_per_second"] = round(len(rows) / gen_seconds, 4) if gen_seconds else None
    m["wall_seconds"] = round(wall, 1)  # ~0 when every answer came from the prediction cache
    del guard
    gc.collect()
    return results, m


def evaluate(p: Params, test_path: str, adapter: str, metrics_out: str, predictions_out: str, plots_dir: str) -> dict:
    rows = subsample(read_jsonl(test_path), p.eval_max_samples, p.seed)
    if not rows:
        raise ValueError(f"{test_path}: the test split is empty; raise prepare.test_fraction or add samples")
    base_res, base_m = _run(p, rows, None, "baseline (zero-shot base model)")
    tuned_res, tuned_m = _run(p, rows, adapter, "fine-tuned (R-SFT adapter)")
    nb = p.baseline.exact_match
    out = {k: tuned_m[k] for k in HEADLINE}
    out.update({
        "delta_vs_measured_baseline": {k: round(tuned_m[k] - base_m[k], 4) for k in HEADLINE},
        "delta_vs_notebook_baseline": round(tuned_m["exact_match"] - nb, 4),
        "notebook_baseline_exact_match": nb,
        "finetuned": tuned_m, "baseline": base_m,
    })
    write_json(metrics_out, out)

    preds = []
    for r, b, t in zip(rows, base_res, tuned_res):
        preds.append({"id": r["id"], "content_sha1": hashlib.sha1(r["content"].encode()).hexdigest(),
                      "content": r["content"], "gold": r["labels"],
                      "finetuned": {k: t[k] for k in ("flagged", "verdicts", "is_parse_error", "reasoning")},
                      "baseline": {k: b[k] for k in ("flagged", "verdicts", "is_parse_error", "reasoning")}})
    write_jsonl(predictions_out, preds)

    plots = Path(plots_dir)
    # sample-level confusion (harmful = any policy UNSAFE) for DVC's confusion template
    lines = ["actual,predicted,model"]
    for r, b, t in zip(rows, base_res, tuned_res):
        gold = "harmful" if r["labels"] else "benign"
        for name, res in (("finetuned", t), ("baseline", b)):
            pred = "parse_error" if res["verdict"] is None else ("harmful" if res["flagged"] else "benign")
            lines.append(f"{gold},{pred},{name}")
    write_text(plots / "confusion.csv", "\n".join(lines) + "\n")
    f1 = ["policy,model,f1"] + [f"{q},{name},{m['per_policy'][q]['f1']}"
                                for name, m in (("finetuned", tuned_m), ("baseline", base_m)) for q in p.policies]
    write_text(plots / "per_policy_f1.csv", "\n".join(f1) + "\n")
    return out
