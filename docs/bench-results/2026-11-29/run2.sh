# call 2: the best of call 1 by the in-distribution test split's harmful F1 (never the dev sets),
# then its label-only ablation, the zero-shot base and a second seed, three at once
export PYTHONPATH=/root/site:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
M=/root/gpu/smollm2-135m-instruct
declare -A CFG=(
 [A]="--epochs 1 --set train.balance_per_policy=true"
 [B]="--epochs 1 --set train.balance_per_policy=true --set train.lora_r=128 --set train.lora_alpha=128"
 [C]="--epochs 2 --set train.balance_per_policy=true --set train.lora_r=128 --set train.lora_alpha=128")
BEST=$(python - <<'PY'
import json, os
best = None
for x in "ABC":
    f = f"/root/o/{x}/report.json"
    if not os.path.exists(f): continue
    t = json.load(open(f))["results"].get("rsft", {}).get("test_split")
    if t and (best is None or (t["harmful_f1"], t["macro_f1"]) > best[0]): best = ((t["harmful_f1"], t["macro_f1"]), x)
print(best[1] if best else "A")
PY
)
echo "best of call 1 by test split: $BEST: ${CFG[$BEST]}"
C="--model $M --sets openai_moderation,toxicchat_gr --max-eval-items 0 --test-items 300 --deadline-s 0 --eval-batch 512 --lr 5e-4 ${CFG[$BEST]}"
mkdir -p /root/o2 && echo "$BEST ${CFG[$BEST]}" > /root/o2/best.txt
timeout 560 python bench/quality.py $C --models label_only --out /root/o2/label --work /root/w2_label > /root/o2/label.log 2>&1 &
timeout 560 python bench/quality.py $C --models base --out /root/o2/base --work /root/w2_base > /root/o2/base.log 2>&1 &
timeout 560 python bench/quality.py $C --models rsft --seed 1 --out /root/o2/seed1 --work /root/w2_seed1 > /root/o2/seed1.log 2>&1 &
wait
cd /root/o2 && tar czf $OUT/o2.tgz --exclude='*.safetensors' .
for x in label base seed1; do tail -n 2 $x.log; python -c "
import json;r=json.load(open('$x/report.json'))['results']
print('$x', {m: {s: (v['harmful_f1'], v.get('macro_f1'), v.get('benign_fpr')) for s, v in rr.items()} for m, rr in r.items()})"; done
