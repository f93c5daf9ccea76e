# As run on 2026-11-29, when params.yaml's train.balance_per_policy was still false (pooled): the
# `pooled` line below has no --set for it. To repeat it now add --set train.balance_per_policy=false.
# call 3: call 1's best recipe (C) with the pooled balance rule (isolates balance_per_policy), and with a third seed
export PYTHONPATH=/root/site:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
M=/root/gpu/smollm2-135m-instruct
C="--model $M --sets openai_moderation,toxicchat_gr --max-eval-items 0 --test-items 300 --models rsft --deadline-s 0 --eval-batch 512 --lr 5e-4 --epochs 2 --set train.lora_r=128 --set train.lora_alpha=128"
mkdir -p /root/o3
timeout 530 python bench/quality.py $C --out /root/o3/pooled --work /root/w3_pooled > /root/o3/pooled.log 2>&1 &
timeout 530 python bench/quality.py $C --seed 2 --set train.balance_per_policy=true --out /root/o3/seed2 --work /root/w3_seed2 > /root/o3/seed2.log 2>&1 &
wait
cd /root/o3 && tar czf $OUT/o3.tgz --exclude='*.safetensors' .
for x in pooled seed2; do tail -n 2 $x.log; python -c "
import json;r=json.load(open('$x/report.json'))['results']['rsft']
print('$x', {s: (v['harmful_f1'], v.get('macro_f1'), v.get('benign_fpr')) for s, v in r.items()})"; done
