# call 1: recipe C again (adapter kept in /root/wC for HS-DPO and pseudo-labels), 3 epochs (resumed in call 2), lr 2e-4
source .gpu/d/q8/env.sh; mkdir -p /root/o1
timeout 548 python bench/quality.py $C --models rsft --epochs 2 --out /root/o1/C --work /root/wC > /root/o1/C.log 2>&1 &
timeout 548 python bench/quality.py $C --models rsft --epochs 3 --out /root/o1/E3 --work /root/wE3 > /root/o1/E3.log 2>&1 &
timeout 548 python bench/quality.py $C --models rsft --epochs 2 --lr 2e-4 --out /root/o1/L2 --work /root/wL2 > /root/o1/L2.log 2>&1 &
wait
cd /root/o1 && tar czf $OUT/o1.tgz --exclude='*.safetensors' .
for x in C E3 L2; do tail -n 2 $x.log; done; summ C E3 L2; ls /root/.cache/guardrsft/checkpoints/*/ 2>/dev/null | tail -8
