"""Fast greedy decoding for the guard on a GPU.

A small guard model decodes in an overhead-bound regime: plain `generate` spends its time
launching kernels and decoding text on the CPU to test the stop rule, not computing. Here:
- one static KV cache per (batch, width) bucket, so transformers compiles the decoding step
  once into CUDA graphs (`cache_implementation="static"` auto-compiles) and replays it;
- prompts left-padded to a width bucket (multiple of `width_step`) and batches padded to a
  fixed row count, so only a handful of shapes are ever compiled;
- the stop rule runs on the GPU (`stop_strings`: the verdict line; or end of turn) instead of
  decoding every row's text after every token.
Verdicts are parsed from the returned text exactly as on the plain path.
"""
from __future__ import annotations

# The verdict line as the model is trained to write it, up to its newline (a bare "SAFE" may
# still grow into "SAFE or UNSAFE", the template's echo). Other spellings stop at end of turn
# or max_new_tokens and are parsed the same way (prompts.parse_verdict).
STOP_STRINGS = [f"\nClassification: {v}{end}\n" for v in ("SAFE", "UNSAFE") for end in ("", ".")]


def generate_static(model, tok, prompts: list[list[int]], max_new_tokens: int, rows: int,
                    width_step: int = 128) -> tuple[list[str], list[int]]:
    """Greedy completions (new text only) and new-token counts for up to `rows` prompts."""
    import torch

    n = len(prompts)
    assert 0 < n <= rows
    pad = tok.pad_token_id
    longest = max(len(x) for x in prompts)
    width = -(-longest // width_step) * width_step
    filler = prompts[0]  # rows beyond n repeat a real prompt: same shapes, results dropped
    batch = prompts + [filler] * (rows - n)
    ids = torch.tensor([[pad] * (width - len(x)) + x for x in batch], device=model.device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in batch], device=model.device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             temperature=None, top_p=None, top_k=None, pad_token_id=pad,
                             cache_implementation="static", stop_strings=STOP_STRINGS, tokenizer=tok)
    gen = out[:n, width:]
    counts = (gen != pad).sum(dim=1).tolist()
    return tok.batch_decode(gen, skip_special_tokens=True), counts
