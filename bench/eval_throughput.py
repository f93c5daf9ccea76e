"""Evaluation throughput: plain `generate` vs guardrsft's GPU decoding, same prompts, one run.

Tested with (device H100, after ../shared/gpu/README.md's setup):
  PYTHONPATH=/root/site:$PWD/src python bench/eval_throughput.py --model /root/gpu/smollm2-135m-instruct \
      [--adapter DIR] --contents .gpu/d/contents.jsonl --items 512 --out $OUT/eval_throughput.json

Both paths go through the one classifier API (`guardrsft.guard.load_guard(...).classify`) on
the same (item, policy) prompts with greedy decoding:
- naive: `model.generate` as a user would call it: dynamic KV cache, batch 256, the stop rule
  tested on the CPU after every token (guard's `plain` backend);
- ours: `guardrsft.fastgen` (guard's `static` backend): static KV cache compiled into CUDA
  graphs, width buckets, the stop rule on the GPU, larger batches.
`ours` runs twice: cold (includes compilation) and warm (the steady state a long evaluation
sees). Verdict agreement is per (item, policy) between naive and ours.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import params_with  # noqa: E402


def run(guard, items, backend: str, batch: int) -> tuple[list[dict], dict]:
    guard.backend, guard.batch_size, guard.cache = backend, batch, {}
    t0 = time.perf_counter()
    res = guard.classify(items)
    wall = time.perf_counter() - t0
    st = dict(guard.last_stats, backend=backend, batch=batch, wall_seconds=round(wall, 2))
    st["items_per_second"] = round(len(items) / wall, 2)
    st["new_tokens_per_second"] = round(st["new_tokens"] / wall, 1)
    st["parse_error_rate"] = round(sum(r["is_parse_error"] for r in res) / len(res), 4)
    print(json.dumps(st), flush=True)
    return res, st


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--contents", required=True, help="JSONL with a `content` field per line")
    ap.add_argument("--items", type=int, default=512)
    ap.add_argument("--naive-batch", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import torch

    from guardrsft.guard import load_guard

    p = params_with({"preset": "a100", "evaluate.max_new_tokens": a.max_new_tokens})
    items = [{"content": json.loads(line)["content"][:2000]} for line in open(a.contents)][:a.items]
    t0 = time.perf_counter()
    guard = load_guard(a.model, adapter=a.adapter, params=p)
    load_s = time.perf_counter() - t0
    naive, s_naive = run(guard, items, "plain", a.naive_batch)
    _, s_cold = run(guard, items, "static", a.batch)
    ours, s_warm = run(guard, items, "static", a.batch)
    pairs = [(q, x["verdicts"][q], y["verdicts"][q]) for x, y in zip(naive, ours) for q in x["verdicts"]]
    same = sum(v1 == v2 for _, v1, v2 in pairs)
    report = dict(
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (dry run)", date=time.strftime("%Y-%m-%d"), model=a.model, adapter=a.adapter,
        items=len(items), policies=len(p.policies), max_new_tokens=a.max_new_tokens, load_seconds=round(load_s, 1),
        naive=s_naive, ours_cold=s_cold, ours_warm=s_warm,
        speedup_warm=round(s_warm["new_tokens_per_second"] / s_naive["new_tokens_per_second"], 2),
        speedup_cold=round(s_cold["new_tokens_per_second"] / s_naive["new_tokens_per_second"], 2),
        verdict_agreement=round(same / len(pairs), 4), verdict_pairs=len(pairs),
        reasoning_identical=round(sum(x["reasoning"][q] == y["reasoning"][q]
                                      for x, y in zip(naive, ours) for q in x["reasoning"])
                             / len(pairs), 4),
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, dict)}), flush=True)


if __name__ == "__main__":
    main()
