"""Self-training: a trained R-SFT model names the policies of gold-harmful prompts that have none.

Tested with (CPU dry run; on the device with --model /root/gpu/smollm2-135m-instruct and a
bench/quality.py --work's adapter_rsft):
  .venv/bin/python bench/pseudo_label.py --dry-run --adapter /tmp/q/adapter_rsft --out /tmp/pl/pseudo.json

bench/build_quality_data.py leaves out the gold-harmful prompts its lexicon names no policy for
(GuardReasonerTrain's WildGuardTrain / BeaverTails / Aegis / ToxicChat harmful prompts, and
GuardReasoner-prediction items): their harmfulness is gold, their policies unknown, and a wrong
SAFE for the right policy would teach the model to miss them. They go to
`<data>.unlabeled.json`; here the model trained on the labelled items says which policies:
- the policies its greedy answer flags;
- for an item it flags under none (or whose answer did not parse), --k sampled answers per
  policy (temperature, seeded): the policies with the most UNSAFE samples, if that is at least
  --min-votes;
- any other item is left out and counted (the model has no policy to give it).
The labelled items (source `pseudo:<source>`) are written, validated like any training file, to
--out (atomic) with `<out>.counts.json`; `bench/quality.py --extra-train <out>` adds them to the
train split only (the test split stays --data's). The params must be the adapter's run's:
pass the same --set options (prompt and policies are what matter here).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (bench/quality.py: the same params as the run that trained the adapter)

from guardrsft.data import load_notebook_file  # noqa: E402
from guardrsft.io import atomic_path, write_json  # noqa: E402


def policies_of(verdicts: dict, unsafe_samples: dict | None, min_votes: int = 1) -> list[str] | None:
    """The pseudo-label of one item: greedy flags, else the most-UNSAFE-sampled policies (at least
    min_votes UNSAFE samples; ties all kept), else None."""
    flagged = sorted(q for q, v in verdicts.items() if v == "UNSAFE")
    if flagged or not unsafe_samples:
        return flagged or None
    top = max(unsafe_samples.values())
    return sorted(q for q, n in unsafe_samples.items() if n == top) if top >= max(min_votes, 1) else None


def label(guard, items: list[dict], k: int, temperature: float, seed: int,
          min_votes: int = 1) -> tuple[list, Counter]:
    res = guard.classify([{"content": it["content"]} for it in items], progress=True)
    unflagged = [i for i, r in enumerate(res) if r["verdict"] != "UNSAFE"]
    counts: dict[int, dict] = {}
    if unflagged and k:
        sampled = guard.sample([{"content": items[i]["content"]} for i in unflagged], k, temperature, 1.0, seed)
        counts = {i: {q: sum(s["verdict"] == "UNSAFE" for s in ss) for q, ss in r["samples"].items()}
                  for i, r in zip(unflagged, sampled)}
    out, stats = [], Counter()
    for i, (it, r) in enumerate(zip(items, res)):
        labels = policies_of(r["verdicts"], counts.get(i), min_votes)
        how = "greedy" if r["verdict"] == "UNSAFE" else ("sampled" if labels else "left_out")
        stats[how] += 1
        if labels:
            out.append({"id": it["id"], "content": it["content"], "labels": labels, "source": f"pseudo:{it['source']}"})
            stats.update(f"policy:{q}" for q in labels)
    return out, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--unlabeled", default=str(quality.ROOT / ".gpu/d/quality/train.unlabeled.json"),
                    help="bench/build_quality_data.py's <out>.unlabeled.json")
    ap.add_argument("--out", required=True, help="the labelled items (notebook format), for quality.py --extra-train")
    ap.add_argument("--k", type=int, default=8, help="samples per policy for items greedy flags under none (0: off)")
    ap.add_argument("--min-votes", type=int, default=2, help="UNSAFE samples a policy needs to label an item")
    ap.add_argument("--temperature", type=float, default=1.0)
    quality.adapter_args(ap)
    a = ap.parse_args()
    if a.k < 0 or a.min_votes < 1 or a.temperature <= 0:
        quality.fail("--k must be >= 0, --min-votes >= 1 and --temperature > 0")
    unl = Path(a.unlabeled)
    for f in (unl, Path(a.adapter)):
        if not f.exists():
            quality.fail(f"{f}: not found (bench/build_quality_data.py writes <out>.unlabeled.json; "
                         "bench/quality.py --work holds adapter_rsft)")
    items = json.loads(unl.read_text())["items"][: 4 if a.dry_run else None]
    if not items:
        quality.fail(f"{unl}: no items to label")
    qa, p = quality.adapter_params(a)

    from guardrsft.guard import load_guard

    # answers are appended to the cache after every batch: a run cut short (a device call's
    # time limit) resumes where it stopped; the key holds the adapter's fingerprint and the prompt
    cache = Path(a.cache or Path(a.out).with_suffix(".answers.jsonl"))
    guard = load_guard(p.model, adapter=a.adapter, params=p, max_new_tokens=qa.max_new_tokens,
                       batch_size=p.eval_batch_size, cache_path=str(cache), backend="auto")  # it samples
    labelled, stats = label(guard, items, a.k, a.temperature, a.seed, a.min_votes)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    made = {"adapter": str(a.adapter), "unlabeled": str(unl), "k": a.k, "min_votes": a.min_votes,
            "temperature": a.temperature, "seed": a.seed, "set": a.set}
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"samples": labelled, "metadata": {"built_by": "bench/pseudo_label.py", **made}},
                                  ensure_ascii=False))
        load_notebook_file(tmp)  # the pipeline's own validation, before the rename
    report = {"unlabeled": len(items), "added": len(labelled), **dict(sorted(stats.items())), "args": made,
              "last_call": guard.last_stats}  # the sampling call's answers (cached / generated), else classify's
    write_json(out.with_suffix(".counts.json"), report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
