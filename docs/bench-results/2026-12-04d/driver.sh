#!/usr/bin/env bash
# the other device scripts (exp.sh, install.sh, poll.sh, collect.sh, launch.sh) are docs/bench-results/2026-12-04c/'s;
# /root/g/labels.py was docs/bench-results/2026-12-04c/labels.py, carried in .gpu/g
# two workers on the one GPU (three evaluations at once ran out of memory on 2026-12-04):
#   A: the teacher (the default, seed 3407, up to train_rsft), then P: the default with
#      data.pseudo_label.adapter = a copy of the teacher's models/adapter outside the repo
#   B: the labels lever (labels.py: BeaverTails' discrimination flag -> hate_speech?) at seed 3407, then at seed 1
# the measured runs stop at `evaluate` (no export: they measure quality)
E=/root/g/exp.sh
( bash $E gpu-teacher train_rsft
  TEACHER=/root/exps/gpu-teacher/models/adapter bash $E gpu-p evaluate -S data.pseudo_label.adapter=/root/teacher
) > /root/logs/workerA.out 2>&1 &
sleep 20
( PATCH=/root/g/labels.py bash $E gpu-c-full-labels evaluate
  PATCH=/root/g/labels.py bash $E gpu-c-full-labels-s1 evaluate -S seed=1
) > /root/logs/workerB.out 2>&1 &
wait
echo "driver done $(date -u +%FT%TZ)" > /root/logs/driver.done
