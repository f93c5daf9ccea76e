"""Validate, normalize, de-duplicate and split the input data.

Tested with: python stages/prepare.py data/raw/training_data.json data/prepared metrics/data.json
"""
import sys

from guardrsft.config import load_params
from guardrsft.errors import run_stage
from guardrsft.pipeline import prepare

if __name__ == "__main__":
    run_stage(lambda: prepare(load_params("params.yaml"), *sys.argv[1:4]))
