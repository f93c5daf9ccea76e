"""Merge the adapter, write GGUF files and an Ollama Modelfile, check them, write the model card.

Tested with: python stages/export.py models/adapter models/adapter_hsdpo models/merged models/gguf \
    metrics/export.json metrics/eval_detail.json metrics/eval_hsdpo_detail.json metrics/train.json metrics/data.json
(export.adapter picks the R-SFT or the HS-DPO adapter; each comes with its evaluation metrics.)
"""
import sys

from guardrsft.config import load_params
from guardrsft.errors import run_stage
from guardrsft.pipeline import export

if __name__ == "__main__":
    adapter, adapter_hsdpo, merged, gguf_dir, metrics_out, eval_m, eval_hsdpo, train_m, data_m = sys.argv[1:10]
    run_stage(lambda: export(load_params("params.yaml"), adapter, merged, eval_m, gguf_dir=gguf_dir,
                             metrics_out=metrics_out, train_metrics_path=train_m, data_metrics_path=data_m,
                             hsdpo_adapter=adapter_hsdpo, hsdpo_eval_path=eval_hsdpo))
