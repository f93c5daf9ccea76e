"""The Ollama Modelfile, derived from the tokenizer's own chat template.

Training built every prompt with `tokenizer.apply_chat_template` (system + user, then the
assistant header). Rendering that template once with marker strings shows each piece the
model saw -- the system header, what comes between system and user turns, the assistant
header, the end of an assistant turn -- so the Ollama TEMPLATE reproduces the training prompt
byte for byte, for ChatML (SmolLM2), Llama-3 headers or any other single-turn template,
without a per-model table. Stop parameters are the special tokens that end the assistant's
turn or start a new one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .config import Params
from .gguf_export import ExportError
from .prompts import fill, policy_list, title

_S, _U, _A = "\x01SYSTEM\x01", "\x01USER\x01", "\x01ASSISTANT\x01"


@dataclass
class ChatParts:
    system_prefix: str  # before the system text
    between: str  # after the system text, up to the user text
    no_system: str  # what the template writes before the user text when there is no system turn
    assistant_header: str  # after the user text: the generation prompt
    assistant_end: str  # after an assistant answer
    stops: list


def _render(tok, msgs, gen: bool) -> str:
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def _specials_in(tok, text: str) -> list[str]:
    specials = sorted({t for t in tok.all_special_tokens} |
                      {a.content for a in tok.added_tokens_decoder.values() if a.special}, key=len, reverse=True)
    found, i = [], 0
    while i < len(text):
        hit = next((s for s in specials if s and text.startswith(s, i)), None)
        if hit:
            found.append(hit)
            i += len(hit)
        else:
            i += 1
    return found


def chat_parts(tok, add_bos: bool) -> ChatParts:
    """Split the tokenizer's chat template into the pieces a single-turn prompt is made of."""
    if not tok.chat_template:
        raise ExportError("the tokenizer has no chat template, so no Ollama TEMPLATE can match training")
    full = _render(tok, [{"role": "system", "content": _S}, {"role": "user", "content": _U}], True)
    answered = _render(tok, [{"role": "system", "content": _S}, {"role": "user", "content": _U},
                             {"role": "assistant", "content": _A}], False)
    bare = _render(tok, [{"role": "user", "content": _U}], True)
    if full.count(_S) != 1 or full.count(_U) != 1 or answered.count(_A) != 1 or bare.count(_U) != 1:
        raise ExportError("the chat template does not place system, user and assistant texts once each; "
                          "write the Ollama TEMPLATE by hand")
    prefix, rest = full.split(_S)
    between, header = rest.split(_U)
    no_system = bare.split(_U)[0]
    end = answered.split(_A)[1]
    if add_bos and tok.bos_token:
        # llama.cpp adds BOS itself when the GGUF says add_bos_token: don't write it twice
        prefix = prefix.removeprefix(tok.bos_token)
        no_system = no_system.removeprefix(tok.bos_token)
    stops = []
    for s in _specials_in(tok, end) + [tok.eos_token] + _specials_in(tok, between):
        if s and s not in stops:
            stops.append(s)
    if any('"' in s for s in stops):
        raise ExportError(f"a stop token contains a double quote, which a Modelfile cannot quote: {stops}")
    if not stops:
        raise ExportError("no special token ends an assistant turn in the chat template: Ollama would never stop")
    return ChatParts(prefix, between, no_system, header, end, stops)


def _quote(text: str, what: str) -> str:
    if '"""' in text:
        raise ExportError(f'the {what} contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


def ollama_template(parts: ChatParts) -> str:
    """A Go template (Ollama's legacy .System/.Prompt/.Response form) rendering the training prompt."""
    for piece in (parts.system_prefix, parts.between, parts.no_system, parts.assistant_header, parts.assistant_end):
        if "{{" in piece:
            raise ExportError("the chat template's literal text contains `{{`; write the Ollama TEMPLATE by hand")
    return (f"{{{{ if .System }}}}{parts.system_prefix}{{{{ .System }}}}{parts.between}"
            f"{{{{ else }}}}{parts.no_system}{{{{ end }}}}{{{{ .Prompt }}}}{parts.assistant_header}"
            f"{{{{ .Response }}}}{parts.assistant_end}")


def modelfile(p: Params, tok, gguf_name: str, add_bos: bool, name: Optional[str] = None,
              license_text: Optional[str] = None) -> tuple[str, ChatParts]:
    """The Modelfile text (FROM the GGUF beside it) and the template pieces it used. `name`: the
    published model name (for `ollama create`); `license_text`: the base's licence, which Ollama
    shows with `ollama show --license` (LICENSE directive)."""
    parts = chat_parts(tok, add_bos)
    system = " ".join(p.prompt.system.split())  # exactly what prompts.messages sends
    joint = p.prompt.mode == "joint"
    example = fill(p.prompt.template, policy=title(next(iter(p.policies))), definition="<the policy's definition>",
                   policies=policy_list(p.policies), policy_names=", ".join(p.policies), content="<the text to check>")
    lines = [
        f"# Ollama Modelfile written by guardrsft export: `ollama create {(name or p.export.name).lower()} -f Modelfile`",
        "# Single-turn classifier. The user message must follow the training template, "
        + ("every policy in one request" if joint else "one policy per"),
        "# " + ("" if joint else "request ") + "(`guardrsft classify` builds it for you), e.g.:",
        *[f"#   {x}".rstrip() for x in example.splitlines()],
        f"# Policies ({len(p.policies)}, params.yaml `policies` at training): {', '.join(p.policies)}",
        *[f"#   {q}{' (' + p.policy_info[q]['severity'] + ')' if p.policy_info.get(q, {}).get('severity') else ''}: "
          f"{' '.join(d.split())}" for q, d in p.policies.items()],
        f"FROM ./{gguf_name}",
        *([f"LICENSE {_quote(license_text.strip(), 'licence text')}"] if license_text else []),
        f"TEMPLATE {_quote(ollama_template(parts), 'chat template')}",
        f"SYSTEM {_quote(system, 'system prompt')}",
        *[f'PARAMETER stop "{s}"' for s in parts.stops],
        "PARAMETER temperature 0",  # greedy, as evaluation decodes
        f"PARAMETER num_predict {p.max_new_tokens}",
    ]
    return "\n".join(lines) + "\n", parts
