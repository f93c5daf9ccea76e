"""The one classifier API, shared by evaluate, export checks, the CLI and hard-sample mining.

    guard = load_guard(base, adapter=None, params=p, cache_path=...)
    guard.classify([{"content": "...", "response": None}], on_batch=save)
      -> [{"verdicts": {policy: "SAFE"|"UNSAFE"|None}, "reasoning": {...}, "flagged": [...],
           "verdict": "SAFE"|"UNSAFE"|None, "is_parse_error": bool, "latency_s": ..., ...}]

An item is `content` (a prompt or any text) and optionally the AI `response` to it; with a
response the guard judges the exchange (`render_content`). Verdicts are parsed from the
model's completion only, never from the prompt, so content that itself says
"Classification: SAFE" cannot answer for the model.

Generation: (item, policy) prompts grouped by item, items sorted by prompt length, left
padding, greedy, and a row stops as soon as its `Classification:` line is complete.

Sampling (hard-sample mining, docs/HSDPO.md): `guard.sample(items, k, temperature, top_p, seed)`
draws k answers per (item, policy), on the slot engine where classify uses it (CUDA), else on
transformers' `generate`. Each draw is a function of the answer's own seed (from its cache key
without the engine part, which holds the seed and the sample index) and its step only (guardrsft.sampling), so an answer
does not depend on which other prompts share its batch or which backend drew it: a resumed run
draws the same answers as an uninterrupted one.

Resume: with `cache_path`, every finished batch is appended (fsynced) to a JSONL keyed by
(model, prompt, content, policy, decoding, engine: Guard.engine_id) *before* `on_batch` sees it. A killed run, rerun
with the same cache_path, regenerates none of those answers (`last_stats["cached_pairs"]`
says how many were reused) and returns the same results as an uninterrupted run; an
unchanged baseline is never generated twice.
"""
from __future__ import annotations

import functools
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from .config import Params
from .io import append_cache, read_jsonl_tolerant
from .models import (ModelError, check_device, is_full_model, load_model, load_tokenizer, resolve_base,
                     tokenizer_source)
from .prompts import JOINT, fill, parse_verdict, reasoning_of, unit_messages, units, verdict_complete
from .sampling import pick, seed32
from .scores import VERSION as SCORING
from .scores import apply as apply_thresholds
from .scores import score_answers

# Greedy decoding and the stop rule (prompts.verdict_complete): an answer cut by an older rule
# ("Classification: SAFE o" under v1) is not reused.
DECODING = "greedy/stop-at-verdict-line-v2"

# prompts per call of the static backend, in batches (its slots): more keeps the slots full longer
STATIC_CHUNK = 8
SENTINEL = "\x00GUARDRSFT-CONTENT\x00"  # stands for the content when a chat prompt is rendered around it

# Sampled answers: temperature, then top-p (nucleus), each draw a hash of (row seed, step) through
# the inverse CDF (guardrsft.sampling); part of each sample's cache key (v1: per-row generators).
SAMPLING = "sample/temperature-top_p/hash-inverse-cdf-v2"

# How an exchange is shown to the per-policy prompt's {content}. Part of the cache key
# through the rendered text; changing it re-generates.
RESPONSE_FRAME = "User request:\n{content}\n\nAI response (the part to judge):\n{response}"


class ContextError(ModelError):
    """Items whose prompt and answer exceed the model's context; .items: their indices."""

    def __init__(self, items: list[int], msg: str):
        super().__init__(msg)
        self.items = items


def render_content(item: dict) -> str:
    """The text the guard judges: the content, or the request/response exchange."""
    if item.get("response") is None:
        return item["content"]
    return fill(RESPONSE_FRAME, content=item["content"], response=item["response"])


def check_items(items: list[dict]) -> None:
    for i, it in enumerate(items):
        if not isinstance(it, dict):
            raise ValueError(f"item {i}: must be a dict with `content` (and optionally `response`)")
        content = it.get("content")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"item {i}: `content` must be a non-empty string")
        resp = it.get("response")
        if resp is not None and (not isinstance(resp, str) or not resp.strip()):
            raise ValueError(f"item {i}: `response` must be a non-empty string, or None/absent for content alone")


