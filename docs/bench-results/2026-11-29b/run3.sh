# call 3 as run (written after calls 1-2: call 1's three 2-3 epoch runs shared the GPU and none
# finished in 548 s; this resumes C and L2 from their checkpoint-800, then HS-DPO and pseudo-labels)
source .gpu/d/q8/env.sh; mkdir -p /root/o3
timeout 300 python bench/quality.py $C --models rsft --epochs 2 --out /root/o3/C --work /root/wC > /root/o3/C.log 2>&1 &
timeout 300 python bench/quality.py $C --models rsft --epochs 2 --lr 2e-4 --out /root/o3/L2 --work /root/wL2 > /root/o3/L2.log 2>&1 &
wait
timeout 250 python bench/quality.py $C --models hsdpo --epochs 2 --hsdpo-items 800 --hsdpo-balance 1 --out /root/o3/H --work /root/wC > /root/o3/H.log 2>&1 &
timeout 200 python bench/pseudo_label.py --model $M --adapter /root/wC/adapter_rsft --out /root/pl/train.json > /root/o3/PL.log 2>&1 &
wait
cp /root/pl/train.counts.json /root/o3/pseudo.counts.json; cp /root/pl/train.json /root/o3/pseudo_train.json
cd /root/o3 && tar czf $OUT/o3.tgz --exclude='*.safetensors' .
for x in C L2 H PL; do tail -n 2 $x.log; done; summ C L2 H; cat pseudo.counts.json | head -12
