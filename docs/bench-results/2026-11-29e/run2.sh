# call 2 (eleventh run): unfinished runs of call 1 resume (same commands, same --work); then P's adapter mines hard
# negatives (benign training items' policies it answers UNSAFE) and PH = P with those SAFE pairs kept first
END=$(( $(date +%s) + 565 )); source .gpu/d/q11/env.sh; mkdir -p /root/o2 /root/hn; snapshots /root/o2 o2 & SNAP=$!
( has_model /root/o1/P/report.json rsft || timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --extra-train $PL1 --out /root/o2/P --work /root/wP > /root/o2/P.log 2>&1
  [ -s /root/hn/hard.json ] || timeout $(left) python bench/hard_negatives.py --model $M --adapter /root/wP/adapter_rsft --traces /root/wP/traces/train.jsonl --set train.lora_r=128 --set train.lora_alpha=128 --out /root/hn/hard.json > /root/o2/HN.log 2>&1
  cp /root/hn/hard.json /root/o2/hard.json
  timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --extra-train $PL1 --hard-negatives /root/hn/hard.json --out /root/o2/PH --work /root/wPH > /root/o2/PH.log 2>&1 ) & P="$P $!"
( has_model /root/o1/P256/report.json rsft || timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --extra-train $PL1 --set train.lora_r=256 --set train.lora_alpha=256 --out /root/o2/P256 --work /root/wP256 > /root/o2/P256.log 2>&1 ) & P="$P $!"
wait $P; kill $SNAP
cd /root/o2 && tar czf $OUT/o2.tgz --exclude='*.safetensors' .
for x in P HN PH P256; do tail -n 2 $x.log 2>/dev/null; done; python -c "import json; print(json.dumps(json.load(open('hard.json'))['report']))" 2>/dev/null; summ P PH P256