def build_result(item: dict, raw: dict[str, str], seconds: float = 0.0, new_tokens: int = 0,
                 joint: bool = False, listed: Optional[list[str]] = None, scores: Optional[dict] = None,
                 thresholds: Optional[dict] = None) -> dict:
    """One item's result from its per-policy completions (the model's new text only); joint: each
    policy's entry of `raw` is the one joint answer, read at that policy's verdict line. `listed`:
    every policy the joint answer has a line for (default: raw's), cut from the reasoning even
    when only some were asked for. scores: P(UNSAFE) per policy (guardrsft.scores; None: no
    parsable verdict); thresholds: the model's, verdict = score >= threshold (the written
    verdicts are kept in `verdicts_as_written`)."""
    written = {q: parse_verdict(t, q if joint else None) for q, t in raw.items()}
    scores = {q: (scores or {}).get(q) for q in raw}
    verdicts = apply_thresholds(scores, thresholds, written) if thresholds else written
    cut = (listed or list(raw)) if joint else ()
    errors = [q for q, v in verdicts.items() if v is None]
    flagged = [q for q, v in verdicts.items() if v == "UNSAFE"]
    return {
        "content": item["content"], "response": item.get("response"),
        "verdicts": verdicts, "scores": scores, **({"verdicts_as_written": written} if thresholds else {}),
        "reasoning": {q: reasoning_of(t, cut) for q, t in raw.items()},
        "raw": dict(raw),
        "flagged": flagged, "parse_errors": errors, "is_parse_error": bool(errors),
        # any UNSAFE decides; otherwise one unparsed policy leaves the aggregate unknown
        "verdict": "UNSAFE" if flagged else (None if errors else "SAFE"),
        "latency_s": round(seconds, 4), "new_tokens": new_tokens,
    }


