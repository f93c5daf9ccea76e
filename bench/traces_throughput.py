"""Teacher throughput and cache: 1,000 (sample, policy) items against a local
OpenAI-compatible server (tests/openai_server.py, a separate process on 127.0.0.1),
a cold run then a rerun that must send 0 requests; the baseline, measured in the same run,
is the notebook's plan: one synchronous request at a time (concurrency 1), no cache.

Tested with: .venv/bin/python bench/traces_throughput.py --items 1000 --concurrency 8
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="guardrsft-bench-traces-"))
    os.environ["GUARDRSFT_CACHE"] = str(work / "cache")
    os.environ["OPENAI_API_KEY"] = "sk-bench"
    srv = subprocess.Popen([sys.executable, str(ROOT / "tests/openai_server.py"), "--api-key", "sk-bench"],
                           stdout=subprocess.PIPE, text=True)
    base_url = srv.stdout.readline().strip()
    try:
        from guardrsft.config import load_params
        from guardrsft.data import load_notebook_file
        from guardrsft.io import write_jsonl
        from guardrsft.pipeline import generate_traces

        samples, _ = load_notebook_file(ROOT / "data/raw/training_data.json")
        rows = []
        i = 0
        while sum(6 - len(r["traces"]) for r in rows) < args.items:  # repeat with a suffix past 340 samples
            s = dict(samples[i % len(samples)])
            s.pop("index", None)
            if i >= len(samples):
                s = dict(s, id=f"{s['id']}-{i}", content=f"{s['content']} ({i})")
            rows.append(s)
            i += 1
        write_jsonl(work / "prepared/train.jsonl", rows)
        write_jsonl(work / "prepared/val.jsonl", [])
        text = (ROOT / "params.yaml").read_text().replace("  teacher: template ", "  teacher: openai ")
        text = text.replace("    base_url: null ", f"    base_url: {base_url} ").replace("  enabled: true", "  enabled: false")
        text = re.sub(r"(?m)^    concurrency: \d+", f"    concurrency: {args.concurrency}", text)
        (work / "params.yaml").write_text(text)
        p = load_params(work / "params.yaml")
        out = {}
        for name in ("baseline_sequential", "cold", "rerun"):
            conc = 1 if name == "baseline_sequential" else args.concurrency
            p.traces.openai.concurrency = conc
            if name != "rerun":  # a fresh cache: every item is requested
                os.environ["GUARDRSFT_CACHE"] = str(work / f"cache-{name}")
            t0 = time.time()
            m = generate_traces(p, str(work / "prepared"), str(work / "traces"), str(work / "traces.json"))
            dt = time.time() - t0
            t = m["teacher"]
            n = t["accepted"] + t["rejected"]
            out[name] = {"concurrency": conc, "items": n, "seconds": round(dt, 2), "items_per_s": round(n / dt, 1),
                         "requests_sent": t["requested"], "cache_hits": t["cache_hits"]}
            print(name, json.dumps(out[name]), flush=True)
        assert out["rerun"]["requests_sent"] == 0
        print(json.dumps(out))
    finally:
        srv.terminate()
        srv.wait()


if __name__ == "__main__":
    main()
