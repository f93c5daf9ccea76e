"""Reasoning SFT of a LoRA adapter on the traces (auto-resumes from the last checkpoint).

Tested with: python stages/train_rsft.py data/traces/train.jsonl models/adapter metrics/train.json metrics/plots/train_loss.csv
"""
import sys

from guardrsft.config import load_params
from guardrsft.errors import run_stage
from guardrsft.pipeline import train_rsft

if __name__ == "__main__":
    run_stage(lambda: train_rsft(load_params("params.yaml"), *sys.argv[1:5]))
