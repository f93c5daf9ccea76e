"""Zero-shot base model vs the fine-tuned adapter on the test split.

Tested with: python stages/evaluate.py data/prepared/test.jsonl models/adapter metrics/eval_detail.json data/predictions/test.jsonl metrics/plots/eval metrics/eval.json
(eval_detail.json: every figure; eval.json: the headline figures, the DVC metrics file)
"""
import sys

from guardrsft.config import load_params
from guardrsft.errors import run_stage
from guardrsft.pipeline import evaluate

if __name__ == "__main__":
    run_stage(lambda: evaluate(load_params("params.yaml"), *sys.argv[1:7]))
