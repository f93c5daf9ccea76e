#!/usr/bin/env bash
# the recipe's ../shared/data for /root/base (../shared = /root/shared) and /root/exps/<name> (/root/exps/shared)
set -e
mkdir -p /root/shared /root/exps/shared /root/g
tar -C /root/shared -xzf .gpu/d/data.tgz && tar -C /root/exps/shared -xzf .gpu/d/data.tgz
cp .gpu/g/* /root/g/ && cp /root/g/poll.sh /root/g/collect.sh /root/
du -sh /root/shared/data; ls /root/g
