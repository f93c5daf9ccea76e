"""A stand-in for the `vllm` package, for tests/test_vllm_backend.py only: vLLM cannot be installed
in CI (no CUDA) nor on the benchmark GPU (offline, torch pin). It implements the part of vLLM's
documented offline API that guardrsft.vllm_backend calls, with transformers' greedy `generate`
underneath, and refuses arguments that API would not take, so the backend's use of it is checked.
It is not vLLM: its numbers say nothing about vLLM's speed."""
from __future__ import annotations

from dataclasses import dataclass, field

CALLS: list = []  # (method, kwargs) of every call, for the tests


@dataclass
class SamplingParams:
    temperature: float = 1.0
    max_tokens: int = 16
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class CompletionOutput:
    text: str
    token_ids: list = field(default_factory=list)


@dataclass
class RequestOutput:
    prompt_token_ids: list
    outputs: list


class LLM:
    def __init__(self, model: str, tokenizer: str | None = None, dtype: str = "auto", seed: int = 0,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        CALLS.append(("LLM", {"model": model, "tokenizer": tokenizer, "dtype": dtype, "seed": seed}))
        assert dtype in ("auto", "float32", "float16", "bfloat16"), dtype
        self.tok = AutoTokenizer.from_pretrained(tokenizer or model)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype) if dtype != "auto" else "auto")
        self.model.eval()

    def generate(self, prompts, sampling_params: SamplingParams | None = None, use_tqdm: bool = True):
        import torch

        sp = sampling_params or SamplingParams()
        CALLS.append(("generate", {"n": len(prompts), "temperature": sp.temperature, "max_tokens": sp.max_tokens}))
        if sp.temperature != 0:
            raise NotImplementedError("the stand-in decodes greedily only")
        out = []
        for pr in prompts:  # one row at a time: no padding, so the tokens are plain greedy decoding's
            if not isinstance(pr, dict) or set(pr) != {"prompt_token_ids"}:
                raise TypeError(f"expected TokensPrompt(prompt_token_ids=...), got {pr!r}")
            ids = torch.tensor([pr["prompt_token_ids"]])
            with torch.inference_mode():
                gen = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                          max_new_tokens=sp.max_tokens, do_sample=False,
                                          temperature=None, top_p=None, top_k=None,
                                          pad_token_id=self.tok.pad_token_id or self.tok.eos_token_id)
            new = gen[0, ids.shape[1]:].tolist()
            out.append(RequestOutput(pr["prompt_token_ids"], [CompletionOutput(
                self.tok.decode(new, skip_special_tokens=True), new)]))
        return out
