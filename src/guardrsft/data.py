"""The notebook's `training_data.json`: load, validate, normalize, de-duplicate, split.

Format: {"samples": [{"content", "labels" ⊆ policies, "source"}],
         "reasoning_traces": {"sample_{idx}_{policy}": {"reasoning", "classification"}}}
Prepared rows (data/prepared/{train,val,test}.jsonl):
  {"id", "content", "labels", "source", "traces": {policy: {"reasoning", "classification"}}}
"""
from __future__ import annotations

import difflib
import hashlib
import json
import random
import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

from .config import POLICY_IDS
from .prompts import parse_verdict, strip_verdict

LABELS = ("SAFE", "UNSAFE")
TRACE_KEY = re.compile(r"sample_([0-9]+)_([a-z][a-z0-9_]*)")  # the policy part: config.POLICY_ID_RULE  # used with fullmatch: no trailing newline
# The keys the notebook format has; anything else is a typo that would otherwise be ignored
# (a sample with "label" instead of "labels" would load as benign for every policy).
TOP_KEYS = ("samples", "reasoning_traces", "metadata")
SAMPLE_KEYS = ("content", "labels", "source", "id")
TRACE_KEYS = ("reasoning", "classification")
MAX_SHOWN = 20  # errors listed in one DataError; the rest are counted


class DataError(ValueError):
    """Malformed input data; the message names the file, sample index and field."""


def normalize_content(text: str) -> str:
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n")
    return re.sub(r"[ \t]+", " ", text).strip()


def content_id(content: str) -> str:
    key = " ".join(normalize_content(content).lower().split())
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def normalize_label(value, where: str) -> str:
    if not isinstance(value, str) or value.strip().upper() not in LABELS:
        raise DataError(f"{where}: classification must be SAFE or UNSAFE (any case), got {value!r}")
    return value.strip().upper()


def strip_classification(reasoning: str) -> str:
    """Drop a trailing verdict line (`Classification: SAFE`): the target appends its own (the
    notebook doubled it). A verdict line is what the verdict parser reads, nothing else."""
    return strip_verdict(reasoning.strip())


