"""The `import` teacher: traces written elsewhere, matched to our samples by content.

Formats:
- the notebook's `training_data.json` (`samples` + `reasoning_traces` keyed
  `sample_{idx}_{policy}`): a per-policy trace for the same content and policy;
- GuardReasonerTrain rows (`instruction` / `input` "Human user:\\n...\\n\\nAI assistant:\\n..." /
  `output` "# Task 1 ... ## Reasoning Step k ... Answers: Request: harmful|unharmful ..."):
  a request-level verdict, used for a policy where it agrees with the gold label
  (unharmful -> SAFE for every policy; harmful -> UNSAFE for the sample's violated policies).
- GuardReasoner prediction rows (`prompt` = the 3-task instruction + that input, `label` = the
  benchmark's gold, `predict` = the model's 3-task reasoning + `Answers:`), as in the repo's
  data/test/{1B,3B,8B}/<benchmark>/generated_predictions.jsonl: see `_Predictions`.
From a local file or folder (.json / .jsonl, recursive), or a Hugging Face `datasets` id.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Optional

from .data import (TRACE_KEY, SAMPLE_KEYS, TOP_KEYS, TRACE_KEYS, DataError, content_id, normalize_label,
                   raise_errors, read_json_file, strip_classification, unknown_keys, unpaired_surrogate)
from .guard import render_content
from .io import jsonl_rows

_INPUT = re.compile(r"Human user:\s*(.*?)\s*(?:\n\s*AI assistant:|$)", re.DOTALL)
_REQUEST = re.compile(r"Request:\s*(harmful|unharmful)", re.IGNORECASE)
# both styles occur upstream: "## Reasoning Step 1\ntext" and "## Reasoning Step 1: text"
_STEP = re.compile(r"##\s*Reasoning Step\s*(\d+)\s*(?::|\n)\s*(.*?)(?=\n\s*#|\n---|$)", re.DOTALL)


def _rows_from_json(obj, where: str) -> list[dict]:
    if isinstance(obj, dict) and "samples" in obj:
        return [{"_notebook": obj, "_where": where}]
    if isinstance(obj, dict):  # {split_name: [rows]} as in GuardReasonerTrain's sample file
        rows = [r for v in obj.values() if isinstance(v, list) for r in v]
    elif isinstance(obj, list):
        rows = obj
    else:
        raise DataError(f"{where}: expected the notebook format, a list of rows or {{split: [rows]}}")
    if not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{where}: every row must be a JSON object")
    return rows


def load_rows(source: str) -> list[dict]:
    path = Path(source).expanduser()
    if path.exists():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl")) if path.is_dir() else [path]
        rows: list[dict] = []
        for f in files:
            if f.suffix != ".jsonl":
                rows += _rows_from_json(read_json_file(f), str(f))
                continue
            try:
                text = f.read_bytes().decode("utf-8-sig")
            except UnicodeDecodeError as e:
                raise DataError(f"{f}: not UTF-8 text ({e}); save it as UTF-8") from None
            for i, row in jsonl_rows(text, f, DataError):
                if not isinstance(row, dict):
                    raise DataError(f"{f}:{i}: not a JSON object")
                if "predict" in row:
                    row["_where"] = f"{f}:{i}"  # the model size is read from the path
                rows.append(row)
        return rows
    try:
        import datasets

        return list(datasets.load_dataset(source, split="train"))
    except Exception as e:  # offline, unknown id, gated: say what to do
        raise DataError(f"traces.import_source: {source!r} is neither a local file/folder nor a loadable `datasets` "
                        f"id ({type(e).__name__}: {str(e)[:200]}). Download it first or point at a local copy.") from None


def _grt(row: dict) -> Optional[tuple[str, str, str]]:
    """(prompt, SAFE|UNSAFE, reasoning) from a GuardReasonerTrain row, or None."""
    m, a = _INPUT.search(row.get("input") or ""), _REQUEST.search(row.get("output") or "")
    if not m or not a:
        return None
    task1 = (row["output"].split("# Task 2")[0])
    steps = [" ".join(t.split()) for _, t in _STEP.findall(task1)]
    if not steps:
        return None
    reasoning = "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, 1))
    return m.group(1).strip(), ("UNSAFE" if a.group(1).lower() == "harmful" else "SAFE"), reasoning


# the Answers block: "Answers: \nRequest: x\nCompletion: y\nResponse: z", "# Answers\n\nRequest: ..."
_ANSWERS_AT = re.compile(r"(?:^|\n)[#\s]*Answers\b", re.IGNORECASE)
_ANSWER = {t: re.compile(rf"{t}:\s*(harmful|unharmful|refusal|compliance|none)\b", re.IGNORECASE)
           for t in ("Request", "Completion", "Response")}
_GOLD_TASK = {"harmful": "request", "unharmful": "request", "refusal": "completion", "compliance": "completion"}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)B$", re.IGNORECASE)


def _steps(section: str) -> Optional[str]:
    # some 3B/8B outputs end a section with a dangling "The ground truth is" line
    section = re.split(r"\n\s*The ground truth is", section)[0]
    steps = [" ".join(t.split()) for _, t in _STEP.findall(section)]
    steps = [x for x in steps if x]
    return "\n".join(f"Step {i}: {x}" for i, x in enumerate(steps, 1)) if steps else None


def prediction_parts(prompt: str) -> Optional[tuple[str, Optional[str]]]:
    """(request, response or None when the AI assistant part is "None") of a GuardReasoner prompt."""
    if "Human user:\n" not in prompt:
        return None
    request, _, response = prompt.split("Human user:\n", 1)[1].partition("\n\nAI assistant:\n")
    request, response = request.strip(), response.strip()
    return (request, None if response in ("", "None") else response) if request else None


def prediction_content(prompt: str) -> Optional[str]:
    """The pool item's content for a GuardReasoner prompt: the request alone, or the exchange
    framed as the guard frames one (guard.render_content, as the builder frames BeaverTails)."""
    parts = prediction_parts(prompt)
    return None if parts is None else render_content({"content": parts[0], "response": parts[1]})


def parse_prediction(row: dict) -> Optional[dict]:
    """{content, exchange, answers {request, completion, response}, reasoning} from a prediction
    row, or None when the prompt or the output cannot be read. The reasoning is the steps of the
    task our guard's verdict stands for: Task 1 (the request) for a request alone, Task 3 (the
    response's harmfulness) for an exchange, as "Step k: ..." lines without the Answers."""
    parts = prediction_parts(row.get("prompt") or "")
    predict = row.get("predict") or ""
    at = list(_ANSWERS_AT.finditer(predict))
    if parts is None or not at:
        return None
    body, tail = predict[:at[-1].start()], predict[at[-1].start():]
    answers = {t.lower(): (m.group(1).lower() if (m := rx.search(tail)) else None) for t, rx in _ANSWER.items()}
    exchange = parts[1] is not None
    # the task headers ("# Task 3"), not their conclusions ("# Task 3 Conclusion: ...")
    header = {k: re.compile(rf"^[ \t]*#\s*Task {k}[ \t]*:?[ \t]*$", re.MULTILINE) for k in (2, 3)}
    if exchange and not header[3].search(body):
        return None
    task = header[3].split(body)[-1] if exchange else header[2].split(body)[0]
    reasoning = _steps(task)
    if reasoning is None:
        return None
    return {"content": prediction_content(row["prompt"]), "exchange": exchange, "answers": answers,
            "reasoning": reasoning}


