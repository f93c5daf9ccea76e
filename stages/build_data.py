"""The training set from the sources declared in params `data` (guardrsft.sources).

Tested with: python stages/build_data.py data/raw/training_data.json data/built/training_data.json metrics/build_data.json

The first argument is the shipped sample set, used as is when `data.sources` is empty.
"""
import sys

from guardrsft.config import load_params
from guardrsft.errors import run_stage
from guardrsft.pipeline import build_data

if __name__ == "__main__":
    run_stage(lambda: build_data(load_params("params.yaml"), *sys.argv[1:4]))
