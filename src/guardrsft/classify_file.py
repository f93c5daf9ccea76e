"""Using an exported model: open it (merged folder or GGUF file), stream one answer, classify a JSONL file.

    guard = open_guard("models/gguf/guardrsft-Q8_0.gguf", params=p)
    summary = classify_file(guard, "in.jsonl", "out.jsonl")

classify_file writes exactly one output line per input line, in order. Lines that cannot be
classified are flagged with a `status` (empty, malformed, oversized), never dropped. Output is
appended and fsynced chunk by chunk; each line carries the hash of its input line, so a rerun
skips what is done (and refuses an output file written for another input).
"""
from __future__ import annotations

import difflib
import hashlib
import json
import sys
from pathlib import Path
from typing import Callable, Optional

from .config import Params
from .data import unpaired_surrogate
from .io import append_jsonl
from .models import ModelError, check_device

OK, PARSE_ERROR, EMPTY, MALFORMED, OVERSIZED = "ok", "parse_error", "empty", "malformed", "oversized"


def open_guard(model: str, params: Params, adapter: Optional[str] = None, batch_size: Optional[int] = None,
               cache_path: Optional[str] = None):
    """A Guard on a merged model folder (or base + adapter), or on a .gguf file; answers are
    cached in `cache_path` (JSONL) when given."""
    from .guard import Guard, load_guard

    if model.endswith(".gguf"):
        from .gguf_export import load_gguf

        if adapter:
            raise ModelError(f"--adapter cannot be used with a GGUF --model ({model}): the GGUF is already merged")
        check_device(params.hw["device"], params.preset)
        m, tok = load_gguf(model)
        if params.hw["device"] == "cuda":
            m.to("cuda")
        st = Path(model).stat()
        return Guard(m, tok, params, fingerprint=f"gguf:{Path(model).name}:{st.st_size}:{st.st_mtime_ns}",
                     max_new_tokens=params.max_new_tokens, batch_size=batch_size or params.eval_batch_size,
                     cache_path=cache_path)
    return load_guard(model, adapter=adapter, params=params, batch_size=batch_size, cache_path=cache_path)


class Stream:
    """Prints a growing decoded text as it grows (the guard calls it with the whole text so far)."""

    def __init__(self, write: Callable[[str], None]):
        self.write, self.shown = write, ""

    def __call__(self, text: str) -> None:
        text = text.rstrip("\ufffd")  # half a multi-byte character: wait for the rest
        if text.startswith(self.shown) and len(text) > len(self.shown):
            self.write(text[len(self.shown):])
            self.shown = text

    def finish(self, text: str) -> None:
        self(text)
        if not self.shown.endswith("\n"):
            self.write("\n")


# --------------------------------------------------------------------------- classify-file
def _sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def _parse(raw: bytes, max_chars: int) -> tuple[Optional[dict], Optional[str], str]:
    """(item, status, error) for one input line; item is None unless the line can be classified."""
    if not raw.strip():
        return None, EMPTY, "empty line"
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, MALFORMED, f"not valid JSON: {e}"
    except RecursionError:
        return None, MALFORMED, "not valid JSON: nested too deeply"
    if unpaired_surrogate(json.dumps(obj, ensure_ascii=False)):  # could be neither tokenized nor written back
        return None, MALFORMED, "an unpaired surrogate escape (e.g. \\ud800) is not text; fix the string"
    if not isinstance(obj, dict):
        return None, MALFORMED, 'each line must be a JSON object like {"content": "..."}'
    for k in obj:  # a misspelled "response" would be ignored, and the request judged alone
        close = difflib.get_close_matches(k, ("content", "response"), n=1, cutoff=0.8)
        if close and k != close[0]:
            return obj, MALFORMED, f"unknown key {k!r}; did you mean {close[0]!r}?"
    content, response = obj.get("content"), obj.get("response")
    if not isinstance(content, str) or (response is not None and not isinstance(response, str)):
        return obj, MALFORMED, "`content` (and `response`, if given) must be strings"
    if not content.strip() or (response is not None and not response.strip()):
        return obj, EMPTY, "`content` is empty" if not content.strip() else "`response` is empty"
    size = len(content) + len(response or "")
    if size > max_chars:
        return obj, OVERSIZED, f"{size} characters; the limit is --max-chars {max_chars}"
    return obj, None, ""


