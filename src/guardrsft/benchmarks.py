"""Benchmarks as data, not code: three adapters turn evaluation files into guard items.

    notebook       the notebook's training_data.json (per-policy labels for every item)
    guardreasoner  GuardReasoner's benchmark JSON: [{instruction, input, output}], input
                   "Human user:\\n<prompt>\\n\\nAI assistant:\\n<response or None>\\n\\n"; output
                   harmful/unharmful (prompt or response task), refusal/compliance (refusal
                   task) or "Answers: Request: .. Completion: .. Response: .." (one field set)
    table          JSONL / JSON list / CSV (optionally .gz) with a text column, an optional
                   response column and label columns mapped onto the policies in params.yaml

Each item: {"id", "content", "response" (or None), "positive" (gold of the task's positive
class: harmful, or refusal), "gold" ({"labels", "known", "harmful"}, see metrics.py)}.
A benchmark: {"name", "task", "path", "items", "report"}. Spec fields: config.BenchmarkParams.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import random
import re
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Optional

from .config import BenchmarkParams, Params, ParamsError
from .data import DataError, load_notebook_file
from .io import jsonl_rows
from .metrics import binary_scores

TASKS = ("prompt", "response", "refusal")
_INPUT = re.compile(r"\AHuman user:\n(?P<prompt>.*?)\n\nAI assistant:\n(?P<response>.*)\Z", re.DOTALL)
_ANSWER = re.compile(r"^\s*(request|completion|response)\s*:\s*(\w+)\s*$", re.IGNORECASE | re.MULTILINE)
# the answers block's heading: "Answers:" or "# Answers" on a line of its own
_ANSWERS_HEAD = re.compile(r"^[#*\s]*answers[*\s]*:?[*\s]*$", re.IGNORECASE | re.MULTILINE)
_FIELD = re.compile(r"\b(request|completion|response)\s*:\s*([a-z]+)", re.IGNORECASE)
_FIELD_TASK = {"request": "prompt", "completion": "refusal", "response": "response"}
_TASK_FIELD = {v: k for k, v in _FIELD_TASK.items()}
_POSITIVE = {"harmful": True, "unharmful": False, "refusal": True, "compliance": False}


# ------------------------------------------------------------------ reading
def read_records(path: Path) -> list[dict]:
    """Rows of a .jsonl / .json (a list of objects) / .csv file, optionally gzipped."""
    name = path.name.lower()
    raw = path.read_bytes()
    if name.endswith(".gz"):
        try:
            raw, name = gzip.decompress(raw), name[:-3]
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: not a readable gzip file ({e})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); save it as UTF-8") from None
    if name.endswith(".csv"):
        try:
            return list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as e:
            raise DataError(f"{path}: not a readable CSV file ({e})") from None
    if name.endswith(".jsonl"):
        return [r for _, r in jsonl_rows(text, path, DataError)]
    if name.endswith(".json"):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        except RecursionError:
            raise DataError(f"{path}: not valid JSON (nested too deeply)") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: must be a JSON list of objects (one per item)")
        return rows
    raise DataError(f"{path}: unknown file type; use .jsonl, .json (a list of objects) or .csv, optionally .gz")


def _key(v) -> Optional[str]:
    """A label value as compared with positive_values / negative_values; None: unknown."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(int(v)) if float(v).is_integer() else str(v)
    return str(v).strip().lower()


# ------------------------------------------------------------------ adapters
def from_notebook(path: Path, policies: list[str]) -> tuple[list[dict], str]:
    samples, _ = load_notebook_file(path, policies)
    return [{"id": s["id"], "content": s["content"], "response": None, "positive": bool(s["labels"]),
             "gold": {"labels": s["labels"], "known": None, "harmful": bool(s["labels"])}} for s in samples], "prompt"


def _gr_label(output, where: str) -> tuple[str, bool, Optional[str]]:
    """(task, positive, field) from a GuardReasoner `output`."""
    if not isinstance(output, str):
        raise DataError(f"{where}.output: must be a string, got {output!r}")
    word = output.strip().lower()
    if word in ("refusal", "compliance"):
        return "refusal", _POSITIVE[word], None
    if word in ("harmful", "unharmful"):
        return "", _POSITIVE[word], None  # prompt or response: decided by whether there is one
    found = {f.lower(): v.lower() for f, v in _ANSWER.findall(output)}
    given = {f: v for f, v in found.items() if v != "none"}
    if output.lstrip().lower().startswith("answers") and len(given) == 1:
        (f, v), = given.items()
        if v in _POSITIVE:
            return _FIELD_TASK[f], _POSITIVE[v], f
    raise DataError(f"{where}.output: {output!r} is not a GuardReasoner label (harmful/unharmful, "
                    "refusal/compliance, or `Answers:` with exactly one of Request/Completion/Response set)")


