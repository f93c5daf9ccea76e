"""export: merge the LoRA adapter into a 16-bit copy of the base and write a model card."""
from __future__ import annotations

import json
from pathlib import Path

from .config import Params
from .io import atomic_dir
from .models import load_tokenizer, resolve_base, torch_dtype


def model_card(p: Params, eval_metrics: dict | None) -> str:
    lines = [
        "---", "library_name: transformers", "tags: [safety, guardrail, reasoning, guardrsft]", "---",
        "# guardrsft reasoning safety classifier", "",
        f"Base model: `{p.model}` (preset `{p.preset}`), fine-tuned with reasoning SFT (LoRA r={p.train.lora_r}, "
        f"lr={p.lr}) by guardrsft on the project's data. Given content and one policy it "
        "writes three reasoning steps and ends with `Classification: SAFE` or `Classification: UNSAFE`.", "",
        "## Policies", *[f"- **{k}**: {' '.join(v.split())}" for k, v in p.policies.items()], "",
    ]
    if eval_metrics:
        b = eval_metrics.get("baseline", {})
        lines += ["## Evaluation (test split of this pipeline run)", "",
                  "| metric | fine-tuned | zero-shot base |", "|---|---|---|"]
        lines += [f"| {k} | {eval_metrics.get(k)} | {b.get(k)} |" for k in
                  ("exact_match", "binary_accuracy", "harmful_f1", "macro_f1", "benign_fpr", "parse_failure_rate")]
        lines += ["", f"The notebook's zero-shot baseline: exact match {p.baseline.exact_match} "
                      f"(delta {eval_metrics.get('delta_vs_notebook_baseline')}).", ""]
    lines += ["## Intended use and limits",
              "A moderation aid that explains its verdicts; not a sole decision maker. Trained on a small, "
              "English-only sample set: expect errors on other languages, long content and new kinds of harm.", ""]
    return "\n".join(lines)


def export(p: Params, adapter: str, out_dir: str, eval_metrics_path: str | None = None) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = resolve_base(p.model)
    # always merge into a 16-bit (or fp32) copy of the base, even when training ran in 4-bit
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype(p.export.dtype))
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    tok = load_tokenizer(adapter if (Path(adapter) / "tokenizer_config.json").exists() else base)
    ev = json.loads(Path(eval_metrics_path).read_text()) if eval_metrics_path and Path(eval_metrics_path).exists() else None
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(p, ev))
        (tmp / "guardrsft.json").write_text(json.dumps(
            {"base_model": p.model, "preset": p.preset, "prompt": {"system": p.prompt.system,
             "template": p.prompt.template, "version": p.prompt.version}, "policies": p.policies}, indent=2))
    return Path(out_dir)
