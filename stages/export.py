"""Merge the adapter into a 16-bit base and write the model card.

Tested with: python stages/export.py models/adapter models/merged metrics/eval.json
"""
import sys

from guardrsft.config import load_params
from guardrsft.errors import run_stage
from guardrsft.pipeline import export

if __name__ == "__main__":
    run_stage(lambda: export(load_params("params.yaml"), *sys.argv[1:4]))
