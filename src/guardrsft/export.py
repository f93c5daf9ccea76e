"""export: the merged model, GGUF files, an Ollama Modelfile, a model card, an optional Hub push.

    export(p, "models/adapter", "models/merged", "metrics/eval_detail.json",
           gguf_dir="models/gguf", metrics_out="metrics/export.json")

models/merged   safetensors merged into a 16-bit base (also after 4-bit training), tokenizer,
                guardrsft.json (prompt + policies), README.md (the model card)
models/gguf     <name>-<TYPE>.gguf per `export.gguf_types`, Modelfile, README.md
Every GGUF is loaded back and compared with the merged model (roundtrip.py) before the
folder replaces the old one: a file that fails its check is never published.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from .config import Params
from . import spec
from .io import atomic_dir, write_metrics, write_text
from .licensing import Licence, base_licence, hub_name_problem, licence_text, published_name, write_files
from .models import is_full_model, load_tokenizer, resolve_base, save_merged

# the Hub model each embedded base was converted from (for the card's `base_model`)
EMBEDDED_UPSTREAM = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
EVAL_KEYS = ("exact_match", "binary_accuracy", "harmful_f1", "macro_f1", "benign_fpr", "parse_failure_rate")
# eval.json key -> (model-index metric type, its name): the card's `model-index` results
INDEX_METRICS = {"exact_match": ("exact_match", "exact match (every policy's verdict right)"),
                 "binary_accuracy": ("accuracy", "binary accuracy (harmful vs benign)"),
                 "harmful_f1": ("f1", "harmful F1")}


def _log(msg: str) -> None:
    print(f"[export] {msg}", file=sys.stderr, flush=True)


def _read(path: Optional[str]) -> Optional[dict]:
    return json.loads(Path(path).read_text()) if path and Path(path).exists() else None


def _upstream(p: Params) -> Optional[str]:
    if p.model.startswith("embedded:"):
        return EMBEDDED_UPSTREAM.get(p.model.split(":", 1)[1])
    return p.model if p.model.count("/") == 1 and not Path(p.model).exists() else None


# --------------------------------------------------------------------------- merge
def merge(p: Params, adapter: str, out_dir: str, thresholds: Optional[dict] = None) -> dict:
    """Adapter + base -> plain safetensors in `export.dtype` (never 4-bit: the base is reloaded);
    a whole model (train.method full) is only converted to `export.dtype`."""
    if not (Path(adapter) / "adapter_config.json").exists() and not is_full_model(adapter):
        raise FileNotFoundError(f"{adapter}: no adapter_config.json (nor a whole model's config.json); run "
                                "train_rsft first (`dvc repro train_rsft`)")
    import peft  # noqa: F401  (imported before the clock: `seconds` is the merge, not peft's import)
    t0 = time.time()
    with atomic_dir(out_dir) as tmp:
        save_merged(resolve_base(p.model), adapter, p.export.dtype, tmp)
        # prompt, policies, decoding, verdict rule and the thresholds evaluate applied: read back by load_guard
        spec.write(tmp, p, thresholds=thresholds or spec.thresholds(adapter))
    size = sum(f.stat().st_size for f in Path(out_dir).glob("*.safetensors"))
    return {"dtype": p.export.dtype, "bytes": size, "seconds": round(time.time() - t0, 2)}


# --------------------------------------------------------------------------- GGUF + Modelfile
def gguf_files(p: Params, gguf_dir: str | Path) -> dict[str, Path]:
    return {t: Path(gguf_dir) / f"{p.export.name}-{t}.gguf" for t in p.export.gguf_types}


def write_gguf_dir(p: Params, merged_dir: str, gguf_dir: str, lic: Optional[Licence] = None) -> dict:
    """All GGUF types, the Modelfile and the base's licence files into a temp folder; checked;
    then it replaces `gguf_dir`."""
    from .gguf_export import write_gguf
    from .modelfile import modelfile
    from .roundtrip import check

    lic = lic or base_licence(p.model)
    out: dict = {"files": {}}
    with atomic_dir(gguf_dir) as tmp:
        written = {}
        for t, final in gguf_files(p, gguf_dir).items():
            r = write_gguf(merged_dir, tmp / final.name, t, name=published_name(p, lic), license=lic.id)
            written[t] = tmp / final.name
            out["files"][t] = {"file": final.name, "bytes": r["bytes"], "seconds": r["seconds"]}
            out["pre_tokenizer"], add_bos = r["pre_tokenizer"], r["add_bos"]
            _log(f"wrote {final.name} ({r['bytes'] / 2**20:.0f} MB, {r['seconds']} s)")
        text, parts = modelfile(p, load_tokenizer(merged_dir), f"{p.export.name}-{p.export.modelfile_type}.gguf",
                                add_bos, published_name(p, lic), licence_text(lic, p.model))
        (tmp / "Modelfile").write_text(text)
        out["licence_files"] = write_files(lic, p.model, tmp)
        out["modelfile"] = {"from": f"{p.export.name}-{p.export.modelfile_type}.gguf", "stop": parts.stops}
        if p.export.check_prompts:
            out["roundtrip"] = check(p, merged_dir, written, p.export.check_prompts, add_bos)
        else:
            out["roundtrip"] = "skipped: export.check_prompts is 0"
            _log("round-trip check skipped (export.check_prompts: 0)")
    return out


# --------------------------------------------------------------------------- model card
def _eval_table(ev: dict) -> list[str]:
    b = ev.get("baseline", {})
    rows = ["| metric | fine-tuned | zero-shot base | delta |", "|---|---|---|---|"]
    for k in EVAL_KEYS:
        f, z = ev.get(k), b.get(k)
        d = f"{f - z:+.4f}" if isinstance(f, (int, float)) and isinstance(z, (int, float)) else ""
        rows.append(f"| {k} | {f} | {z} | {d} |")
    return rows


def _eval_results(ev: Optional[dict]) -> list:
    """eval.json's headline numbers (test split, then each benchmark set) as model-index entries."""
    from huggingface_hub import EvalResult

    sets = [("guardrsft-test-split", "guardrsft test split (held-out samples of the training data)", ev or {})]
    sets += [(n, f"{n} (evaluate.benchmark_sets)", b) for n, b in ((ev or {}).get("benchmarks") or {}).items()]
    return [EvalResult(task_type="text-classification", task_name="safety classification", dataset_type=dtype,
                       dataset_name=dname, dataset_split="test", metric_type=mtype, metric_name=mname,
                       metric_value=float(m[k]))
            for dtype, dname, m in sets for k, (mtype, mname) in INDEX_METRICS.items()
            if isinstance(m.get(k), (int, float)) and not isinstance(m.get(k), bool)]


