# call 2: HS-DPO on C (mining resumes from the sample cache); pseudo-labels finish, then R-SFT C + pseudo-labelled items starts (resumes in call 3); I resumes if cut
END=$(( $(date +%s) + 555 )); source .gpu/d/q9/env.sh; mkdir -p /root/o2; snapshots /root/o2 o2 & SNAP=$!
timeout $(left) python bench/quality.py $C --models hsdpo --epochs 2 --hsdpo-items 800 --hsdpo-balance 1 --out /root/o2/H --work /root/wC > /root/o2/H.log 2>&1 & P="$P $!"
( timeout $(left) python bench/pseudo_label.py --model $M --adapter /root/wC/adapter_rsft --k 4 --out /root/pl/pseudo.json > /root/o2/PL.log 2>&1
  timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --extra-train /root/pl/pseudo.json --out /root/o2/P --work /root/wP > /root/o2/P.log 2>&1 ) & P="$P $!"
has_model /root/o1/I/report.json rsft || timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --import-source .gpu/d/quality/gr_predictions --out /root/o2/I --work /root/wI > /root/o2/I.log 2>&1 & P="$P $!"
wait $P; kill $SNAP
cp /root/pl/pseudo.counts.json /root/pl/pseudo.json /root/o2/ 2>/dev/null
cd /root/o2 && tar czf $OUT/o2.tgz --exclude='*.safetensors' .
for x in H PL P I; do tail -n 3 $x.log 2>/dev/null; done; summ H P I; head -c 1500 pseudo.counts.json
