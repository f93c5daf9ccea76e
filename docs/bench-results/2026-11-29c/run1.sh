# call 1 (ninth run): C alone-ish (seed 3407) then pseudo-labels from its adapter; beside it, C with imported GuardReasoner traces
END=$(( $(date +%s) + 555 )); source .gpu/d/q9/env.sh; mkdir -p /root/o1 /root/pl; snapshots /root/o1 o1 & SNAP=$!
( timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --out /root/o1/C --work /root/wC > /root/o1/C.log 2>&1
  timeout $(left) python bench/pseudo_label.py --model $M --adapter /root/wC/adapter_rsft --k 4 --out /root/pl/pseudo.json > /root/o1/PL.log 2>&1 ) & P="$P $!"
timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --import-source .gpu/d/quality/gr_predictions --out /root/o1/I --work /root/wI > /root/o1/I.log 2>&1 & P="$P $!"
wait $P; kill $SNAP
cp /root/pl/pseudo.counts.json /root/o1/ 2>/dev/null
cd /root/o1 && tar czf $OUT/o1.tgz --exclude='*.safetensors' .
for x in C I PL; do tail -n 3 $x.log; done; summ C I; head -c 1500 pseudo.counts.json
