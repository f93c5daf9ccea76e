#!/usr/bin/env bash
# two workers on the one GPU (three evaluations at once ran out of memory on 2026-12-04):
#   A: the default (full fine-tuning, per-policy) at seed 1
#   B: the joint (one-pass) prompt with the default full fine-tuning, then the default at seed 2
# each stops at `evaluate` (no export: these runs measure quality)
# /root/g/joint.py was docs/bench-results/2026-12-04/joint.py, carried in .gpu/g
E=/root/g/exp.sh
( bash $E gpu-c-full-s1 evaluate -S seed=1 ) > /root/logs/workerA.out 2>&1 &
sleep 20
( PATCH=/root/g/joint.py bash $E gpu-c-joint-full evaluate
  bash $E gpu-c-full-s2 evaluate -S seed=2
) > /root/logs/workerB.out 2>&1 &
wait
echo "driver done $(date -u +%FT%TZ)" > /root/logs/driver.done
