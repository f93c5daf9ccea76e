"""Multi-GPU scaling of R-SFT training: tokens/s on 1 vs 2 GPUs for the same global batch, and
the two loss curves (same data, same order, same seed). One command, ~4-6 minutes on a 2 x H100:

  export PYTHONPATH=/root/site:$PWD/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  python bench/multi_gpu.py --model shape:llama-3.2-1b --data .gpu/d/traces.jsonl --out $OUT/multi_gpu

(after ../shared/gpu/README.md's setup: /root/gpu/smollm2-135m-instruct gives the tokenizer;
`--model /root/gpu/smollm2-135m-instruct` measures the 135M model instead, overhead-bound.)

What runs: the parent makes the random-weight model once, then
  1. one process on GPU 0 (CUDA_VISIBLE_DEVICES=0): per-device batch B x grad_accum A;
  2. `accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2`: the same
     global batch B x (A / 2) x 2, through guardrsft.train.process_setup and distributed.plan,
     i.e. exactly what train_rsft does with `train.distributed: ddp`.
Both use train_rsft's SFTConfig (a100 preset: bf16, padding-free, LoRA r 16 on all linear layers,
no gradient checkpointing), `--steps` optimizer steps of the same examples; the first `--warmup`
steps are not timed. tokens = real prompt + completion tokens of every rank.
`--distributed fsdp|deepspeed_zero3` launches the N-process run with that shipped config instead of
ddp.yaml (issue 29), and `--method full` trains every weight instead of LoRA (the case sharding is
for: a model whose full training state does not fit one GPU).
Writes <out>/run-1gpu.json, <out>/run-2gpu.json and <out>/multi_gpu.json with
  scaling_efficiency = tokens_per_second(2) / (2 x tokens_per_second(1)),
  max_abs_loss_diff over the logged steps (bf16 on different GPUs: small, not zero).
Without CUDA it runs a CPU dry run of the same code (2 gloo processes) for checking the script:
  python bench/multi_gpu.py --model <tiny HF folder> --tokenizer <same> --data X.jsonl --out /tmp/mg \
      --steps 4 --warmup 1 --per-device-batch 2 --grad-accum 2 --max-length 4096
  (2026-12-04: rc 0 for --distributed ddp, fsdp, and fsdp --method full, on a 2-layer random llama.)
Sharded runs for issue 29, on 2 GPUs (DeepSpeed needs `pip install 'guardrsft[deepspeed]'` first):
  python bench/multi_gpu.py --model shape:llama-3.2-3b --distributed fsdp --method full --data .gpu/d/traces.jsonl --out $OUT/fsdp-3b-full
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench_params(a):
    from train_throughput import params_with

    from guardrsft import distributed

    over = {"preset": "a100", "train.max_length": a.max_length, "train.gradient_checkpointing": False,
            "train.padding_free": True, "train.batch_size": a.per_device_batch, "train.grad_accum": a.grad_accum,
            "train.distributed": a.distributed, "train.method": a.method, "train.lora_dropout": 0.0}
    import torch

    if not torch.cuda.is_available():
        os.environ[distributed.CPU_ENV] = "1"  # the CPU dry run: gloo
    return params_with(over)


def worker(a) -> None:
    """One process of a run (or rank of the 2-GPU run): train, time, write the run JSON (rank 0)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from train_throughput import load_records, step_clock
    from transformers import set_seed
    from trl import SFTTrainer

    from guardrsft import distributed as dist
    from guardrsft.models import load_model, load_tokenizer
    from guardrsft.train import (MaskCheckCollator, base_param_count, fp32_adapter, global_sum, mfu,
                                 process_setup, sft_config)

    p = bench_params(a)
    world = dist.world_size()
    plan = dist.plan(p, world)
    set_seed(p.seed)
    tok = load_tokenizer(a.model)
    recs = load_records(a.data, (a.steps + 1) * plan["global_batch"], tok, p.max_length)
    hw, extra = process_setup(p, world)
    out = tempfile.mkdtemp(prefix=f"bench-mg-{world}-")
    cfg = sft_config(p, out, max_steps=a.steps, save_strategy="no", logging_steps=1, disable_tqdm=True,
                     warmup_steps=0.05, **extra)
    model = load_model(a.model, hw, for_training=True, gradient_checkpointing=False)
    lora = LoraConfig(r=p.train.lora_r, lora_alpha=p.train.lora_alpha, lora_dropout=0.0,
                      target_modules=list(p.train.target_modules), task_type="CAUSAL_LM", bias="none")
    tr = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(recs), processing_class=tok,
                    peft_config=lora if a.method == "lora" else None)
    if a.method == "lora":
        fp32_adapter(tr.model)
    tr.data_collator = counter = MaskCheckCollator(tr.data_collator)
    cuda = torch.cuda.is_available()
    marks = []
    tr.add_callback(step_clock(marks))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    tr.train()
    wall = time.perf_counter() - t0
    ga = cfg.gradient_accumulation_steps
    (s0, ta), (s1, tb) = marks[a.warmup - 1], marks[-1]
    timed = global_sum(sum(counter.batch_tokens[s0 * ga:s1 * ga]))  # every rank's tokens

    def rank_max(x: float) -> float:  # collective: every rank calls it, in the same order
        if world == 1:
            return x
        t = torch.tensor([x], device=torch.device("cuda", torch.cuda.current_device()) if cuda else "cpu")
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

    dt = rank_max(tb - ta)  # the slowest rank's clock decides
    tps = timed / dt
    # sharded runs differ per rank: the largest decides what fits
    peak = rank_max(torch.cuda.max_memory_allocated() / 2**30) if cuda else None
    n_params = base_param_count(tr.model)
    losses = {h["step"]: h["loss"] for h in tr.state.log_history if "loss" in h}
    res = dict(processes=world, distributed=a.distributed if world > 1 else "none", method=a.method,
               device=torch.cuda.get_device_name() if cuda else "cpu (dry run)",
               per_device_batch=cfg.per_device_train_batch_size, grad_accum_per_process=ga,
               global_batch=plan["global_batch"], steps=s1, timed_steps=s1 - s0, tokens_timed=timed,
               tokens_per_second=round(tps, 1), seconds_per_step=round(dt / (s1 - s0), 4),
               mfu_per_gpu=round(mfu(tps / world, n_params) or 0, 4), base_params=n_params,
               wall_seconds=round(wall, 1), attention=tr.model.config._attn_implementation if hasattr(
                   tr.model, "config") else None,
               peak_memory_gib=round(peak, 2) if peak is not None else None,
               losses={str(k): round(v, 5) for k, v in sorted(losses.items())})
    if dist.is_main():
        Path(a.run_out).write_text(json.dumps(res, indent=2))
        print(json.dumps({k: v for k, v in res.items() if k != "losses"}), flush=True)
    dist.barrier()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="HF folder, or shape:llama-3.2-1b / shape:llama-3.2-3b")
    ap.add_argument("--tokenizer", default="/root/gpu/smollm2-135m-instruct")
    ap.add_argument("--data", required=True, help="JSONL of {prompt, completion} (bench/make_bench_data.py)")
    ap.add_argument("--out", required=True, help="a folder for the JSON results")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--per-device-batch", type=int, default=16)
    ap.add_argument("--grad-accum", type=int, default=2, help="of the 1-GPU run; divided by 2 on 2 GPUs")
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--distributed", default="ddp", choices=["ddp", "fsdp", "deepspeed_zero3"],
                    help="the N-process run's configs/accelerate/<name>.yaml")
    ap.add_argument("--method", default="lora", choices=["lora", "full"], help="train.method")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run-out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a)

    import torch
    from train_throughput import materialize

    from guardrsft import distributed

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    if cuda and torch.cuda.device_count() < a.gpus:
        raise SystemExit(f"{a.gpus} GPUs needed, {torch.cuda.device_count()} visible")
    t0 = time.time()
    model = materialize(a.model, a.tokenizer)  # once, before any worker starts
    args = ["--model", model, "--data", a.data, "--steps", str(a.steps), "--warmup", str(a.warmup),
            "--per-device-batch", str(a.per_device_batch), "--grad-accum", str(a.grad_accum),
            "--max-length", str(a.max_length), "--distributed", a.distributed, "--method", a.method,
            "--out", str(out), "--worker"]
    p = bench_params(a)
    runs = {}
    for n in (1, a.gpus):
        run_out = out / f"run-{n}gpu.json"
        env = dict(os.environ)
        if n == 1:
            cmd = [sys.executable, __file__, *args, "--run-out", str(run_out)]
            if cuda:
                env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
        else:
            cmd = distributed.launch_command(p, __file__, [*args, "--run-out", str(run_out)], n)
        print(f"[multi_gpu] {n} process(es): {' '.join(cmd)}", flush=True)
        t = time.time()
        subprocess.run(cmd, env=env, check=True)
        runs[n] = json.loads(run_out.read_text())
        runs[n]["launch_seconds"] = round(time.time() - t, 1)
    one, two = runs[1], runs[a.gpus]
    common = sorted(set(one["losses"]) & set(two["losses"]), key=int)
    diffs = [abs(one["losses"][s] - two["losses"][s]) for s in common]
    report = dict(
        date=time.strftime("%Y-%m-%d"), device=one["device"], gpus=a.gpus, model=a.model, torch=torch.__version__,
        distributed=a.distributed, method=a.method,
        global_batch=one["global_batch"], steps=a.steps, warmup=a.warmup,
        tokens_per_second={"1": one["tokens_per_second"], str(a.gpus): two["tokens_per_second"]},
        scaling_efficiency=round(two["tokens_per_second"] / (a.gpus * one["tokens_per_second"]), 4),
        target_efficiency=0.85, max_abs_loss_diff=round(max(diffs), 5) if diffs else None,
        max_rel_loss_diff=round(max(d / abs(one["losses"][s]) for d, s in zip(diffs, common)), 5) if diffs else None,
        loss_steps_compared=len(common), wall_seconds=round(time.time() - t0, 1),
        runs={"1": one, str(a.gpus): two})
    (out / "multi_gpu.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2), flush=True)


if __name__ == "__main__":
    main()
