"""Hard-sample DPO (GuardReasoner's second stage, docs/HSDPO.md): mine, then train.

    mine(p, traces_path, out_dir, metrics_out, adapter=..., base=None, eval_paths=(...))
      k sampled answers per (training item, policy) from the R-SFT model through the guard API;
      hardness = share of wrong or unparseable samples; every (item, policy) whose samples
      disagree (0 < hardness < 1) gives ONE pair: chosen = its first correct sample, rejected =
      its first sample with the wrong verdict (else its first unparseable one); weight from
      hardness. Writes out_dir/pairs.jsonl, out_dir/items.jsonl and metrics_out.
    train_dpo(p, pairs_path, adapter_in, adapter_out, metrics_out, plot_out, base=None)
      TRL's DPOTrainer continues the R-SFT LoRA adapter; the reference is a frozen copy of that
      same adapter (TRL's "ref" adapter); each pair's gradient is scaled by its weight.

Both are plain functions of params and paths, used by the stages and by benchmark scripts.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Optional

from .config import Params
from .data import subsample
from .guard import load_guard
from .io import atomic_dir, read_jsonl, write_json, write_jsonl, write_text
from .models import (attach_adapter, cache_dir, check_device, checkpointing_args, load_model, load_tokenizer,
                     quiet_deprecations, resolve_base, tokenizer_source)
from .prompts import messages, target
from .shard import params_file, resolve_processes, run_sharded, shard_guard
from .train import TrainError

# file names that are evaluation data, never mined
EVAL_NAMES = ("val", "valid", "validation", "dev", "test", "eval")


class HsdpoError(TrainError):
    """A user mistake in the HS-DPO stages (printed as one line by the stage runner)."""


# --------------------------------------------------------------------------- mining (pure)
def check_training_split(traces_path: str, eval_paths=()) -> None:
    """Refuse anything but training data: a file named like an evaluation split, rows marked
    with another split, or content shared with any of `eval_paths` (the val/test files)."""
    path = Path(traces_path)
    if path.stem.lower() in EVAL_NAMES or any(part.lower() in ("test", "dev") for part in path.parent.parts[-1:]):
        raise HsdpoError(f"{traces_path}: hard samples are mined on the training split only, and this file is "
                         f"named like evaluation data; pass data/traces/train.jsonl (or your training traces)")
    rows = read_jsonl(traces_path)
    bad = [r.get("split") for r in rows if r.get("split") not in (None, "train")]
    if bad:
        raise HsdpoError(f"{traces_path}: {len(bad)} rows have split={bad[0]!r}; mining uses training rows only")
    contents = {r["content"] for r in rows}
    for ev in eval_paths:
        if not Path(ev).exists():
            continue
        shared = contents & {r["content"] for r in read_jsonl(ev)}
        if shared:
            raise HsdpoError(f"{traces_path}: {len(shared)} contents also appear in the evaluation file {ev} "
                             f"(e.g. {next(iter(shared))[:60]!r}); mining must never see evaluation data")


def training_items(traces: list[dict], policies: dict, max_items: Optional[int], seed: int) -> list[dict]:
    """One item per training sample: {"id", "content", "labels", "gold": {policy: verdict},
    "trace": {policy: reasoning}}; max_items keeps a label-stratified subset (data.subsample)."""
    by_id: dict[str, dict] = {}
    for t in traces:
        if t.get("reasoning") is None or t["policy"] not in policies:
            continue  # rejected teacher answers carry no gold reasoning; unknown policies are not asked
        it = by_id.setdefault(t["id"], {"id": t["id"], "content": t["content"], "gold": {}, "trace": {}})
        it["gold"][t["policy"]] = t["classification"].upper()
        it["trace"][t["policy"]] = t["reasoning"]
    items = [dict(it, labels=sorted(q for q, v in it["gold"].items() if v == "UNSAFE")) for it in by_id.values()]
    return subsample(items, max_items, seed)


def completion(sample: dict) -> str:
    """The assistant turn a sample stands for: its reasoning and verdict in the trained format
    (text after the verdict line dropped), or the raw text when it has no verdict."""
    if sample["verdict"] is None:
        return sample["raw"].strip()
    return target(sample["reasoning"] or "", sample["verdict"])


def item_stats(gold: str, samples: list[dict]) -> dict:
    correct = sum(s["verdict"] == gold for s in samples)
    parse_errors = sum(s["verdict"] is None for s in samples)
    return {"gold": gold, "k": len(samples), "correct": correct, "wrong_verdict": len(samples) - correct - parse_errors,
            "parse_errors": parse_errors, "hardness": round((len(samples) - correct) / len(samples), 6)}


def build_pair(item: dict, policy: str, samples: list[dict], trace_fallback: bool = False) -> Optional[dict]:
    """The pair of one (item, policy), or None when its samples agree (all correct; or all
    wrong, unless trace_fallback makes the R-SFT training trace the chosen answer)."""
    gold = item["gold"][policy]
    st = item_stats(gold, samples)
    good = [s for s in samples if s["verdict"] == gold]
    # a wrong verdict is the informative mistake; an unparseable answer only teaches the format
    bad = [s for s in samples if s["verdict"] not in (gold, None)] + \
          [s for s in samples if s["verdict"] is None and s["raw"].strip()]
    if not bad:
        return None
    if good:
        chosen, source, idx = completion(good[0]), "sample", good[0]["index"]
    elif trace_fallback:
        chosen, source, idx = target(item["trace"][policy], gold), "trace", None
    else:
        return None
    return {"id": item["id"], "policy": policy, "content": item["content"], "gold": gold,
            "hardness": st["hardness"], "chosen": chosen, "rejected": completion(bad[0]),
            "chosen_source": source, "chosen_sample": idx, "rejected_sample": bad[0]["index"],
            "rejected_kind": "parse_error" if bad[0]["verdict"] is None else "wrong_verdict"}


def assign_weights(pairs: list[dict], weighting: str, balance: bool = False) -> list[dict]:
    """hardness: w = hardness / mean hardness over the pairs (mean weight 1, so the step size
    matches uniform weights; harder pairs count more); uniform: w = 1.
    balance: then rescale each gold class (SAFE / UNSAFE) to half of the total weight, so that
    a model whose mistakes are mostly false alarms is not simply pushed toward SAFE (measured:
    docs/BENCHMARKS.md, quality run 2); the mean weight stays 1."""
    if weighting not in ("hardness", "uniform"):
        raise HsdpoError(f"hsdpo.weighting must be hardness or uniform, got {weighting!r}")
    mean = sum(p["hardness"] for p in pairs) / len(pairs) if pairs else 1.0
    w = [p["hardness"] / mean if weighting == "hardness" else 1.0 for p in pairs]
    classes = {p["gold"] for p in pairs} if balance else set()
    if len(classes) == 2:
        total = sum(w)
        mass = {c: sum(x for x, p in zip(w, pairs) if p["gold"] == c) for c in classes}
        w = [x * (total / 2) / mass[p["gold"]] for x, p in zip(w, pairs)]
    return [dict(p, weight=round(x, 6)) for x, p in zip(w, pairs)]


# --------------------------------------------------------------------------- mining (model)
def mine(p: Params, traces_path: str, out_dir: str, metrics_out: str, *, adapter: Optional[str],
         base: Optional[str] = None, eval_paths=(), cache_path: Optional[str] = None,
         trace_fallback: bool = False, progress: bool = True) -> dict:
    """Sample, score and pair the training items; writes out_dir/{pairs,items}.jsonl and metrics_out.

    base: a Hub id / HF folder / `embedded:...` (default: the preset's model); adapter: the R-SFT
    adapter folder (None: mine the base model itself). eval_paths: val/test files the traces
    must not overlap. cache_path: the sample cache (default: the guardrsft cache), so a killed
    mining run resumes without redrawing saved answers."""
    h = p.hsdpo
    check_training_split(traces_path, eval_paths)
    traces = read_jsonl(traces_path)
    items = training_items(traces, p.policies, p.hsdpo_max_items, p.seed)
    if not items:
        raise HsdpoError(f"{traces_path}: no training traces for the policies in {p.source}; run generate_traces")
    max_new = h.max_new_tokens or p.max_new_tokens
    t0 = time.time()
    cache = cache_path or str(cache_dir() / "samples.jsonl")
    # one sample call per policy set: an item is asked only about the policies it has a gold trace for
    groups: dict[tuple, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(tuple(q for q in p.policies if q in it["gold"]), []).append(i)
    samples_of: dict[int, dict] = {}
    gen = Counter()
    n_proc = resolve_processes(p.evaluate.processes)
    # backend auto: the samples come from guardrsft.sampling's own draw, whatever evaluate.backend says
    guard = None if n_proc > 1 else load_guard(base or p.model, adapter=adapter, params=p, max_new_tokens=max_new,
                                               cache_path=cache, backend="auto")
    for policies, idx in groups.items():
        batch = [{"content": items[i]["content"]} for i in idx]
        if guard is None:  # one process per GPU (evaluate.processes); answers equal one process's
            with tempfile.TemporaryDirectory() as d:
                res, stats = run_sharded(
                    "guardrsft.hsdpo:sample_worker", batch, n_proc, label="mine_hard_samples",
                    kwargs={"base": base or p.model, "adapter": adapter, "params_path": params_file(p, Path(d)),
                            "cache_dir": str(Path(cache).with_suffix("")) + "-shards", "read_also": [cache],
                            "policies": list(policies), "max_new_tokens": max_new})
            gen.update({k: sum(s.get(k, 0) for s in stats) for k in ("generated_answers", "cached_answers",
                                                                      "new_tokens")})
        else:
            res = guard.sample(batch, h.k, h.temperature, h.top_p, p.seed, policies=list(policies), progress=progress)
            gen.update({k: guard.last_stats[k] for k in ("generated_answers", "cached_answers", "new_tokens")})
        samples_of.update({i: r["samples"] for i, r in zip(idx, res)})
    del guard
    stats_rows, pairs = [], []
    for i, it in enumerate(items):
        for q, samples in samples_of[i].items():
            pair = build_pair(it, q, samples, trace_fallback)
            stats_rows.append({"id": it["id"], "policy": q, **item_stats(it["gold"][q], samples),
                               "paired": pair is not None})
            if pair is not None:
                pairs.append(pair)
    pairs = assign_weights(pairs, h.weighting, h.balance)
    out = Path(out_dir)
    write_jsonl(out / "pairs.jsonl", pairs)
    write_jsonl(out / "items.jsonl", stats_rows)
    n = len(stats_rows)
    hard = [r for r in stats_rows if 0 < r["hardness"] < 1]
    all_samples = n * h.k
    metrics = {
        "enabled": True, "traces": traces_path, "items": len(items), "item_policies": n, "k": h.k,
        "temperature": h.temperature, "top_p": h.top_p, "max_new_tokens": max_new, "weighting": h.weighting,
        "balance": h.balance, "samples": all_samples,
        "sample_accuracy": round(sum(r["correct"] for r in stats_rows) / all_samples, 4),
        "sample_parse_error_rate": round(sum(r["parse_errors"] for r in stats_rows) / all_samples, 4),
        "hard": len(hard), "all_correct": sum(r["hardness"] == 0 for r in stats_rows),
        "all_wrong": sum(r["hardness"] == 1 for r in stats_rows),
        "hardness_histogram": dict(sorted(Counter(str(r["hardness"]) for r in stats_rows).items())),
        "pairs": len(pairs), "pairs_by_gold": dict(Counter(x["gold"] for x in pairs)),
        "pairs_rejected_kind": dict(Counter(x["rejected_kind"] for x in pairs)),
        "pairs_from_trace": sum(x["chosen_source"] == "trace" for x in pairs),
        "weight_min": min((x["weight"] for x in pairs), default=None),
        "weight_max": max((x["weight"] for x in pairs), default=None),
        "generated_answers": gen["generated_answers"], "cached_answers": gen["cached_answers"],
        "new_tokens": gen["new_tokens"], "seconds": round(time.time() - t0, 1),
    }
    write_json(metrics_out, metrics)
    return metrics


def sample_worker(items: list, shard: dict, base: str, adapter: Optional[str], params_path: str, cache_dir: str,
                  policies: list, max_new_tokens: int, read_also: Optional[list] = None) -> tuple[list, dict]:
    """One shard of mining (shard.run_sharded): guard.sample on this process's GPU, with the
    shard's cache (shard.shard_guard), so a rerun with any process count redraws nothing. Each
    answer's generator is seeded from its own key, so the samples do not depend on the sharding."""
    from .config import load_params

    p = load_params(params_path)
    guard = shard_guard(shard, base, adapter, p, cache_dir, read_also, max_new_tokens=max_new_tokens, backend="auto")
    h = p.hsdpo
    res = guard.sample(items, h.k, h.temperature, h.top_p, p.seed, policies=policies, progress=True)
    return res, {k: guard.last_stats.get(k, 0) for k in ("generated_answers", "cached_answers", "new_tokens")}


# --------------------------------------------------------------------------- training
def dpo_records(pairs: list[dict], p: Params) -> list[dict]:
    """TRL's conversational preference format plus each pair's weight."""
    return [{"prompt": messages(p.prompt, x["policy"], p.policies[x["policy"]], x["content"]),
             "chosen": [{"role": "assistant", "content": x["chosen"]}],
             "rejected": [{"role": "assistant", "content": x["rejected"]}], "weight": float(x["weight"])}
            for x in pairs]


def fit_pairs(records: list[dict], tok, max_length: int) -> tuple[list[dict], int]:
    """Records whose prompt + chosen and prompt + rejected both fit max_length tokens: TRL would
    cut the end of a longer one, and with it the verdict the pair is about."""
    def n(r, key):
        return len(tok.apply_chat_template(r["prompt"] + r[key], tokenize=True, return_dict=False))

    keep = [r for r in records if n(r, "chosen") <= max_length and n(r, "rejected") <= max_length]
    return keep, len(records) - len(keep)


class _WeightCollator:
    """TRL's preference collator plus a `weight` tensor (one per pair, in batch order)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples):
        import torch

        batch = self.inner(examples)
        batch["weight"] = torch.tensor([float(e["weight"]) for e in examples])
        return batch


def weighted_dpo_trainer_class():
    """DPOTrainer whose per-pair gradient is scaled by the pair's weight.

    TRL 1.16 has no per-sample weights (its `use_weighting` is WPO's probability weighting), and
    the per-pair loss lives inside `_compute_loss`. We scale each row's log-probabilities in the
    policy forward as `w*lp + (1-w)*lp.detach()`: the value (so the logged loss and rewards) is
    unchanged, and the gradient of TRL's mean_i loss_i becomes that of mean_i w_i * loss_i
    (chosen and rejected rows of pair i both carry w_i). w = 0 removes the pair's gradient."""
    import torch
    from trl import DPOTrainer

    class WeightedDPOTrainer(DPOTrainer):
        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "weight" not in self._signature_columns:
                self._signature_columns = list(self._signature_columns) + ["weight"]

        def _compute_loss(self, model, inputs, return_outputs):
            weight = inputs.pop("weight", None)
            if weight is None or not torch.is_grad_enabled():
                return super()._compute_loss(model, inputs, return_outputs)
            done = []

            def scale(module, args, kwargs, out):
                # the first grad-enabled forward is the policy's; the reference runs under no_grad
                if done or not torch.is_grad_enabled():
                    return out
                done.append(True)
                w = torch.cat([weight, weight]).to(out.log_probs)[:, None]  # rows: [chosen..., rejected...]
                out.log_probs = out.log_probs * w + out.log_probs.detach() * (1 - w)
                return out

            hook = model.register_forward_hook(scale, with_kwargs=True)
            try:
                loss = super()._compute_loss(model, inputs, return_outputs)
            finally:
                hook.remove()
            if not done:
                raise HsdpoError("internal: the per-pair weight was not applied (no policy forward seen)")
            return loss

    return WeightedDPOTrainer


def dpo_config(p: Params, output_dir: str, **override):
    from trl import DPOConfig

    h, hw = p.hsdpo, p.hw
    kw = dict(
        output_dir=output_dir, learning_rate=h.lr, beta=h.beta, loss_type=["sigmoid"], num_train_epochs=h.epochs,
        max_steps=p.hsdpo_max_steps, per_device_train_batch_size=h.batch_size or p.batch_size,
        gradient_accumulation_steps=h.grad_accum or p.grad_accum, max_length=p.max_length,
        warmup_steps=p.train.warmup_ratio, lr_scheduler_type=p.train.lr_scheduler,
        weight_decay=p.train.weight_decay, logging_steps=p.train.logging_steps, save_steps=p.train.save_steps,
        save_total_limit=2, seed=p.seed, data_seed=p.seed, report_to="none",
        bf16=hw["dtype"] == "bfloat16", fp16=hw["dtype"] == "float16", use_cpu=hw["device"] == "cpu",
        **checkpointing_args(DPOConfig, p.gradient_checkpointing), dataloader_pin_memory=hw["device"] == "cuda",
        logging_first_step=True, disable_tqdm=False, remove_unused_columns=True,
    )
    kw.update(override)
    return DPOConfig(**kw)


def _adapter_hash(adapter: str) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(adapter).glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


def checkpoint_dir(p: Params, pairs_hash: str, adapter_hash: str) -> Path:
    keys = {k: v for k, v in p.resolved().items()
            if k.startswith(("hsdpo.", "resolved.", "prompt.", "policies.", "train.")) or k in ("seed", "preset")}
    blob = json.dumps([keys, pairs_hash, adapter_hash], sort_keys=True, default=str)
    return cache_dir() / "checkpoints" / f"hsdpo-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _copy_adapter(src: str, dst: str, note: dict) -> None:
    with atomic_dir(dst) as tmp:
        for f in Path(src).iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        (tmp / "hsdpo.json").write_text(json.dumps(note, indent=2))


def loss_png(csv_path: str, png_path) -> Path:
    """The DPO loss per step (the CSV that train_dpo writes)."""
    from matplotlib.figure import Figure

    from .plots import _rows, _save

    rows = _rows(csv_path)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], marker="o" if len(rows) < 40 else None)
    ax.axhline(0.6931, color="grey", lw=0.8, ls="--")  # ln 2: the loss while policy == reference
    ax.set(xlabel="step", ylabel="DPO loss", title=f"HS-DPO training loss ({len(rows)} steps)")
    ax.grid(alpha=0.3)
    return _save(fig, png_path)


