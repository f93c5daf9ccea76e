"""Several GPUs for train_rsft: `accelerate launch` with a config shipped in configs/accelerate/.

The DVC command stays `python stages/train_rsft.py ...`. With `train.distributed` set to ddp,
fsdp or deepspeed_zero3, the stage re-executes itself (`relaunch`) as

    python -m accelerate.commands.launch --config_file configs/accelerate/<name>.yaml \
        --num_processes N --main_process_port <free> --mixed_precision <preset> stages/train_rsft.py ARGS

and every process trains its share of each optimizer step; only the main process (rank 0)
writes outputs, logs to MLflow and saves checkpoints (Trainer also writes one RNG file per
rank into a checkpoint, which exact resume needs).

Global batch rule: global batch = train.batch_size (per device) x train.grad_accum x 1 on one
GPU, and batch_size x (grad_accum / N) x N on N GPUs: the per-device batch is kept and the
accumulation divided, so an optimizer step sees the same examples and the loss curves compare.
grad_accum must be a multiple of N; otherwise `plan` raises and names settings that keep the
global batch. Accelerate deals the per-device batches of one step round robin to the ranks, so
the N GPUs see exactly the micro-batches one GPU would have accumulated.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from .config import Params, ParamsError

# the checkout's own copy (a `dvc exp run --temp` copy has one), else the package's repository
CONFIG_DIRS = (Path("configs/accelerate"), Path(__file__).resolve().parents[2] / "configs" / "accelerate")
# Tests only: run the multi-process path on CPU (gloo), e.g. tests/test_distributed.py. It is
# slower than one process; a CPU preset is otherwise refused.
CPU_ENV = "GUARDRSFT_DISTRIBUTED_CPU"


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """True inside a process started by `accelerate launch` / torchrun."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def config_file(p: Params) -> Path:
    name = f"{p.train.distributed}.yaml"
    return next((d / name for d in CONFIG_DIRS if (d / name).exists()), CONFIG_DIRS[0] / name)


def processes(p: Params) -> int:
    """N: train.num_processes, or every visible GPU (the CPU test mode defaults to 2)."""
    if p.train.num_processes:
        return p.train.num_processes
    if os.environ.get(CPU_ENV) == "1":
        return 2
    return visible_gpus()


def plan(p: Params, n: int) -> dict:
    """Per-process batch and accumulation that keep the single-GPU global batch on n processes."""
    b, a = p.batch_size, p.grad_accum
    glob = b * a
    if a % n:
        # settings that keep the global batch: a per-device batch b2 dividing glob / n
        fits = [b2 for b2 in range(min(b, glob // n), 0, -1) if glob % (b2 * n) == 0]
        alt = (f"set train.batch_size: {fits[0]} and train.grad_accum: {glob // fits[0]} (same global batch "
               f"{glob}, accumulation {glob // fits[0] // n} per GPU), or " if fits else "")
        raise ParamsError(
            f"{p.source}: train.grad_accum={a} cannot be split over {n} processes: the global batch "
            f"(train.batch_size x train.grad_accum = {b} x {a} = {glob}) is kept equal to the one-GPU run by "
            f"dividing train.grad_accum by the number of processes. Fix: {alt}set train.num_processes to a "
            f"divisor of {a}, or accept a different global batch with train.grad_accum: {n * -(-a // n)}.")
    return {"processes": n, "per_device_batch": b, "grad_accum": a // n, "global_batch": glob}


def check(p: Params) -> int:
    """Refuse a distributed run that cannot work here, naming the param and the fix; return N."""
    name = p.train.distributed
    where = f"{p.source}: `train.distributed: {name}`"
    cpu_mode = os.environ.get(CPU_ENV) == "1"
    if p.hw["device"] != "cuda" and not cpu_mode:
        raise ParamsError(f"{where} needs CUDA GPUs, but preset `{p.preset}` trains on the CPU. Set "
                          "`train.distributed: none` (`dvc exp run -S train.distributed=none`), or a GPU preset "
                          "(t4, a100) on a machine with GPUs.")
    gpus = 0 if cpu_mode else visible_gpus()
    if not cpu_mode and gpus == 0:
        raise ParamsError(f"{where}: no CUDA GPU is visible here (CUDA_VISIBLE_DEVICES="
                          f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}). Run on a GPU machine or set "
                          "`train.distributed: none`.")
    n = processes(p)
    if not cpu_mode and n > gpus:
        raise ParamsError(f"{p.source}: `train.num_processes: {n}` but only {gpus} GPU(s) are visible; set it to "
                          f"{gpus} or less, or null (one process per visible GPU).")
    if name == "deepspeed_zero3":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ParamsError(f"{where} needs DeepSpeed, which is not installed: `pip install 'guardrsft[deepspeed]'` "
                              "(or `pip install deepspeed`), or set `train.distributed: fsdp` (sharded like ZeRO-3) "
                              "or `ddp`.")
    if name in ("fsdp", "deepspeed_zero3") and p.hw["load_in_4bit"]:
        raise ParamsError(f"{where} with preset `{p.preset}` (4-bit QLoRA) is not supported here: sharding 4-bit "
                          "weights needs a quantized storage dtype this project does not set. Use "
                          "`train.distributed: ddp` (one 4-bit copy per GPU) or a 16-bit preset (a100).")
    if not config_file(p).exists():
        raise ParamsError(f"{where}: {config_file(p)} is missing from the checkout; restore it from git.")
    plan(p, n)
    return n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(p: Params, script: str, args: list[str], n: int, port: int | None = None) -> list[str]:
    precision = {"bfloat16": "bf16", "float16": "fp16"}.get(p.hw["dtype"], "no")
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file(p)),
            "--num_processes", str(n), "--num_machines", "1", "--main_process_port", str(port or free_port()),
            "--mixed_precision", precision, str(script), *args]


def needs_launch(p: Params) -> bool:
    return p.train.distributed != "none" and not launched()


def relaunch(p: Params, script: str, args: list[str]):
    """Replace this process by `accelerate launch` of the same script (signals reach the launcher,
    which stops every rank; its exit status is the stage's)."""
    n = check(p)
    cmd = launch_command(p, script, args, n)
    pl = plan(p, n)
    print(f"[train_rsft] {p.train.distributed} on {n} processes: per-device batch {pl['per_device_batch']} x "
          f"grad_accum {pl['grad_accum']} x {n} = global batch {pl['global_batch']}\n  {' '.join(cmd)}",
          file=sys.stderr, flush=True)
    os.execv(sys.executable, cmd)
