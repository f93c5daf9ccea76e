# call 2: HS-DPO on C's adapter; 3 epochs resumed; pseudo-labels from C's adapter, then C's recipe on the augmented data
source .gpu/d/q8/env.sh; mkdir -p /root/o2
timeout 548 python bench/quality.py $C --models hsdpo --epochs 2 --hsdpo-items 1500 --hsdpo-balance 1 --out /root/o2/H --work /root/wC > /root/o2/H.log 2>&1 &
timeout 548 python bench/quality.py $C --models rsft --epochs 3 --out /root/o2/E3 --work /root/wE3 > /root/o2/E3.log 2>&1 &
(timeout 160 python bench/pseudo_label.py --model $M --adapter /root/wC/adapter_rsft --out /root/pl/train.json > /root/o2/PL.log 2>&1 &&
 timeout 385 python bench/quality.py $C --models rsft --epochs 2 --data /root/pl/train.json --out /root/o2/P --work /root/wP > /root/o2/P.log 2>&1) &
wait
cp /root/pl/train.counts.json /root/o2/pseudo.counts.json
cd /root/o2 && tar czf $OUT/o2.tgz --exclude='*.safetensors' .
for x in H E3 PL P; do tail -n 2 $x.log; done; cat pseudo.counts.json | head -30; summ H E3 P