def train_dpo(p: Params, pairs_path: str, adapter_in: str, adapter_out: str, metrics_out: str, plot_out: str,
              *, base: Optional[str] = None, callbacks=()) -> dict:
    """DPO on the mined pairs, continuing the R-SFT adapter `adapter_in` (reference: a frozen
    copy of it); auto-resumes from the last checkpoint. With no pairs, adapter_out is a copy of
    adapter_in and metrics say `trained: false`. base: as in mine(). callbacks: extra
    transformers TrainerCallbacks (tests, benchmarks)."""
    check_device(p.hw["device"], p.preset)
    if not (Path(adapter_in) / "adapter_config.json").exists():
        raise HsdpoError(f"{adapter_in}: no LoRA adapter (adapter_config.json); run train_rsft first")
    pairs = read_jsonl(pairs_path)
    base_name = base or p.model
    note = {"base_model": base_name, "preset": p.preset, "stage": "hsdpo", "rsft_adapter": str(adapter_in)}
    if not pairs:
        print(f"[hsdpo] {pairs_path} has no pairs (no training item's samples disagreed); {adapter_out} is a copy "
              f"of the R-SFT adapter. Raise hsdpo.max_items or hsdpo.k, or train R-SFT longer.", file=sys.stderr)
        _copy_adapter(adapter_in, adapter_out, {**note, "trained": False})
        metrics = {"enabled": True, "trained": False, "reason": "no pairs", "pairs": 0, "steps": 0}
        write_json(metrics_out, metrics)
        write_text(plot_out, "step,loss,learning_rate,rewards_margin,rewards_accuracy\n")
        return {"metrics": metrics, "history": []}

    import torch
    from datasets import Dataset
    from transformers import set_seed

    from .train import fp32_adapter, last_checkpoint, peak_memory_gb, stable_adapter_config

    set_seed(p.seed)
    path = resolve_base(base_name)
    tok_src = tokenizer_source(adapter_in, path)
    tok = load_tokenizer(tok_src, padding_side="left")  # TRL's DPO wants left padding for its processing class
    records, skipped = fit_pairs(dpo_records(pairs, p), tok, p.max_length)
    if skipped:
        print(f"[hsdpo] {skipped} of {len(pairs)} pairs are longer than train.max_length={p.max_length} tokens and "
              f"are excluded (metrics: skipped_too_long)", file=sys.stderr)
    if not records:
        raise HsdpoError(f"{p.source}: every pair is longer than train.max_length={p.max_length}; raise it")
    ckpt = checkpoint_dir(p, hashlib.sha256(Path(pairs_path).read_bytes()).hexdigest(), _adapter_hash(adapter_in))
    cfg = dpo_config(p, str(ckpt))
    model = load_model(path, p.hw, for_training=True, gradient_checkpointing=p.gradient_checkpointing)
    # the R-SFT adapter, trainable; TRL adds a frozen "ref" copy of it as the reference policy
    model = attach_adapter(model, adapter_in, is_trainable=True)
    with quiet_deprecations():  # TRL reads the deprecated is_gradient_checkpointing while wrapping
        trainer = weighted_dpo_trainer_class()(model=model, args=cfg, train_dataset=Dataset.from_list(records),
                                               processing_class=tok, callbacks=list(callbacks))
    if "ref" not in trainer.model.peft_config:
        raise HsdpoError("TRL did not create a reference adapter; the reference would be the base model")
    fp32_adapter(trainer.model)
    trainer.data_collator = _WeightCollator(trainer.data_collator)
    last = last_checkpoint(ckpt)
    if last:
        print(f"[hsdpo] resuming from {last}", file=sys.stderr, flush=True)
    t0 = time.time()
    with quiet_deprecations():
        out = trainer.train(resume_from_checkpoint=last)
    wall = time.time() - t0

    with atomic_dir(adapter_out) as tmp:
        trainer.model.save_pretrained(tmp, selected_adapters=["default"])
        stable_adapter_config(tmp, p.model)
        tok.save_pretrained(tmp)
        (tmp / "guardrsft.json").write_text(json.dumps({"base_model": base_name, "preset": p.preset}, indent=2))
        (tmp / "hsdpo.json").write_text(json.dumps({**note, "trained": True}, indent=2))
    hist = [x for x in trainer.state.log_history if "loss" in x]
    weights = [r["weight"] for r in records]
    metrics = {
        "enabled": True, "trained": True, "pairs": len(pairs), "examples": len(records), "skipped_too_long": skipped,
        "steps": trainer.state.global_step, "epochs": round(trainer.state.epoch or 0, 4),
        "first_loss": hist[0]["loss"] if hist else None, "final_loss": hist[-1]["loss"] if hist else None,
        "train_loss": out.training_loss,
        "final_rewards_margin": hist[-1].get("rewards/margins") if hist else None,
        "final_rewards_accuracy": hist[-1].get("rewards/accuracies") if hist else None,
        "beta": p.hsdpo.beta, "lr": p.hsdpo.lr, "weighting": p.hsdpo.weighting, "balance": p.hsdpo.balance,
        "weight_mean": round(sum(weights) / len(weights), 4), "reference": "frozen copy of the R-SFT adapter",
        "train_seconds": round(wall, 1), "peak_memory_gb": round(peak_memory_gb(), 3), "resumed": bool(last),
        "device": p.hw["device"], "base_model": base_name,
    }
    write_json(metrics_out, metrics)
    write_text(plot_out, "step,loss,learning_rate,rewards_margin,rewards_accuracy\n" + "".join(
        f"{x['step']},{x['loss']},{x.get('learning_rate', '')},{x.get('rewards/margins', '')},"
        f"{x.get('rewards/accuracies', '')}\n" for x in hist))
    shutil.rmtree(ckpt, ignore_errors=True)  # finished: a forced rerun trains afresh
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"metrics": metrics, "history": hist}


