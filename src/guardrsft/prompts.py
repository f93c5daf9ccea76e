"""Prompt building and verdict parsing: the one place both training and inference use."""
from __future__ import annotations

import re
from typing import Optional

from .config import PromptParams

# The *last* classification line wins: reasoning may quote the word earlier.
_VERDICT = re.compile(r"classification\**\s*[:：]\s*\**\s*(unsafe|safe)\b", re.IGNORECASE)


def title(policy: str) -> str:
    return policy.replace("_", " ")


def user_prompt(prompt: PromptParams, policy: str, definition: str, content: str) -> str:
    # str.replace, not str.format: content may contain braces
    return (prompt.template.replace("{policy}", title(policy))
            .replace("{definition}", " ".join(definition.split()))
            .replace("{content}", content))


def messages(prompt: PromptParams, policy: str, definition: str, content: str) -> list[dict]:
    return [{"role": "system", "content": " ".join(prompt.system.split())},
            {"role": "user", "content": user_prompt(prompt, policy, definition, content)}]


def target(reasoning: str, classification: str) -> str:
    """The assistant turn the model is trained to write."""
    return f"Reasoning:\n{reasoning.strip()}\nClassification: {classification.upper()}"


def parse_verdict(text: str) -> Optional[str]:
    """SAFE / UNSAFE from the last `Classification:` line, or None (a parse error)."""
    found = _VERDICT.findall(text or "")
    return found[-1].upper() if found else None


def verdict_complete(text: str) -> bool:
    """True once a full classification line has been generated (early stopping)."""
    m = None
    for m in _VERDICT.finditer(text or ""):
        pass
    # "SAFE" right at the end of the text could still grow into another word: wait for one more char
    return m is not None and m.end() < len(text)


def reasoning_of(text: str) -> str:
    """The reasoning part of a generation, without the header and the verdict line."""
    text = re.sub(r"^\s*reasoning\s*:\s*", "", text or "", flags=re.IGNORECASE)
    ms = list(_VERDICT.finditer(text))
    return (text[:ms[-1].start()] if ms else text).strip()
