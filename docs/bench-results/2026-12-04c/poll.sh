#!/usr/bin/env bash
# poll.sh N OUT: wait up to N s (or until the driver is done), one line per experiment, then collect the finished ones into OUT
end=$(( $(date +%s) + ${1:-0} ))
while [ $(date +%s) -lt $end ] && [ ! -f /root/logs/driver.done ]; do sleep 5; done
date -u +%T; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
for f in /root/logs/*.log; do echo "--- $f"; grep -E "^== |Running stage|ERROR|rror:" "$f" | tail -3; done
cat /root/logs/driver.done 2>/dev/null
if [ -n "$2" ]; then
  done_=$(grep -l "^== done" /root/logs/*.log 2>/dev/null | xargs -r -n1 basename | sed 's/\.log$//')
  [ -n "$done_" ] && bash /root/collect.sh "$2" $done_ > /dev/null 2>&1; ls "$2"
fi