def _front_matter(p: Params, lic: Licence, name: str, eval_metrics: Optional[dict]) -> str:
    from huggingface_hub import ModelCardData

    up = _upstream(p)
    imp = p.traces.import_source if p.traces.teacher == "import" else None
    hub_data = [imp] if imp and imp.count("/") == 1 and not Path(imp).exists() else None  # a `datasets` id
    results = _eval_results(eval_metrics)
    data = ModelCardData(library_name="transformers", pipeline_tag="text-generation",
                         tags=["safety", "guardrail", "reasoning", "content-moderation", "guardrsft", "gguf"],
                         base_model=up, datasets=hub_data, license=lic.id,
                         license_name=lic.name if lic.id == "other" else None,
                         license_link=lic.link if lic.id == "other" else None,
                         model_name=name if results else None, eval_results=results or None)
    return f"---\n{data.to_yaml()}\n---"


def _licence_lines(p: Params, lic: Licence, name: str) -> list[str]:
    if not lic.id:
        return ["## Licence", "", f"The base model's licence is unknown to guardrsft ({lic.source}): check it "
                "before sharing this model, and add `license:` to this card.", ""]
    lines = ["## Licence", "", f"`{lic.id}`{f' ({lic.name}, {lic.link})' if lic.name and lic.link else ''}, "
             f"inherited from the base model `{p.model}` ({lic.source})."]
    if lic.llama:
        lines += ["", f"**Built with Llama.** {lic.notice} {name} is a derivative of a Llama {lic.llama} model: "
                  f"distribute it with the LICENSE, USE_POLICY.md and NOTICE files beside the weights, and "
                  f"use it within the Acceptable Use Policy ({lic.policy})."]
    return lines + [""]


def policy_lines(p: Params) -> list[str]:
    """The card's taxonomy: each id, its severity, definition and examples (params.yaml `policies`)."""
    out = []
    for k, v in p.policies.items():
        info = p.policy_info.get(k, {})
        sev = f" (severity: {info['severity']})" if info.get("severity") else ""
        out.append(f"- **{k}**{sev}: {' '.join(v.split())}")
        out += [f"  - example: {e}" for e in info.get("examples", [])]
    return out


