"""Serving throughput: `guardrsft serve` under concurrent clients against classify's batch ceiling.

  PYTHONPATH=$PWD/src python bench/serve_throughput.py --model /root/gpu/smollm2-135m-instruct \
      --contents .gpu/d/contents.jsonl --clients 1,64,512 --requests 2048 --out $OUT/serve_throughput.json

(CPU check: --model embedded:smollm2-135m-instruct --clients 1,4 --requests 8 --max-new-tokens 16.)

One process loads the guard (guardrsft.classify_file.open_guard, as `guardrsft serve` does) and:
- ceiling: guard.classify on the --requests texts in one call (fresh cache): items/s;
- serves it (guardrsft.serve.create_app, uvicorn on 127.0.0.1) and, per --clients level C, sends
  every text once as its own /v1/moderations request from C concurrent clients (the `openai`
  client's AsyncOpenAI, closed loop, spread over --client-procs processes so the load generator
  is not the bottleneck); the answer cache is emptied before each level, so every answer is
  generated. Per level: requests/s, p50/p99/max latency, the server's batches, requests/s as a
  share of the ceiling, and the share of texts whose per-policy verdicts equal the ceiling's
  (batch composition differs between the two; greedy answers should not).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

import yaml

WORDS = ("please explain how I could get into my neighbour's wifi without the password and what "
         "tools a beginner would need to write a short story about a dragon who guards a bakery "
         "is it safe to mix bleach with vinegar when cleaning the bathroom tell me a joke").split()


def texts_for(n: int, contents: str | None) -> list[str]:
    """n distinct texts: from a JSONL file's `content` (numbered when reused), or synthetic."""
    if contents:
        lines = Path(contents).read_text().splitlines()
        pool = [json.loads(line)["content"][:2000] for line in lines if line.strip()]
        return [pool[i % len(pool)] + (f" ({i // len(pool)})" if i >= len(pool) else "") for i in range(n)]
    return [" ".join(WORDS[(7 * i) % len(WORDS):][: 6 + (5 * i) % 30]) + f" (case {i})" for i in range(n)]


def params_for(path: str, preset: str | None, max_new_tokens: int | None, batch: int | None):
    import torch

    from guardrsft.config import load_params

    raw = yaml.safe_load(Path(path).read_text())
    raw["preset"] = preset or ("a100" if torch.cuda.is_available() else "cpu")
    ev = raw.setdefault("evaluate", {})
    ev.update({k: v for k, v in (("max_new_tokens", max_new_tokens), ("batch_size", batch)) if v})
    f = Path(tempfile.mkdtemp()) / "params.yaml"
    f.write_text(yaml.safe_dump(raw, sort_keys=False))  # policies keep their order
    return load_params(f)


def client_proc(url: str, texts: list[str], clients: int, barrier, out) -> None:
    """One load-generator process: `clients` closed-loop clients over `texts` (index, text) pairs."""
    import openai

    async def main():
        c = openai.AsyncOpenAI(base_url=url + "/v1", api_key="bench", max_retries=0, timeout=3600)
        todo, rows = iter(texts), []

        async def one_client():
            for i, text in todo:  # shared iterator: each text sent once
                t0 = time.perf_counter()
                try:
                    r = (await c.moderations.create(model="guardrsft", input=text)).results[0].to_dict()
                    rows.append((i, time.perf_counter() - t0, r["categories"], r.get("parse_errors", []), None))
                except openai.APIError as e:
                    rows.append((i, time.perf_counter() - t0, None, None, f"{type(e).__name__}: {e}"[:200]))

        barrier.wait()  # every process starts sending at once
        await asyncio.gather(*(one_client() for _ in range(clients)))
        await c.close()
        return rows

    out.put(asyncio.run(main()))


