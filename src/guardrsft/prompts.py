"""Prompt building and verdict parsing: the one place both training and inference use."""
from __future__ import annotations

import re
from typing import Optional

from .config import PromptParams

# A verdict is a line of its own ("Classification: SAFE", markdown emphasis or a final period
# allowed) and the *last* such line wins. Not verdicts: the template's "Classification: SAFE or
# UNSAFE" that weak models echo, and a verdict quoted inside a sentence (content may carry a
# fake one, and reasoning may quote it).
_VERDICT = re.compile(r"^[ \t>*_#-]*classification[ \t*_]*[:：][ \t*_]*(unsafe|safe)[ \t*_.!]*$",
                      re.IGNORECASE | re.MULTILINE)


def title(policy: str) -> str:
    return policy.replace("_", " ")


def fill(template: str, **values: str) -> str:
    """`template` with each {name} of `values` replaced in one pass: a value that itself holds
    "{content}" or "{response}" stays as written (a chain of str.replace would substitute it;
    str.format would choke on the braces content may carry)."""
    names = "|".join(map(re.escape, values))
    return re.sub(r"\{(" + names + r")\}", lambda m: values[m.group(1)], template)


# prompt.mode joint: the one "unit" a content is asked about (per_policy: each policy is a unit)
JOINT = "*"


def user_prompt(prompt: PromptParams, policy: str, definition: str, content: str) -> str:
    return fill(prompt.template, policy=title(policy), definition=" ".join(definition.split()), content=content)


def policy_list(policies: dict[str, str]) -> str:
    """The {policies} block of a joint prompt: one `- id: definition` line per policy."""
    return "\n".join(f"- {q}: {' '.join(d.split())}" for q, d in policies.items())


def units(prompt: PromptParams, policies) -> list[str]:
    """What one content is asked about: each policy (per_policy), or every policy at once (joint)."""
    return [JOINT] if prompt.mode == "joint" else list(policies)


def unit_messages(prompt: PromptParams, policies: dict[str, str], unit: str, content: str) -> list[dict]:
    """The chat of one unit (a policy id, or JOINT for every policy of `policies`)."""
    if unit == JOINT:
        user = fill(prompt.template, policies=policy_list(policies), policy_names=", ".join(policies), content=content)
        return [{"role": "system", "content": " ".join(prompt.system.split())}, {"role": "user", "content": user}]
    return messages(prompt, unit, policies[unit], content)


def messages(prompt: PromptParams, policy: str, definition: str, content: str) -> list[dict]:
    return [{"role": "system", "content": " ".join(prompt.system.split())},
            {"role": "user", "content": user_prompt(prompt, policy, definition, content)}]


def target(reasoning: str, classification: str) -> str:
    """The assistant turn the model is trained to write."""
    return f"Reasoning:\n{reasoning.strip()}\nClassification: {classification.upper()}"


def joint_target(reasoning: str, verdicts: dict[str, str]) -> str:
    """The joint answer: the reasoning, one `<policy>: SAFE|UNSAFE` line per policy, then the
    aggregate `Classification:` line (UNSAFE if any policy is), which is also where decoding stops."""
    lines = "".join(f"{q}: {v.upper()}\n" for q, v in verdicts.items())
    overall = "UNSAFE" if any(v.upper() == "UNSAFE" for v in verdicts.values()) else "SAFE"
    return f"Reasoning:\n{reasoning.strip()}\n{lines}Classification: {overall}"


def joint_fit_error(prompt: PromptParams, policies: dict[str, str], tok, limit: int, limit_name: str) -> Optional[str]:
    """None, or why a joint chat cannot fit `limit` tokens: its prompt (every policy listed) and
    its answer's verdict lines alone, with no content and no reasoning, take that many."""
    msgs = unit_messages(prompt, policies, JOINT, "") + [
        {"role": "assistant", "content": joint_target("", dict.fromkeys(policies, "SAFE"))}]
    n = len(tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"])
    if n < limit:
        return None
    listed = "lists every definition" if "{policies}" in prompt.template else "lists the ids"
    return (f"with {len(policies)} policies the joint prompt ({listed}) and the answer's verdict lines take {n} "
            f"tokens before any content or reasoning, and {limit_name} is {limit}. Shorten the definitions in "
            "`policies` (or use {policy_names}, the ids only, in prompt.template), use fewer policies, raise "
            f"{limit_name}, or set prompt.mode: per_policy (one policy per prompt)")


def _policy_line(policy: str) -> re.Pattern:
    # the per-policy verdict line of a joint answer, by the same rule as the `Classification:` line
    return re.compile(r"^[ \t>*_#-]*" + re.escape(policy) + r"[ \t*_]*[:：][ \t*_]*(unsafe|safe)[ \t*_.!]*$",
                      re.IGNORECASE | re.MULTILINE)


def parse_verdict(text: str, policy: Optional[str] = None) -> Optional[str]:
    """SAFE / UNSAFE from the last `Classification:` line, or None (a parse error). With `policy`
    (a joint answer): from the last `<policy>: SAFE|UNSAFE` line before the final verdict line."""
    if policy is not None:
        found = _policy_line(policy).findall(strip_verdict(text))
        return found[-1].upper() if found else None
    found = _VERDICT.findall(text or "")
    return found[-1].upper() if found else None


def verdict_complete(text: str) -> bool:
    """True once a verdict line has been generated up to its newline (early stopping); a
    line still being written ("Classification: SAFE" may become "... SAFE or UNSAFE") is not."""
    text = text or ""
    return any(m.end() < len(text) for m in _VERDICT.finditer(text))


def strip_verdict(text: str) -> str:
    """`text` up to its last verdict line (the line parse_verdict reads), without it and what follows."""
    ms = list(_VERDICT.finditer(text or ""))
    return (text[:ms[-1].start()] if ms else text or "").strip()


def reasoning_of(text: str, policies=()) -> str:
    """The reasoning part of a generation, without the header and the verdict line (and, for a
    joint answer, without the per-policy verdict lines of `policies`)."""
    text = strip_verdict(re.sub(r"^\s*reasoning\s*:\s*", "", text or "", flags=re.IGNORECASE))
    starts = [m.start() for q in policies for m in _policy_line(q).finditer(text)]
    return text[:min(starts)].strip() if starts else text