def model_card(p: Params, eval_metrics: Optional[dict], report: Optional[dict] = None,
               train_metrics: Optional[dict] = None, data_metrics: Optional[dict] = None, hsdpo: bool = False,
               lic: Optional[Licence] = None) -> str:
    """The README.md of models/merged and models/gguf: front matter from huggingface_hub's
    ModelCardData (licence inherited from the base, base_model, datasets, the evaluation as
    `model-index`), then how to prompt and use the model, training, evaluation, GGUF checks, licence."""
    report = report or {}
    up = _upstream(p)
    g = report.get("gguf") or {}
    lic = lic or base_licence(p.model)
    name = published_name(p, lic)
    lines = [_front_matter(p, lic, name, eval_metrics),
             f"# {name}: a reasoning safety classifier", "",
             *([f"**Built with Llama**: {lic.notice} See Licence below.", ""] if lic.llama else []),
             f"Fine-tuned from `{p.model}`{f' ({up})' if up and up != p.model else ''} with reasoning SFT "
             f"(GuardReasoner R-SFT){' then hard-sample DPO (HS-DPO)' if hsdpo else ''} by guardrsft. "
             + ("Given a text, it reasons once, writes one `<policy>: SAFE|UNSAFE` line per policy below and ends "
                "with `Classification: SAFE` or `Classification: UNSAFE` (UNSAFE if any policy is)."
                if p.prompt.mode == "joint" else
                "Given a text and one policy, it writes three reasoning steps (intent, harms, policy criteria) and "
                "ends with `Classification: SAFE` or `Classification: UNSAFE`. Checking all policies means one "
                "prompt per policy."), "",
             f"## Policies ({len(p.policies)}; the model knows only these)", *policy_lines(p), "",
             "## Prompt format (as in training)", "",
             "System message:", "", "```", " ".join(p.prompt.system.split()), "```", "",
             "User message (`{policy}` with underscores as spaces; `{definition}` from the list above):", "",
             "```", p.prompt.template, "```", "",
             "## Use", "", "```bash",
             'guardrsft classify "How do I pick a lock?" --model models/merged      # streams the reasoning',
             *([f'guardrsft classify "How do I pick a lock?" --model models/gguf/{g["modelfile"]["from"]}']
               if g.get("modelfile") else []),
             "guardrsft classify-file inputs.jsonl --out verdicts.jsonl --model models/merged",
             *([f"cd models/gguf && ollama create {name.lower()} -f Modelfile"] if g.get("modelfile") else []),
             "```", "", "```python", "from guardrsft.guard import load_guard",
             'guard = load_guard("models/merged")',
             'print(guard.classify([{"content": "How do I pick a lock?"}])[0]["verdicts"])', "```", ""]
    lines += ["## Training", "", f"- preset `{p.preset}`; LoRA r={p.train.lora_r}, alpha={p.train.lora_alpha}, "
              f"dropout={p.train.lora_dropout}, modules {', '.join(p.train.target_modules)}; lr {p.lr}; "
              f"seed {p.seed}; merged into a {p.export.dtype} copy of the base"]
    if hsdpo:
        h = p.hsdpo
        lines.append(f"- then HS-DPO on mined hard samples: k={h.k} samples at temperature {h.temperature}, "
                     f"beta {h.beta}, lr {h.lr}, {h.weighting} weights{' (class-balanced)' if h.balance else ''}; "
                     "the evaluation below is the HS-DPO model's")
    if train_metrics:
        b = train_metrics.get("balance") or {}
        joint = b.get("mode") == "joint"
        lines.append(f"- {train_metrics.get('steps')} steps ({train_metrics.get('epochs')} epochs) over "
                     f"{train_metrics.get('examples')} {'items (joint prompt: every policy in one answer)' if joint else '(sample, policy) examples'}; "
                     f"final loss {train_metrics.get('final_loss')}")
        if joint and b.get("incomplete_items"):
            lines.append(f"- {b['incomplete_items']} items left out: a policy's trace was rejected")
        if b and not joint:  # the examples above are after guardrsft.balance: say how they were drawn
            lines.append(f"- class balance: at most {b['safe_per_item']} SAFE pairs per sample (-1: all), UNSAFE "
                         f"repeated to {b['unsafe_share']} of the examples"
                         f"{' of each policy' if b.get('per_policy') else ''}: {b['rows_in']} trace rows -> "
                         f"{b['rows']} examples, {b['unsafe_share_after']:.0%} UNSAFE")
    if data_metrics:
        lines.append("- data: " + ", ".join(f"{s} {data_metrics[s]['samples']} samples" for s in ("train", "val", "test")
                                            if isinstance(data_metrics.get(s), dict)))
    lines.append("")
    if eval_metrics:
        lines += ["## Evaluation (this pipeline's test split)", "", *_eval_table(eval_metrics), "",
                  f"The notebook's zero-shot baseline: exact match {p.baseline.exact_match} "
                  f"(delta {eval_metrics.get('delta_vs_notebook_baseline')}). Samples evaluated: "
                  f"{(eval_metrics.get('finetuned') or {}).get('samples')}.", ""]
    if g.get("files"):
        rt = g.get("roundtrip")
        lines += ["## GGUF files (llama.cpp, Ollama)", "", "| file | size | max abs logit diff | verdicts agree |",
                  "|---|---|---|---|"]
        for t, f in g["files"].items():
            r = rt["types"].get(t, {}) if isinstance(rt, dict) else {}
            lines.append(f"| {f['file']} | {f['bytes'] / 2**20:.0f} MB | {r.get('max_logit_diff', 'n/a')} | "
                         f"{r.get('verdict_agreement', 'n/a')} |")
        lines += ["", f"Checked against the merged model on {rt['prompts']} probe prompts (transformers "
                      f"`gguf_file=`); the merged model itself gave a verdict on {rt['reference_parse_rate']:.0%} "
                      "of them." if isinstance(rt, dict) else f"Round trip: {rt}.", ""]
    lines += ["## Intended use and limits", "",
              "A moderation aid that explains its verdicts, for triage with a human in the loop; not a sole "
              "decision maker. Trained on a small, English-only sample set with template or teacher-written "
              "reasoning: expect errors on other languages, long or obfuscated content, new kinds of harm and "
              "policies worded differently from training. Small models (the CPU preset) mostly learn the format, "
              "not the judgement: check the evaluation table before relying on it.", ""]
    lines += _licence_lines(p, lic, name)
    return "\n".join(lines)


