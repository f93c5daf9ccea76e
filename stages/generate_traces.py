"""Keep the given traces, fill every missing (sample, policy) pair with the teacher.

Tested with: python stages/generate_traces.py data/prepared data/traces metrics/traces.json
"""
import sys

from guardrsft.config import load_params
from guardrsft.errors import run_stage
from guardrsft.pipeline import generate_traces

if __name__ == "__main__":
    run_stage(lambda: generate_traces(load_params("params.yaml"), *sys.argv[1:4]))
