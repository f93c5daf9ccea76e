"""Merge the adapter, write GGUF files and an Ollama Modelfile, check them, write the model card.

Tested with: python stages/export.py models/adapter models/merged models/gguf metrics/export.json \
    metrics/eval.json metrics/train.json metrics/data.json
"""
import sys

from guardrsft.config import load_params
from guardrsft.errors import run_stage
from guardrsft.pipeline import export

if __name__ == "__main__":
    adapter, merged, gguf_dir, metrics_out, eval_m, train_m, data_m = sys.argv[1:8]
    run_stage(lambda: export(load_params("params.yaml"), adapter, merged, eval_m, gguf_dir=gguf_dir,
                             metrics_out=metrics_out, train_metrics_path=train_m, data_metrics_path=data_m))
