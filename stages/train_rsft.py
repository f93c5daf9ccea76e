"""Reasoning SFT of a LoRA adapter on the traces (auto-resumes from the last checkpoint).

With `train.distributed` ddp/fsdp/deepspeed_zero3 this script re-executes itself under
`accelerate launch` (src/guardrsft/distributed.py, docs/SCALE.md), so dvc.yaml's command is the
same for one GPU and several. Rank 0 runs the stage (outputs, MLflow); the other ranks train only.

Tested with: python stages/train_rsft.py data/traces/train.jsonl models/adapter metrics/train.json metrics/plots/train_loss.csv
"""
import os
import sys

from guardrsft import distributed
from guardrsft.config import load_params
from guardrsft.errors import run_stage


def main() -> None:
    p = load_params("params.yaml")
    args = sys.argv[1:5]
    if distributed.needs_launch(p):
        distributed.relaunch(p, os.path.abspath(__file__), args)  # does not return
    if distributed.is_main():
        from guardrsft.pipeline import train_rsft

        train_rsft(p, *args)
    else:
        from guardrsft.train import train

        train(p, *args)


if __name__ == "__main__":
    run_stage(main)