def setup_key(model: str, adapter: Optional[str], params: Params, policies: Optional[list[str]],
              max_chars: int) -> str:
    """Everything that decides a line's answer, known before the model is loaded: the model
    and adapter files, the policies asked for and their definitions, the prompt, the answer
    budget, --max-chars, and the engine (backend, device and GPU model, dtype, attention,
    library versions, the decoding code: guard.code_version)."""
    import torch

    from .guard import _fingerprint, _version, code_version
    from .models import resolve_base

    p = params
    if model.endswith(".gguf"):
        st = Path(model).stat()
        weights = f"gguf:{Path(model).name}:{st.st_size}:{st.st_mtime_ns}"
    else:
        weights = f"{_fingerprint(resolve_base(model))}:{_fingerprint(adapter)}"
    names = list(policies or p.policies)
    gpu = torch.cuda.get_device_name() if p.hw["device"] == "cuda" and torch.cuda.is_available() else None
    blob = json.dumps([weights, p.prompt.version, p.prompt.system, p.prompt.template,
                       [(q, p.policies.get(q)) for q in names], p.max_new_tokens, max_chars,
                       p.evaluate.backend, p.hw["device"], gpu, p.hw["dtype"], p.hw.get("attn_impl"),
                       p.hw.get("load_in_4bit"), torch.__version__, _version("transformers"), code_version()])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _done_lines(out: Path, hashes: list[str], setup: Optional[str] = None) -> tuple[list[dict], int]:
    """The rows already in `out` for this input and answered with this `setup` (see setup_key),
    and how many rows after them were answered with another setup: those are cut off to be
    redone, as is a torn last row (killed writer)."""
    if not out.exists():
        return [], 0
    data = out.read_bytes()
    keep = data[:data.rfind(b"\n") + 1]  # a last line without newline was never fsynced whole
    rows, end, stale = [], 0, 0
    for n, line in enumerate(keep.splitlines(keepends=True), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise ModelError(f"{out}:{n}: not valid JSON; this is not a classify-file output. "
                             "Delete it or choose another --out") from None
        if n > len(hashes) or row.get("line") != n or row.get("input_sha256") != hashes[n - 1]:
            raise ModelError(f"{out}:{n} does not belong to line {n} of this input (written for another "
                             "file?). Delete it or choose another --out")
        if stale or (setup is not None and row.get("setup") != setup):
            stale += 1  # another model, adapter, policy list, prompt or engine answered it
            continue
        rows.append(row)
        end += len(line)
    if end != len(data):
        with open(out, "r+b") as f:
            f.truncate(end)
    return rows, stale


def _too_long(guard, policies: list[str]) -> Callable[[str], Optional[str]]:
    """A check that the longest policy prompt plus the answer fits the model's context window."""
    from .prompts import unit_messages, units

    ctx = getattr(guard.config, "max_position_embeddings", None)
    if not ctx:
        return lambda text: None
    p = guard.p
    shell = max(len(guard.tok.apply_chat_template(unit_messages(p.prompt, p.policies, q, ""),
                                                  add_generation_prompt=True, tokenize=True, return_dict=False))
                for q in units(p.prompt, policies))
    room = ctx - shell - guard.max_new_tokens
    if room <= 0:  # no text can fit: one error, not one "too long" per line
        raise ValueError(f"the prompt for {len(policies)} policies takes {shell} tokens and the answer budget is "
                         f"{guard.max_new_tokens}: together more than the model's {ctx}-token context. Ask for fewer "
                         "policies (--policy), or use a model trained with shorter definitions or prompt.mode per_policy")

    def check(text: str) -> Optional[str]:
        n = len(guard.tok(text, add_special_tokens=False)["input_ids"])
        return f"{n} tokens; with the prompt and answer that exceeds the model's {ctx}-token context" \
            if n > room else None
    return check


def classify_file(open_model: Callable[[], object], in_path: str, out_path: str, policies: Optional[list[str]],
                  chunk: int = 8, max_chars: int = 8000, progress: bool = True, setup: Optional[str] = None) -> dict:
    """Classify every line of `in_path` into `out_path` (resuming); returns counts by status.

    `open_model` is called only when some line still needs the model. `setup` (setup_key) is
    stored in every row: a rerun reuses only the rows answered with the same setup."""
    src, out = Path(in_path), Path(out_path)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: input file not found")
    if out.resolve() == src.resolve():
        raise ModelError("--out must differ from the input file")
    with open(src, "rb") as f:
        lines = [raw.rstrip(b"\r\n") for raw in f]
    hashes = [_sha(r) for r in lines]
    done, stale = _done_lines(out, hashes, setup)
    counts: dict[str, int] = {}
    not_ok: list[int] = []
    for r in done:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        not_ok += [r["line"]] if r["status"] != OK else []
    if stale:
        print(f"[classify-file] {stale} lines of {out} were answered with another model, adapter, policy list, "
              "prompt, --max-chars or engine: redoing them", file=sys.stderr)
    if done and len(done) < len(lines):
        print(f"[classify-file] resuming: {len(done)}/{len(lines)} lines already in {out} (lines 1-{len(done)}, "
              "same setup) reused", file=sys.stderr)
    guard = too_long = None
    import typer

    bar = typer.progressbar(length=len(lines), label="classifying", file=sys.stderr) if progress else None
    try:
        if bar:
            bar.__enter__()
            bar.update(len(done))
        for start in range(len(done), len(lines), chunk):
            rows, todo = [], []
            for n in range(start + 1, min(start + chunk, len(lines)) + 1):
                obj, status, err = _parse(lines[n - 1], max_chars)
                row = {"line": n, "id": obj.get("id") if isinstance(obj, dict) else None,
                       "input_sha256": hashes[n - 1], "status": status, **({"setup": setup} if setup else {})}
                if status is None:
                    if guard is None:
                        guard = open_model()
                        policies = list(policies or guard.p.policies)
                        too_long = _too_long(guard, policies)
                    from .guard import render_content

                    why = too_long(render_content(obj))
                    if why:
                        row.update(status=OVERSIZED, error=why)
                    else:
                        todo.append((row, {"content": obj["content"], "response": obj.get("response")}))
                else:
                    row["error"] = err
                rows.append(row)
            if todo:
                from .guard import ContextError

                try:
                    results = guard.classify([it for _, it in todo], policies=policies)
                except ContextError as e:  # _too_long's estimate fitted, the exact prompt does not
                    for i in e.items:
                        todo[i][0].update(status=OVERSIZED, error=str(e))
                    todo = [t for i, t in enumerate(todo) if i not in set(e.items)]
                    results = guard.classify([it for _, it in todo], policies=policies) if todo else []
                for (row, _), res in zip(todo, results):
                    row.update(status=PARSE_ERROR if res["is_parse_error"] else OK,
                               **{k: res[k] for k in ("verdict", "flagged", "verdicts", "reasoning", "parse_errors")})
            append_jsonl(out, rows)
            for r in rows:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
                not_ok += [r["line"]] if r["status"] != OK else []
            if bar:
                bar.update(len(rows))
    finally:
        if bar:
            bar.__exit__(None, None, None)
    if not out.exists():  # an empty input still gets its (empty) output file
        append_jsonl(out, [])
    return {"lines": len(lines), "counts": counts, "not_ok_lines": not_ok, "out": str(out), "reused": len(done),
            "redone": stale,
            "all_ok": counts.get(OK, 0) == len(lines)}
