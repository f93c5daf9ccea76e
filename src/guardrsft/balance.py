"""Class balance of the R-SFT examples (train.safe_per_item, train.unsafe_share).

Each item gives one example per policy, and an item violates one or two of six policies at most:
on the GPU quality benchmark 93% of the (item, policy) pairs were SAFE, and a model trained on
that mix learns to answer SAFE (docs/BENCHMARKS.md, quality runs 1-2). Two seeded, deterministic
steps, applied by train() to the rows it reads (the traces file itself is not rewritten):

1. thin: keep every UNSAFE pair and at most `safe_per_item` SAFE pairs of each item. A benign
   item's six SAFE pairs teach much the same thing six times; thinning buys more distinct items
   per step. A harmful item keeps SAFE pairs too: which policy it does NOT violate is the
   per-policy lesson.
2. oversample: repeat UNSAFE pairs (whole copies) until they are `unsafe_share` of the examples.

Measured together (safe_per_item 2, unsafe_share 0.3, 12,000 items, one epoch) they gave the best
harmful F1 of the quality runs; the two steps were not measured apart.
"""
from __future__ import annotations

import random

# in train()'s checkpoint key: a rerun with a changed balancing rule must not resume a run
# trained on the old rows
VERSION = 1


def balance(rows: list[dict], safe_per_item: int, unsafe_share: float, seed: int) -> tuple[list[dict], dict]:
    """(rows to train on, stats). safe_per_item -1 keeps every SAFE pair; unsafe_share 0 adds none.
    Rows need `id` and `classification`; the order of the result is shuffled (seeded) only when
    copies were added, so a run without oversampling keeps the file's order."""
    rng = random.Random(seed)
    stats = {"rows_in": len(rows), "safe_per_item": safe_per_item, "unsafe_share": unsafe_share}
    if safe_per_item >= 0:
        by_item: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            if r["classification"] == "SAFE":
                by_item.setdefault(str(r["id"]), []).append(i)
        drop: set[int] = set()
        for idx in by_item.values():
            if len(idx) > safe_per_item:
                drop.update(rng.sample(idx, len(idx) - safe_per_item))
        rows = [r for i, r in enumerate(rows) if i not in drop]
        stats["safe_dropped"] = len(drop)
    unsafe = [r for r in rows if r["classification"] == "UNSAFE"]
    stats["unsafe_share_before"] = round(len(unsafe) / max(len(rows), 1), 4)
    added = 0
    if unsafe_share and unsafe and len(unsafe) / len(rows) < unsafe_share:
        # added extra UNSAFE copies: (u + added) / (N + added) = share
        added = round((unsafe_share * len(rows) - len(unsafe)) / (1 - unsafe_share))
        rows = rows + [unsafe[i % len(unsafe)] for i in range(added)]
        # a fresh generator per step: the order of bench/quality.py's fifth run, which made
        # these two steps in two functions, is reproduced exactly
        random.Random(seed).shuffle(rows)
    stats.update(unsafe_added=added, rows=len(rows),
                 unsafe_share_after=round((len(unsafe) + added) / max(len(rows), 1), 4))
    return rows, stats
