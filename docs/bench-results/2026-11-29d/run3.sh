# call 3 (what the budget leaves): unfinished runs resume (same commands, same --work); beside them P at LoRA rank 256
END=$(( $(date +%s) + ${CALL_S:-450} )); source .gpu/d/q10/env.sh; mkdir -p /root/o3; snapshots /root/o3 o3 & SNAP=$!
( has_model /root/o2/P2/report.json rsft || { [ -s /root/pl2/pseudo.json ] || timeout $(left) python bench/pseudo_label.py --model $M --adapter /root/wP/adapter_rsft --k 4 --out /root/pl2/pseudo.json > /root/o3/PL2.log 2>&1
    timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --extra-train /root/pl2/pseudo.json --out /root/o3/P2 --work /root/wP2 > /root/o3/P2.log 2>&1; } ) & P="$P $!"
( for lr in 5e-5 2e-4; do has_model /root/o2/HP$lr/report.json hsdpo || timeout $(left) python bench/quality.py $C --models hsdpo --epochs 2 --extra-train $PL1 --hsdpo-items 800 --hsdpo-balance 1 --set hsdpo.lr=$lr --out /root/o3/HP$lr --work /root/wP > /root/o3/HP$lr.log 2>&1; done ) & P="$P $!"
timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --extra-train $PL1 --set train.lora_r=256 --set train.lora_alpha=256 --out /root/o3/P256 --work /root/wP256 > /root/o3/P256.log 2>&1 & P="$P $!"
wait $P; kill $SNAP
cp /root/pl2/pseudo.counts.json /root/o3/ 2>/dev/null
cd /root/o3 && tar czf $OUT/o3.tgz --exclude='*.safetensors' .
for x in PL2 P2 HP5e-5 HP2e-4 P256; do tail -n 2 $x.log 2>/dev/null; done; summ P2 HP5e-5 HP2e-4 P256
