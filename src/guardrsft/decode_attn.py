"""Triton kernels for the slot engine: decoding attention (one new token per slot), and rotary.

Why: on the H200 profile of a 135M guard at 1,024 slots (bench/engine_profile.py), PyTorch's
FlashAttention varlen kernel took 54% of a decoding step. It tiles queries in blocks of 128
rows, and a decoding step has g (query heads per KV head, 3 for SmolLM2) queries per
sequence, so nearly all of each tile is padding. Here one program handles one (slot, KV
head): its g query heads are the rows of a 16-row tile, and it streams that slot's keys and
values once, with an online softmax, up to the slot's own length. The cost is one read of
each live cache row, which is the floor for this step.

Cache layout: slot-major, k and v of shape [slots, T, kv_heads, head_dim] (the engine's
varlen layout). Query head j uses KV head j // g (transformers' repeat_kv order).
On the CPU the kernel runs under TRITON_INTERPRET=1 (the tests); the engine uses it on CUDA.
"""
from __future__ import annotations

import os
from typing import Optional


def available() -> Optional[str]:
    """None when the kernel can run here, else why not."""
    return "triton is not installed" if triton is None else None


try:  # the decorators read TRITON_INTERPRET now: the CPU tests set it, then reload this module
    import triton
    import triton.language as tl
except ImportError:  # CPU installs without triton: the engine uses its other attention paths
    triton = None

if triton is not None:
    @triton.jit
    def _block(q, K, V, base, start, n_keys, s_kt, m, lsum, acc, qk_scale, D: tl.constexpr, D_PAD: tl.constexpr,
               BLOCK_N: tl.constexpr):
        """One block of keys: scores, online-softmax rescale, accumulate."""
        rn = start + tl.arange(0, BLOCK_N)
        rd = tl.arange(0, D_PAD)
        kmask = rn < n_keys
        off = base + rn[:, None] * s_kt + rd[None, :]
        kvmask = kmask[:, None] & (rd < D)[None, :]
        k = tl.load(K + off, mask=kvmask, other=0.0)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        s = tl.where(kmask[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m - m_new)
        v = tl.load(V + off, mask=kvmask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        lsum = lsum * alpha + tl.sum(p, 1)
        return m_new, lsum, acc

    @triton.jit
    def _decode_attn(Q, K, V, O, POS, scale, s_qb, s_qh, s_kb, s_kt, s_kh, s_ob, s_oh, T: tl.constexpr,
                     G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
                     BLOCK_N: tl.constexpr, FULL_LOOP: tl.constexpr):
        b = tl.program_id(0)
        kh = tl.program_id(1)
        n_keys = tl.load(POS + b).to(tl.int32) + 1  # the new token's key is already in the cache
        rg = tl.arange(0, G_PAD)
        rd = tl.arange(0, D_PAD)  # head_dim padded to a power of two >= 16 (tl.dot's minimum)
        qmask = (rg < G)[:, None] & (rd < D)[None, :]
        q = tl.load(Q + b * s_qb + (kh * G + rg)[:, None] * s_qh + rd[None, :], mask=qmask, other=0.0)
        m = tl.full([G_PAD], float("-inf"), tl.float32)
        lsum = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, D_PAD], tl.float32)
        base = b * s_kb + kh * s_kh
        qk_scale = scale * 1.4426950408889634  # exp2 instead of exp
        if FULL_LOOP:
            # the CPU interpreter (its loop bounds must be plain ints under NumPy 2): every
            # block up to T; the ones past n_keys are fully masked and change nothing
            for start in range(0, T, BLOCK_N):
                m, lsum, acc = _block(q, K, V, base, start, n_keys, s_kt, m, lsum, acc, qk_scale, D, D_PAD, BLOCK_N)
        else:
            for start in range(0, n_keys, BLOCK_N):
                m, lsum, acc = _block(q, K, V, base, start, n_keys, s_kt, m, lsum, acc, qk_scale, D, D_PAD, BLOCK_N)
        out = acc / lsum[:, None]
        tl.store(O + b * s_ob + (kh * G + rg)[:, None] * s_oh + rd[None, :], out.to(O.dtype.element_ty), mask=qmask)


def decode_attention(q, k, v, pos, scale: float, block_n: int = 64):
    """q [B, heads, D] (one new token per slot), k/v [B, T, kv_heads, D], pos [B] (the new
    token's position; keys 0..pos are read) -> [B, heads, D]."""
    import torch

    B, H, D = q.shape
    hkv = k.shape[2]
    g = H // hkv
    if g > 16:
        raise ValueError(f"decode_attention takes at most 16 query heads per KV head, got {g}")
    assert k.stride() == v.stride() and k.stride(3) == 1 and q.stride(2) == 1
    out = torch.empty_like(q)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    # the interpreter loops to T: make that the longest slot's length, not the cache's
    T = min(k.shape[1], -(-(int(pos.max()) + 1) // block_n) * block_n) if interpret else k.shape[1]
    _decode_attn[(B, hkv)](q, k, v, out, pos, scale, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                           k.stride(2), out.stride(0), out.stride(1), T, G=g, G_PAD=16, D=D,
                           D_PAD=max(16, 1 << (D - 1).bit_length()), BLOCK_N=block_n, FULL_LOOP=interpret,
                           num_warps=4)
    return out


if triton is not None:
    @triton.jit
    def _rotary(X, COS, SIN, O, n_heads, s_xn, s_xh, s_on, s_oh, s_cn, HALF: tl.constexpr, H_PAD: tl.constexpr):
        n = tl.program_id(0)
        rh = tl.arange(0, H_PAD)
        rd = tl.arange(0, HALF)
        m = (rh < n_heads)[:, None] & (rd < HALF)[None, :]
        c = tl.load(COS + n * s_cn + rd).to(tl.float32)[None, :]  # the first half: llama's halves are equal
        s = tl.load(SIN + n * s_cn + rd).to(tl.float32)[None, :]
        xb = X + n * s_xn + rh[:, None] * s_xh + rd[None, :]
        x1 = tl.load(xb, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(xb + HALF, mask=m, other=0.0).to(tl.float32)
        ob = O + n * s_on + rh[:, None] * s_oh + rd[None, :]
        tl.store(ob, (x1 * c - x2 * s).to(O.dtype.element_ty), mask=m)
        tl.store(ob + HALF, (x2 * c + x1 * s).to(O.dtype.element_ty), mask=m)


def rotary(x, cos, sin):
    """transformers' llama rotary (x * cos + rotate_half(x) * sin) for tokens x [N, heads, D]
    with cos/sin [N, D] whose two halves are equal, in one program per token (fp32 math).
    Why: on the H200 the compiled (Inductor) rotary of a 65k-token packed prefill took 19 of
    its 54 ms of compiled work, about 10x the memory traffic's time."""
    import torch

    N, H, D = x.shape
    if D % 2 or (D // 2) & (D // 2 - 1):
        raise ValueError(f"rotary takes a head_dim of twice a power of two, got {D}")
    assert x.stride(2) == 1 and cos.stride(1) == 1 and cos.stride() == sin.stride()
    out = torch.empty((N, H, D), dtype=x.dtype, device=x.device)
    if N:
        _rotary[(N,)](x, cos, sin, out, H, x.stride(0), x.stride(1), out.stride(0), out.stride(1), cos.stride(0),
                      HALF=D // 2, H_PAD=max(2, 1 << (H - 1).bit_length()), num_warps=1)
    return out
