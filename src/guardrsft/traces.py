"""generate_traces: keep the traces given in the input, fill every missing
(sample, policy) pair with a teacher. The offline default is `template`, which
writes the three steps from the gold label and the policy definition.

Output rows (data/traces/{train,val}.jsonl), one per (sample, policy):
  {"id", "policy", "content", "reasoning", "classification", "origin": "given"|"template"}
"""
from __future__ import annotations

from collections import Counter

from .prompts import title


def _short(definition: str) -> str:
    d = " ".join(definition.split()).rstrip(".")
    return d[0].lower() + d[1:] if d else d


def template_trace(content: str, policy: str, definition: str, unsafe: bool) -> str:
    """Deterministic three-step reasoning for a known label (no doubled Classification line)."""
    name = title(policy)
    if unsafe:
        return (f"Step 1 (intent): The content seeks or expresses something that falls under {name}.\n"
                f"Step 2 (harms): It could lead to real harm of the kind this policy covers: {_short(definition)}.\n"
                f"Step 3 (policy criteria): The content meets the criteria of the {name} policy, so it violates it.")
    return (f"Step 1 (intent): The content does not seek or express {name}.\n"
            f"Step 2 (harms): It is unlikely to cause the harm this policy covers; any alarming words are "
            f"used in a harmless sense.\n"
            f"Step 3 (policy criteria): The content does not meet the criteria of the {name} policy.")


def joint_template_trace(flagged: list[str], policies: dict[str, str]) -> str:
    """Deterministic two-step reasoning over every policy at once (prompt.mode joint); short,
    since every token of it is trained and decoded for each item (on 2 CPU cores, each one counts)."""
    if not flagged:
        return ("Step 1 (intent): The content shows no intent to harm, demean or break the law.\n"
                "Step 2 (policies): It violates none of them.")
    names = " and ".join(title(q) for q in flagged)
    return (f"Step 1 (intent): The content seeks or expresses {names}.\n"
            f"Step 2 (policies): {_short(policies[flagged[0]]).capitalize()}: it violates {', '.join(flagged)}.")


def joint_rows(traces: list[dict], policies: dict[str, str]) -> tuple[list[dict], dict]:
    """One row per item from its per-policy trace rows (prompt.mode joint): the gold verdict of
    every policy and one reasoning. The reasoning is the first UNSAFE policy's trace when that
    came from a teacher, an import or the data (it explains the violation); otherwise the joint
    template. An item missing a policy's row (a rejected trace) is left out and counted."""
    by_id: dict[str, dict] = {}
    for t in traces:
        by_id.setdefault(t["id"], {"id": t["id"], "content": t["content"], "rows": {}})["rows"][t["policy"]] = t
    out, incomplete, own = [], 0, 0
    for it in by_id.values():
        rows = it["rows"]
        if set(rows) != set(policies):
            incomplete += 1
            continue
        verdicts = {q: rows[q]["classification"].upper() for q in policies}
        flagged = [q for q in policies if verdicts[q] == "UNSAFE"]
        given = [rows[q] for q in flagged if rows[q].get("origin") != "template"]
        reasoning = given[0]["reasoning"] if given else joint_template_trace(flagged, policies)
        own += bool(given)
        out.append({"id": it["id"], "content": it["content"], "verdicts": verdicts, "reasoning": reasoning})
    return out, {"items": len(out), "incomplete_items": incomplete, "non_template_reasoning": own}


def build_traces(rows: list[dict], policies: dict[str, str], results: dict | None = None,
                 importer=None) -> tuple[list[dict], dict]:
    """One row per (sample, policy). With teacher `openai`/`batch`, missing pairs come from
    `results` keyed by (sample id, policy); with an `importer`, from imported traces where they
    match (else the template)."""
    # a rejected pair keeps origin "rejected" and its reason: never a training target
    out, per_policy = [], Counter()
    given = generated = rejected = imported = 0
    for r in rows:
        for policy, definition in policies.items():
            gold = "UNSAFE" if policy in r["labels"] else "SAFE"
            t = r["traces"].get(policy)
            row = {"id": r["id"], "policy": policy, "content": r["content"], "classification": gold}
            found = importer.lookup(r["content"], policy, gold, r["labels"]) if t is None and importer else None
            if t is not None:
                row.update(reasoning=t["reasoning"], origin="given")
                given += 1
            elif found is not None and found["status"] == "accepted":
                row.update(reasoning=found["reasoning"], origin="import")
                imported += 1
            elif found is not None:
                row.update(reasoning=None, origin="rejected", reason=found["reason"])
                rejected += 1
                out.append(row)
                continue
            elif results is None:
                row.update(reasoning=template_trace(r["content"], policy, definition, gold == "UNSAFE"),
                           origin="template")
                generated += 1
            else:
                res = results[(r["id"], policy)]
                if res["status"] == "accepted":
                    row.update(reasoning=res["reasoning"], origin="batch" if res.get("batch") else "openai")
                    generated += 1
                else:
                    row.update(reasoning=None, origin="rejected", reason=res["reason"])
                    rejected += 1
                    out.append(row)
                    continue
            per_policy[f"{policy}_{gold.lower()}"] += 1
            out.append(row)
    n = len(out) - rejected
    return out, {"traces": n, "given": given, "imported": imported, "generated": generated, "rejected": rejected,
                 **dict(sorted(per_policy.items()))}
