"""A model folder describes itself: guardrsft.json beside the weights (adapter, merged model)
holds the prompt, the policies, the decoding budget and the verdict rule it was trained with.

load_guard reads it, so a model classifies as it was trained wherever it is used (outside the
repo, under other params): the model's own description wins. A difference from the current
params is reported (classify, serve) or refused (evaluate: strict), never silently used.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

from .config import Params, PromptParams

FORMAT = "guardrsft-model/1"
FILE = "guardrsft.json"


def describe(p: Params, thresholds: Optional[dict] = None) -> dict:
    """What a trained model needs to be used as trained (written into its folder). thresholds:
    the verdict thresholds evaluate applied (export passes them; params are not read here, so
    training does not depend on evaluate.*)."""
    t = thresholds
    return {
        "format": FORMAT, "base_model": p.model, "preset": p.preset,
        "prompt": dataclasses.asdict(p.prompt), "policies": dict(p.policies),
        "policy_info": dict(p.policy_info),  # examples, severity (docs/POLICIES.md)
        # greedy; an answer stops after its `Classification:` line (prompts.verdict_complete)
        "decoding": {"greedy": True, "max_new_tokens": p.max_new_tokens},
        "verdict": {"mode": p.prompt.mode, "final_line": "Classification: SAFE|UNSAFE",
                    "policy_lines": "<policy>: SAFE|UNSAFE" if p.prompt.mode == "joint" else None,
                    # UNSAFE when P(UNSAFE) at the verdict word >= the policy's threshold (guardrsft.scores)
                    **({"thresholds": {q: float(v) for q, v in t.items()}} if t else {})},
    }


def write(folder: str | Path, p: Params, thresholds: Optional[dict] = None) -> None:
    (Path(folder) / FILE).write_text(json.dumps(describe(p, thresholds), indent=2) + "\n")


def thresholds(folder: Optional[str | Path]) -> Optional[dict]:
    """The model's verdict thresholds {policy: float in [0, 1]}, or None (verdicts as written)."""
    d = read(folder)
    t = ((d or {}).get("verdict") or {}).get("thresholds")
    if t is None:
        return None
    ok = isinstance(t, dict) and all(q in d["policies"] and isinstance(v, (int, float)) and not isinstance(v, bool)
                                     and 0 <= v <= 1 for q, v in t.items())
    if not ok:
        raise ValueError(f"{Path(folder) / FILE}: verdict.thresholds must map the model's policies to numbers in "
                         f"[0, 1], got {t!r}; fix the file or retrain (`dvc repro train_rsft`)")
    return {q: float(v) for q, v in t.items()}


def read(folder: Optional[str | Path]) -> Optional[dict]:
    """The folder's description, or None (no folder, no file, or an older file without a prompt)."""
    if not folder or not Path(folder).is_dir() or not (Path(folder) / FILE).exists():
        return None
    try:
        d = json.loads((Path(folder) / FILE).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{Path(folder) / FILE}: not valid JSON ({e}); re-export the model") from None
    return d if isinstance(d, dict) and "prompt" in d and "policies" in d else None


def differences(p: Params, spec: dict) -> list[str]:
    """The keys where `spec` and params disagree (prompt.*, policies, max_new_tokens)."""
    out = []
    for k, v in spec["prompt"].items():
        if getattr(p.prompt, k, None) != v:
            out.append(f"prompt.{k}")
    same = list(spec["policies"].items()) == list(p.policies.items()) if p.prompt.mode == "joint" else \
        dict(spec["policies"]) == dict(p.policies)  # a joint prompt and answer list the policies in order
    if not same:
        out.append("policies")
    budget = (spec.get("decoding") or {}).get("max_new_tokens")
    if budget is not None and budget != p.max_new_tokens:
        out.append("evaluate.max_new_tokens")
    return out


def apply(p: Params, folder: Optional[str | Path], strict: bool = False, where: str = "") -> Params:
    """Params with the prompt, policies and answer budget of the model in `folder` (if it
    describes itself). strict: a difference is an error naming the keys and the fix."""
    spec = read(folder)
    if spec is None:
        return p
    diff = differences(p, spec)
    if not diff:
        return p
    taxonomy = f" Its policies differ: {policy_diff(spec['policies'], p.policies)}." if "policies" in diff else ""
    if strict:
        raise ValueError(f"{Path(folder) / FILE}: the model was trained with other {', '.join(diff)} than "
                         f"{p.source}{' (' + where + ')' if where else ''}.{taxonomy} Evaluate it with the params it "
                         f"was trained with (its policies are listed in {FILE}), or retrain (`dvc repro`)")
    print(f"[guardrsft] {Path(folder) / FILE}: using the model's own {', '.join(diff)} "
          f"(they differ from {p.source}).{taxonomy}", file=sys.stderr)
    fields = {f.name for f in dataclasses.fields(PromptParams)}
    prompt = PromptParams(**{k: v for k, v in spec["prompt"].items() if k in fields})
    budget = (spec.get("decoding") or {}).get("max_new_tokens")
    evaluate = dataclasses.replace(p.evaluate, max_new_tokens=budget) if budget else p.evaluate
    return dataclasses.replace(p, prompt=prompt, policies=dict(spec["policies"]), evaluate=evaluate,
                               policy_info=dict(spec.get("policy_info") or {}))


def policy_diff(model: dict, params: dict) -> str:
    """How the model's taxonomy differs from params': ids only one side has, reworded definitions."""
    only_model = [q for q in model if q not in params]
    only_params = [q for q in params if q not in model]
    reworded = [q for q in model if q in params and " ".join(model[q].split()) != " ".join(params[q].split())]
    parts = [f"the model's {', '.join(only_model)} {'is' if len(only_model) == 1 else 'are'} not in params"
             if only_model else "",
             f"params' {', '.join(only_params)} {'was' if len(only_params) == 1 else 'were'} never trained"
             if only_params else "",
             f"{', '.join(reworded)} reworded" if reworded else "",
             "the same ids in another order" if not (only_model or only_params or reworded) else ""]
    return f"model: {', '.join(model)}; params: {', '.join(params)} ({'; '.join(x for x in parts if x)})"