def _size(where: str) -> float:
    """The model size named by a folder of the row's path (8B > 3B > 1B; none: 0)."""
    for part in reversed(Path(where.rsplit(":", 1)[0]).parts):
        if m := _SIZE.match(part):
            return float(m.group(1))
    return 0.0


class _Predictions:
    """GuardReasoner prediction rows -> one request-level trace per content.

    Gold: `harmful`/`unharmful` is the request's harmfulness for a prompt-only row (AI
    assistant "None") and the RESPONSE's harmfulness for an exchange (HarmBenchResponse,
    XSTestReponseHarmful); `refusal`/`compliance` (XSTestResponseRefusal) is Task 2's and says
    nothing about harmfulness. The golds of every row with the same content are pooled; a trace
    is accepted only when its answers agree with each of them and a harmfulness gold exists
    for the task it stands for (a refusal-set trace thus counts only where the harm set gives
    that exchange's gold). Among accepted traces the largest model wins (8B, 3B, 1B), then
    the first in file order."""

    def __init__(self):
        self.gold: dict[str, dict[str, set]] = {}
        self.cands: list[tuple[float, int, str, dict]] = []
        self.counts = Counter()

    def add(self, row: dict) -> bool:
        where = row.get("_where", "a datasets row")
        label = str(row.get("label", "")).strip().lower()
        if label not in _GOLD_TASK:
            raise DataError(f"{where}: label {row.get('label')!r} is not harmful/unharmful/refusal/compliance; "
                            "is this a GuardReasoner generated_predictions.jsonl?")
        parts = prediction_parts(row.get("prompt") or "")
        if parts is None:
            self.counts["unparsed"] += 1
            return False
        cid = content_id(prediction_content(row["prompt"]))
        task = "response" if parts[1] is not None and _GOLD_TASK[label] == "request" else _GOLD_TASK[label]
        self.gold.setdefault(cid, {}).setdefault(task, set()).add(label)
        self.counts["rows"] += 1
        p = parse_prediction(row)
        if p is None:
            self.counts["unparsed"] += 1
            return False
        self.cands.append((-_size(where), len(self.cands), cid, p))
        return True

    def traces(self) -> dict[str, tuple[str, str]]:
        """{content id: (SAFE|UNSAFE, reasoning)} for the accepted traces."""
        out: dict[str, tuple[str, str]] = {}
        for _, _, cid, p in sorted(self.cands, key=lambda c: c[:2]):
            gold, want = self.gold[cid], ("response" if p["exchange"] else "request")
            if any(len(v) > 1 for v in gold.values()):
                self.counts["conflicting_gold"] += 1
                continue
            if want not in gold:
                self.counts["no_harmfulness_gold"] += 1
                continue
            if any(p["answers"][t] != next(iter(v)) for t, v in gold.items()):
                self.counts["disagrees_with_gold"] += 1
                continue
            if cid in out:
                self.counts["accepted_smaller_or_later"] += 1
                continue
            self.counts["accepted"] += 1
            out[cid] = ("UNSAFE" if next(iter(gold[want])) == "harmful" else "SAFE", p["reasoning"])
        return out


