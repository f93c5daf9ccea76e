# call 3: whatever is unfinished resumes (same commands, same --work: adapters reused, checkpoints resumed)
END=$(( $(date +%s) + 555 )); source .gpu/d/q9/env.sh; mkdir -p /root/o3; snapshots /root/o3 o3 & SNAP=$!
has_model /root/o2/H/report.json hsdpo || timeout $(left) python bench/quality.py $C --models hsdpo --epochs 2 --hsdpo-items 800 --hsdpo-balance 1 --out /root/o3/H --work /root/wC > /root/o3/H.log 2>&1 & P="$P $!"
has_model /root/o2/P/report.json rsft || ( [ -s /root/pl/pseudo.json ] || timeout $(left) python bench/pseudo_label.py --model $M --adapter /root/wC/adapter_rsft --k 4 --out /root/pl/pseudo.json > /root/o3/PL.log 2>&1
  timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --extra-train /root/pl/pseudo.json --out /root/o3/P --work /root/wP > /root/o3/P.log 2>&1 ) & P="$P $!"
has_model /root/o1/I/report.json rsft || has_model /root/o2/I/report.json rsft || timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --import-source .gpu/d/quality/gr_predictions --out /root/o3/I --work /root/wI > /root/o3/I.log 2>&1 & P="$P $!"
wait $P; kill $SNAP
cp /root/pl/pseudo.counts.json /root/pl/pseudo.json /root/o3/ 2>/dev/null
cd /root/o3 && tar czf $OUT/o3.tgz --exclude='*.safetensors' .
for x in H PL P I; do tail -n 3 $x.log 2>/dev/null; done; summ H P I; head -c 1500 pseudo.counts.json 2>/dev/null
