"""evaluate: the zero-shot base model (the measured baseline) and the fine-tuned adapter,
same prompt, greedy decoding, on the test split and on every benchmark in
`evaluate.benchmarks`; metrics, deltas, predictions and plots per set.

Outputs: metrics_out (every figure: the test split's numbers at the top level and
`benchmarks.<name>`; the pipeline's stage also writes `headline()` to metrics/eval.json, the DVC
metrics file), predictions_out (test) and <its folder>/benchmarks/<name>.jsonl (+ index.json),
plots_dir/{confusion,per_policy_f1}.csv and plots_dir/benchmarks/{confusion,per_policy_f1}/<name>.csv.
Both models answer every set in one `classify` call each (one model load, one prediction
cache: a killed evaluation resumes where it stopped). With `evaluate.processes` > 1 (null: one
per visible GPU) the items are sharded over that many processes (shard.classify_sharded), each
with its own cache file, and merged in input order: the same results as one process.
"""
from __future__ import annotations

import gc
import hashlib
import sys
import time
from pathlib import Path

from . import plots as plot_png
from .benchmarks import load_selected
from .calibrate import calibrate, rethreshold, val_suite
from .config import Params
from .data import subsample
from .guard import ContextError, load_guard
from .io import read_jsonl, write_json, write_jsonl, write_metrics, write_text
from .metrics import bootstrap_ci, compute, pr_curve
from .models import cache_dir
from .shard import resolve_processes

HEADLINE = ("exact_match", "binary_accuracy", "harmful_f1", "macro_f1", "benign_fpr", "parse_failure_rate",
            "auroc", "auprc")
MODELS = (("finetuned", "fine-tuned (R-SFT adapter)"), ("baseline", "zero-shot base model"))
# per item in the predictions file (a DVC output: no latency, which differs run to run)
KEEP = ("verdict", "flagged", "verdicts", "scores", "is_parse_error", "reasoning")


def split_suite(p: Params, test_path: str) -> dict:
    """The prepared test split as a suite (every policy's gold known)."""
    rows = subsample(read_jsonl(test_path), p.eval_max_samples, p.seed)
    if not rows:
        raise ValueError(f"{test_path}: the test split is empty; raise prepare.test_fraction or add samples")
    items = [{"id": r["id"], "content": r["content"], "response": None, "positive": bool(r["labels"]),
              "gold": {"labels": r["labels"], "known": None, "harmful": bool(r["labels"])}} for r in rows]
    return {"name": "test", "task": "prompt", "path": test_path, "items": items,
            "report": {"items": len(items), "positive": sum(it["positive"] for it in items)}}


def _classify(p: Params, suites: list[dict], adapter: str | None, label: str) -> tuple[dict, dict]:
    """One model answers every suite; returns ({suite name: results}, generation stats)."""
    items = [{"content": it["content"], "response": it["response"]} for s in suites for it in s["items"]]
    sizes = ", ".join(f"{s['name']} {len(s['items'])}" for s in suites)
    print(f"[evaluate] {label}: {len(items)} items ({sizes}) x {len(p.policies)} policies", file=sys.stderr, flush=True)
    n = resolve_processes(p.evaluate.processes)
    if n > 1:  # one worker per GPU (evaluate.processes), each with its own resumable cache file
        from .shard import classify_sharded

        print(f"[evaluate] {label}: sharded over {n} processes", file=sys.stderr, flush=True)
        results, stats = classify_sharded({"base": p.model, "adapter": adapter}, items, n, p,
                                          cache_dir() / "predictions-shards", label=f"evaluate-{label.split()[0]}",
                                          read_also=[cache_dir() / "predictions.jsonl"])  # one-process answers
    else:
        guard = load_guard(p.model, adapter=adapter, params=p, cache_path=str(cache_dir() / "predictions.jsonl"),
                           strict=True)  # an adapter trained with another prompt or taxonomy is refused
        try:
            results = guard.classify(items, progress=True)
        except ContextError as e:
            raise ContextError(e.items, f"[evaluate] {label}: {e}. Too long: " + _where(suites, e.items)) from None
        stats = guard.last_stats
        del guard
        gc.collect()
    out, at = {}, 0
    for s in suites:
        out[s["name"]] = results[at:at + len(s["items"])]
        at += len(s["items"])
    return out, stats


