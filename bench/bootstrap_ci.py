"""Bootstrap intervals for recorded predictions, and paired differences between two runs.

    .venv/bin/python bench/bootstrap_ci.py \
        docs/bench-results/2026-12-04b/gpu-c-full/predictions/openai_moderation.jsonl.gz \
        --against docs/bench-results/2026-12-04b/gpu-c/predictions/openai_moderation.jsonl.gz

Reads the evaluate stage's `data/predictions/benchmarks/<set>.jsonl` or `data/predictions/test.jsonl`
(plain or gzipped; --model finetuned|baseline picks the answer) or the archived bench/quality.py
files `<out>/predictions/<model>.<set>.jsonl.gz` (per item: gold policies, harmful or not, the
verdicts) and prints JSON: per file, harmful F1, binary accuracy and exact match with their
95% percentile-bootstrap intervals over items (guardrsft.metrics.bootstrap_ci, the rules of the
reported metrics: a parse failure is wrong). With --against, the paired difference FILE - AGAINST
on the same resampled items, which is what decides whether one run beat another on this set:
two runs' intervals side by side overstate the uncertainty of their difference. Files written
before the predictions carried `known` (the policies with gold) give no exact match.
Seed noise is not in these intervals: they say how much the figure would move on another draw
of as many items, not on another training seed.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys


from guardrsft.config import POLICY_IDS
from guardrsft.evaluate import headline_delta
from guardrsft.metrics import CI_METRICS, bootstrap_ci, compute


def read(path: str, model: str = "finetuned") -> tuple[list[str], list[dict], list[dict]]:
    """(ids, golds, results) in the shapes guardrsft.metrics reads."""
    ids, golds, results = [], [], []
    with (gzip.open(path, "rt") if path.endswith(".gz") else open(path)) as f:
        for line in f:
            r = json.loads(line)
            if model in r:  # the evaluate stage's predictions: gold and each model's answer as written
                ids.append(r["id"])
                golds.append(r["gold"])
                results.append(r[model])
                continue
            ids.append(r["id"])
            # `known` missing (older files): no policy's gold is claimed, so no exact match
            old = "known" not in r
            golds.append({"labels": [] if old else r["gold"], "known": [] if old else r["known"],
                          "harmful": r["positive"]})
            results.append({"verdict": r["verdict"], "verdicts": r["verdicts"],
                            "is_parse_error": any(v is None for v in r["verdicts"].values())})
    return ids, golds, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", help="evaluate's predictions (data/predictions/...) or bench/quality.py's")
    ap.add_argument("--model", default="finetuned", choices=("finetuned", "baseline"),
                    help="which answer of the evaluate stage's predictions (ignored for bench/quality.py files)")
    ap.add_argument("--against", default=None, help="a second run's file for the same set: paired FILE - AGAINST")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=3407)
    a = ap.parse_args()
    pol = list(POLICY_IDS)
    other = read(a.against, a.model) if a.against else None
    report = {}
    for path in a.files:
        ids, golds, res = read(path, a.model)
        m = compute(golds, res, pol)
        row = {"items": len(ids), **{k: m[k] for k in CI_METRICS},
               "ci95": bootstrap_ci(golds, res, pol, resamples=a.resamples, seed=a.seed)}
        if other is not None:
            if other[0] != ids:
                sys.exit(f"error: {a.against} and {path} do not hold the same items in the same order "
                         "(same set, same --max-eval-items and seed needed for a paired comparison)")
            row["against"] = a.against
            row["delta"] = headline_delta(m, compute(golds, other[2], pol), CI_METRICS)
            row["delta_ci95"] = bootstrap_ci(golds, res, pol, other=other[2], resamples=a.resamples, seed=a.seed)
        report[path] = row
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