# The code that decides an answer's tokens, beyond DECODING's hand-bumped name: a change to
# any of these modules (not to their comments, docstrings or layout) misses the cache.
DECODING_SOURCES = ("guard.py", "fastgen.py", "decode_attn.py", "sampling.py", "prompts.py", "models.py",
                    "vllm_backend.py", "gguf_export.py")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    import ast

    h = hashlib.sha256()
    for name in DECODING_SOURCES:
        tree = ast.parse((Path(__file__).parent / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):  # docstrings out: their edits change no answer
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        h.update(name.encode() + ast.dump(tree).encode())
    return h.hexdigest()[:16]


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "absent"


def _fingerprint(path: Optional[str]) -> str:
    if not path:
        return "none"
    p = Path(path)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else []
    h = hashlib.sha256(str(path).encode() if not files else b"")
    for f in files:
        # adapters are small: hash the bytes; a multi-GB base: its name, size and mtime
        st = f.stat()
        h.update(f.read_bytes() if st.st_size < 64 * 2**20 else f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


class Guard:
    def __init__(self, model, tokenizer, params: Params, fingerprint: str,
                 max_new_tokens: int, batch_size: int, cache_path: Optional[str] = None, engine=None,
                 thresholds: Optional[dict] = None):
        self.model, self.tok, self.p, self.engine = model, tokenizer, params, engine
        self.thresholds = thresholds  # the model's own (guardrsft.json); None: verdicts as written
        self.fingerprint, self.max_new_tokens, self.batch_size = fingerprint, max_new_tokens, batch_size
        self.cache_path = cache_path
        # "static": fastgen's compiled static-cache decoding (GPU); "plain": transformers' generate;
        # "vllm": a vllm_backend.VllmEngine (evaluate.backend: vllm; model is None then)
        self.backend = "vllm" if engine is not None else "static" \
            if getattr(model, "device", None) is not None and model.device.type == "cuda" else "plain"
        self.cache = {r["key"]: r for r in read_jsonl_tolerant(cache_path) if "key" in r} if cache_path else {}
        self.last_stats: dict = {}
        # strings the tokenizer turns into single control tokens wherever they appear
        self._shells: dict = {}  # policy -> chat prompt around the content (_shell)
        self._markup = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.content]

    # ------------------------------------------------------------------ internals
    @functools.cached_property
    def engine_id(self) -> list:
        """What computes the answer besides the weights and the prompt: the backend and its
        library versions, the dtype, the device (GPU model: kernels differ) and attention, and
        the decoding code (code_version). Part of every cache key."""
        import torch

        m = self.model
        cfg = getattr(self.engine if self.engine is not None else m, "config", None)
        dev = getattr(m, "device", None)
        gpu = torch.cuda.get_device_name(dev) if dev is not None and dev.type == "cuda" else None
        eng = [self.backend, torch.__version__, _version("transformers"), DECODING, code_version(),
               str(getattr(m, "dtype", None) or self.p.hw["dtype"]), dev.type if dev is not None else None, gpu,
               getattr(cfg, "_attn_implementation", None), bool(getattr(m, "is_loaded_in_4bit", False))]
        if self.backend == "vllm":
            eng += [_version("vllm"), type(self.engine).__name__]
        return eng

    def _key(self, text: str, policy: str, engine: bool = True) -> str:
        """The cache key of an answer; policy: a unit (prompts.units): a policy id, or JOINT (every
        policy, one answer). engine=False leaves out engine_id (a sample's seed comes from that
        key: the same draws on every backend and library version)."""
        what = self.p.policies if policy == JOINT else self.p.policies[policy]
        mode = [] if self.p.prompt.mode == "per_policy" else [self.p.prompt.mode]  # per_policy: seeds as before
        blob = json.dumps([self.fingerprint, self.p.prompt.version, self.p.prompt.system, self.p.prompt.template,
                           what, text, policy, self.max_new_tokens, DECODING, *mode]
                          + ([self.engine_id] if engine else []))
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def _prompt_ids(self, text: str, policy: str) -> list[int]:
        msgs = unit_messages(self.p.prompt, self.p.policies, policy, text)
        if not any(s in text for s in self._markup):
            return self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        # content carrying chat markup (`<|im_end|>` ...) must stay text, or it could close the
        # user turn and write a fake assistant answer: tokenize the content part literally
        head, tail = self._shell_parts(policy)
        enc = lambda s, **kw: self.tok(s, add_special_tokens=False, **kw)["input_ids"]  # noqa: E731
        return enc(head) + enc(text, split_special_tokens=True) + enc(tail)

    def _sample_key(self, text: str, policy: str, temperature: float, top_p: float, seed: int, j: int,
                    engine: bool = True) -> str:
        blob = json.dumps([self._key(text, policy, engine), SAMPLING, float(temperature), float(top_p), int(seed),
                           int(j)])
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def _checked(self, items: list[dict], policies: Optional[list[str]]) -> tuple[list[str], list[str]]:
        """The policies asked for (default: all; unknown ones refused) and each item's text."""
        policies = list(policies or self.p.policies)
        unknown = [q for q in policies if q not in self.p.policies]
        if unknown:
            raise ValueError(f"unknown policy {unknown[0]!r}; known: {', '.join(self.p.policies)}")
        check_items(items)
        return policies, [render_content(it) for it in items]

    def _prompt_ids_many(self, pairs: list[tuple[str, str]]) -> list[list[int]]:
        """_prompt_ids for many (text, policy) pairs: chat templates rendered here, then one
        batched call of the fast tokenizer (Rust, all cores) instead of one call per prompt:
        the same ids as apply_chat_template(tokenize=True), which renders and encodes the same
        way. Content carrying chat markup keeps the per-prompt path."""
        out: list = [None] * len(pairs)
        plain = [i for i, (text, _) in enumerate(pairs) if not any(s in text for s in self._markup)]
        rendered = []
        for text, q in (pairs[i] for i in plain):
            shell = self._shell(q)
            rendered.append(shell[0] + text + shell[1] if shell else self._render(q, text))
        if rendered:
            # the Rust tokenizer's own batch call: the same ids as the wrapper's __call__, without
            # its per-prompt conversion to Python dicts (a third of this function's time)
            bt = getattr(self.tok, "backend_tokenizer", None)
            if bt is not None:
                enc = getattr(bt, "encode_batch_fast", None) or bt.encode_batch
                batch = [e.ids for e in enc(rendered, add_special_tokens=False)]
            else:
                batch = self.tok(rendered, add_special_tokens=False)["input_ids"]
            for i, ids in zip(plain, batch):
                out[i] = ids
        for i, (text, q) in enumerate(pairs):
            if out[i] is None:
                out[i] = self._prompt_ids(text, q)
        return out

    def _shell(self, policy: str) -> Optional[tuple[str, str]]:
        """The rendered chat prompt of `policy` before and after the content, or None when the
        chat template does not insert content verbatim (a probe with edge whitespace and braces
        renders differently). Splicing content between them replaces one template rendering
        per prompt (a third of the host time of a 12,288-prompt evaluation) with a string join."""
        if policy not in self._shells:
            parts = self._shell_parts(policy)
            probe = " \n probe {policy} {content}\t\n"
            ok = len(parts) == 2 and self._render(policy, probe) == parts[0] + probe + parts[1]
            self._shells[policy] = (parts[0], parts[1]) if ok else None
        return self._shells[policy]

    def _render(self, policy: str, content: str) -> str:
        return self.tok.apply_chat_template(unit_messages(self.p.prompt, self.p.policies, policy, content),
                                            add_generation_prompt=True, tokenize=False)

    def _shell_parts(self, policy: str) -> list[str]:
        """The chat prompt of `policy` rendered around SENTINEL, split at it."""
        return self._render(policy, SENTINEL).split(SENTINEL)

    def _generate(self, prompts: list[list[int]], stream: Optional[Callable[[str], None]] = None,
                  sampling: Optional[tuple[list[int], float, float]] = None) -> tuple[list[str], list[int]]:
        """Backend hook: greedy completions (new text only) and new-token counts, one per prompt.
        sampling = (one 32-bit seed per prompt, temperature, top_p) draws instead."""
        if self.backend == "vllm":
            if sampling is not None:
                raise ModelError("Guard.sample draws seeded samples token by token (guardrsft.sampling) and the "
                                 "vllm backend is greedy only: load the guard with backend='auto' for sampling "
                                 "(HS-DPO mining and data.pseudo_label do, whatever evaluate.backend says)")
            texts, counts = self.engine.generate(prompts, self.max_new_tokens)
            if stream is not None:  # vLLM's offline API does not stream: the whole answer at once
                stream(texts[0])
            return texts, counts
        if self.backend == "static" and stream is None:
            from .fastgen import generate_static, supported

            if sampling is None or supported(self.model) is None:  # transformers' fallback: greedy only
                return generate_static(self.model, self.tok, prompts, self.max_new_tokens, rows=self.batch_size,
                                       sampling=sampling)
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        tok = self.tok
        width = max(len(x) for x in prompts)
        pad = tok.pad_token_id
        ids = torch.tensor([[pad] * (width - len(x)) + x for x in prompts])
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in prompts])
        dev = self.model.device
        ids, mask = ids.to(dev), mask.to(dev)

        class VerdictStop(StoppingCriteria):
            # per-row stop once the verdict line is complete: most of the budget is saved here
            def __call__(self, input_ids, scores, **kw):
                new = tok.batch_decode(input_ids[:, width:], skip_special_tokens=True)
                if stream is not None:
                    stream(new[0])
                return torch.tensor([verdict_complete(t) for t in new], device=input_ids.device)

        # sampling runs as greedy over logits that RowSampler reduced to its one drawn token
        # (the slot engine draws the same tokens: guardrsft.sampling)
        procs = LogitsProcessorList([row_sampler(*sampling, width=width, device=dev)]) if sampling else None
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=self.max_new_tokens, do_sample=False,
                temperature=None, top_p=None, top_k=None, pad_token_id=pad, logits_processor=procs,
                stopping_criteria=StoppingCriteriaList([VerdictStop()]))
        gen = out[:, width:]
        # finished rows are filled with pad (= eos for many models): count the rest
        counts = (gen != pad).sum(dim=1).tolist()
        return tok.batch_decode(gen, skip_special_tokens=True), counts

    def _prompts_per_call(self, stream=None) -> int:
        """Prompts handed to one _generate call: the static backend refills finished slots
        (continuous batching), so it gets several batches' worth at once."""
        return self.batch_size * (STATIC_CHUNK if self.backend in ("static", "vllm") and stream is None else 1)

    @property
    def config(self):
        """The model's transformers config (context length and the like), whichever backend."""
        return self.engine.config if self.engine is not None else self.model.config

    def _check_fits(self, ids: dict, todo: list, n_items: int) -> None:
        """Every prompt plus max_new_tokens must fit the context window: past it the slot engine
        fails with a traceback and transformers' generate silently runs past the positions the
        model was trained on. Refused before any generation (ContextError names the items)."""
        ctx = getattr(self.config, "max_position_embeddings", None)
        if not ctx:
            return
        over: dict[int, int] = {}
        for i, _, k in todo:
            if len(ids[k]) + self.max_new_tokens > ctx:
                over[i] = max(over.get(i, 0), len(ids[k]))
        if over:
            first = min(over)
            raise ContextError(sorted(over), f"{len(over)} of {n_items} items do not fit the model's {ctx}-token "
                               f"context with the prompt and {self.max_new_tokens} answer tokens (item {first}: a "
                               f"{over[first]}-token prompt). Shorten or drop them (`guardrsft classify-file` flags "
                               "them `oversized`), or lower max_new_tokens")

    def _result(self, item: dict, policies: list[str], keys: list[str]) -> dict:
        rows = [self.cache[k] for k in keys]
        joint = self.p.prompt.mode == "joint"
        raw = {q: rows[0]["raw"] for q in policies} if joint else {q: r["raw"] for q, r in zip(policies, rows)}
        sc = [r.get("scores") or {} for r in rows]
        scores = {q: sc[0].get(q) for q in policies} if joint else {q: s.get(q) for q, s in zip(policies, sc)}
        return build_result(item, raw, seconds=sum(r.get("seconds", 0.0) for r in rows),
                            new_tokens=sum(r.get("new_tokens", 0) for r in rows), joint=joint,
                            listed=list(self.p.policies), scores=scores, thresholds=self.thresholds)

    def _score_rows(self, rows: list[dict], prompts: list[list[int]], unit_of: list[str]) -> None:
        """Adds `scores` ({policy: P(UNSAFE) or None}, guardrsft.scores) to answer rows in place;
        nothing without a transformers model (the vllm backend: scores stay absent, None)."""
        if self.model is None or not rows:
            return
        joint = self.p.prompt.mode == "joint"
        pol = list(self.p.policies) if joint else [None]
        got = score_answers(self.model, self.tok, prompts, [r["raw"] for r in rows], pol, batch_size=self.batch_size)
        for r, s, u in zip(rows, got, unit_of):
            # only the scores found (a missing policy reads as None): cache rows stay short
            r["scores"] = {q: v for q, v in (s.items() if joint else [(u, s[None])]) if v is not None}
            r["scoring"] = SCORING

    def _unscored(self, keys: list[list[str]], texts: list[str], units_: list[str]) -> None:
        """Cached answers from before scores (or another scoring version): scored now, saved."""
        if self.model is None:
            return
        todo, seen = [], set()
        for i, ks in enumerate(keys):
            for u, k in zip(units_, ks):
                r = self.cache.get(k)
                if r is not None and r.get("scoring") != SCORING and k not in seen:
                    seen.add(k)
                    todo.append((i, u, k))
        if not todo:
            return
        rows = [dict(self.cache[k]) for _, _, k in todo]
        self._score_rows(rows, self._prompt_ids_many([(texts[i], u) for i, u, _ in todo]), [u for _, u, _ in todo])
        for r in rows:
            self.cache[r["key"]] = r
        if self.cache_path:
            append_cache(self.cache_path, rows)

    # ------------------------------------------------------------------ API
    def classify(self, items: list[dict], policies: Optional[list[str]] = None,
                 on_batch: Optional[Callable[[list[dict]], None]] = None, progress: bool = False,
                 stream: Optional[Callable[[str], None]] = None) -> list[dict]:
        """items: [{"content": str, "response": str|None}]; one result per item, in order.

        on_batch(results) receives each item's result exactly once, as soon as all its
        policies are answered (first the items found complete in the cache, then after
        every generated batch); each result carries "index" (its position in `items`).
        The answers are already in `cache_path` when it is called, so an exception raised
        by on_batch (or a kill) loses nothing."""
        policies, texts = self._checked(items, policies)
        us = units(self.p.prompt, policies)  # joint: one answer per item covers every policy
        t_start = time.time()
        missing: dict[int, int] = {}  # item index -> answers it still waits for
        waiting: dict[str, list[int]] = {}  # key -> items waiting for it (repeated texts: generated once)
        todo: list[tuple[int, str, str]] = []  # (first item index, unit, key)
        keys = [[self._key(text, q) for q in us] for text in texts]  # hashed once, reused below
        for i, text in enumerate(texts):
            for q, k in zip(us, keys[i]):
                if k not in self.cache:
                    if k not in waiting:
                        todo.append((i, q, k))
                        waiting[k] = []
                    waiting[k].append(i)
                    missing[i] = missing.get(i, 0) + 1
        ids = dict(zip([k for _, _, k in todo], self._prompt_ids_many([(texts[i], q) for i, q, _ in todo])))
        self._check_fits(ids, todo, len(items))
        # an item's prompts stay adjacent (it completes early, for on_batch), items by length
        longest: dict[int, int] = {}
        for i, _, k in todo:
            longest[i] = max(longest.get(i, 0), len(ids[k]))
        todo.sort(key=lambda t: (longest[t[0]], t[0], len(ids[t[2]])))
        n_pairs = len(items) * len(us)
        cached = n_pairs - sum(missing.values())
        if progress and cached and todo:
            print(f"  [classify] resuming: {cached}/{n_pairs} answers already in {self.cache_path}",
                  file=sys.stderr, flush=True)
        self._unscored(keys, texts, us)  # answers cached before scores get theirs (one forward pass)
        if on_batch:
            ready = [dict(self._result(items[i], policies, keys[i]), index=i)
                     for i in range(len(items)) if i not in missing]
            if ready:
                on_batch(ready)
        gen_seconds, new_tokens, batches = 0.0, 0, 0
        step = self._prompts_per_call(stream)  # answers are still saved (and on_batch called) per chunk
        for b in range(0, len(todo), step):
            chunk = todo[b:b + step]
            t0 = time.time()
            outs, counts = self._generate([ids[k] for _, _, k in chunk], stream=stream)
            dt = time.time() - t0
            gen_seconds += dt
            new_tokens += sum(counts)
            batches += 1
            rows = [{"key": k, "raw": t, "seconds": round(dt / len(chunk), 4), "new_tokens": n}
                    for (_, _, k), t, n in zip(chunk, outs, counts)]
            self._score_rows(rows, [ids[k] for _, _, k in chunk], [q for _, q, _ in chunk])
            for r in rows:
                self.cache[r["key"]] = r
            if self.cache_path:
                append_cache(self.cache_path, rows)  # before on_batch: a crash there loses nothing
            finished = []
            for _, _, k in chunk:
                for i in waiting[k]:
                    missing[i] -= 1
                    if missing[i] == 0:
                        finished.append(i)
            if progress:
                print(f"  [classify] {b + len(chunk)}/{len(todo)} new answers ({cached} of {n_pairs} from the cache)",
                      file=sys.stderr, flush=True)
            if on_batch and finished:
                on_batch([dict(self._result(items[i], policies, keys[i]), index=i) for i in finished])
        results = [self._result(it, policies, ks) for it, ks in zip(items, keys)]
        wall = time.time() - t_start
        self.last_stats = {
            "items": len(items), "pairs": n_pairs, "cached_pairs": cached, "generated_pairs": len(todo),
            "batches": batches, "generate_seconds": round(gen_seconds, 3), "wall_seconds": round(wall, 3),
            "new_tokens": new_tokens,
            "new_tokens_per_second": round(new_tokens / gen_seconds, 2) if gen_seconds else None,
            "items_per_second": round(len(items) / wall, 4) if wall and todo else None,
        }
        return results


    def sample(self, items: list[dict], k: int, temperature: float, top_p: float, seed: int,
               policies: Optional[list[str]] = None, progress: bool = False) -> list[dict]:
        """k sampled answers per (item, policy); one result per item, in order:
        {"content", "response", "samples": {policy: [{"index": j, "raw", "verdict", "is_parse_error",
        "reasoning", "new_tokens"} for j in range(k)]}}.

        Cached and resumable like classify: each answer is keyed by the classify key plus
        (SAMPLING, temperature, top_p, seed, j) and appended to `cache_path` after its batch."""
        if k < 1 or not 0 < temperature or not 0 < top_p <= 1:
            raise ValueError(f"sample: need k >= 1, temperature > 0 and 0 < top_p <= 1 (got {k}, {temperature}, {top_p})")
        if self.p.prompt.mode != "per_policy":
            raise ValueError("sample: draws per-policy answers (HS-DPO mining); this guard's prompt.mode is "
                             f"{self.p.prompt.mode}: use a per_policy model")
        policies, texts = self._checked(items, policies)
        t_start = time.time()
        keys = {(i, q, j): self._sample_key(texts[i], q, temperature, top_p, seed, j)
                for i in range(len(items)) for q in policies for j in range(k)}
        row_seeds = {keys[i, q, j]: seed32(self._sample_key(texts[i], q, temperature, top_p, seed, j, engine=False))
                     for i, q, j in keys}
        todo, seen = [], set()  # (item index, policy, key): each missing answer once
        for (i, q, j), key in keys.items():
            if key not in self.cache and key not in seen:
                seen.add(key)
                todo.append((i, q, key))
        ids = dict(zip([key for _, _, key in todo], self._prompt_ids_many([(texts[i], q) for i, q, _ in todo])))
        self._check_fits(ids, todo, len(items))
        todo.sort(key=lambda t: (len(ids[t[2]]), t[0]))
        cached = len(keys) - len(todo)
        gen_seconds, new_tokens = 0.0, 0
        step = self._prompts_per_call()
        for b in range(0, len(todo), step):
            chunk = todo[b:b + step]
            seeds = [row_seeds[key] for _, _, key in chunk]
            t0 = time.time()
            outs, counts = self._generate([ids[key] for _, _, key in chunk],
                                          sampling=(seeds, float(temperature), float(top_p)))
            dt = time.time() - t0
            gen_seconds += dt
            new_tokens += sum(counts)
            rows = [{"key": key, "raw": t, "seconds": round(dt / len(chunk), 4), "new_tokens": n}
                    for (_, _, key), t, n in zip(chunk, outs, counts)]
            for r in rows:
                self.cache[r["key"]] = r
            if self.cache_path:
                append_cache(self.cache_path, rows)
            if progress:
                print(f"  [sample] {b + len(chunk)}/{len(todo)} new answers ({cached} of {len(keys)} from the cache)",
                      file=sys.stderr, flush=True)
        results = []
        for i, it in enumerate(items):
            per = {}
            for q in policies:
                per[q] = []
                for j in range(k):
                    row = self.cache[keys[(i, q, j)]]
                    v = parse_verdict(row["raw"])
                    per[q].append({"index": j, "raw": row["raw"], "verdict": v, "is_parse_error": v is None,
                                   "reasoning": reasoning_of(row["raw"]), "new_tokens": row.get("new_tokens", 0)})
            results.append({"content": it["content"], "response": it.get("response"), "samples": per})
        self.last_stats = {"items": len(items), "answers": len(keys), "cached_answers": cached,
                           "generated_answers": len(todo), "generate_seconds": round(gen_seconds, 3),
                           "wall_seconds": round(time.time() - t_start, 3), "new_tokens": new_tokens}
        return results


