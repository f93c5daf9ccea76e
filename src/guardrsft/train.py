"""train_rsft: reasoning SFT with TRL's SFTTrainer + a PEFT LoRA adapter (train.method lora), or
of every weight (train.method full: the output folder holds a whole model, which load_guard,
evaluate and export use in place of base + adapter).

Loss covers the assistant turn only (TRL's prompt-completion masking), and every
batch is checked to contain supervised tokens. Checkpoints live in the cache,
keyed by everything that determines the run, so a killed run (also under
`dvc exp run --temp/--queue`) resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import resource
import shutil
import sys
import time
from pathlib import Path

from .config import Params
from .balance import VERSION as balance_version
from .balance import balance
from .io import atomic_dir, read_jsonl, write_metrics, write_text
from .models import cache_dir, check_device, checkpointing_args, load_model, load_tokenizer, quiet_deprecations, resolve_base
from .spec import describe
from .prompts import JOINT, joint_target, messages, target, unit_messages


class TrainError(RuntimeError):
    pass


def sft_records(traces: list[dict], p: Params) -> list[dict]:
    """Prompt-completion records: one per trace row (per_policy), or per item (joint: rows from
    traces.joint_rows)."""
    if p.prompt.mode == "joint":
        return [{"prompt": unit_messages(p.prompt, p.policies, JOINT, r["content"]),
                 "completion": [{"role": "assistant", "content": joint_target(r["reasoning"], r["verdicts"])}]}
                for r in traces]
    return [{"prompt": messages(p.prompt, t["policy"], p.policies[t["policy"]], t["content"]),
             "completion": [{"role": "assistant", "content": target(t["reasoning"], t["classification"])}]}
            for t in traces]


class MaskCheckCollator:
    """Wraps TRL's collator: a batch with no supervised token would train on nothing."""

    def __init__(self, inner):
        self.inner = inner
        self.tokens = 0  # real (non-pad) tokens handed to the model: the throughput numerator
        # per micro-batch, in order: the dataloader collates one batch ahead, so per-step
        # figures come from here (step i = micro-batches (i-1)*grad_accum .. i*grad_accum-1)
        self.batch_tokens: list[int] = []

    def __call__(self, examples):
        batch = self.inner(examples)
        mask = batch.get("attention_mask")
        ids = batch.get("input_ids", batch["labels"])
        n = int(mask.sum()) if mask is not None else int(ids.numel())
        if "cu_seq_lens_q" in batch:  # padding-free: the longest example, known here on the CPU, spares
            # the attention kernel a device-to-host sync per layer
            cu = batch["cu_seq_lens_q"]
            batch["max_length_q"] = batch["max_length_k"] = int((cu[1:] - cu[:-1]).max())
        self.tokens += n
        self.batch_tokens.append(n)
        supervised = (batch["labels"] != -100).sum(dim=1)
        if int(supervised.sum()) == 0:
            raise TrainError("a training batch has no supervised (assistant) tokens: the completions were "
                             "masked or truncated away. Raise train.max_length or shorten prompt.template.")
        return batch


def fit_length(records: list[dict], tok, max_length: int) -> tuple[list[dict], int]:
    """The records whose full chat (prompt + completion) fits max_length tokens, and how many did not.
    Chats are rendered, then encoded in one batched fast-tokenizer call (the ids
    apply_chat_template(tokenize=True) gives, at a fraction of the time on 100k examples)."""
    if not records:
        return [], 0
    text = [tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=False) for r in records]
    lengths = [len(x) for x in tok(text, add_special_tokens=False)["input_ids"]]
    keep = [r for r, n in zip(records, lengths) if n <= max_length]
    return keep, len(records) - len(keep)


def fp32_adapter(model) -> None:
    """Keep LoRA weights in fp32: TRL casts QLoRA adapters to bf16, which a T4 cannot compute
    in, and fp16 mixed precision needs fp32 master weights for its gradient scaler."""
    for prm in model.parameters():
        if prm.requires_grad and prm.dtype != prm.new_empty(0).float().dtype:
            prm.data = prm.data.float()


