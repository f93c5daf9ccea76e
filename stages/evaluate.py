"""Zero-shot base model vs the fine-tuned adapter on the test split.

Tested with: python stages/evaluate.py data/prepared/test.jsonl models/adapter metrics/eval_detail.json data/predictions/test.jsonl metrics/plots/eval metrics/eval.json data/prepared/val.jsonl
(eval_detail.json: every figure; eval.json: the headline figures, the DVC metrics file; val.jsonl:
what evaluate.thresholds auto tunes the verdict thresholds on)
"""
import sys

from guardrsft.config import load_params
from guardrsft.errors import run_stage
from guardrsft.pipeline import evaluate

if __name__ == "__main__":
    run_stage(lambda: evaluate(load_params("params.yaml"), *sys.argv[1:8]))
