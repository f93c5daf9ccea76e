#!/usr/bin/env bash
# exp.sh NAME [dvc exp run args...]: a copy of the repo at /root/exps/NAME, the GPU recipe as
# params.yaml, then `dvc exp run -n NAME ARGS`, then a local-remote push; log at /root/logs/NAME.log
name=$1; shift
d=/root/exps/$name; rm -rf "$d"; mkdir -p "$d" /root/logs
cp -a /root/base/. "$d/"
cd "$d"
export PYTHONPATH=/root/site:$d/src:/root/ub/lib/python3.12/site-packages GUARDRSFT_BASE_MODEL=/root/gpu/smollm2-135m-instruct
export GIT_AUTHOR_NAME=dev GIT_AUTHOR_EMAIL=dev@guardrsft GIT_COMMITTER_NAME=dev GIT_COMMITTER_EMAIL=dev@guardrsft
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONUSERBASE=/root/ub PATH=/root/ub/bin:$PATH
{
  echo "== $(date -u +%FT%TZ) start $name: dvc exp run -n $name $*"
  cp params/gpu-recipe.yaml params.yaml
  [ -n "${PATCH:-}" ] && python "$PATCH" && echo "patched with $PATCH"
  [ -n "${TEACHER:-}" ] && rm -rf /root/teacher && cp -r "$TEACHER" /root/teacher && echo "teacher: copy of $TEACHER at /root/teacher"
  s=$(date +%s)
  dvc exp run -n "$name" "$@"; rc=$?
  echo "== rc=$rc wall=$(( $(date +%s) - s ))s"
  dvc remote add -f -d dev /root/remote >/dev/null && dvc push -q; echo "== push rc=$?"
  echo "== done $(date -u +%FT%TZ)"
} > /root/logs/$name.log 2>&1