def traces_hash(traces_path: str | Path) -> str:
    # the balanced rows are a function of the file and train.* (in the run key): same hash
    return hashlib.sha256(Path(traces_path).read_bytes()).hexdigest() + f":balance{balance_version}"


def run_key(p: Params, data_hash: str, exclude: tuple[str, ...] = ()) -> str:
    """What a training run is a function of: train.*, prompt, policies, lr, seed, preset, the
    resolved values (model, batch, length, device, dtype), and its data (traces_hash). `exclude`:
    resolved-key prefixes that do not change this run's result (bench/quality.py leaves out the
    evaluation and HS-DPO ones to recognize a finished adapter)."""
    keys = {k: v for k, v in p.resolved().items()
            if (k.startswith(("train.", "resolved.", "prompt.", "policies.")) or k in ("lr", "seed", "preset"))
            and not k.startswith(exclude)}
    return hashlib.sha256(json.dumps([keys, data_hash], sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_dir(p: Params, data_hash: str) -> Path:
    return cache_dir() / "checkpoints" / run_key(p, data_hash)


def peak_memory_gb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


# Dense bf16/fp16 tensor-core peak per GPU, TFLOP/s (vendor datasheets, no sparsity).
# Matched against torch.cuda.get_device_name(); the first key found in the name wins.
PEAK_TFLOPS = {"H100 PCIe": 756, "H100 NVL": 835, "H100": 989, "H200": 989, "GH200": 989, "A100": 312,
               "L40S": 362, "L4": 121, "A10G": 125, "A10": 125, "V100": 125, "T4": 65}


def peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, tf in PEAK_TFLOPS.items():
        if key in name:
            return tf * 1e12
    return None


def base_param_count(model) -> int:
    """Parameters of the frozen base (4-bit packed weights counted unpacked; LoRA excluded)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return total - trainable
    return sum(t.numel() for t in model.parameters())


def mfu(tokens_per_s: float, n_params: int, full: bool = False) -> float | None:
    """Model FLOPs utilisation with the LoRA convention: 4·N FLOPs per token (forward 2N,
    backward through the frozen weights 2N, no weight gradients); full training adds the weight
    gradients (6·N); attention not counted."""
    peak = peak_flops()
    return None if not peak else (6 if full else 4) * n_params * tokens_per_s / peak


def liger_enabled(p: Params) -> bool:
    """Liger's Triton kernels need CUDA; `liger: null` turns them on where they can run."""
    import importlib.util

    import torch

    have = importlib.util.find_spec("liger_kernel") is not None and torch.cuda.is_available()
    if p.train.liger and p.train.torch_compile:
        # measured (docs/BENCHMARKS.md, torch 2.11 + liger-kernel 0.8.5): Liger's Triton kernels
        # failed to compile under torch.compile and the loss went to 0 / NaN
        raise TrainError(f"{p.source}: `train.liger: true` with `train.torch_compile: true` trained to NaN "
                         "losses in our benchmark; set one of them to false (or liger: null, which turns it off).")
    if p.train.liger and not have:
        raise TrainError(f"{p.source}: `train.liger: true` needs a CUDA GPU and `pip install liger-kernel`; "
                         "set it to null (auto) or false.")
    if p.train.torch_compile:
        return False
    return have if p.train.liger is None else bool(p.train.liger)


def train_hw(p: Params) -> dict:
    """The preset's hardware row, with the attention padding-free training needs: SDPA would
    keep a flattened batch's examples apart only through a dense tokens x tokens mask."""
    from .attention import NAME, register, varlen_available

    hw = dict(p.hw)
    if p.padding_free and varlen_available():
        register()
        hw["attn_impl"] = NAME
    return hw


def sft_config(p: Params, output_dir: str, **override):
    """The SFTConfig train_rsft uses (also imported by bench/train_throughput.py)."""
    from trl import SFTConfig

    hw = p.hw
    kw = dict(
        output_dir=output_dir, learning_rate=p.lr, num_train_epochs=p.train.epochs, max_steps=p.max_steps,
        per_device_train_batch_size=p.batch_size, gradient_accumulation_steps=p.grad_accum,
        # padding-free flattens each batch into one row: the same examples per step as padded
        # batches (same data order, same loss), minus the pad compute. TRL enforces max_length only
        # by packing, which would change what a step sees; fit_length() enforces it instead.
        max_length=None if p.padding_free else p.max_length,
        warmup_steps=p.train.warmup_ratio, lr_scheduler_type=p.train.lr_scheduler,
        weight_decay=p.train.weight_decay, logging_steps=p.train.logging_steps, save_steps=p.train.save_steps,
        save_total_limit=2, seed=p.seed, data_seed=p.seed, report_to="none",
        bf16=hw["dtype"] == "bfloat16", fp16=hw["dtype"] == "float16", use_cpu=hw["device"] == "cpu",
        **checkpointing_args(SFTConfig, p.gradient_checkpointing), completion_only_loss=True,
        # position_ids restart per example, so attention (SDPA with a block-diagonal mask, or
        # FlashAttention varlen) never crosses examples
        padding_free=p.padding_free,
        use_liger_kernel=liger_enabled(p), torch_compile=p.train.torch_compile,
        dataloader_pin_memory=hw["device"] == "cuda", disable_tqdm=False, logging_first_step=True,
    )
    kw.update(override)
    return SFTConfig(**kw)


def oom_advice(p: Params) -> str:
    return (f"out of GPU memory (preset `{p.preset}`, {peak_memory_gb():.1f} GiB peak). In {p.source}, turn one "
            f"of: train.batch_size ({p.batch_size}; halve it and double train.grad_accum ({p.grad_accum}) to keep "
            f"the effective batch), train.max_length ({p.max_length}), train.gradient_checkpointing "
            f"({p.gradient_checkpointing} -> true), train.padding_free ({p.padding_free}; a flattened "
            f"batch is batch_size x max_length tokens long), 4-bit loading (`preset: t4`), "
            f"or a smaller train.lora_r ({p.train.lora_r}).")


def global_sum(n: int) -> int:
    """n summed over every rank (n itself in a single process). Collective: call it on every rank."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return n
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([n], dtype=torch.long, device=dev)
    dist.all_reduce(t)
    return int(t.item())


def throughput_callback(batch: int, grad_accum: int, n_params: int, counter: "MaskCheckCollator",
                        world: int = 1):
    """Trainer callback: the notebook's log line plus tokens/s and MFU, on the console and in logs.

    batch: examples per optimizer step over all processes (the global batch); grad_accum: this
    process's micro-batches per step. Tokens are this process's running total (advanced by the
    micro-batches consumed since the last log, not re-summed), summed over the ranks at each log
    (every rank logs at the same steps); MFU is per GPU (tokens/s / world)."""
    from transformers import TrainerCallback

    class Throughput(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0, self.step0, self.tok0 = time.time(), state.global_step, None
            self.used, self.local = 0, 0  # micro-batches of counter.batch_tokens counted, their tokens

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs:
                return
            dt = max(time.time() - self.t0, 1e-9)
            sps = (state.global_step - self.step0) * batch / dt
            logs["samples_per_second_running"] = round(sps, 3)
            extra = ""
            # the dataloader collates one batch ahead: count only the consumed micro-batches
            upto = min((state.global_step - self.step0) * grad_accum, len(counter.batch_tokens))
            self.local += sum(counter.batch_tokens[self.used:upto])
            self.used = upto
            done = global_sum(self.local)
            if self.tok0 is None:  # the first log comes after step 1 (warm-up): time from there on
                self.tok0, self.t1 = done, time.time()
            run = time.time() - self.t1
            if run > 0 and done > self.tok0:
                tps = (done - self.tok0) / run
                logs["tokens_per_second_running"] = round(tps, 1)
                u = mfu(tps / world, n_params)
                extra = f" | {tps:,.0f} tok/s" + (f" | MFU {100 * u:.1f}%" if u else "")
                if u:
                    logs["mfu_running"] = round(u, 4)
            # Trainer appended a copy of `logs` before calling us: keep the history in step
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update({k: v for k, v in logs.items() if k.endswith("_running")})
            if state.is_world_process_zero:
                print(f"  step {state.global_step}/{state.max_steps} | loss {logs['loss']:.4f} | "
                      f"lr {logs.get('learning_rate', 0):.2e} | {sps:.2f} samples/s{extra} | "
                      f"peak mem {peak_memory_gb():.2f} GB", file=sys.stderr, flush=True)

    return Throughput()


def process_setup(p: Params, world: int) -> tuple[dict, dict]:
    """This process's hardware row for load_model and its SFTConfig overrides, in a run of
    `world` processes (also used by bench/multi_gpu.py)."""
    from . import distributed as dist

    hw = train_hw(p)
    if world == 1:
        return hw, {}
    # the one-GPU global batch, split over the ranks; every LoRA weight gets a gradient, so
    # DDP's unused-parameter search is pure overhead
    extra = dict(gradient_accumulation_steps=dist.plan(p, world)["grad_accum"], ddp_find_unused_parameters=False)
    if hw["device"] == "cuda":
        import torch

        torch.cuda.set_device(dist.local_rank())
        # no device_map {"": 0}: Trainer/accelerate place (DDP) or shard (FSDP, ZeRO-3) the weights,
        # and bitsandbytes puts a 4-bit model on the current device (this rank's GPU)
        hw = dict(hw, device="cpu")
    return hw, extra


def checkpoint_step(path: str | Path) -> int:
    """The global step of a Trainer checkpoint folder `checkpoint-<step>`."""
    return int(Path(path).name.split("-")[1])


def last_checkpoint(ckpt: Path) -> str | None:
    """The newest *complete* checkpoint: Trainer writes trainer_state.json last (and not
    atomically), so a folder without it, or with a torn one, was cut short by a kill
    (transformers' get_last_checkpoint would pick it, and the resume would crash every rerun)."""
    import re

    def complete(d: Path) -> bool:
        try:
            return isinstance(json.loads((d / "trainer_state.json").read_text()), dict)
        except (OSError, ValueError):
            return False

    found = [d for d in ckpt.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", d.name)] if ckpt.exists() else []
    done = [d for d in found if complete(d)]
    skipped = [d.name for d in found if d not in done and (not done or checkpoint_step(d) > max(map(checkpoint_step, done)))]
    if skipped:
        print(f"[train] skipping incomplete checkpoint(s) {', '.join(sorted(skipped))} in {ckpt} "
              "(killed while saving)", file=sys.stderr, flush=True)
    return str(max(done, key=checkpoint_step)) if done else None


def stable_adapter_config(folder: Path, base: str) -> None:
    """Make the adapter folder's bytes depend on the training only. PEFT writes target_modules from
    a set, in the order of this process's string hashes: sorted. It also writes the folder the base
    was loaded from (for the embedded model a cache path under $HOME) into adapter_config.json and
    README.md: replaced by the declared base (`Params.model`: a Hub id, a folder or embedded:<name>),
    so another user's `dvc repro` writes the same adapter and dvc.lock stays clean."""
    f = Path(folder) / "adapter_config.json"
    if not f.exists():  # train.method full: a whole model, no adapter config
        return
    cfg = json.loads(f.read_text())
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    local = cfg.get("base_model_name_or_path")
    cfg["base_model_name_or_path"] = base
    f.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    card = Path(folder) / "README.md"
    if local and local != base and card.exists():
        card.write_text(card.read_text().replace(local, base))


def _save_adapter(trainer, tok, p: Params, adapter_out: str, sharded: bool) -> None:
    """The adapter folder, written by rank 0 only (atomically). FSDP / ZeRO-3 hold the weights in
    shards: every rank takes part in gathering them (trainer.save_model) into a fixed staging
    folder, which rank 0 then completes and moves into place."""
    from . import distributed as dist

    meta = json.dumps(describe(p), indent=2) + "\n"  # the model describes itself (guardrsft.spec)
    if not sharded:
        if dist.is_main():
            with atomic_dir(adapter_out) as tmp:
                if p.train.method == "full":  # the whole model (trained in fp32), in the preset's dtype
                    from .models import torch_dtype

                    trainer.model.to(torch_dtype(p.hw["dtype"])).save_pretrained(tmp, safe_serialization=True)
                else:
                    trainer.model.save_pretrained(tmp)
                stable_adapter_config(tmp, p.model)
                tok.save_pretrained(tmp)
                (tmp / "guardrsft.json").write_text(meta)
        return
    staging = Path(adapter_out).with_name(f".{Path(adapter_out).name}.staging")
    if dist.is_main():
        shutil.rmtree(staging, ignore_errors=True)
    dist.barrier()
    if getattr(trainer, "is_fsdp_enabled", False):
        # checkpoints stay sharded (fast); Trainer.save_model writes nothing for a sharded state dict
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(staging))  # collective gather; Trainer writes on rank 0 only
    dist.barrier()
    if dist.is_main():
        with atomic_dir(adapter_out) as tmp:
            for f in staging.iterdir():
                if f.name != "training_args.bin":
                    shutil.move(str(f), tmp / f.name)
            stable_adapter_config(tmp, p.model)
            tok.save_pretrained(tmp)
            (tmp / "guardrsft.json").write_text(meta)
        shutil.rmtree(staging, ignore_errors=True)


def train(p: Params, traces_path: str, adapter_out: str, metrics_out: str, plot_out: str) -> dict:
    """Train and write the adapter, metrics and loss CSV. Under `accelerate launch` every rank
    calls this; only rank 0 writes (the others return the same metrics dict after a barrier)."""
    from . import distributed as dist

    check_device(p.hw["device"], p.preset)
    world, main = dist.world_size(), dist.is_main()
    if p.train.distributed != "none" and not dist.launched():
        print(f"[train] train.distributed is {p.train.distributed}, but this process was not started by "
              "`accelerate launch`: training in one process (run stages/train_rsft.py, which launches it)",
              file=sys.stderr, flush=True)
    traces = read_jsonl(traces_path)
    if not traces:
        raise TrainError(f"{traces_path}: no traces. Run the generate_traces stage first (`dvc repro`).")
    data_hash = traces_hash(traces_path)
    if p.prompt.mode == "joint":
        # one example per item carries every policy's verdict: there are no SAFE pairs to thin
        from .traces import joint_rows

        traces, balance_stats = joint_rows(traces, p.policies)
        balance_stats["mode"] = "joint"
    else:
        traces, balance_stats = balance(traces, p.train.safe_per_item, p.train.unsafe_share, p.seed,
                                        per_policy=p.train.balance_per_policy)
    base = resolve_base(p.model)
    plan = dist.plan(p, world)  # the global batch of the one-GPU run, split over the ranks

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import set_seed
    from trl import SFTTrainer

    set_seed(p.seed)
    tok = load_tokenizer(base)
    records = sft_records(traces, p)
    if p.prompt.mode == "joint":  # one clear error rather than "every example is longer than ..."
        from .prompts import joint_fit_error

        why = joint_fit_error(p.prompt, p.policies, tok, p.max_length, "train.max_length")
        if why:
            raise TrainError(f"{p.source}: {why}")
    # An example cut at max_length loses its `Classification:` line and would teach the model to
    # stop mid-reasoning: such examples are excluded, counted and reported (never truncated).
    keep, skipped = fit_length(records, tok, p.max_length)
    if skipped and main:
        print(f"[train] {skipped} of {len(records)} examples are longer than train.max_length={p.max_length} "
              f"tokens and are excluded (metrics: skipped_too_long); raise train.max_length to keep them",
              file=sys.stderr)
    if not keep:
        raise TrainError(f"{p.source}: every example is longer than train.max_length={p.max_length} tokens; "
                         "raise train.max_length or shorten prompt.template")
    ds = Dataset.from_list(keep)

    # world size in the key: a checkpoint's data order and RNG files belong to one process count
    ckpt = checkpoint_dir(p, data_hash if world == 1 else f"{data_hash}:world{world}")
    hw, extra = process_setup(p, world)
    sharded = p.train.distributed in ("fsdp", "deepspeed_zero3") and world > 1
    cfg = sft_config(p, str(ckpt), **extra)
    full = p.train.method == "full"
    # full: fp32 master weights under bf16/fp16 autocast (the fp16 grad scaler refuses fp16
    # weights, and pure-bf16 AdamW updates round away); saved in the preset's dtype
    model = load_model(base, dict(hw, dtype="float32") if full else hw, for_training=True,
                       gradient_checkpointing=p.gradient_checkpointing)
    n_layers = model.config.num_hidden_layers
    top = min(p.lora_layers or n_layers, n_layers)
    lora = None if full else LoraConfig(
        r=p.train.lora_r, lora_alpha=p.train.lora_alpha, lora_dropout=p.train.lora_dropout,
        target_modules=list(p.train.target_modules), task_type="CAUSAL_LM", bias="none",
        layers_to_transform=list(range(n_layers - top, n_layers)) if top < n_layers else None)
    with quiet_deprecations():  # PEFT reads the deprecated is_gradient_checkpointing while wrapping
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora)
    if not full:
        fp32_adapter(trainer.model)
    n_params = base_param_count(trainer.model)
    trainer.data_collator = counter = MaskCheckCollator(trainer.data_collator)
    trainer.add_callback(throughput_callback(plan["global_batch"], plan["grad_accum"], n_params, counter, world))

    last = last_checkpoint(ckpt)
    start_step = checkpoint_step(last) if last else 0
    if last and main:
        print(f"[train] resuming from {last}", file=sys.stderr, flush=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    try:
        with quiet_deprecations():
            out = trainer.train(resume_from_checkpoint=last)
    except torch.cuda.OutOfMemoryError:
        raise TrainError(oom_advice(p)) from None
    wall = time.time() - t0

    _save_adapter(trainer, tok, p, adapter_out, sharded)
    hist = [h for h in trainer.state.log_history if "loss" in h]
    # tokens (prompt + completion, no padding) trained by all processes, over the wall time
    tokens = global_sum(counter.tokens)
    tps = tokens / max(wall, 1e-9)
    util = mfu(tps / world, n_params, full=full)
    metrics = {
        "final_loss": hist[-1]["loss"] if hist else None,
        "train_loss": out.training_loss, "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 4), "examples": len(keep), "skipped_too_long": skipped,
        # after a resume, wall and tokens cover this process's steps only: so must samples/s
        "samples_per_second": round((trainer.state.global_step - start_step) * plan["global_batch"]
                                    / max(wall, 1e-9), 3),
        "tokens": tokens, "tokens_per_second": round(tps, 1), "mfu": None if util is None else round(util, 4),
        "base_params": n_params, "train_seconds": round(wall, 1), "peak_memory_gb": round(peak_memory_gb(), 3),
        "padding_free": p.padding_free, "gradient_checkpointing": p.gradient_checkpointing,
        "liger": cfg.use_liger_kernel, "torch_compile": p.train.torch_compile,
        "resumed": bool(last), "resumed_from_step": start_step, "device": p.hw["device"], "base_model": p.model,
        "distributed": p.train.distributed if world > 1 else "none", "processes": world,
        "global_batch": plan["global_batch"], "grad_accum_per_process": plan["grad_accum"],
        "balance": balance_stats, "method": p.train.method,
    }
    if main:
        # speed and memory go to metrics/timings/ (io.write_metrics): the tracked files of two runs
        # of the same training are the same bytes
        write_metrics(metrics_out, metrics)
        write_text(plot_out, "step,loss,learning_rate\n" + "".join(
            f"{h['step']},{h['loss']},{h.get('learning_rate', '')}\n" for h in hist))
        # finished: the adapter is the output now; a later forced rerun trains afresh
        shutil.rmtree(ckpt, ignore_errors=True)
    dist.barrier()  # the other ranks exit only once rank 0's outputs are in place
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"metrics": metrics, "history": hist}
