"""Evaluation throughput: plain `generate` vs guardrsft's GPU decoding, same prompts, one run.

Tested with (device H100/H200, after ../shared/gpu/README.md's setup):
  PYTHONPATH=/root/site:$PWD/src python bench/eval_throughput.py --model /root/gpu/smollm2-135m-instruct \
      [--adapter DIR] --contents .gpu/d/contents.jsonl --items 256 --big-items 2048 --out $OUT/eval_throughput.json

Same (item, policy) prompts, greedy decoding, one process:
- naive_generate: `model.generate` as a user calls it: batches of 256 sorted by length, left
  padding, dynamic KV cache, stopping at end of turn only (no verdict stop rule);
- naive_guard: the guard's `plain` backend: the same plus the verdict stop rule decoded on the
  CPU after every token (the project's path before the slot engine);
- ours: `guardrsft.fastgen.SlotEngine` through the guard's `static` backend: continuous
  batching over --batch slots, grouped prefill, one CUDA graph per width bucket, the stop rule
  on rows that wrote a newline. Run cold (graph capture included) and warm on the --items
  prompts, then warm on --big-items items (the steady state of a long evaluation).
Verdict agreement and identical text are per (item, policy) between naive_guard and ours.
--sample K adds ours sampling (guard.sample: K answers per pair at hsdpo.temperature / top_p,
0.7 / 0.95 in params.yaml: the HS-DPO mining call) on the --big-items items, after the greedy big run: its new tokens/s beside
the greedy steady state of the same run, cold (graph capture) and warm, and the share of
answers identical between the two. --sample-eager runs the sampled steps without CUDA graphs
first (the engine before sampled graphs) and reports the speedup and the share of identical answers.
--vllm adds evaluate.backend vllm (guardrsft.vllm_backend) on the --big-items items after ours'
model is freed: new tokens/s and verdict agreement with ours' big run; recorded as skipped, with
the reason, where vllm is not installed (this workplace's GPU: docs/EVALUATION.md).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from train_throughput import params_with


def run(guard, items, backend: str, batch: int) -> tuple[list[dict], dict]:
    guard.backend, guard.batch_size, guard.cache = backend, batch, {}
    t0 = time.perf_counter()
    res = guard.classify(items)
    wall = time.perf_counter() - t0
    st = dict(guard.last_stats, backend=backend, batch=batch, wall_seconds=round(wall, 2))
    eng = getattr(guard.model, "_guardrsft_engine", None)
    if backend == "static" and eng is not None:
        st["engine"] = dict(eng.stats, attention=eng.attention, prefill=eng.prefill, sync_every=eng.sync_every,
                            rows=eng.rows)
    st["items_per_second"] = round(len(items) / wall, 2)
    st["new_tokens_per_second"] = round(st["new_tokens"] / wall, 1)
    st["parse_error_rate"] = round(sum(r["is_parse_error"] for r in res) / len(res), 4)
    print(json.dumps(st), flush=True)
    return res, st


def sample_run(guard, items, batch: int, k: int, graphs: bool = True) -> tuple[dict, list[str]]:
    """guard.sample as HS-DPO mining calls it (params.yaml's hsdpo.temperature / top_p, seed), cache off;
    graphs=False runs the engine's sampled steps eagerly (the engine before sampled graphs)."""
    from guardrsft import fastgen

    guard.backend, guard.batch_size, guard.cache, guard.cache_path = "static", batch, {}, None
    h = guard.p.hsdpo
    fastgen.DEFAULTS["graphs"] = None if graphs else False  # applied by generate_static to the engine it uses
    try:
        t0 = time.perf_counter()
        res = guard.sample(items, k, h.temperature, h.top_p, seed=guard.p.seed)
        wall = time.perf_counter() - t0
    finally:
        fastgen.DEFAULTS["graphs"] = None  # later runs keep the default
    eng = getattr(guard.model, "_guardrsft_engine", None)
    answers = [s for r in res for ss in r["samples"].values() for s in ss]
    new = sum(s["new_tokens"] for s in answers)
    st = {"backend": "static", "sampled": True, "graphs": bool(eng is not None and eng.graphs),  # captured or eager
          "k": k, "batch": batch, "answers": len(answers), "new_tokens": new, "wall_seconds": round(wall, 2), "new_tokens_per_second": round(new / wall, 1),
          "parse_error_rate": round(sum(s["is_parse_error"] for s in answers) / len(answers), 4)}
    if eng is not None:
        st["engine"] = {k_: eng.stats.get(k_) for k_ in ("prefill_s", "decode_s", "host_s", "steps")}
    print(json.dumps(st), flush=True)
    return st, [s["raw"] for s in answers]


def agreement(xs: list[dict], ys: list[dict], field: str = "verdicts") -> tuple[float, int]:
    """Share of (item, policy) pairs whose `field` (verdicts, reasoning) is equal, and the pair count."""
    pairs = [(x[field][q], y[field][q]) for x, y in zip(xs, ys) for q in x[field]]
    return round(sum(u == v for u, v in pairs) / len(pairs), 4), len(pairs)


def vllm_run(a, p, items, ours: list[dict]) -> dict:
    """The vllm backend on the same items (greedy), and how often its verdicts equal ours'."""
    from guardrsft.guard import load_guard
    from guardrsft.models import ModelError
    from guardrsft.vllm_backend import require_vllm

    try:
        require_vllm()
    except ModelError as e:
        return {"skipped": str(e)}
    t0 = time.perf_counter()
    guard = load_guard(a.model, adapter=a.adapter, params=p, backend="vllm")
    load_s = time.perf_counter() - t0
    res, st = run(guard, items, "vllm", a.batch)
    rate, n = agreement(ours, res)
    return dict(st, load_seconds=round(load_s, 1), verdict_agreement_vs_ours=rate, verdict_pairs=n)


def naive_generate(guard, items, batch: int) -> dict:
    """Plain `model.generate`, batch by batch, end-of-turn stop only; new non-pad tokens counted."""
    import torch

    tok, model = guard.tok, guard.model
    prompts = sorted((guard._prompt_ids(it["content"], q) for it in items for q in guard.p.policies), key=len)
    pad, new = tok.pad_token_id, 0
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for b in range(0, len(prompts), batch):
        chunk = prompts[b:b + batch]
        w = max(len(x) for x in chunk)
        ids = torch.tensor([[pad] * (w - len(x)) + x for x in chunk], device=model.device)
        mask = torch.tensor([[0] * (w - len(x)) + [1] * len(x) for x in chunk], device=model.device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=guard.max_new_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=pad)
        new += int((out[:, w:] != pad).sum())
    sync()
    wall = time.perf_counter() - t0
    st = {"backend": "generate", "batch": batch, "prompts": len(prompts), "new_tokens": new,
          "wall_seconds": round(wall, 2), "new_tokens_per_second": round(new / wall, 1),
          "items_per_second": round(len(items) / wall, 2)}
    print(json.dumps(st), flush=True)
    return st


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--contents", required=True, help="JSONL with a `content` field per line")
    ap.add_argument("--items", type=int, default=256, help="items for the naive-vs-ours comparison (x 6 policies)")
    ap.add_argument("--big-items", type=int, default=2048, help="items for ours alone, steady state; 0: skip")
    ap.add_argument("--naive-batch", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--variants", default="",
                    help="extra big-set runs of ours, e.g. 'matmul:8,triton:8:padded' "
                         "(attention:sync_every[:prefill])")
    ap.add_argument("--only-ours", action="store_true", help="skip the naive baselines (tuning runs)")
    ap.add_argument("--sample", type=int, default=0, metavar="K",
                    help="also time guard.sample (K answers per pair, hsdpo.temperature / top_p) on --big-items items")
    ap.add_argument("--sample-eager", action="store_true",
                    help="with --sample: also run the sampled steps eagerly (no CUDA graphs) first, "
                         "and report the share of identical answers against the captured run")
    ap.add_argument("--vllm", action="store_true",
                    help="also time evaluate.backend vllm on --big-items items (skipped, with the reason, without vllm)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import torch

    from guardrsft.guard import load_guard

    p = params_with({"preset": "a100", "evaluate.max_new_tokens": a.max_new_tokens})
    every = [{"content": json.loads(line)["content"][:2000]} for line in open(a.contents)]
    items = every[:a.items]
    t0 = time.perf_counter()
    guard = load_guard(a.model, adapter=a.adapter, params=p)
    load_s = time.perf_counter() - t0
    from guardrsft import fastgen

    variants = {}
    for i, v in enumerate(filter(None, a.variants.split(","))):
        attn, sync, *prefill = v.split(":")
        fastgen.DEFAULTS.update(attention=attn, sync_every=int(sync), prefill=(prefill or ["auto"])[0])
        variants[f"{i}:{v}"] = run(guard, every[:a.big_items], "static", a.batch)[1]
    fastgen.DEFAULTS.update(attention="auto", sync_every=8, prefill="auto")
    if a.only_ours:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"variants": variants}, indent=2))
        return
    s_gen = naive_generate(guard, items, a.naive_batch)
    naive, s_naive = run(guard, items, "plain", a.naive_batch)
    _, s_cold = run(guard, items, "static", a.batch)
    ours, s_warm = run(guard, items, "static", a.batch)
    big, s_big = run(guard, every[:a.big_items], "static", a.batch) if a.big_items else (None, None)
    s_sample = s_sample_eager = same_samples = None
    if a.sample and a.big_items:
        # eager first (what mining ran before), then captured cold and warm: same draws expected
        if a.sample_eager:
            s_sample_eager, eager = sample_run(guard, every[:a.big_items], a.batch, a.sample, graphs=False)
        s_sample_cold, cold = sample_run(guard, every[:a.big_items], a.batch, a.sample)
        s_sample, warm = sample_run(guard, every[:a.big_items], a.batch, a.sample)
        s_sample["cold"] = s_sample_cold
        same_samples = {"cold_vs_warm": round(sum(x == y for x, y in zip(cold, warm)) / len(warm), 4)}
        if a.sample_eager:
            same_samples["eager_vs_graphs"] = round(sum(x == y for x, y in zip(eager, warm)) / len(warm), 4)
    s_vllm = None
    if a.vllm and a.big_items:
        del guard  # vLLM takes most of the GPU's memory for its cache
        torch.cuda.empty_cache()
        s_vllm = vllm_run(a, p, every[:a.big_items], big)
    best_naive = max(s_gen["new_tokens_per_second"], s_naive["new_tokens_per_second"])
    same_verdict, n_pairs = agreement(naive, ours)
    report = dict(
        device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (dry run)", date=time.strftime("%Y-%m-%d"), model=a.model, adapter=a.adapter,
        items=len(items), policies=len(p.policies), max_new_tokens=a.max_new_tokens, load_seconds=round(load_s, 1),
        variants=variants, naive_generate=s_gen, naive_guard=s_naive, ours_cold=s_cold, ours_warm=s_warm, ours_big=s_big,
        ours_sampled=s_sample, ours_sampled_eager=s_sample_eager, identical_samples=same_samples, vllm=s_vllm,
        sampled_graphs_vs_eager=round(s_sample["new_tokens_per_second"] / s_sample_eager["new_tokens_per_second"], 2)
        if s_sample and s_sample_eager else None,
        sampled_vs_greedy_big=round(s_sample["new_tokens_per_second"] / s_big["new_tokens_per_second"], 3)
        if s_sample and s_big else None,
        speedup_warm_vs_best_naive=round(s_warm["new_tokens_per_second"] / best_naive, 2),
        speedup_big_vs_best_naive=round(s_big["new_tokens_per_second"] / best_naive, 2) if s_big else None,
        speedup_cold_vs_best_naive=round(s_cold["new_tokens_per_second"] / best_naive, 2),
        items_per_second_warm_vs_naive_guard=round(s_warm["items_per_second"] / s_naive["items_per_second"], 2),
        verdict_agreement=same_verdict, verdict_pairs=n_pairs,
        reasoning_identical=agreement(naive, ours, "reasoning")[0],
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, dict)}), flush=True)


if __name__ == "__main__":
    main()