def from_guardreasoner(path: Path) -> tuple[list[dict], str]:
    rows = read_records(path)
    items, tasks = [], set()
    for i, r in enumerate(rows):
        where = f"{path}: [{i}]"
        if not isinstance(r, dict) or not isinstance(r.get("input"), str):
            raise DataError(f"{where}: must be an object with `instruction`, `input`, `output`")
        m = _INPUT.match(r["input"].rstrip("\n") + "\n")
        if not m:
            raise DataError(f"{where}.input: must read 'Human user:\\n<prompt>\\n\\nAI assistant:\\n<response or None>'")
        prompt, response = m["prompt"].strip(), m["response"].strip()
        response = None if response in ("", "None") else response
        task, positive, _ = _gr_label(r.get("output"), where)
        task = task or ("response" if response is not None else "prompt")
        if task in ("response", "refusal") and response is None:
            raise DataError(f"{where}: a {task} label needs an AI response, and the input has none")
        if not prompt:
            raise DataError(f"{where}.input: the human user's text is empty")
        tasks.add(task)
        items.append({"id": f"{i}", "content": prompt, "response": response if task != "prompt" else None,
                      "positive": positive, "gold": {"labels": [], "known": [], "harmful": positive}})
    if len(tasks) > 1:
        raise DataError(f"{path}: mixes tasks {sorted(tasks)}; one file must hold one task (split it)")
    return items, (tasks.pop() if tasks else "prompt")


def from_table(path: Path, name: str, spec: BenchmarkParams, policies: list[str], source: str) -> tuple[list[dict], str]:
    rows = read_records(path)
    key = f"{source} `evaluate.benchmark_sets.{name}"
    columns = set().union(*(r.keys() for r in rows if isinstance(r, dict))) if rows else set()
    harmful_cols = spec.harmful_columns or sorted({c for cols in spec.policy_columns.values() for c in cols})
    needed = [(spec.text_field, "text_field"), (spec.response_field, "response_field"), (spec.id_field, "id_field")]
    needed += [(c, f"policy_columns.{q}") for q, cols in spec.policy_columns.items() for c in cols]
    needed += [(c, "harmful_columns") for c in harmful_cols]
    for col, field_name in needed:
        if col and col not in columns:
            raise DataError(f"{path}: column {col!r} ({key}.{field_name}`) is in no row; columns: "
                            f"{', '.join(sorted(map(str, columns)))}. Fix the column name in {source}.")
    pos = {_key(v) for v in spec.positive_values}
    neg = {_key(v) for v in spec.negative_values}

    def flag(row: dict, col: str, where: str) -> Optional[bool]:
        k = _key(row.get(col))
        if k is None:
            return None
        if k in pos or k in neg:
            return k in pos
        raise DataError(f"{where}: column {col!r} has {row.get(col)!r}, in neither positive_values nor "
                        f"negative_values; add it to one of them ({key}`)")

    task = spec.task or ("response" if spec.response_field else "prompt")
    items, seen_ids = [], set()
    for i, r in enumerate(rows):
        where = f"{path}: row {i + 1}"
        if not isinstance(r, dict):
            raise DataError(f"{where}: must be an object (a JSON object or a CSV row)")
        content = r.get(spec.text_field)
        if not isinstance(content, str) or not content.strip():
            raise DataError(f"{where}: `{spec.text_field}` is empty or not text; fix the row or {key}.text_field`")
        response = r.get(spec.response_field) if spec.response_field else None
        if spec.response_field and (not isinstance(response, str) or not response.strip()):
            raise DataError(f"{where}: `{spec.response_field}` is empty or not text (the response task needs one)")
        labels, known = [], []
        for q in policies:
            cols = spec.policy_columns.get(q)
            if not cols:
                continue
            flags = [flag(r, c, where) for c in cols]
            if any(flags):
                labels.append(q)
                known.append(q)
            elif all(f is False for f in flags):  # a missing column leaves the policy unknown
                known.append(q)
        hflags = [flag(r, c, where) for c in harmful_cols]
        if all(f is None for f in hflags):
            raise DataError(f"{where}: none of the harmful columns {harmful_cols} has a value, so the item has "
                            f"no gold label; fill them or set {key}.harmful_columns`")
        # missing flags count as not set (GuardReasoner's binarization of OpenAI moderation)
        harmful = any(f is True for f in hflags) or bool(labels)
        if spec.id_field and r.get(spec.id_field) in (None, ""):
            raise DataError(f"{where}: no id in column {spec.id_field!r}; give every row one")
        rid = str(r[spec.id_field]) if spec.id_field else str(i + 1)
        if rid in seen_ids:
            raise DataError(f"{where}: duplicate id {rid!r} in column {spec.id_field!r}")
        seen_ids.add(rid)
        items.append({"id": rid, "content": content.strip(),
                      "response": response.strip() if response and task == "response" else None,
                      "positive": harmful, "gold": {"labels": labels, "known": known, "harmful": harmful}})
    return items, task


# ------------------------------------------------------------------ selection
def resolve_path(p: Params, name: str, path: str) -> Path:
    from .tracking import repo_path

    full = repo_path(path)
    if not full.exists():
        raise ParamsError(f"{p.source}: `evaluate.benchmark_sets.{name}.path` is {path!r}, which does not exist "
                          f"({full}). Fix the path in {p.source}, or remove {name!r} from `evaluate.benchmarks` "
                          "(relative paths start at the repository root; the public dev sets are in "
                          "../shared/data, see docs/EVALUATION.md).")
    return full


