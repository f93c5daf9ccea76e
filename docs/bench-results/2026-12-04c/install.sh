#!/usr/bin/env bash
# dvc, mlflow, openai from wheels (the image lacks them), then /root/base: this checkout + its .git
set -e
mkdir -p /root/wh && cp .gpu/f/w/*.whl /root/wh/
export PYTHONUSERBASE=/root/ub PYTHONPATH=/root/site
s=$(date +%s)
pk="dvc==3.67.1 mlflow==3.17.2 openai"
python3 -m pip install -q --user --no-index --no-cache-dir --find-links /root/wh $pk > /root/pip.log 2>&1 || \
  python3 -m pip install -q --prefix /root/ub --no-index --no-cache-dir --find-links /root/wh $pk >> /root/pip.log 2>&1
tail -3 /root/pip.log
echo "install $(( $(date +%s) - s ))s"
export PATH=/root/ub/bin:$PATH PYTHONPATH=/root/site:/root/ub/lib/python3.12/site-packages
command -v python >/dev/null || ln -sf "$(command -v python3)" /root/ub/bin/python
dvc --version; python -c "import mlflow, openai, fastapi, uvicorn, trl, datasets; print('mlflow', mlflow.__version__)"
rm -rf /root/base && mkdir -p /root/base && tar -C . --exclude=./.gpu -cf - . | tar -C /root/base -xf -
tar -C /root/base -xzf .gpu/f/git.tgz
cd /root/base && git config --global user.email dev@guardrsft && git config --global user.name dev || true
git -C /root/base status --short | head -5; git -C /root/base log --oneline | head -1; echo base ready
