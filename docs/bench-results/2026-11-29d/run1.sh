# call 1 (tenth run): P again (C + round-1 pseudo-labels, seed 3407), then round-2 pseudo-labels from P's adapter;
# beside it P with unsafe_share 0.2 (the prior: P's gain was recall bought with false positives)
END=$(( $(date +%s) + 555 )); source .gpu/d/q10/env.sh; mkdir -p /root/o1 /root/pl2; snapshots /root/o1 o1 & SNAP=$!
( timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --extra-train $PL1 --out /root/o1/P --work /root/wP > /root/o1/P.log 2>&1
  timeout $(left) python bench/pseudo_label.py --model $M --adapter /root/wP/adapter_rsft --k 4 --out /root/pl2/pseudo.json > /root/o1/PL2.log 2>&1 ) & P="$P $!"
timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --extra-train $PL1 --unsafe-share 0.2 --out /root/o1/P20 --work /root/wP20 > /root/o1/P20.log 2>&1 & P="$P $!"
wait $P; kill $SNAP
cp /root/pl2/pseudo.counts.json /root/o1/ 2>/dev/null
cd /root/o1 && tar czf $OUT/o1.tgz --exclude='*.safetensors' .
for x in P PL2 P20; do tail -n 3 $x.log; done; summ P P20; head -c 900 pseudo.counts.json
