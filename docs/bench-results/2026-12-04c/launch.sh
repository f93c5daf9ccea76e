#!/usr/bin/env bash
mkdir -p /root/logs && (setsid nohup bash /root/g/driver.sh > /root/logs/driver.out 2>&1 < /dev/null &)
sleep 3; ls /root/logs
