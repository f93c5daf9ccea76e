"""Validate the whole params.yaml and write the preset-resolved values.

Tested with: python stages/check_params.py params.yaml metrics/params_resolved.json

It tracks every key (dvc.yaml lists `params.yaml:` with no keys), so a misspelled
`dvc exp run -S lr_typo=1` reaches this stage and fails it by name.
"""
import sys

from guardrsft.config import load_params
from guardrsft.errors import run_stage
from guardrsft.io import write_json
from guardrsft.tracking import redact


def main(params_path: str, out: str) -> None:
    # git keeps this file: a token inside a URL param (traces.openai.base_url...) is redacted
    write_json(out, redact(load_params(params_path).resolved()))


if __name__ == "__main__":
    run_stage(lambda: main(*sys.argv[1:3]))