def level(url: str, texts: list[str], clients: int, procs: int) -> tuple[float, list]:
    ctx = mp.get_context("spawn")
    procs = max(1, min(procs, clients))
    barrier, out = ctx.Barrier(procs + 1), ctx.Queue()
    shares = [list(enumerate(texts))[k::procs] for k in range(procs)]
    ps = [ctx.Process(target=client_proc, args=(url, shares[k], clients // procs + (k < clients % procs), barrier, out))
          for k in range(procs)]
    for p in ps:
        p.start()
    barrier.wait(timeout=600)
    t0 = time.perf_counter()
    rows = [r for _ in ps for r in out.get(timeout=3600)]
    wall = time.perf_counter() - t0
    for p in ps:
        p.join()
    return wall, rows


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="merged folder, .gguf, embedded:NAME or a base with --adapter")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--contents", default=None, help="JSONL with a `content` field per line (default: synthetic)")
    ap.add_argument("--clients", default="1,64,512", help="concurrency levels, comma-separated")
    ap.add_argument("--requests", type=int, default=2048, help="texts, each sent once per level")
    ap.add_argument("--client-procs", type=int, default=4, help="load-generator processes")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--preset", default=None, help="default: a100 on CUDA, else cpu")
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None, help="generation batch (evaluate.batch_size)")
    ap.add_argument("--max-batch", type=int, default=2048, help="texts per classify call of the server")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import torch

    from guardrsft.classify_file import open_guard
    from guardrsft.serve import BackgroundServer, Limits, create_app

    p = params_for(a.params, a.preset, a.max_new_tokens, a.batch)
    texts = texts_for(a.requests, a.contents)
    t0 = time.perf_counter()
    guard = open_guard(a.model, p, adapter=a.adapter)
    load_s = time.perf_counter() - t0
    guard.classify([{"content": t} for t in texts[:8]])  # warm-up (CUDA graph capture), not measured
    guard.cache = {}
    t0 = time.perf_counter()
    ceiling = guard.classify([{"content": t} for t in texts])
    ceil_s = time.perf_counter() - t0
    ceiling_stats = dict(guard.last_stats)
    gold = [r["verdicts"] for r in ceiling]
    limits = Limits(max_items=1, max_queue=4 * a.requests, max_batch=a.max_batch, timeout_s=3600,
                    cache_entries=10 * a.requests * len(p.policies))
    levels = []
    app = create_app(guard, "guardrsft", limits)
    with BackgroundServer(app, timeout_s=3600) as srv:
        for c in [int(x) for x in a.clients.split(",")]:
            guard.cache = {}  # the worker is idle between levels: every answer is generated again
            before = dict(app.state.batcher.stats)
            wall, rows = level(srv.url, texts, c, a.client_procs)
            stats = app.state.batcher.stats
            ok = [r for r in rows if r[4] is None]
            lat = [r[1] * 1000 for r in ok]
            same = sum(all(gold[i][q] == ("UNSAFE" if cats.get(q) else None if q in errs else "SAFE") for q in gold[i])
                       for i, _, cats, errs, _ in ok)
            batches = stats["batches"] - before["batches"]
            levels.append({
                "clients": c, "requests": len(rows), "errors": len(rows) - len(ok),
                "first_error": next((r[4] for r in rows if r[4]), None), "seconds": round(wall, 3),
                "requests_per_second": round(len(ok) / wall, 2),
                "share_of_ceiling": round(len(ok) / wall / (len(texts) / ceil_s), 4),
                "latency_ms": {"p50": round(pct(lat, 0.5), 1), "p99": round(pct(lat, 0.99), 1),
                               "mean": round(statistics.fmean(lat), 1), "max": round(max(lat), 1)} if lat else None,
                "server_batches": batches, "mean_texts_per_batch": round((stats["items"] - before["items"]) / batches, 2)
                if batches else None,
                "verdicts_same_as_ceiling": round(same / len(ok), 4) if ok else None})
            print(json.dumps(levels[-1]), flush=True)
    res = {"model": a.model, "adapter": a.adapter, "device": torch.cuda.get_device_name() if torch.cuda.is_available()
           else "cpu", "backend": guard.backend, "preset": p.preset, "policies": list(p.policies),
           "max_new_tokens": guard.max_new_tokens, "batch_size": guard.batch_size, "texts": len(texts),
           "load_seconds": round(load_s, 2),
           "ceiling": {"items": len(texts), "seconds": round(ceil_s, 3), "items_per_second": round(len(texts) / ceil_s, 2),
                       "stats": ceiling_stats},
           "levels": levels}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