# --------------------------------------------------------------------------- disabled branch
def disabled(p: Params, *outputs: str, dirs=(), note: str = "") -> dict:
    """hsdpo off: DVC has no conditional stages, so each stage writes its outputs saying so
    (JSON files get {"enabled": false}, folders a hsdpo.json note), without loading a model."""
    m = {"enabled": False, "reason": note or f"hsdpo.enabled is false (preset `{p.preset}`); "
         "turn it on with `dvc exp run -S hsdpo.enabled=true`"}
    for d in dirs:
        with atomic_dir(d) as tmp:
            (tmp / "hsdpo.json").write_text(json.dumps(m, indent=2))
    for o in outputs:
        if o.endswith(".json"):
            write_json(o, m)
        elif o.endswith(".csv"):
            write_text(o, "step,loss,learning_rate,rewards_margin,rewards_accuracy\n")
        else:
            write_text(o, "")
    print(f"[hsdpo] disabled: {m['reason']}", file=sys.stderr)
    return m


def rsft_delta(hsdpo_metrics: dict, rsft_metrics: dict) -> dict:
    """HS-DPO minus R-SFT on the headline numbers (test split and each benchmark both ran)."""
    from .evaluate import headline_delta

    out = {"test": headline_delta(hsdpo_metrics, rsft_metrics)}
    for name, b in (hsdpo_metrics.get("benchmarks") or {}).items():
        if name in (rsft_metrics.get("benchmarks") or {}):
            out[name] = headline_delta(b, rsft_metrics["benchmarks"][name])
    return out


