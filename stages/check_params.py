"""Validate the whole params.yaml and write, per stage, the resolved values that stage reads.

Tested with: python stages/check_params.py params.yaml metrics/params

The root of the pipeline (`always_changed`, no torch import): every `dvc repro <stage>` runs it
first, so a bad value (`preset: t5`, `lr: "abc"`) or a misspelled `dvc exp run -S` key fails by
name before DVC decides to skip anything. metrics/params/<stage>.json holds exactly the params
the stage's code reads (guardrsft.graph.params_read), preset values and the base model after
GUARDRSFT_BASE_MODEL resolved; each stage depends on its file, so only a change it reads reruns it.
all.json: every effective value.
"""
import sys

from guardrsft.config import load_params
from guardrsft.errors import run_stage
from guardrsft.graph import write_stage_params


def main(params_path: str, out_dir: str) -> None:
    for path, changed in write_stage_params(load_params(params_path), out_dir).items():
        print(f"[check_params] {path}{'' if changed else ' (unchanged)'}", file=sys.stderr)


if __name__ == "__main__":
    run_stage(lambda: main(*sys.argv[1:3]))
