# call 1 (eleventh run): P (C + round-1 pseudo-labels, seed 3407: the baseline of this run and the hard-negative miner)
# beside P at LoRA rank 256 (capacity)
END=$(( $(date +%s) + 565 )); source .gpu/d/q11/env.sh; mkdir -p /root/o1; snapshots /root/o1 o1 & SNAP=$!
timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --extra-train $PL1 --out /root/o1/P --work /root/wP > /root/o1/P.log 2>&1 & P="$P $!"
timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --extra-train $PL1 --set train.lora_r=256 --set train.lora_alpha=256 --out /root/o1/P256 --work /root/wP256 > /root/o1/P256.log 2>&1 & P="$P $!"
wait $P; kill $SNAP
cd /root/o1 && tar czf $OUT/o1.tgz --exclude='*.safetensors' .
for x in P P256; do tail -n 2 $x.log; done; summ P P256
