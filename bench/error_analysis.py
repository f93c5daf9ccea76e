"""Where a guard's errors are, from bench/quality.py's prediction files.

Tested with (here, CPU, on files copied back from the device):
  .venv/bin/python bench/error_analysis.py /tmp/res/c3/C/predictions/rsft.openai_moderation.jsonl.gz \
      /tmp/res/c3/C/predictions/rsft.toxicchat_gr.jsonl.gz

Per file (one model on one set), as JSON on stdout:
- recall by gold policy set: which kinds of harm are missed (an empty gold set on a harmful item
  is harm no policy covers, e.g. OpenAI moderation's adult sexual `S`);
- on gold-benign items, how many each policy flags (over-refusal by policy; an item flagged by
  two policies counts for both);
- false positives and false negatives of the item-level verdict; an unparsed item-level verdict
  counts as wrong, as in guardrsft.metrics (benign_unparsed says how many of the false positives).
No text is printed: the files hold dataset content that must not be copied into the project.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import Counter
from pathlib import Path

from guardrsft.io import jsonl_rows

NO_POLICY = "(no policy: harm outside the six)"
NO_GOLD = "(the set has no per-policy gold)"


def analyse(rows: list[dict]) -> dict:
    harmful = [r for r in rows if r["positive"]]
    benign = [r for r in rows if not r["positive"]]
    caught = [r["verdict"] == "UNSAFE" for r in harmful]
    by_gold, hit = Counter(), Counter()
    # ToxicChat's gold is harmful or not, no policy: an empty gold set says nothing there
    empty = NO_POLICY if any(r["gold"] for r in rows) else NO_GOLD
    for r, ok in zip(harmful, caught):
        key = "+".join(sorted(r["gold"])) or empty
        by_gold[key] += 1
        hit[key] += ok
    flags = Counter(q for r in benign for q, v in r["verdicts"].items() if v == "UNSAFE")
    wrong_benign = [r for r in benign if r["verdict"] != "SAFE"]  # UNSAFE, or unparsed (wrong)
    return {
        "items": len(rows), "harmful": len(harmful), "benign": len(benign),
        "false_negatives": len(harmful) - sum(caught), "false_positives": len(wrong_benign),
        "recall_by_gold": {k: {"items": n, "caught": hit[k], "recall": round(hit[k] / n, 4)}
                           for k, n in by_gold.most_common()},
        "benign_flags_per_policy": dict(flags.most_common()),
        "benign_unparsed": sum(r["verdict"] is None for r in benign),
    }


def read(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [r for _, r in jsonl_rows(f.read(), path)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("predictions", nargs="+", type=Path, help="<model>.<set>.jsonl.gz from quality.py --out")
    a = ap.parse_args(argv)
    out = {}
    for path in a.predictions:
        if not path.exists():
            sys.exit(f"error: {path}: not found (quality.py writes <out>/predictions/<model>.<set>.jsonl.gz)")
        try:
            out[str(path)] = analyse(read(path))
        except (KeyError, ValueError) as e:  # ValueError: jsonl_rows names the bad line
            sys.exit(f"error: {path}: not a quality.py predictions file ({type(e).__name__}: {e})")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