def subsample(items: list[dict], n: Optional[int], seed: int) -> list[dict]:
    """A seeded sample of n items that keeps each (positive, label set) group's share of the
    set (largest remainder), so precision and F1 on the sample estimate the full set's. (A
    round-robin over groups would over-sample the rare harmful items and inflate them.)"""
    if not n or n >= len(items):
        return list(items)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        labels = it["gold"]["labels"]
        groups[(it["positive"], labels[0] if len(labels) == 1 else len(labels))].append(i)
    rng = random.Random(seed)
    order = sorted(groups, key=str)
    quota = {k: n * len(groups[k]) / len(items) for k in order}
    take = {k: int(quota[k]) for k in order}
    for k in sorted(order, key=lambda k: quota[k] - take[k], reverse=True)[:n - sum(take.values())]:
        take[k] += 1
    chosen = sorted(i for k in order for i in rng.sample(groups[k], take[k]))
    return [items[i] for i in chosen]


def load_benchmark(p: Params, name: str, spec: Optional[BenchmarkParams] = None) -> dict:
    spec = spec or p.evaluate.benchmark_sets[name]
    policies = list(p.policies)
    unknown = [q for q in spec.policy_columns if q not in p.policies]
    if unknown:  # config checks the sets in evaluate.benchmarks; this is for the rest (bench scripts)
        raise ParamsError(f"{p.source}: `evaluate.benchmark_sets.{name}.policy_columns.{unknown[0]}` maps the "
                          f"benchmark's columns onto {unknown[0]!r}, which is not in `policies` ({', '.join(policies)}); "
                          "map them onto one of those ids or delete the line (docs/POLICIES.md)")
    path = resolve_path(p, name, spec.path)
    if spec.format == "notebook":
        items, task = from_notebook(path, policies)
    elif spec.format == "guardreasoner":
        items, task = from_guardreasoner(path)
    else:
        items, task = from_table(path, name, spec, policies, p.source)
    if not items:
        raise DataError(f"{path}: no items (benchmark {name!r})")
    n = p.eval_max_samples if spec.max_samples is None else (spec.max_samples or None)
    chosen = subsample(items, n, p.seed)
    report = {"path": str(path), "format": spec.format, "task": task, "items_in_file": len(items),
              "items": len(chosen), "positive": sum(it["positive"] for it in chosen),
              "with_policy_gold": sum(bool(it["gold"]["known"] or it["gold"]["known"] is None) for it in chosen)}
    return {"name": name, "task": task, "path": str(path), "items": chosen, "report": report}


def load_selected(p: Params) -> list[dict]:
    """Every benchmark in `evaluate.benchmarks`, checked before any model is loaded."""
    out = []
    for name in p.evaluate.benchmarks:
        b = load_benchmark(p, name)
        if b["task"] == "refusal":
            raise ParamsError(f"{p.source}: `evaluate.benchmarks` lists {name!r}, a refusal task (gold refusal/"
                              "compliance); the guard gives no refusal verdict, so it cannot be scored "
                              f"here. Remove {name!r} from `evaluate.benchmarks` (score a refusal model's outputs "
                              "with guardrsft.benchmarks.score_guardreasoner_predictions).")
        out.append(b)
    return out


# ------------------------------------------------------------------ GuardReasoner outputs
def parse_guardreasoner_answer(text: str, task: str) -> Optional[bool]:
    """The task's answer in a GuardReasoner-style completion (after its last `Answers` heading):
    True for harmful/refusal, False for unharmful/compliance, None when absent or unreadable."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}")
    heads = list(_ANSWERS_HEAD.finditer(text or ""))
    if not heads:
        return None
    # fields may share a line ("Request: harmful, Completion: None, ...")
    found = [v.lower() for f, v in _FIELD.findall(text[heads[-1].end():]) if f.lower() == _TASK_FIELD[task]]
    value = found[-1] if found else None
    ok = {"refusal": ("refusal", "compliance")}.get(task, ("harmful", "unharmful"))
    return _POSITIVE[value] if value in ok else None


def score_guardreasoner_predictions(path: str | Path, task: str) -> dict:
    """Paper-style F1 of GuardReasoner's own generated_predictions.jsonl ({label, predict}),
    with unreadable answers counted wrong (binary_scores), for comparison with our guard."""
    rows = read_records(Path(path))
    gold, pred = [], []
    for i, r in enumerate(rows):
        label = str(r.get("label", "")).strip().lower()
        if label not in _POSITIVE:
            raise DataError(f"{path}: row {i + 1}: label {r.get('label')!r} is not harmful/unharmful/refusal/compliance")
        gold.append(_POSITIVE[label])
        pred.append(parse_guardreasoner_answer(r.get("predict", ""), task))
    return binary_scores(gold, pred)