def rsft_delta_ci(p: Params, rsft_predictions: str, hsdpo_predictions: str, sets) -> dict:
    """Paired 95% bootstrap intervals of HS-DPO minus R-SFT (metrics.bootstrap_ci) per set of
    `sets` (test, then the benchmarks both ran), from the two evaluations' predictions files:
    the same items, resampled together."""
    from .evaluate import predictions_file
    from .io import read_jsonl
    from .metrics import bootstrap_ci

    out = {}
    for name in sets:
        a_path, b_path = predictions_file(rsft_predictions, name), predictions_file(hsdpo_predictions, name)
        a, b = read_jsonl(a_path), read_jsonl(b_path)
        if [r["id"] for r in a] != [r["id"] for r in b]:
            raise ValueError(f"{a_path} and {b_path} do not hold the same items in the same order: R-SFT's "
                             "predictions are stale; run `dvc repro evaluate` and then this stage again")
        out[name] = bootstrap_ci([r["gold"] for r in b], [r["finetuned"] for r in b], list(p.policies),
                                 other=[r["finetuned"] for r in a], seed=p.seed)
    return out


__all__ = ["mine", "train_dpo", "build_pair", "assign_weights", "item_stats", "check_training_split",
           "training_items", "dpo_records", "weighted_dpo_trainer_class", "disabled", "rsft_delta", "rsft_delta_ci",
           "HsdpoError"]
