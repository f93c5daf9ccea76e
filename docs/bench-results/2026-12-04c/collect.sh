#!/usr/bin/env bash
# collect.sh OUT NAME...: what each experiment measured, for docs/bench-results
out=$1; shift
for n in "$@"; do
  d=/root/exps/$n; o=$out/$n; mkdir -p $o
  [ -d $d ] || { echo "no $d"; continue; }
  cp /root/logs/$n.log $o/run.log 2>/dev/null
  for f in metrics/eval.json metrics/eval_detail.json metrics/build_data.json metrics/train.json metrics/data.json metrics/traces.json params.yaml dvc.lock; do cp $d/$f $o/ 2>/dev/null; done
  cp -r $d/metrics/timings $o/timings 2>/dev/null
  mkdir -p $o/predictions
  cp $d/data/predictions/test.jsonl $o/predictions/ 2>/dev/null
  cp $d/data/predictions/benchmarks/*.jsonl $o/predictions/ 2>/dev/null
  gzip -f $o/predictions/*.jsonl 2>/dev/null
  (cd $d && git log --oneline -1 > $o/head.txt; PATH=/root/ub/bin:$PATH PYTHONPATH=/root/site:/root/ub/lib/python3.12/site-packages dvc exp list > $o/exp_list.txt 2>&1)
  [ -d /root/teacher ] && [ $n = gpu-p-s1 ] && cp $d/metrics/build_data.json $o/build_data.json
done
ls -R $out | head -50
