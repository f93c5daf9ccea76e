"""train_rsft: reasoning SFT with TRL's SFTTrainer + a PEFT LoRA adapter.

Loss covers the assistant turn only (TRL's prompt-completion masking), and every
batch is checked to contain supervised tokens. Checkpoints live in the cache,
keyed by everything that determines the run, so a killed run (also under
`dvc exp run --temp/--queue`) resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

from .config import Params
from .io import atomic_dir, read_jsonl, write_json, write_text
from .models import cache_dir, check_device, load_model, load_tokenizer, resolve_base
from .prompts import messages, target


class TrainError(RuntimeError):
    pass


def sft_records(traces: list[dict], p: Params) -> list[dict]:
    return [{"prompt": messages(p.prompt, t["policy"], p.policies[t["policy"]], t["content"]),
             "completion": [{"role": "assistant", "content": target(t["reasoning"], t["classification"])}]}
            for t in traces]


class MaskCheckCollator:
    """Wraps TRL's collator: a batch with no supervised token would train on nothing."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples):
        batch = self.inner(examples)
        supervised = (batch["labels"] != -100).sum(dim=1)
        if int(supervised.sum()) == 0:
            raise TrainError("a training batch has no supervised (assistant) tokens: the completions were "
                             "masked or truncated away. Raise train.max_length or shorten prompt.template.")
        return batch


def checkpoint_dir(p: Params, data_hash: str) -> Path:
    keys = {k: v for k, v in p.resolved().items()
            if k.startswith(("train.", "resolved.", "prompt.", "policies.")) or k in ("lr", "seed", "preset")}
    h = hashlib.sha256(json.dumps([keys, data_hash], sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_dir() / "checkpoints" / h


def peak_memory_gb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


def _log_callback(total_steps_hint: int, batch: int):
    from transformers import TrainerCallback

    class ConsoleLog(TrainerCallback):
        """The notebook's log line: loss, lr, speed, peak memory."""

        def on_train_begin(self, args, state, control, **kw):
            self.t0, self.step0 = time.time(), state.global_step

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs:
                return
            dt = max(time.time() - self.t0, 1e-9)
            sps = (state.global_step - self.step0) * batch / dt
            logs["samples_per_second_running"] = round(sps, 3)
            print(f"  step {state.global_step}/{state.max_steps} | loss {logs['loss']:.4f} | "
                  f"lr {logs.get('learning_rate', 0):.2e} | {sps:.2f} samples/s | "
                  f"peak mem {peak_memory_gb():.2f} GB", file=sys.stderr, flush=True)

    return ConsoleLog()


def train(p: Params, traces_path: str, adapter_out: str, metrics_out: str, plot_out: str) -> dict:
    check_device(p.hw["device"], p.preset)
    traces = read_jsonl(traces_path)
    if not traces:
        raise TrainError(f"{traces_path}: no traces. Run the generate_traces stage first (`dvc repro`).")
    data_hash = hashlib.sha256(Path(traces_path).read_bytes()).hexdigest()
    base = resolve_base(p.model)

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTConfig, SFTTrainer

    set_seed(p.seed)
    tok = load_tokenizer(base)
    records = sft_records(traces, p)
    # a prompt that fills max_length leaves no completion token to learn from: report, don't hide
    lengths = [len(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)) for r in records]
    keep = [r for r, n in zip(records, lengths) if n < p.max_length - 8]
    skipped = len(records) - len(keep)
    if skipped:
        print(f"[train] {skipped} of {len(records)} examples have prompts longer than train.max_length="
              f"{p.max_length} and are excluded (counted in metrics as skipped_too_long)", file=sys.stderr)
    if not keep:
        raise TrainError(f"every prompt is longer than train.max_length={p.max_length}; raise it in params.yaml")
    ds = Dataset.from_list(keep)

    ckpt = checkpoint_dir(p, data_hash)
    hw = p.hw
    cfg = SFTConfig(
        output_dir=str(ckpt), learning_rate=p.lr, num_train_epochs=p.train.epochs, max_steps=p.max_steps,
        per_device_train_batch_size=p.batch_size, gradient_accumulation_steps=p.grad_accum,
        max_length=p.max_length, warmup_steps=p.train.warmup_ratio, lr_scheduler_type=p.train.lr_scheduler,
        weight_decay=p.train.weight_decay, logging_steps=p.train.logging_steps, save_steps=p.train.save_steps,
        save_total_limit=2, seed=p.seed, data_seed=p.seed, report_to="none",
        bf16=hw["dtype"] == "bfloat16", fp16=hw["dtype"] == "float16", use_cpu=hw["device"] == "cpu",
        gradient_checkpointing=hw["gradient_checkpointing"], completion_only_loss=True,
        disable_tqdm=False, logging_first_step=True,
    )
    lora = LoraConfig(r=p.train.lora_r, lora_alpha=p.train.lora_alpha, lora_dropout=p.train.lora_dropout,
                      target_modules=list(p.train.target_modules), task_type="CAUSAL_LM", bias="none")
    model = load_model(base, hw, for_training=True)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora,
                         callbacks=[_log_callback(p.max_steps, p.batch_size * p.grad_accum)])
    trainer.data_collator = MaskCheckCollator(trainer.data_collator)

    last = get_last_checkpoint(str(ckpt)) if ckpt.exists() else None
    if last:
        print(f"[train] resuming from {last}", file=sys.stderr, flush=True)
    t0 = time.time()
    out = trainer.train(resume_from_checkpoint=last)
    wall = time.time() - t0

    with atomic_dir(adapter_out) as tmp:
        trainer.model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "guardrsft.json").write_text(json.dumps({"base_model": p.model, "preset": p.preset}, indent=2))
    hist = [h for h in trainer.state.log_history if "loss" in h]
    metrics = {
        "final_loss": hist[-1]["loss"] if hist else None,
        "train_loss": out.training_loss, "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 4), "examples": len(keep), "skipped_too_long": skipped,
        "samples_per_second": round(trainer.state.global_step * p.batch_size * p.grad_accum / max(wall, 1e-9), 3),
        "train_seconds": round(wall, 1), "peak_memory_gb": round(peak_memory_gb(), 3),
        "resumed": bool(last), "device": hw["device"], "base_model": p.model,
    }
    write_json(metrics_out, metrics)
    write_text(plot_out, "step,loss,learning_rate\n" + "".join(
        f"{h['step']},{h['loss']},{h.get('learning_rate', '')}\n" for h in hist))
    # finished: the adapter is the output now; a later forced rerun trains afresh
    shutil.rmtree(ckpt, ignore_errors=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"metrics": metrics, "history": hist}
