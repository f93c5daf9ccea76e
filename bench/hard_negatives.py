"""Hard negatives: the (benign item, policy) pairs a trained R-SFT model answers UNSAFE.

Tested with (CPU dry run; on the device with --model /root/gpu/smollm2-135m-instruct, a
bench/quality.py --work's adapter_rsft and the same --work's traces/train.jsonl):
  .venv/bin/python bench/hard_negatives.py --dry-run --adapter /tmp/q/adapter_rsft \
      --traces /tmp/q/traces/train.jsonl --out /tmp/hn/hard.json

train.safe_per_item keeps 2 of a benign item's 6 SAFE pairs, drawn at random: a neutral
statement about a group keeps its hate_speech pair, the one it could be mistaken for, a third of
the time. This asks the model trained that way which SAFE pairs it gets wrong and writes them;
`bench/quality.py --hard-negatives <out>` marks those rows `hard`, and guardrsft.balance keeps
marked SAFE pairs first (the item's quota is unchanged, so the run trains on as many rows).

Only items that are benign for every policy are mined: their six SAFE labels come from the
source (a benign label). A harmful item's SAFE pairs are the policies its source or the lexicon
did not name, and pseudo-labelled items' are the policies a model did not flag: a model that
flags another policy there may be right. Only the train split is read (the traces file), never
the test split or a dev set. Answers are cached after every batch (`<out>.answers.jsonl`), so a
run cut short resumes. The params must be the adapter's run's: pass the same --set options.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (bench/quality.py: the same params as the run that trained the adapter)

from guardrsft.balance import balance  # noqa: E402
from guardrsft.io import read_jsonl, write_json  # noqa: E402


def benign_items(rows: list[dict], policies: list[str]) -> list[dict]:
    """[{"id", "content"}] of the items whose rows are all SAFE and cover every policy, in file order."""
    by_id: dict[str, dict] = {}
    for r in rows:
        it = by_id.setdefault(str(r["id"]), {"id": str(r["id"]), "content": r["content"], "labels": {}})
        it["labels"][r["policy"]] = r["classification"]
    return [{"id": it["id"], "content": it["content"]} for it in by_id.values()
            if set(it["labels"]) == set(policies) and set(it["labels"].values()) == {"SAFE"}]


def hard_pairs(items: list[dict], results: list[dict]) -> list[dict]:
    """(id, policy) of each benign item's policies answered UNSAFE (a parse failure is not a verdict)."""
    return [{"id": it["id"], "policy": q} for it, r in zip(items, results)
            for q, v in sorted(r["verdicts"].items()) if v == "UNSAFE"]


def trained_pairs(rows: list[dict], p) -> set[tuple[str, str]]:
    """The SAFE (id, policy) pairs the adapter's run trained on: train()'s own balancing, same params."""
    kept, _ = balance(rows, p.train.safe_per_item, p.train.unsafe_share, p.seed, per_policy=p.train.balance_per_policy)
    return {(str(r["id"]), r["policy"]) for r in kept if r["classification"] == "SAFE"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traces", required=True, help="that run's --work/traces/train.jsonl (the train split)")
    ap.add_argument("--out", required=True, help="the hard pairs (JSON), for quality.py --hard-negatives")
    quality.adapter_args(ap)
    a = ap.parse_args()
    for f in (Path(a.traces), Path(a.adapter)):
        if not f.exists():
            quality.fail(f"{f}: not found (bench/quality.py --work holds traces/train.jsonl and adapter_rsft)")
    qa, p = quality.adapter_params(a)
    rows = read_jsonl(a.traces)
    items = benign_items(rows, list(p.policies))[: 4 if a.dry_run else None]
    if not items:
        quality.fail(f"{a.traces}: no item is SAFE for every policy; nothing to mine")

    from guardrsft.guard import load_guard

    cache = Path(a.cache or Path(a.out).with_suffix(".answers.jsonl"))
    guard = load_guard(p.model, adapter=a.adapter, params=p, max_new_tokens=qa.max_new_tokens,
                       batch_size=p.eval_batch_size, cache_path=str(cache))
    res = guard.classify([{"content": it["content"]} for it in items], progress=True)
    pairs = hard_pairs(items, res)
    trained = trained_pairs(rows, p)
    seen = sum((x["id"], x["policy"]) in trained for x in pairs)
    report = {"benign_items": len(items), "benign_pairs": len(items) * len(p.policies), "hard_pairs": len(pairs),
              "items_with_hard_pairs": len({x["id"] for x in pairs}),
              "hard_pairs_trained_on": seen, "hard_pairs_thinned_away": len(pairs) - seen,
              "per_policy": dict(sorted(Counter(x["policy"] for x in pairs).items())),
              "parse_failures": sum(v is None for r in res for v in r["verdicts"].values()),
              "args": {"adapter": a.adapter, "traces": a.traces, "seed": a.seed, "set": a.set},
              "last_call": guard.last_stats}
    write_json(a.out, {"pairs": pairs, "report": report})  # atomic (temp file, then rename)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
