"""DPO on the mined pairs, continuing the R-SFT adapter (reference: a frozen copy of it), per-pair
weights, auto-resume from the last checkpoint (docs/HSDPO.md). With hsdpo off, writes outputs
saying `enabled: false`.

Tested with: python stages/train_hsdpo.py data/hard_samples/pairs.jsonl models/adapter models/adapter_hsdpo metrics/hsdpo.json metrics/plots/hsdpo_loss.csv
"""
import sys

from guardrsft.config import load_params
from guardrsft.errors import run_stage
from guardrsft.pipeline import train_hsdpo

if __name__ == "__main__":
    run_stage(lambda: train_hsdpo(load_params("params.yaml"), *sys.argv[1:6]))