def _thresholds(p: Params, val: dict | None, results: dict) -> dict | None:
    """evaluate.thresholds: tuned on the validation answers (auto) or fixed; applied to the
    fine-tuned model's results on every set, in place. None: the verdicts as written."""
    t = p.evaluate.thresholds
    if t is None or (t == "auto" and val is None):
        return None
    rep = calibrate(p, val, results["finetuned"].pop("val")) if t == "auto" else {"objective": None, "values": dict(t)}
    pol, joint = list(p.policies), p.prompt.mode == "joint"
    results["finetuned"] = {k: rethreshold(v, rep["values"], joint, pol) for k, v in results["finetuned"].items()}
    return rep


def _where(suites: list[dict], indices: list[int], show: int = 5) -> str:
    """Items of the concatenated suites, by set, file and id."""
    flat = [(s, it) for s in suites for it in s["items"]]
    named = [f"{flat[i][0]['name']} ({flat[i][0].get('path') or 'benchmark'}) id {flat[i][1].get('id')!r}"
             for i in indices[:show]]
    return "; ".join(named) + (f"; and {len(indices) - show} more" if len(indices) > show else "")


def headline_delta(a: dict, b: dict, keys=HEADLINE) -> dict:
    """a - b for each of `keys` (None where either is missing): evaluate's delta vs the baseline,
    HS-DPO's vs R-SFT, bench/bootstrap_ci.py's between two runs."""
    return {k: (round(a[k] - b[k], 4) if a.get(k) is not None and b.get(k) is not None else None) for k in keys}


def predictions_file(predictions_out: str, name: str) -> Path:
    """Where evaluate() writes set `name`'s predictions: the test split's at predictions_out, each
    benchmark's in the `benchmarks/` folder beside it."""
    out = Path(predictions_out)
    return out if name == "test" else out.parent / "benchmarks" / f"{name}.jsonl"


def score(p: Params, suite: dict, results: dict[str, list[dict]]) -> dict:
    """Both models' metrics on one suite, the deltas, and the notebook's 57% comparison."""
    golds = [it["gold"] for it in suite["items"]]
    pol, r = list(p.policies), {name: results[name][suite["name"]] for name, _ in MODELS}
    m = {name: compute(golds, r[name], pol) for name, _ in MODELS}
    tuned, base = m["finetuned"], m["baseline"]
    nb = p.baseline.exact_match
    extra = {}
    if any("verdicts_as_written" in x for x in r["finetuned"]):  # the model decides by thresholds
        written = [dict(x, verdicts=x["verdicts_as_written"], verdict=_aggregate(x["verdicts_as_written"]))
                   for x in r["finetuned"]]
        extra["finetuned_as_written"] = {k: compute(golds, written, pol)[k] for k in HEADLINE}
    return {"task": suite["task"], **suite["report"], **extra,
            **{k: tuned[k] for k in HEADLINE},
            # 95% bootstrap intervals over items: how far a number could move on another draw of
            # as many items (a small test split moves a lot); the delta's is paired, same items
            "ci95": bootstrap_ci(golds, r["finetuned"], pol, seed=p.seed),
            "baseline_ci95": bootstrap_ci(golds, r["baseline"], pol, seed=p.seed),
            "delta_vs_measured_baseline": headline_delta(tuned, base),
            "delta_vs_measured_baseline_ci95": bootstrap_ci(golds, r["finetuned"], pol, other=r["baseline"],
                                                            seed=p.seed),
            "delta_vs_notebook_baseline": round(tuned["exact_match"] - nb, 4) if tuned["exact_match"] is not None
            else None,
            "notebook_baseline_exact_match": nb, "finetuned": tuned, "baseline": base}


def _aggregate(verdicts: dict) -> str | None:
    """The item verdict from policy verdicts (guard.build_result's rule)."""
    vs = verdicts.values()
    return "UNSAFE" if "UNSAFE" in vs else (None if None in vs else "SAFE")


