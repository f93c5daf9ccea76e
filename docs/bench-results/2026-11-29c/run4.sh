# call 4 (written after call 3 found nothing left to do): two more seeds of R-SFT C + the pseudo-labelled items
END=$(( $(date +%s) + 530 )); source .gpu/d/q9/env.sh; mkdir -p /root/o4; snapshots /root/o4 o4 & SNAP=$!
for s in 1 2; do timeout $(left) python bench/quality.py $C --models rsft --epochs 2 --seed $s --extra-train /root/pl/pseudo.json --out /root/o4/P$s --work /root/wP$s > /root/o4/P$s.log 2>&1 & P="$P $!"; done
wait $P; kill $SNAP; cd /root/o4 && tar czf $OUT/o4.tgz --exclude='*.safetensors' . ; for x in P1 P2; do tail -n 2 $x.log; done; summ P1 P2
