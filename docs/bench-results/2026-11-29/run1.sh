# call 1: three R-SFT runs at once on one GPU (contended: not speed figures)
export PYTHONPATH=/root/site:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
M=/root/gpu/smollm2-135m-instruct
C="--model $M --sets openai_moderation,toxicchat_gr --max-eval-items 0 --test-items 300 --models rsft --deadline-s 0 --eval-batch 512 --lr 5e-4"
mkdir -p /root/o
timeout 560 python bench/quality.py $C --epochs 1 --out /root/o/A --work /root/w_A --set train.balance_per_policy=true > /root/o/A.log 2>&1 &
timeout 560 python bench/quality.py $C --epochs 1 --out /root/o/B --work /root/w_B --set train.balance_per_policy=true --set train.lora_r=128 --set train.lora_alpha=128 > /root/o/B.log 2>&1 &
timeout 560 python bench/quality.py $C --epochs 2 --out /root/o/C --work /root/w_C --set train.balance_per_policy=true --set train.lora_r=128 --set train.lora_alpha=128 > /root/o/C.log 2>&1 &
wait
cd /root/o && tar czf $OUT/o1.tgz --exclude='*.safetensors' A B C A.log B.log C.log
for x in A B C; do tail -n 3 $x.log; python -c "
import json;r=json.load(open('$x/report.json'))['results']['rsft']
print('$x', {s: (v['harmful_f1'], v.get('macro_f1'), v.get('benign_fpr')) for s, v in r.items()})"; done
