#!/usr/bin/env bash
# launch3.sh: copy the scripts to /root, then the three experiments in the background
mkdir -p /root/g /root/logs && cp .gpu/g/* /root/g/ && cp /root/g/poll.sh /root/g/collect.sh /root/
L() { n=$1; shift; (setsid nohup bash /root/g/exp.sh "$n" "$@" > /root/logs/$n.out 2>&1 < /dev/null &); }
L gpu-c
sleep 10
L gpu-c-full -S train.method=full -S lr=5e-5
sleep 10
L gpu-c-auto -S prepare.val_fraction=0.05 -S evaluate.thresholds=auto
sleep 5; ls /root/logs; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
