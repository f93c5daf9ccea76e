"""Training throughput: TRL as the notebook used it vs guardrsft's own configuration, one GPU.

Tested with (device H100, after ../shared/gpu/README.md's setup; data from bench/make_bench_data.py):
  PYTHONPATH=/root/site:$PWD/src python bench/train_throughput.py speed --model /root/gpu/smollm2-135m-instruct \
      --data .gpu/d/traces.jsonl --out $OUT/speed_135m.json
  ... speed --model shape:llama-3.2-1b --configs ours --examples 1024 ...
  ... t4mem --model shape:llama-3.2-3b --memory-gib 14 ...

Both configurations see the same examples in the same order with the same global batch
(examples per optimizer step), so their loss curves must agree: the speed-up comes from the
implementation, not from a different optimisation problem.
- naive: TRL's defaults as the notebook used them: per-device batch 8 (TRL's default) with
  gradient accumulation up to the global batch, padding per batch, gradient checkpointing on.
- ours: `guardrsft.train.sft_config` with the a100/h100-style settings: bf16, padding-free
  (each batch flattened into one row), no gradient checkpointing, Liger kernels when installed,
  the whole global batch in one micro-batch.
tokens = real (non-pad) prompt + completion tokens; timing excludes the first `--warmup` steps.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

SHAPES = {  # config only, random weights: throughput does not depend on the values
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
                         max_position_embeddings=8192, rms_norm_eps=1e-5, head_dim=64),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
                         max_position_embeddings=8192, rms_norm_eps=1e-5, head_dim=128),
}


def params_with(overrides: dict):
    """params.yaml plus dotted-key overrides, validated like `dvc exp run -S`."""
    import torch

    from guardrsft.config import load_params

    if not torch.cuda.is_available():  # a CPU dry run of the script itself (no figures)
        overrides = {**overrides, "preset": "cpu", "train.liger": False}
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, val in overrides.items():
        d = raw
        *head, last = key.split(".")
        for h in head:
            d = d.setdefault(h, {})  # an unknown section: load_params names it
        d[last] = val
    f = Path(tempfile.mkdtemp()) / "params.yaml"
    f.write_text(yaml.safe_dump(raw))
    return load_params(f)


def materialize(model: str, tok_path: str) -> str:
    """`shape:NAME` -> a folder with random weights of that shape (bf16) and a real tokenizer."""
    if not model.startswith("shape:"):
        return model
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    name = model.split(":", 1)[1]
    dest = Path(tempfile.gettempdir()) / f"guardrsft-shape-{name}"
    if not (dest / "config.json").exists():
        torch.manual_seed(0)
        with torch.device("cuda"):
            m = LlamaForCausalLM(LlamaConfig(**SHAPES[name], torch_dtype="bfloat16")).to(torch.bfloat16)
        m.save_pretrained(dest)
        AutoTokenizer.from_pretrained(tok_path).save_pretrained(dest)
        del m
        torch.cuda.empty_cache()
    return str(dest)


def load_records(path: str, n: int, tok, max_length: int, min_tokens: int = 0) -> list[dict]:
    """n records in a fixed shuffled order that fit max_length (and reach min_tokens)."""
    import random

    rows = [json.loads(line) for line in open(path)]
    random.Random(0).shuffle(rows)
    out = []
    for r in rows:
        rec = {"prompt": [{"role": "user", "content": r["prompt"]}],
               "completion": [{"role": "assistant", "content": r["completion"]}]}
        n_tok = len(tok.apply_chat_template(rec["prompt"] + rec["completion"], tokenize=True, return_dict=False))
        if min_tokens <= n_tok <= max_length:
            out.append(rec)
            if len(out) == n:
                return out
    if not out:
        raise SystemExit(f"{path}: no example between {min_tokens} and {max_length} tokens")
    return (out * (n // len(out) + 1))[:n]  # repeat: throughput only


def step_clock(marks: list):
    """A TrainerCallback that appends (global step, time) at the end of every optimizer step,
    after a CUDA sync (so the time is the step's, not its launch's)."""
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            marks.append((state.global_step, time.perf_counter()))

    return Clock()


def run_one(name: str, p, base: str, recs: list[dict], heldout: list[dict], steps: int, warmup: int,
            override: dict) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import set_seed
    from trl import SFTTrainer

    from guardrsft.models import load_model, load_tokenizer
    from guardrsft.train import MaskCheckCollator, base_param_count, fp32_adapter, mfu, sft_config, train_hw

    set_seed(p.seed)
    tok = load_tokenizer(base)
    out = tempfile.mkdtemp(prefix=f"bench-{name}-")
    cfg = sft_config(p, out, max_steps=steps, save_strategy="no", logging_steps=1, disable_tqdm=True,
                     warmup_steps=0.05, **override)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = load_model(base, train_hw(p) if cfg.padding_free else p.hw, for_training=True,
                       gradient_checkpointing=cfg.gradient_checkpointing)
    print(f"[{name}] attention: {model.config._attn_implementation}", flush=True)
    lora = LoraConfig(r=p.train.lora_r, lora_alpha=p.train.lora_alpha, lora_dropout=p.train.lora_dropout,
                      target_modules=list(p.train.target_modules), task_type="CAUSAL_LM", bias="none")
    tr = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(recs),
                    eval_dataset=Dataset.from_list(heldout) if heldout else None, processing_class=tok,
                    peft_config=lora)
    fp32_adapter(tr.model)
    tr.data_collator = counter = MaskCheckCollator(tr.data_collator)
    marks = []
    tr.add_callback(step_clock(marks))
    t0 = time.perf_counter()
    tr.train()
    wall = time.perf_counter() - t0
    (s0, ta), (s1, tb) = marks[warmup - 1], marks[-1]
    ga = cfg.gradient_accumulation_steps
    timed_tokens = sum(counter.batch_tokens[s0 * ga:s1 * ga])
    tps = timed_tokens / (tb - ta)
    n_params = base_param_count(tr.model)
    losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
    res = dict(config=name, steps=s1, timed_steps=s1 - s0, tokens_timed=timed_tokens, tokens_total=sum(counter.batch_tokens[:s1 * ga]), tokens_per_second=round(tps, 1),
               samples_per_second=round((s1 - s0) * cfg.per_device_train_batch_size
                                        * cfg.gradient_accumulation_steps / (tb - ta), 2),
               seconds_per_step=round((tb - ta) / (s1 - s0), 4), wall_seconds=round(wall, 1),
               mfu=round(mfu(tps, n_params) or 0, 4), base_params=n_params,
               peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
               peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
               losses=[round(x, 4) for x in losses], final_loss=round(sum(losses[-5:]) / len(losses[-5:]), 4),
               settings={k: getattr(cfg, k) for k in ("per_device_train_batch_size", "gradient_accumulation_steps",
                                                      "gradient_checkpointing", "padding_free", "use_liger_kernel",
                                                      "torch_compile", "bf16", "fp16")})
    if heldout:
        res["heldout_loss"] = round(tr.evaluate()["eval_loss"], 4)
    print(json.dumps({k: v for k, v in res.items() if k != "losses"}), flush=True)
    del tr, model
    if cuda:
        torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["speed", "t4mem"])
    ap.add_argument("--model", required=True, help="HF folder, or shape:llama-3.2-1b / shape:llama-3.2-3b")
    ap.add_argument("--tokenizer", default="/root/gpu/smollm2-135m-instruct")
    ap.add_argument("--data", required=True, help="JSONL of {prompt, completion} strings (bench/make_bench_data.py)")
    ap.add_argument("--configs", default="naive,ours")
    ap.add_argument("--global-batch", type=int, default=64)
    ap.add_argument("--examples", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--heldout", type=int, default=128, help="examples for the held-out loss")
    ap.add_argument("--memory-gib", type=float, default=14.0)
    ap.add_argument("--compile", action="store_true", help="also run ours + torch.compile")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    import torch

    base = materialize(a.model, a.tokenizer)
    from guardrsft.models import load_tokenizer

    tok = load_tokenizer(base)
    report = dict(device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (dry run)", torch=torch.__version__, model=a.model, mode=a.mode,
                  date=time.strftime("%Y-%m-%d"), runs=[])
    if a.mode == "speed":
        p = params_with({"preset": "a100", "train.max_length": 2048})
        recs = load_records(a.data, a.examples + a.heldout, tok, p.max_length)
        recs, heldout = recs[:a.examples], recs[a.examples:]
        lengths = [len(tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True, return_dict=False))
                   for r in recs]
        report["example_tokens"] = dict(mean=round(sum(lengths) / len(lengths), 1), min=min(lengths),
                                        max=max(lengths), n=len(lengths))
        steps, gb = a.examples // a.global_batch, a.global_batch
        variants = {
            "naive": dict(per_device_train_batch_size=min(8, gb), gradient_accumulation_steps=gb // min(8, gb),
                          gradient_checkpointing=True, padding_free=False, max_length=p.max_length,
                          use_liger_kernel=False, gradient_checkpointing_kwargs=None),
            "ours": dict(per_device_train_batch_size=gb, gradient_accumulation_steps=1, gradient_checkpointing=False),
            "ours_compile": dict(per_device_train_batch_size=gb, gradient_accumulation_steps=1,
                                 gradient_checkpointing=False, torch_compile=True),
        }
        names = a.configs.split(",") + (["ours_compile"] if a.compile else [])
        for name in names:
            pp = params_with({"preset": "a100", "train.max_length": 2048, "train.gradient_checkpointing": False,
                              "train.padding_free": name != "naive"})
            report["runs"].append(run_one(name, pp, base, recs, heldout, steps, a.warmup, variants[name]))
        by = {r["config"]: r for r in report["runs"]}
        if "naive" in by and "ours" in by:
            report["speedup_tokens_per_second"] = round(by["ours"]["tokens_per_second"]
                                                        / by["naive"]["tokens_per_second"], 2)
    else:
        # the t4 preset as shipped (4-bit nf4, fp16, batch 2 x 4, max_length 2048, checkpointing),
        # capped at what a T4 offers, on the longest examples it admits
        torch.cuda.set_per_process_memory_fraction(a.memory_gib * 2**30 / torch.cuda.get_device_properties(0).total_memory)
        p = params_with({"preset": "t4"})
        recs = load_records(a.data, 64, tok, p.max_length, min_tokens=int(p.max_length * 0.75))
        report["memory_cap_gib"] = a.memory_gib
        report["runs"].append(run_one("t4", p, base, recs, [], 6, 2, {}))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