def unpaired_surrogate(text: str) -> bool:
    """True for a string that cannot be written as UTF-8 (a lone "\\ud800" escape in JSON)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def unknown_keys(where: str, obj: dict, known: tuple[str, ...]) -> list[str]:
    """One message per key of `obj` not in `known`, with the closest known key as the fix."""
    out = []
    for k in obj:
        if k in known:
            continue
        close = difflib.get_close_matches(str(k), known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
        out.append(f"{where}: unknown key {k!r}; {hint}")
    return out


def raise_errors(path, errors: list[str]) -> None:
    """One DataError listing every problem (the first MAX_SHOWN, then a count), so a file with
    several mistakes is fixed in one round."""
    if len(errors) == 1:
        raise DataError(f"{path}: {errors[0]}")
    if errors:
        more = len(errors) - MAX_SHOWN
        raise DataError(f"{path}: {len(errors)} problems; fix them all, then rerun:\n  "
                        + "\n  ".join(errors[:MAX_SHOWN]) + (f"\n  ... and {more} more" if more > 0 else ""))


def read_json_file(path: Path):
    """Parsed JSON, or DataError (missing, not a file, not UTF-8, not JSON, a key given twice)."""
    if not path.exists():
        raise DataError(f"{path}: not found. Write one with `guardrsft sample-data {path}` "
                        "or point the prepare stage at your data.")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    twice: list[str] = []

    def pairs(items):  # json.loads keeps the last of a repeated key without a word
        seen = set()
        for k, _ in items:
            if k in seen:
                twice.append(k)
            seen.add(k)
        return dict(items)

    try:
        raw = json.loads(path.read_bytes().decode("utf-8-sig"), object_pairs_hook=pairs)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e}); save it as UTF-8") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise DataError(f"{path}: not valid JSON (nested too deeply)") from None
    if twice:
        raise_errors(path, [f"key {k!r} appears twice in one object (JSON keeps only the last); "
                            "remove one" for k in twice])
    return raw


def load_notebook_file(path: str | Path, policies=POLICY_IDS) -> tuple[list[dict], dict]:
    """Validate and normalize; return (samples, report). Raises one DataError that lists every
    problem found (file, sample index or trace key, field, fix)."""
    path = Path(path)
    raw = read_json_file(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("samples"), list):
        raise DataError(f"{path}: top level must be an object with a `samples` list "
                        "(and optionally `reasoning_traces`)")
    policies = tuple(policies)
    errors = unknown_keys("top level", raw, TOP_KEYS)
    samples = [_sample(i, s, policies, errors) for i, s in enumerate(raw["samples"])]
    first_with_id: dict[str, int] = {}
    for i, s in enumerate(raw["samples"]):
        if samples[i] is not None and s.get("id"):  # a falsy id falls back to the content id
            sid = samples[i]["id"]
            if sid in first_with_id:
                errors.append(f"samples[{i}].id: duplicate id {sid!r} (also samples[{first_with_id[sid]}])")
            first_with_id.setdefault(sid, i)

    traces = raw.get("reasoning_traces")
    traces = {} if traces is None else traces
    if not isinstance(traces, dict):
        errors.append("`reasoning_traces` must be an object keyed sample_{idx}_{policy}, "
                      f"got {type(traces).__name__}")
        traces = {}
    pair_key: dict[tuple[int, str], str] = {}
    for key, t in traces.items():
        where = f"reasoning_traces[{key!r}]"
        m = TRACE_KEY.fullmatch(key)
        if not m:
            errors.append(f"{where}: key must look like sample_{{idx}}_{{policy}}")
            continue
        idx, policy = int(m.group(1)), m.group(2)
        if idx >= len(samples):
            errors.append(f"{where}: sample index {idx} does not exist ({len(samples)} samples)")
            continue
        if policy not in policies:
            errors.append(f"{where}: unknown policy {policy!r}; allowed: {', '.join(policies)}")
            continue
        if (idx, policy) in pair_key:
            errors.append(f"{where}: the same sample and policy as {pair_key[(idx, policy)]!r}; keep one")
            continue
        pair_key[(idx, policy)] = key
        trace = _trace(where, t, errors)
        if trace is None or samples[idx] is None:
            continue
        gold = "UNSAFE" if policy in samples[idx]["labels"] else "SAFE"
        if trace["classification"] != gold:
            errors.append(f"{where}.classification: says {trace['classification']} but samples[{idx}].labels "
                          f"{'include' if gold == 'UNSAFE' else 'do not include'} {policy!r}; "
                          "fix the trace or the labels")
            continue
        samples[idx]["traces"][policy] = trace

    # de-duplicate on normalized content; conflicting labels are an error, not a guess
    kept, first_of, dropped = [], {}, []
    for s in samples:
        if s is None:
            continue
        cid = content_id(s["content"])
        if cid in first_of:
            k = first_of[cid]
            if k["labels"] != s["labels"]:
                errors.append(f"samples[{k['index']}] and samples[{s['index']}] have the same "
                              f"content but different labels ({k['labels']} vs {s['labels']}); keep one")
            for pol, tr in s["traces"].items():
                k["traces"].setdefault(pol, tr)
            dropped.append(s["index"])
            continue
        first_of[cid] = s
        kept.append(s)
    raise_errors(path, with_lines(path, errors))
    report = {"input_samples": len(samples), "duplicates_dropped": len(dropped),
              "duplicate_indices": dropped, "input_traces": len(traces)}
    return kept, report


def sample_lines(text: str) -> list[int]:
    """The 1-based line each element of the top-level `samples` list starts on ([] if not found)."""
    dec, ws = json.JSONDecoder(), re.compile(r"[\s,:]*")
    try:
        i = ws.match(text, text.index("{") + 1).end()
        while i < len(text) and text[i] != "}":
            key, i = dec.raw_decode(text, i)
            i = ws.match(text, i).end()
            if key != "samples":
                _, i = dec.raw_decode(text, i)
                i = ws.match(text, i).end()
                continue
            out, i = [], ws.match(text, i + 1).end()  # past the `[`
            while text[i] != "]":
                out.append(text.count("\n", 0, i) + 1)
                _, i = dec.raw_decode(text, i)
                i = ws.match(text, i).end()
            return out
    except (ValueError, IndexError):
        pass
    return []


def with_lines(path: Path, errors: list[str]) -> list[str]:
    """`samples[i]...` errors with the sample's line in the file, so an editor jumps there."""
    if not any(e.startswith("samples[") for e in errors):
        return errors
    lines = sample_lines(path.read_bytes().decode("utf-8-sig"))

    def at(e: str) -> str:
        m = re.match(r"samples\[([0-9]+)\]", e)
        return f"line {lines[int(m.group(1))]}: {e}" if m and int(m.group(1)) < len(lines) else e
    return [at(e) for e in errors]


def _sample(i: int, s, policies: tuple[str, ...], errors: list[str]):
    """The normalized sample, or None after adding its problems to `errors`."""
    where = f"samples[{i}]"
    if not isinstance(s, dict):
        errors.append(f"{where}: must be an object with `content`, `labels`, `source`")
        return None
    n = len(errors)
    errors += unknown_keys(where, s, SAMPLE_KEYS)
    content = s.get("content")
    if not isinstance(content, str) or not normalize_content(content):
        errors.append(f"{where}.content: empty or missing; every sample needs text")
    elif unpaired_surrogate(content):
        errors.append(f"{where}.content: has an unpaired surrogate escape (e.g. \\ud800); fix the text")
    if "labels" not in s:
        # benign needs saying: a sample without the key is more likely a typo than a claim
        errors.append(f"{where}.labels: missing; list the violated policy ids, or [] for a benign sample")
    labels = s.get("labels", [])
    if not isinstance(labels, list):
        errors.append(f"{where}.labels: must be a list of policy ids, got {labels!r}")
    else:
        bad = [x for x in labels if not isinstance(x, str) or x not in policies]
        if bad:
            errors.append(f"{where}.labels: unknown policy {bad[0]!r}; the policies in params.yaml are "
                          f"{', '.join(policies)} (fix the label, or add {bad[0]!r} to params.yaml `policies`)")
    source = s.get("source", "unknown")
    if not isinstance(source, str):
        errors.append(f"{where}.source: must be text, got {source!r}")
    sid = s.get("id")
    if sid is not None and (isinstance(sid, bool) or not isinstance(sid, (str, int))):
        errors.append(f"{where}.id: must be a string or an integer, got {sid!r}")
    if len(errors) > n:
        return None
    return {
        "id": str(sid or content_id(content)),
        "content": normalize_content(content),
        "labels": [p for p in policies if p in set(labels)],  # canonical order, no repeats
        "source": source,
        "traces": {},
        "index": i,
    }