def _predictions(suite: dict, results: dict[str, list[dict]]) -> list[dict]:
    out = []
    for k, it in enumerate(suite["items"]):
        text = it["content"] + ("" if it["response"] is None else "\n\x00" + it["response"])
        out.append({"id": it["id"], "content_sha1": hashlib.sha1(text.encode()).hexdigest(),
                    "content": it["content"], "response": it["response"], "gold": it["gold"],
                    "positive": it["positive"],
                    **{name: {f: results[name][suite["name"]][k][f] for f in KEEP} for name, _ in MODELS}})
    return out


def _pr_curve(p: Params, suite: dict, results: dict, out: Path) -> bool:
    """The fine-tuned model's precision-recall curve of the harmful score (metrics.pr_curve) as a
    DVC linear plot; False (nothing written) without scores or without both classes."""
    pts = pr_curve([it["gold"] for it in suite["items"]], results["finetuned"][suite["name"]], list(p.policies))
    if pts is None:
        return False
    write_text(out, "recall,precision,threshold\n" + "".join(f"{x['recall']},{x['precision']},{x['threshold']}\n"
                                                             for x in pts))
    return True


def _plots(p: Params, suite: dict, results: dict, m: dict, confusion: Path, f1: Path | None) -> None:
    # item-level confusion (harmful = any policy UNSAFE) for DVC's confusion template
    lines = ["actual,predicted,model"]
    for k, it in enumerate(suite["items"]):
        gold = "harmful" if it["positive"] else "benign"
        for name, _ in MODELS:
            res = results[name][suite["name"]][k]
            pred = "parse_error" if res["verdict"] is None else ("harmful" if res["flagged"] else "benign")
            lines.append(f"{gold},{pred},{name}")
    write_text(confusion, "\n".join(lines) + "\n")
    if f1 is not None:
        rows = ["policy,model,f1"] + [f"{q},{name},{m[name]['per_policy'][q]['f1']}" for name, _ in MODELS
                                      for q in p.policies if m[name]["per_policy"][q]["f1"] is not None]
        write_text(f1, "\n".join(rows) + "\n")


def evaluate(p: Params, test_path: str, adapter: str, metrics_out: str, predictions_out: str, plots_dir: str,
             val_path: str | None = None) -> dict:
    """val_path: the validation split, answered by the fine-tuned model only when
    evaluate.thresholds is auto (guardrsft.calibrate)."""
    benches = load_selected(p)  # a bad path or label fails here, before minutes of model loading
    suites = [split_suite(p, test_path)] + benches
    val = val_suite(val_path) if p.evaluate.thresholds == "auto" and val_path else None
    results, speed = {}, {}
    for name, label in reversed(MODELS):  # the baseline first, as before
        t0 = time.time()
        tuned_on = [val] if val is not None and name == "finetuned" else []
        results[name], stats = _classify(p, suites + tuned_on, adapter if name == "finetuned" else None, label)
        speed[name] = {**stats, "wall_seconds_with_load": round(time.time() - t0, 1)}
    thresholds = _thresholds(p, val, results)

    scored = {s["name"]: score(p, s, results) for s in suites}
    out = scored["test"]
    for k in ("task", "path", "items", "positive"):
        out.pop(k, None)
    out["speed"] = speed
    if thresholds:
        out["thresholds"] = thresholds  # export writes `values` into the merged model's guardrsft.json
    if benches:
        out["benchmarks"] = {b["name"]: scored[b["name"]] for b in benches}
    write_metrics(metrics_out, out)  # `speed` goes to metrics/timings/

    write_jsonl(predictions_out, _predictions(suites[0], results))
    # a DVC out: never empty (DVC warns about an empty folder, which no user can act on)
    write_json(Path(predictions_out).parent / "benchmarks" / "index.json",
               {"benchmarks": [b["name"] for b in benches], "files": "<name>.jsonl per evaluate.benchmarks entry"})
    plots = Path(plots_dir)
    _plots(p, suites[0], results, out, plots / "confusion.csv", plots / "per_policy_f1.csv")
    if _pr_curve(p, suites[0], results, plots / "pr_curve.csv"):
        plot_png.pr_curve(plots / "pr_curve.csv", plots / "pr_curve.png")
    pb = plots / "benchmarks"
    for sub in ("confusion", "per_policy_f1", "images", "pr_curve"):
        (pb / sub).mkdir(parents=True, exist_ok=True)  # DVC plot folders, present even with no benchmarks
    for b in benches:
        name = b["name"]
        write_jsonl(predictions_file(predictions_out, name), _predictions(b, results))
        has_policy_gold = any(it["gold"]["known"] for it in b["items"])
        f1 = pb / "per_policy_f1" / f"{name}.csv" if has_policy_gold else None
        _plots(p, b, results, scored[name], pb / "confusion" / f"{name}.csv", f1)
        # PNG copies for offline viewing (dvc plots HTML needs a CDN)
        plot_png.confusion(pb / "confusion" / f"{name}.csv", pb / "images" / f"{name}_confusion.png")
        if f1 is not None:
            plot_png.per_policy_f1(f1, pb / "images" / f"{name}_per_policy_f1.png")
        if _pr_curve(p, b, results, pb / "pr_curve" / f"{name}.csv"):
            plot_png.pr_curve(pb / "pr_curve" / f"{name}.csv", pb / "images" / f"{name}_pr_curve.png")
    return out


