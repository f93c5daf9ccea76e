# call 3 (if the budget leaves one): PH resumes (same command, same --work)
END=$(( $(date +%s) + ${CALL_S:-400} )); source .gpu/d/q11/env.sh; mkdir -p /root/o3; snapshots /root/o3 o3 & SNAP=$!
( has_model /root/o2/PH/report.json rsft || timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --extra-train $PL1 --hard-negatives /root/hn/hard.json --out /root/o3/PH --work /root/wPH > /root/o3/PH.log 2>&1 ) & P="$P $!"
wait $P; kill $SNAP
cd /root/o3 && tar czf $OUT/o3.tgz --exclude='*.safetensors' .
tail -n 2 PH.log 2>/dev/null; summ PH
