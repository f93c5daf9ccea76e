"""The HS-DPO adapter evaluated like the R-SFT one (same code, items and decoding), with its
delta vs R-SFT (read from R-SFT's metrics JSON) and the delta's paired bootstrap interval (from
both predictions files). With hsdpo off, writes `enabled: false`.

Tested with: python stages/evaluate_hsdpo.py data/prepared/test.jsonl models/adapter_hsdpo metrics/eval_detail.json data/predictions/test.jsonl metrics/eval_hsdpo_detail.json data/predictions/hsdpo metrics/plots/eval_hsdpo metrics/eval_hsdpo.json
"""
import sys

from guardrsft.config import load_params
from guardrsft.errors import run_stage
from guardrsft.pipeline import evaluate_hsdpo

if __name__ == "__main__":
    run_stage(lambda: evaluate_hsdpo(load_params("params.yaml"), *sys.argv[1:9]))
