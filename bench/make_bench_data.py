"""Speed-benchmark inputs from real reasoning traces (lengths like the real thing, ~300-1,000 tokens).

Tested with:
  python bench/make_bench_data.py ../shared/data/guardreasoner_predictions .gpu/d/traces.jsonl

Reads GuardReasoner's published predictions ({prompt, label, predict} JSONL, see
../shared/data/guardreasoner_predictions/PROVENANCE.md) and writes {prompt, completion} lines.
Used for *throughput* only: those traces were written on evaluation benchmarks, so the quality
benchmark never trains on them.
"""
import json
import sys
from pathlib import Path

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
rows = []
for f in sorted(src.glob("*/*/generated_predictions.jsonl")):
    for line in f.open():
        r = json.loads(line)
        rows.append({"prompt": r["prompt"], "completion": r["predict"]})
dst.parent.mkdir(parents=True, exist_ok=True)
tmp = dst.with_suffix(".tmp")
tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
tmp.replace(dst)
print(f"{len(rows)} rows -> {dst} ({dst.stat().st_size / 2**20:.1f} MiB)")