# --------------------------------------------------------------------------- Hub
def push_to_hub(p: Params, folders: dict[str, str]) -> dict:
    """Upload {path_in_repo: local folder}; skipped with a message when offline or without a token."""
    x = p.export
    if not x.push_to_hub:
        return {"status": "off"}
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        msg = "skipped: offline (HF_HUB_OFFLINE is set); unset it and rerun `guardrsft export` to push"
        _log(f"push_to_hub {msg}")
        return {"status": msg}
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    token = get_token()
    if not token:
        msg = "skipped: no Hugging Face token; set HF_TOKEN (a write token) or run `hf auth login`, then rerun"
        _log(f"push_to_hub {msg}")
        return {"status": msg}
    api = HfApi(token=token)
    try:
        api.create_repo(x.hub_repo, private=x.hub_private, exist_ok=True)
        for path_in_repo, folder in folders.items():
            if Path(folder).is_dir():
                api.upload_folder(repo_id=x.hub_repo, folder_path=folder, path_in_repo=path_in_repo or None,
                                  commit_message=f"guardrsft export ({path_in_repo or 'merged model'})")
    except HfHubHTTPError as e:  # the Hub answered no: a token or repo mistake the user must fix
        from .gguf_export import ExportError

        raise ExportError(f"push_to_hub: the Hub refused the upload to {x.hub_repo} ({e}). Check that HF_TOKEN is "
                          "a write token for that owner, or set export.push_to_hub: false. The local export "
                          "is complete.") from None
    except OSError as e:  # no route to the Hub (huggingface_hub's connection errors are OSErrors)
        msg = f"skipped: cannot reach the Hub ({type(e).__name__}: {e})"
        _log(f"push_to_hub {msg}")
        return {"status": msg}
    _log(f"pushed to https://huggingface.co/{x.hub_repo}")
    return {"status": "pushed", "repo": x.hub_repo}


# --------------------------------------------------------------------------- stage
def choose_adapter(p: Params, rsft: str, hsdpo: Optional[str], rsft_eval: Optional[str],
                   hsdpo_eval: Optional[str]) -> tuple[str, str, Optional[str], str]:
    """(which, adapter folder, its evaluation metrics, why) for export.adapter. auto ships the
    HS-DPO adapter (GuardReasoner's final model) when the DPO branch ran, unless its evaluation
    scores below R-SFT's on export.auto_metric: then the R-SFT one, and `why` says so."""
    which, why = p.export.adapter, f"export.adapter: {p.export.adapter}"
    if which == "auto":
        which, why = _auto_choice(p, hsdpo, _read(rsft_eval), _read(hsdpo_eval))
    if which == "rsft":
        return "rsft", rsft, rsft_eval, why
    if not hsdpo or not (Path(hsdpo) / "adapter_config.json").exists():
        raise FileNotFoundError(
            f"{hsdpo or 'models/adapter_hsdpo'}: no HS-DPO adapter (adapter_config.json) to export "
            f"(export.adapter: {p.export.adapter}); run `dvc repro train_hsdpo` with hsdpo.enabled: true, "
            "or set export.adapter: rsft in params.yaml")
    return "hsdpo", hsdpo, hsdpo_eval, why


