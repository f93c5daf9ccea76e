"""`evaluate.backend: vllm`: the guard's greedy generation through vLLM (`pip install vllm`, CUDA).

What is tested, and what is not: tests/test_vllm_backend.py runs this module against a stand-in
`vllm` package (tests/vllm_standin) whose `LLM.generate` is transformers' greedy `generate` on the
embedded model, so the prompt ids handed over, the cut at the verdict line, the token counts, the
merged-adapter folder and the errors are checked, and the verdicts and text are compared with the
guard's own `plain` backend. vLLM's engine itself has never run in this project: it cannot be
installed on the benchmark GPU (offline; vllm 0.33 pins torch 2.13, the device has 2.11) nor in CI
(no CUDA). The calls used are vLLM's documented offline API: `LLM(model=...)`,
`SamplingParams(temperature=0, max_tokens=...)`, `LLM.generate([TokensPrompt(...)], ...)`.

Why the output is cut here: the other backends stop a row as soon as its verdict line is complete
(`prompts.verdict_complete`), a check vLLM cannot run per token. vLLM decodes to end of turn (the
fine-tuned model ends its turn right after the verdict) and the completion is cut back to the
shortest token prefix that holds a complete verdict line, so the text, the parse and the cached
answers are what the other backends give for the same tokens.

Greedy only: HS-DPO mining's seeded samples come from guardrsft.sampling's own draw (a sample does
not depend on which backend drew it); vLLM draws its own, so mining refuses this backend.
"""
from __future__ import annotations

import hashlib
from typing import Optional

from .io import atomic_dir
from .models import ModelError, cache_dir, file_lock, save_merged
from .prompts import verdict_complete


def require_vllm():
    try:
        import vllm
    except ImportError:
        raise ModelError("evaluate.backend is `vllm` (params.yaml) but the vllm package is not installed: "
                         "`pip install vllm` on a CUDA machine, or set evaluate.backend: auto") from None
    return vllm


def merged_folder(base_path: str, adapter: str, dtype: str, fingerprint: str) -> str:
    """vLLM loads one plain model folder: the adapter merged into the base, once per (base, adapter,
    dtype) fingerprint, cached under the guardrsft cache (written atomically, under a lock)."""
    out = cache_dir() / "vllm" / hashlib.sha256(f"{fingerprint}:{dtype}".encode()).hexdigest()[:16]
    with file_lock(out.with_suffix(".lock")):
        if (out / "config.json").exists():
            return str(out)
        with atomic_dir(out) as tmp:
            save_merged(base_path, adapter, dtype, tmp)
    return str(out)


def cut_at_verdict(tok, token_ids: list[int]) -> tuple[str, int]:
    """The completion as the per-token stop rule would have ended it: the shortest prefix of
    token_ids whose text holds a complete verdict line (binary search: completeness only grows
    with the prefix), or all of it. Returns (text, tokens kept)."""
    text = lambda n: tok.decode(token_ids[:n], skip_special_tokens=True)  # noqa: E731
    if not verdict_complete(text(len(token_ids))):
        return text(len(token_ids)), len(token_ids)
    lo, hi = 1, len(token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if verdict_complete(text(mid)) else (mid + 1, hi)
    return text(lo), lo


class VllmEngine:
    """One vLLM instance for a model folder; generate() has the guard's backend contract."""

    def __init__(self, path: str, tok, dtype: str, seed: int, max_model_len: Optional[int] = None,
                 gpu_memory_utilization: float = 0.85):
        vllm = require_vllm()
        self.tok, self.path = tok, path
        kw = {"max_model_len": max_model_len} if max_model_len else {}
        self.llm = vllm.LLM(model=path, tokenizer=path, dtype=dtype, seed=seed,
                            gpu_memory_utilization=gpu_memory_utilization, **kw)
        from transformers import AutoConfig

        self.config = AutoConfig.from_pretrained(path)

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> tuple[list[str], list[int]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        sp = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], sp, use_tqdm=False)
        texts, counts = [], []
        end = {self.tok.eos_token_id, self.tok.pad_token_id}
        for o in outs:  # vLLM returns the outputs in the order of the prompts
            ids = list(o.outputs[0].token_ids)
            text, n = cut_at_verdict(self.tok, ids)
            texts.append(text)
            counts.append(n - (n > 0 and ids[n - 1] in end))  # the end-of-turn token is not a new token
        return texts, counts
