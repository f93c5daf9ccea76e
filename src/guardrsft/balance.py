"""Class balance of the R-SFT examples (train.safe_per_item, train.unsafe_share).

Each item gives one example per policy, and an item violates one or two of six policies at most:
on the GPU quality benchmark 93% of the (item, policy) pairs were SAFE, and a model trained on
that mix learns to answer SAFE (docs/BENCHMARKS.md, quality runs 1-2). Two seeded, deterministic
steps, applied by train() to the rows it reads (the traces file itself is not rewritten):

1. thin: keep every UNSAFE pair and at most `safe_per_item` SAFE pairs of each item. A benign
   item's six SAFE pairs teach much the same thing six times; thinning buys more distinct items
   per step. A harmful item keeps SAFE pairs too: which policy it does NOT violate is the
   per-policy lesson. SAFE rows marked `"hard": true` (hard negatives: pairs a trained model
   answered UNSAFE; the removed bench/hard_negatives.py marked them) are kept first, all of them, and the random pick
   fills the rest of the item's quota: a random pick keeps a benign item's one confusable
   policy (hate_speech for a neutral statement about a group) a third of the time at 2 of 6.
   Without marked rows the pick is the same, draw for draw, as before the marks existed.
2. oversample: repeat UNSAFE pairs (whole copies) until they are `unsafe_share` of the examples.
   With `per_policy` (train.balance_per_policy), each policy's UNSAFE pairs are repeated until
   they are `unsafe_share` of that policy's examples. The pooled rule repeats every UNSAFE pair
   alike, so a policy with few positives stays rare: in the sixth quality run (96 self_harm and
   76 sexual_minors positives of 4,144 harmful items) the model never answered UNSAFE for
   either policy on OpenAI moderation.

Measured together (safe_per_item 2, unsafe_share 0.3, 12,000 items, one epoch) they gave the best
harmful F1 of the quality runs; the two steps were not measured apart.
"""
from __future__ import annotations

import random
from collections import Counter

# in train()'s checkpoint key: a rerun with a changed balancing rule must not resume a run
# trained on the old rows
VERSION = 1


def _copies(unsafe: list[dict], n: int, share: float) -> list[dict]:
    """Whole copies of `unsafe` (cycled) so that they are `share` of n rows plus the copies."""
    if not share or not unsafe or len(unsafe) / n >= share:
        return []
    # added extra UNSAFE copies: (u + added) / (N + added) = share
    added = round((share * n - len(unsafe)) / (1 - share))
    return [unsafe[i % len(unsafe)] for i in range(added)]


def balance(rows: list[dict], safe_per_item: int, unsafe_share: float, seed: int,
            per_policy: bool = False) -> tuple[list[dict], dict]:
    """(rows to train on, stats). safe_per_item -1 keeps every SAFE pair; unsafe_share 0 adds none.
    Rows need `id` and `classification` (and `policy` with per_policy); the order of the result
    is shuffled (seeded) only when copies were added, so a run without oversampling keeps the
    file's order."""
    rng = random.Random(seed)
    stats = {"rows_in": len(rows), "safe_per_item": safe_per_item, "unsafe_share": unsafe_share}
    if safe_per_item >= 0:
        by_item: dict[str, list[int]] = {}  # each item's unmarked SAFE rows: the random pick's pool
        hard: Counter = Counter()  # each item's marked SAFE rows: kept, and counted against its quota
        for i, r in enumerate(rows):
            if r["classification"] != "SAFE":
                continue
            if r.get("hard"):
                hard[str(r["id"])] += 1
            else:
                by_item.setdefault(str(r["id"]), []).append(i)
        drop: set[int] = set()
        for item, idx in by_item.items():
            keep = max(safe_per_item - hard[item], 0)
            if len(idx) > keep:
                drop.update(rng.sample(idx, len(idx) - keep))
        rows = [r for i, r in enumerate(rows) if i not in drop]
        stats["safe_dropped"] = len(drop)
        if hard:
            stats["hard_safe_kept"] = sum(hard.values())
    unsafe = [r for r in rows if r["classification"] == "UNSAFE"]
    stats["unsafe_share_before"] = round(len(unsafe) / max(len(rows), 1), 4)
    if per_policy:
        stats["per_policy"] = True
        by_policy: dict[str, list[dict]] = {}  # policies in file order
        for r in rows:
            by_policy.setdefault(r["policy"], []).append(r)
        extra = []
        for q, mine in by_policy.items():
            copies = _copies([r for r in mine if r["classification"] == "UNSAFE"], len(mine), unsafe_share)
            stats.setdefault("unsafe_added_per_policy", {})[q] = len(copies)
            extra += copies
    else:
        extra = _copies(unsafe, len(rows), unsafe_share)
    added = len(extra)
    if extra:
        rows = rows + extra
        # a fresh generator per step: the order of bench/quality.py's fifth run, which made
        # these two steps in two functions, is reproduced exactly
        random.Random(seed).shuffle(rows)
    stats.update(unsafe_added=added, rows=len(rows),
                 unsafe_share_after=round((len(unsafe) + added) / max(len(rows), 1), 4))
    return rows, stats