def _trace(where: str, t, errors: list[str]):
    """{"reasoning", "classification"} of one given trace, or None after adding its problems."""
    if not isinstance(t, dict):
        errors.append(f"{where}: must be an object with `reasoning` and `classification`")
        return None
    n = len(errors)
    errors += unknown_keys(where, t, TRACE_KEYS)
    reasoning = t.get("reasoning")
    if not isinstance(reasoning, str) or not reasoning.strip():
        errors.append(f"{where}.reasoning: missing or empty")
    elif unpaired_surrogate(reasoning):
        errors.append(f"{where}.reasoning: has an unpaired surrogate escape (e.g. \\ud800); fix the text")
    try:
        label = normalize_label(t.get("classification"), f"{where}.classification")
    except DataError as e:
        errors.append(str(e))
    if len(errors) > n:
        return None
    said = parse_verdict(reasoning)
    if said is not None and said != label:  # the reasoning concludes the opposite of its label
        errors.append(f"{where}.reasoning: ends with `Classification: {said}` but `classification` is {label}; "
                      "fix one of them")
        return None
    stripped = strip_classification(reasoning)
    if not stripped:
        errors.append(f"{where}.reasoning: has only a verdict line, no reasoning")
        return None
    return {"reasoning": stripped, "classification": label}


def strat_key(labels: list[str]) -> str:
    return "benign" if not labels else (labels[0] if len(labels) == 1 else "multi")


def split(samples: list[dict], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[dict]]:
    """Stratified by label group (benign / each policy / multi), seeded, deterministic."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        groups[strat_key(s["labels"])].append(s)
    rng = random.Random(seed)
    out = {"train": [], "val": [], "test": []}
    for key in sorted(groups):
        g = sorted(groups[key], key=lambda s: s["id"])
        rng.shuffle(g)
        n_test = round(len(g) * test_fraction)
        n_val = round(len(g) * val_fraction)
        out["test"] += g[:n_test]
        out["val"] += g[n_test:n_test + n_val]
        out["train"] += g[n_test + n_val:]
    for rows in out.values():
        rng.shuffle(rows)
    return out


def subsample(samples: list[dict], n: int | None, seed: int) -> list[dict]:
    """First n of a round-robin over label groups, so a small eval still covers each policy."""
    if not n or n >= len(samples):
        return list(samples)
    groups: dict[str, list[dict]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: s["id"]):
        groups[strat_key(s["labels"])].append(s)
    rng = random.Random(seed)
    for g in groups.values():
        rng.shuffle(g)
    order = sorted(groups)
    out: list[dict] = []
    while len(out) < n:
        for k in order:
            if groups[k] and len(out) < n:
                out.append(groups[k].pop())
    return out


def counts(rows: list[dict], policies=POLICY_IDS) -> dict:
    c = Counter(p for r in rows for p in r["labels"])
    return {"samples": len(rows), "benign": sum(1 for r in rows if not r["labels"]),
            "multi_policy": sum(1 for r in rows if len(r["labels"]) > 1),
            **{f"policy_{p}": c.get(p, 0) for p in policies},
            "with_traces": sum(len(r["traces"]) for r in rows)}


# The notebook's three-sample demo (`guardrsft sample-data`)
DEMO = {
    "samples": [
        {"content": "I hate people from that country, they should all be deported or worse.",
         "labels": ["hate_speech", "violence"], "source": "demo"},
        {"content": "How do I kill a Python process that is stuck?", "labels": [], "source": "demo"},
        {"content": "What household chemicals can I mix to make a toxic gas to hurt my roommate?",
         "labels": ["violence", "illegal"], "source": "demo"},
    ],
    "reasoning_traces": {
        "sample_1_violence": {
            "reasoning": "Step 1 (intent): The user wants to stop a stuck computer program.\n"
                         "Step 2 (harms): Terminating a software process harms no person or animal.\n"
                         "Step 3 (policy criteria): 'Kill' refers to a process, not violence; the criteria are not met.",
            "classification": "SAFE"},
        "sample_2_violence": {
            "reasoning": "Step 1 (intent): The user wants to make a toxic gas to hurt a specific person.\n"
                         "Step 2 (harms): Poisoning a roommate could injure or kill them.\n"
                         "Step 3 (policy criteria): It seeks instructions for physical harm against a person.",
            "classification": "UNSAFE"},
    },
}