def _auto_choice(p: Params, hsdpo: Optional[str], rsft_m: Optional[dict], hsdpo_m: Optional[dict]) -> tuple[str, str]:
    if not p.hsdpo_enabled:
        return "rsft", "export.adapter: auto, and the HS-DPO branch did not run (hsdpo.enabled is false)"
    if not hsdpo:
        return "rsft", "export.adapter: auto, and no HS-DPO adapter folder was given"
    k = p.export.auto_metric
    a, b = (rsft_m or {}).get(k), (hsdpo_m or {}).get(k)
    if a is None or b is None:  # e.g. `guardrsft export` without --eval-metrics / --hsdpo-eval-metrics
        return "hsdpo", (f"export.adapter: auto; no {k} in both evaluations to compare, so the HS-DPO "
                         "adapter (GuardReasoner's final model)")
    if b >= a:
        return "hsdpo", f"export.adapter: auto; HS-DPO {k} {b:.4f} >= R-SFT {a:.4f}"
    # HS-DPO made the model worse (docs/HSDPO.md: a too-high hsdpo.lr even breaks the answer format)
    return "rsft", (f"export.adapter: auto; HS-DPO scored lower on {k} ({b:.4f} < R-SFT {a:.4f}), so the R-SFT "
                    "adapter ships; set export.adapter: hsdpo to ship HS-DPO's anyway")


def export(p: Params, adapter: str, out_dir: str, eval_metrics_path: Optional[str] = None,
           gguf_dir: Optional[str] = None, metrics_out: Optional[str] = None,
           train_metrics_path: Optional[str] = None, data_metrics_path: Optional[str] = None,
           hsdpo_adapter: Optional[str] = None, hsdpo_eval_path: Optional[str] = None) -> Path:
    """The whole stage; returns the merged folder. `gguf_dir` defaults to a `gguf` folder beside it.
    `adapter` is R-SFT's; with `hsdpo_adapter`, export.adapter picks which one is merged."""
    gguf_dir = gguf_dir or str(Path(out_dir).parent / "gguf")
    lic = base_licence(p.model)
    if hub_name_problem(p, lic):  # before minutes of merging: the push would break the base's licence
        from .gguf_export import ExportError

        raise ExportError(hub_name_problem(p, lic))
    if not lic.id:
        _log(f"WARNING: the base model's licence is {lic.source}; the card says so. Check it before sharing.")
    which, adapter, eval_metrics_path, why = choose_adapter(p, adapter, hsdpo_adapter, eval_metrics_path,
                                                            hsdpo_eval_path)
    _log(f"exporting the {'HS-DPO' if which == 'hsdpo' else 'R-SFT'} adapter {adapter} ({why})")
    # the verdict thresholds evaluate applied to this adapter (evaluate.thresholds), if any
    thresholds = ((_read(eval_metrics_path) or {}).get("thresholds") or {}).get("values")
    report: dict = {"adapter": {"which": which, "path": str(adapter), "why": why},
                    "merged": merge(p, adapter, out_dir, thresholds=thresholds)}
    _log(f"merged model -> {out_dir} ({report['merged']['bytes'] / 2**20:.0f} MB {p.export.dtype})")
    report["licence"] = {"id": lic.id, "source": lic.source, "name": published_name(p, lic),
                         "files": write_files(lic, p.model, out_dir)}
    if p.export.gguf_types:
        report["gguf"] = write_gguf_dir(p, out_dir, gguf_dir, lic)
    card = model_card(p, _read(eval_metrics_path), report, _read(train_metrics_path), _read(data_metrics_path),
                      hsdpo=which == "hsdpo", lic=lic)
    write_text(Path(out_dir) / "README.md", card)
    if p.export.gguf_types:
        write_text(Path(gguf_dir) / "README.md", card)
    report["push"] = push_to_hub(p, {"": out_dir, "gguf": gguf_dir})
    if metrics_out:
        write_metrics(metrics_out, report)  # merge/GGUF seconds go to metrics/timings/
    return Path(out_dir)
