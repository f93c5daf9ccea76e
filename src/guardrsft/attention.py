"""Variable-length attention for padding-free batches, without the flash-attn package.

A padding-free batch is one row holding several examples back to back. SDPA can keep them
apart only through a dense (tokens x tokens) block-diagonal mask: quadratic memory (a
64-example row of SmolLM2 traces ran an H100 out of memory) and quadratic compute. PyTorch's
own `torch.nn.attention.varlen.varlen_attn` (FlashAttention-2 kernels, PyTorch >= 2.10, CUDA)
attends within each example from the cumulative lengths TRL's collator already provides
(`cu_seq_lens_q`), so it costs what the examples cost, nothing for their neighbours.

Registered with transformers as attention implementation `guardrsft_varlen`; train.py
selects it for padding-free training on CUDA when available (`varlen_available()`).
"""
from __future__ import annotations

NAME = "guardrsft_varlen"


def varlen_available() -> bool:
    import torch

    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


_last: list = [None, None]  # (the cu tensor of the current forward, its int32 copy and max length)


def _segments(kwargs: dict, seq_len: int, device):
    """Cumulative example lengths (int32) and the longest example: computed once per forward
    (every layer gets the same tensors), since the max is a device-to-host sync."""
    import torch

    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None and _last[0] is cu:
        return _last[1]
    src = cu
    if cu is None:  # derive them from position_ids, which restart at 0 for every example
        pos = kwargs["position_ids"][0]
        if _last[0] is pos:
            return _last[1]
        src = pos
        starts = (pos == 0).nonzero().flatten()
        cu = torch.cat([starts, torch.tensor([seq_len], device=pos.device)])
    cu = cu.to(device=device, dtype=torch.int32)
    max_len = kwargs.get("max_length_q")
    max_len = int(max_len) if max_len is not None else int((cu[1:] - cu[:-1]).max())
    _last[0], _last[1] = src, (cu, max_len)
    return cu, max_len


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention interface: q/k/v are (1, heads, tokens, head_dim); returns
    (1, tokens, heads, head_dim) like the SDPA integration."""
    from torch.nn.attention.varlen import varlen_attn

    if query.shape[0] != 1 or attention_mask is not None:
        raise ValueError(f"attention `{NAME}` takes padding-free batches (one row, no attention mask); "
                         "set train.padding_free: true or load the model with sdpa")
    cu, max_len = _segments(kwargs, query.shape[2], query.device)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, dim)
    opts = _options()
    extra = {"scale": scaling}
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in opts:
            extra["enable_gqa"] = True
        else:  # older signature: expand the key/value heads
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if "window_size" in opts:
        extra["window_size"] = (-1, 0)  # causal: everything to the left, nothing to the right
    else:
        extra["is_causal"] = True
    out = varlen_attn(q, k, v, cu, cu, max_len, max_len, **extra)
    return out.unsqueeze(0), None


def _options() -> set:
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    return set(inspect.signature(varlen_attn).parameters)


def register() -> None:
    """Make `attn_implementation="guardrsft_varlen"` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
    # no mask tensor: the example boundaries are the mask
    AttentionMaskInterface.register(NAME, lambda *args, **kwargs: None)