def _notebook_traces(nb: dict, where: str) -> dict[tuple[str, str], dict]:
    """{(content id, policy): trace} of a notebook-format file. Its labels are not checked
    against the traces: a trace that disagrees with our gold is counted as rejected (lookup).
    Every problem of the file is listed in one DataError."""
    errors = unknown_keys("top level", nb, TOP_KEYS)
    samples = nb["samples"] if isinstance(nb.get("samples"), list) else []
    if not isinstance(nb.get("samples"), list):
        errors.append("`samples` must be a list")
    for i, s in enumerate(samples):
        if not isinstance(s, dict) or not isinstance(s.get("content"), str) or unpaired_surrogate(s["content"]):
            errors.append(f"samples[{i}]: must be an object whose `content` is text")
        else:
            errors += unknown_keys(f"samples[{i}]", s, SAMPLE_KEYS)
    traces = nb.get("reasoning_traces")
    if not isinstance(traces, (dict, type(None))):
        errors.append("`reasoning_traces` must be an object keyed sample_{idx}_{policy}")
    out = {}
    for key, t in (traces if isinstance(traces, dict) else {}).items():
        at = f"reasoning_traces[{key!r}]"
        m = TRACE_KEY.fullmatch(key)
        if not m or int(m.group(1)) >= len(samples):
            errors.append(f"{at}: does not name a sample (sample_{{idx}}_{{policy}}, idx < {len(samples)})")
            continue
        if not isinstance(t, dict) or not isinstance(t.get("reasoning"), str) or not t["reasoning"].strip():
            errors.append(f"{at}.reasoning: missing or empty")
            continue
        errors += unknown_keys(at, t, TRACE_KEYS)
        try:
            label = normalize_label(t.get("classification"), f"{at}.classification")
        except DataError as e:
            errors.append(str(e))
            continue
        s = samples[int(m.group(1))]
        if isinstance(s, dict) and isinstance(s.get("content"), str):
            out[(content_id(s["content"]), m.group(2))] = {"reasoning": strip_classification(t["reasoning"]),
                                                           "classification": label}
    raise_errors(where, errors)
    return out


class Importer:
    def __init__(self, source: str):
        self.per_policy: dict[tuple[str, str], dict] = {}
        self.request: dict[str, tuple[str, str]] = {}
        skipped = 0
        preds = _Predictions()
        for row in load_rows(source):
            if isinstance(row, dict) and "predict" in row and "prompt" in row:
                skipped += not preds.add(row)
            elif "_notebook" in row:
                self.per_policy.update(_notebook_traces(row["_notebook"], row["_where"]))
            else:
                g = _grt(row)
                if g is None:
                    skipped += 1
                    continue
                self.request[content_id(g[0])] = (g[1], g[2])
        for cid, t in preds.traces().items():
            self.request.setdefault(cid, t)  # a GuardReasonerTrain trace for the same text stays
        self.skipped_rows = skipped  # reported in metrics, not silently dropped
        self.prediction_counts = dict(sorted(preds.counts.items()))  # rows read, accepted, why not

    def lookup(self, content: str, policy: str, gold: str, labels: list[str]) -> Optional[dict]:
        """{"status": "accepted", "reasoning"} / {"status": "rejected", "reason"} / None (no trace)."""
        cid = content_id(content)
        t = self.per_policy.get((cid, policy))
        if t is not None:
            if t["classification"] != gold:
                return {"status": "rejected", "reason": "wrong_label"}
            return {"status": "accepted", "reasoning": t["reasoning"]}
        r = self.request.get(cid)
        if r is None:
            return None
        verdict, reasoning = r
        if verdict == "SAFE":
            return ({"status": "accepted", "reasoning": reasoning} if gold == "SAFE"
                    else {"status": "rejected", "reason": "wrong_label"})
        # harmful request: it explains this policy only if the sample violates it
        return {"status": "accepted", "reasoning": reasoning} if gold == "UNSAFE" else None
