# call 2: round-2 pseudo-labels finish, then R-SFT on C + them (P2); beside it HS-DPO on P at hsdpo.lr 5e-5 then 2e-4
# (the ninth run's 5e-6 did not fit: reward accuracy 0.46); whatever call 1 left unfinished resumes first
END=$(( $(date +%s) + 555 )); source .gpu/d/q10/env.sh; mkdir -p /root/o2; snapshots /root/o2 o2 & SNAP=$!
( has_model /root/o1/P/report.json rsft || timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --extra-train $PL1 --out /root/o2/P --work /root/wP > /root/o2/P.log 2>&1
  [ -s /root/pl2/pseudo.json ] || timeout $(left) python bench/pseudo_label.py --model $M --adapter /root/wP/adapter_rsft --k 4 --out /root/pl2/pseudo.json > /root/o2/PL2.log 2>&1
  timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --extra-train /root/pl2/pseudo.json --out /root/o2/P2 --work /root/wP2 > /root/o2/P2.log 2>&1 ) & P="$P $!"
( has_model /root/o1/P20/report.json rsft || timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --extra-train $PL1 --unsafe-share 0.2 --out /root/o2/P20 --work /root/wP20 > /root/o2/P20.log 2>&1
  for lr in 5e-5 2e-4; do timeout $(left) python bench/quality.py $C --models hsdpo --epochs 2 --extra-train $PL1 --hsdpo-items 800 --hsdpo-balance 1 --set hsdpo.lr=$lr --out /root/o2/HP$lr --work /root/wP > /root/o2/HP$lr.log 2>&1; done ) & P="$P $!"
wait $P; kill $SNAP
cp /root/pl2/pseudo.counts.json /root/o2/ 2>/dev/null
cd /root/o2 && tar czf $OUT/o2.tgz --exclude='*.safetensors' .
for x in P PL2 P2 P20 HP5e-5 HP2e-4; do tail -n 2 $x.log 2>/dev/null; done; summ P P2 P20 HP5e-5 HP2e-4; head -c 900 pseudo.counts.json 2>/dev/null
