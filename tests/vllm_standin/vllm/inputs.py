"""vllm.inputs.TokensPrompt: a TypedDict in vLLM, so calling it makes a plain dict."""


def TokensPrompt(**kw) -> dict:  # noqa: N802 (vLLM's name)
    return dict(kw)