# the DVC metrics file (metrics/eval.json): one screen of `dvc exp show` / `dvc metrics show` in
# 120 columns, so few keys with short names; every other figure is in the detail file
def headline(m: dict) -> dict:
    """Exact match, harmful F1, parse failures, and exact match minus the measured zero-shot base
    and minus the notebook's baseline (baseline.exact_match, 0.57)."""
    return {"exact_match": m["exact_match"], "harmful_f1": m["harmful_f1"],
            "parse_fail": m["parse_failure_rate"],
            "delta_vs_base": m["delta_vs_measured_baseline"]["exact_match"],
            "delta_vs_notebook": m["delta_vs_notebook_baseline"]}
    # AUROC / AUPRC (per set and policy) are in the detail file and MLflow: one more key here
    # would push `dvc metrics show` past 120 columns (128 with auroc; tests/test_graph.py)


def verdict(m: dict, notebook: float) -> str:
    """One sentence: did the adapter beat the zero-shot base and the notebook's baseline on this
    data, judged by the 95% bootstrap intervals (paired for the delta vs the base)."""
    em, d = m["exact_match"], m["delta_vs_measured_baseline"]["exact_match"]
    ci, dci = (m.get("ci95") or {}).get("exact_match"), (m.get("delta_vs_measured_baseline_ci95") or {}).get(
        "exact_match")
    if em is None or d is None:
        return "no exact match on this data (no per-policy gold): see harmful F1 in metrics/eval.json"

    def pts(x):
        return f"{abs(x) * 100:.1f} points"

    def iv(c):
        return f"95% CI [{c['lo'] * 100:+.1f}, {c['hi'] * 100:+.1f}] points" if c else "no CI"

    if dci and dci["lo"] > 0:
        base = f"the adapter beat the zero-shot base by {pts(d)} of exact match ({iv(dci)})"
    elif dci and dci["hi"] < 0:
        base = f"the adapter scored below the zero-shot base by {pts(d)} of exact match ({iv(dci)})"
    else:
        base = (f"the adapter did not clearly beat the zero-shot base ({'+' if d >= 0 else '-'}{pts(d)} of exact "
                f"match, {iv(dci)}, includes 0)")
    where = f"exact match {em:.3f}" + (f", 95% CI [{ci['lo']:.3f}, {ci['hi']:.3f}]" if ci else "")
    if ci and ci["lo"] > notebook:
        nb = f"above the notebook's {notebook:.0%} ({where})"
    elif ci and ci["hi"] < notebook:
        nb = f"below the notebook's {notebook:.0%} ({where})"
    else:
        nb = f"not distinguishable from the notebook's {notebook:.0%} ({where})"
    return f"{base}; {nb}"


def benchmark_summary(m: dict) -> dict:
    """The headline numbers per benchmark, fine-tuned and zero-shot base, for the parent run
    (the stage's run gets every number through log_flat_metrics: eval.benchmarks.<set>....)."""
    return {name: {**{k: b[k] for k in HEADLINE}, "baseline": {k: b["baseline"][k] for k in HEADLINE}}
            for name, b in (m.get("benchmarks") or {}).items()}
