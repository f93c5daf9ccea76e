"""Hard-sample mining on the training split: k sampled answers per (item, policy) from the R-SFT
model, pairs where they disagree (docs/HSDPO.md). The trailing files are the evaluation splits the
traces must not overlap. With hsdpo off, writes empty outputs saying `enabled: false`.

Tested with: python stages/mine_hard_samples.py data/traces/train.jsonl models/adapter data/hard_samples metrics/hard_samples.json data/prepared/val.jsonl data/prepared/test.jsonl
"""
import sys

from guardrsft.config import load_params
from guardrsft.errors import run_stage
from guardrsft.pipeline import mine_hard_samples

if __name__ == "__main__":
    run_stage(lambda: mine_hard_samples(load_params("params.yaml"), *sys.argv[1:]))
