"""Where the slot engine's time goes: host prompt preparation, prefill, and one decoding step
(kernel table from the PyTorch profiler; graph-replay time per step against the slot count).

Tested with (device H200, after ../shared/gpu/README.md's setup):
  PYTHONPATH=/root/site:$PWD/src python bench/engine_profile.py --model /root/gpu/smollm2-135m-instruct \
      --contents .gpu/d/contents.jsonl --items 2048 --rows 1024,2048,4096 --out $OUT/engine_profile.json

A diagnostic for tuning `guardrsft.fastgen`, not a benchmark of record: the end-to-end figure
is bench/eval_throughput.py's.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from train_throughput import params_with


def timed(fn, sync) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def fill(eng, prompts: list[list[int]], max_new: int) -> None:
    """Every slot prefilled and active, as in the steady state of a long evaluation."""
    import torch

    B = eng.rows
    eng.out = torch.zeros((B, max_new), dtype=torch.long, device=eng.device)
    eng._graphs.clear()
    eng.max_new.fill_(max_new)
    for s in range(0, B, 64):
        slots = list(range(s, min(s + 64, B)))
        group = [prompts[b % len(prompts)] for b in slots]
        with torch.inference_mode():
            first = eng._prefill(slots, group)
            idx = torch.tensor(slots, device=eng.device)
            eng.cur[idx], eng.n_gen[idx] = first, 1
            eng.pos[idx] = torch.tensor([len(p) for p in group], device=eng.device)
            eng.active[idx] = True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--contents", required=True)
    ap.add_argument("--items", type=int, default=2048)
    ap.add_argument("--rows", default="1024,2048")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--attention", default="auto", help="auto or one of guardrsft.fastgen.ATTENTION")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import torch

    from guardrsft.fastgen import SlotEngine, resolve_attention
    from guardrsft.guard import load_guard

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    p = params_with({"preset": "a100" if cuda else "cpu", "evaluate.max_new_tokens": 256})
    items = [json.loads(line)["content"][:2000] for line in open(a.contents)][:a.items]
    guard = load_guard(a.model, params=p)
    rep: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "items": len(items)}
    pairs = [(t, q) for t in items for q in p.policies]
    t0 = time.perf_counter()
    keys = [guard._key(t, q) for t, q in pairs]
    rep["host_keys_s"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    prompts = guard._prompt_ids_many(pairs)
    rep["host_tokenize_s"] = round(time.perf_counter() - t0, 3)
    lens = sorted(len(x) for x in prompts)
    rep["prompts"] = len(prompts)
    rep["prompt_tokens"] = {"mean": round(sum(lens) / len(lens), 1), "p50": lens[len(lens) // 2], "max": lens[-1]}
    del keys
    attention = resolve_attention(a.attention, guard.model.device.type)
    rep["attention"] = attention
    max_len = lens[-1] + 256
    rep["rows"] = {}
    for rows in [int(r) for r in a.rows.split(",")]:
        eng = SlotEngine(guard.model, guard.tok, rows=rows, max_len=max_len, attention=attention)
        r: dict = {}
        g = min(64, rows)
        group = prompts[:g]
        n_tok = sum(len(x) for x in group)
        with torch.inference_mode():
            eng.out = torch.zeros((rows, 256), dtype=torch.long, device=eng.device)
            eng._prefill(list(range(g)), group)
            r["prefill_group_s"] = round(timed(lambda: eng._prefill(list(range(g)), group), sync), 4)
        r["prefill_tokens_per_s"] = round(n_tok / r["prefill_group_s"])
        # a full prefill call as the engine makes it (up to 65,536 prompt tokens), with its kernels
        big, n_big = [], 0
        for x in prompts[len(prompts) // 2:]:
            if len(big) == rows or n_big + len(x) > 65536:
                break
            big.append(x)
            n_big += len(x)
        with torch.inference_mode():
            eng._prefill(list(range(len(big))), big)
            dt = timed(lambda: eng._prefill(list(range(len(big))), big), sync)
            r["prefill_big"] = {"mode": eng.prefill, "prompts": len(big), "tokens": n_big, "s": round(dt, 4),
                                "tokens_per_s": round(n_big / dt)}
            if cuda:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
                    eng._prefill(list(range(len(big))), big)
                    sync()
                ev = [e for e in prof.key_averages() if e.device_time_total > 0]
                ev.sort(key=lambda e: -e.device_time_total)
                r["prefill_big"]["gpu_ms"] = round(sum(e.device_time_total for e in ev) / 1000, 3)
                r["prefill_big"]["top_kernels"] = [
                    {"name": e.key[:90], "count": e.count, "ms": round(e.device_time_total / 1000, 3)} for e in ev[:20]]
        fill(eng, prompts, 256)
        if eng.flat and cuda:  # the two flat-cache kernels on the same cache and queries
            from guardrsft.decode_attn import decode_attention

            q = torch.randn(rows, eng.h, 1, eng.d, device=eng.device, dtype=eng.dtype)
            ref = eng._varlen(q, eng.k[0], eng.v[0], eng.pos).float()
            got = decode_attention(q[:, :, 0], eng.k[0], eng.v[0], eng.pos, eng.d ** -0.5).reshape(rows, 1, -1)
            r["triton_vs_varlen_max_abs_diff"] = float((got.float() - ref).abs().max())
        width = min(eng.max_len, -(-(int(eng.pos.max()) + a.steps + 1) // 128) * 128)
        eng._run_step(width, rows)  # capture
        dt = timed(lambda: [eng._run_step(width, rows) for _ in range(a.steps)], sync)
        r["step_ms"] = round(1000 * dt / a.steps, 3)
        r["tokens_per_s_full"] = round(rows * a.steps / dt)
        if rows == int(a.rows.split(",")[0]) and cuda:
            fill(eng, prompts, 256)
            from torch.profiler import ProfilerActivity, profile

            with torch.inference_mode():
                eng._step(width, rows)
                sync()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    eng._step(width, rows)
                    sync()
            ev = [e for e in prof.key_averages() if e.device_time_total > 0]
            ev.sort(key=lambda e: -e.device_time_total)
            total = sum(e.device_time_total for e in ev)
            r["eager_step_gpu_ms"] = round(total / 1000, 3)
            r["eager_kernels"] = sum(e.count for e in ev)
            r["top_kernels"] = [{"name": e.key[:90], "count": e.count, "ms": round(e.device_time_total / 1000, 3)}
                                for e in ev[:25]]
        rep["rows"][rows] = r
        print(json.dumps({rows: r}), flush=True)
        eng = r = None  # the engine freed before the next size (not `del`: the lambdas above read eng)
        if cuda:
            torch.cuda.empty_cache()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=2))
    print(json.dumps(rep, indent=1))


if __name__ == "__main__":
    main()
