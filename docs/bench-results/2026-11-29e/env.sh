export PYTHONPATH=/root/site:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
M=/root/gpu/smollm2-135m-instruct
# recipe C (seventh run): 2 epochs, LoRA r128/a128, lr 5e-4, per-policy balance (params.yaml default now)
C="--model $M --sets openai_moderation,toxicchat_gr --max-eval-items 0 --test-items 300 --deadline-s 0 --eval-batch 512 --lr 5e-4 --set train.lora_r=128 --set train.lora_alpha=128"
summ() { for x in "$@"; do python - "$x" <<'PY'
import json, sys
x = sys.argv[1]
try:
    r = json.load(open(f"{x}/report.json"))
except Exception as e:
    print(x, "no report", e); sys.exit()
for m, res in r["results"].items():
    print(x, m, {s: (v["harmful_f1"], v.get("macro_f1"), v.get("benign_fpr"), v.get("exact_match")) for s, v in res.items()}, "train_s", (r["train"].get(m) or {}).get("train_seconds"))
print(x, "phases", r["phases"], "skipped", r.get("skipped"))
PY
done; }
# the call's own deadline: END set by the run script; left = seconds to it
left() { local s=$(( END - $(date +%s) )); echo $(( s > 1 ? s : 1 )); }  # never 0: timeout 0 means no limit
# has_model REPORT MODEL: the report holds MODEL's evaluation (a run cut short has none)
has_model() { python -c "import json,sys; sys.exit(0 if sys.argv[2] in json.load(open(sys.argv[1]))['results'] else 1)" "$1" "$2" 2>/dev/null; }
# snapshots DIR NAME: tar DIR to $OUT/NAME.tgz every 45 s, so a call killed at the budget's end still returns results
snapshots() { while sleep 45; do (cd "$1" && tar czf "$OUT/.snap.tgz" --exclude='*.safetensors' . && mv "$OUT/.snap.tgz" "$OUT/$2.tgz"); done; }
# eleventh run: the ninth run's round-1 pseudo-labels (992 items, C's adapter, --k 4), carried in .gpu/d/pl
PL1=$PWD/.gpu/d/pl/pseudo.json
