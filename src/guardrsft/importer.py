"""The `import` teacher: traces written elsewhere, matched to our samples by content.

Formats:
- the notebook's `training_data.json` (`samples` + `reasoning_traces` keyed
  `sample_{idx}_{policy}`): a per-policy trace for the same content and policy;
- GuardReasonerTrain rows (`instruction` / `input` "Human user:\\n...\\n\\nAI assistant:\\n..." /
  `output` "# Task 1 ... ## Reasoning Step k ... Answers: Request: harmful|unharmful ..."):
  a request-level verdict, used for a policy where it agrees with the gold label
  (unharmful -> SAFE for every policy; harmful -> UNSAFE for the sample's violated policies).
From a local file or folder (.json / .jsonl), or a Hugging Face `datasets` id.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from .data import DataError, content_id, normalize_label, strip_classification

_INPUT = re.compile(r"Human user:\s*(.*?)\s*(?:\n\s*AI assistant:|$)", re.DOTALL)
_REQUEST = re.compile(r"Request:\s*(harmful|unharmful)", re.IGNORECASE)
# both styles occur upstream: "## Reasoning Step 1\ntext" and "## Reasoning Step 1: text"
_STEP = re.compile(r"##\s*Reasoning Step\s*(\d+)\s*(?::|\n)\s*(.*?)(?=\n\s*#|\n---|$)", re.DOTALL)


def _rows_from_json(obj, where: str) -> list[dict]:
    if isinstance(obj, dict) and "samples" in obj:
        return [{"_notebook": obj, "_where": where}]
    if isinstance(obj, dict):  # {split_name: [rows]} as in GuardReasonerTrain's sample file
        return [r for v in obj.values() if isinstance(v, list) for r in v]
    if isinstance(obj, list):
        return obj
    raise DataError(f"{where}: expected the notebook format, a list of rows or {{split: [rows]}}")


def load_rows(source: str) -> list[dict]:
    path = Path(source).expanduser()
    if path.exists():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl")) if path.is_dir() else [path]
        rows: list[dict] = []
        for f in files:
            text = f.read_text()
            if f.suffix == ".jsonl":
                rows += [json.loads(x) for x in text.splitlines() if x.strip()]
            else:
                rows += _rows_from_json(json.loads(text), str(f))
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


class Importer:
    def __init__(self, source: str):
        self.per_policy: dict[tuple[str, str], dict] = {}
        self.request: dict[str, tuple[str, str]] = {}
        skipped = 0
        for row in load_rows(source):
            if "_notebook" in row:
                nb = row["_notebook"]
                for key, t in (nb.get("reasoning_traces") or {}).items():
                    m = re.match(r"^sample_(\d+)_([a-z_]+)$", key)
                    if not m or int(m.group(1)) >= len(nb["samples"]):
                        raise DataError(f"{row['_where']}: reasoning_traces[{key!r}] does not name a sample")
                    content = nb["samples"][int(m.group(1))]["content"]
                    self.per_policy[(content_id(content), m.group(2))] = {
                        "reasoning": strip_classification(t["reasoning"]),
                        "classification": normalize_label(t.get("classification"), f"{row['_where']}: {key}")}
            else:
                g = _grt(row)
                if g is None:
                    skipped += 1
                    continue
                self.request[content_id(g[0])] = (g[1], g[2])
        self.skipped_rows = skipped  # reported in metrics, not silently dropped

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