def row_sampler(seeds: list[int], temperature: float, top_p: float, width: int, device=None):
    """A logits processor that draws each row's next token (guardrsft.sampling.pick: temperature,
    then top-p) and leaves only that token possible, so greedy decoding takes it. Row i's draws
    depend on seeds[i], its step (tokens after the `width` prompt columns) and its own logits
    only, never on the other rows: the slot engine draws the same tokens."""
    import torch
    from transformers import LogitsProcessor

    seeds_t = torch.tensor(seeds, dtype=torch.long, device=device)

    class RowSampler(LogitsProcessor):
        def __call__(self, input_ids, scores):
            steps = torch.full_like(seeds_t, input_ids.shape[1] - width)
            picks = pick(scores, seeds_t, steps, temperature, top_p)
            return torch.full_like(scores, float("-inf")).scatter(-1, picks[:, None], 0.0)

    return RowSampler()


def load_guard(base: str, adapter: Optional[str] = None, params: Optional[Params] = None,
               max_new_tokens: Optional[int] = None, batch_size: Optional[int] = None,
               cache_path: Optional[str] = None, merge: bool = True, backend: Optional[str] = None,
               strict: bool = False) -> Guard:
    """base: `embedded:NAME`, a Hub id or a local HF folder; adapter: a PEFT folder, a whole model
    trained by train.method full (used in place of the base), or None;
    backend: params' evaluate.backend when None (auto: the slot engine on CUDA, else transformers;
    vllm: guardrsft.vllm_backend). A model folder's own guardrsft.json (guardrsft.spec: prompt,
    policies, answer budget) wins over params; strict: a difference is an error instead of a note."""
    from . import spec
    from .config import load_params

    p = params or load_params()
    own = adapter or (base if Path(base).is_dir() else None)
    p = spec.apply(p, own, strict=strict)
    thresholds = spec.thresholds(own)
    backend = backend or p.evaluate.backend
    if backend not in ("auto", "vllm"):
        raise ValueError(f"load_guard: backend must be auto or vllm (got {backend!r})")
    if thresholds and backend == "vllm":
        raise ValueError(f"{Path(own) / spec.FILE}: the model decides by verdict thresholds, which need scores the "
                         "vllm backend does not give: load it with backend='auto' (evaluate.backend: auto)")
    check_device(p.hw["device"], p.preset)
    path = resolve_base(base)
    kw = dict(fingerprint=f"{_fingerprint(path)}:{_fingerprint(adapter)}", cache_path=cache_path,
              max_new_tokens=max_new_tokens or p.max_new_tokens, batch_size=batch_size or p.eval_batch_size,
              thresholds=thresholds)
    if adapter and is_full_model(adapter):  # train.method full: the folder is the whole model, no merge
        path, adapter = adapter, None
    if backend == "vllm":
        from .vllm_backend import VllmEngine, merged_folder, require_vllm

        require_vllm()  # before minutes of merging
        folder = merged_folder(path, adapter, p.hw["dtype"], kw["fingerprint"]) if adapter else path
        tok = load_tokenizer(folder, padding_side="left")
        return Guard(None, tok, p, engine=VllmEngine(folder, tok, p.hw["dtype"], p.seed), **kw)
    # left padding: generation appends on the right of every row
    tok = load_tokenizer(tokenizer_source(adapter, path), padding_side="left")
    hw = dict(p.hw, load_in_4bit=p.hw["load_in_4bit"] and not merge)
    model = load_model(path, hw)
    if adapter:
        from .models import attach_adapter

        model = attach_adapter(model, adapter)
        if merge:
            model = model.merge_and_unload()  # ~20% faster decoding than an attached adapter
    model.eval()
    return Guard(model, tok, p, **kw)
