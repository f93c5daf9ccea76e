"""The padding-free attention wrapper: shapes, segments and GQA, against SDPA with a
block-diagonal causal mask. The FlashAttention kernel itself needs CUDA; on CPU it is
replaced by a per-example SDPA reference, which is what it computes."""
import torch
import torch.nn.functional as F

import guardrsft.attention as att


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale=None, window_size=(-1, -1), enable_gqa=False):
    assert window_size == (-1, 0)  # causal
    outs = []
    for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))  # (heads, len, dim)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale,
                                                   enable_gqa=enable_gqa).transpose(0, 1))
    assert max_q == max(b - a for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()))
    return torch.cat(outs)


def test_varlen_wrapper_matches_block_diagonal_sdpa(monkeypatch):
    import torch.nn.attention.varlen as varlen

    monkeypatch.setattr(varlen, "varlen_attn", reference_varlen)
    torch.manual_seed(0)
    lengths = [5, 1, 9]
    n, hq, hkv, d = sum(lengths), 6, 2, 8
    q, k, v = torch.randn(1, hq, n, d), torch.randn(1, hkv, n, d), torch.randn(1, hkv, n, d)
    pos = torch.cat([torch.arange(x) for x in lengths])[None]
    seg = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    mask = (seg[:, None] == seg[None, :]) & torch.ones(n, n, dtype=torch.bool).tril()
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3, enable_gqa=True).transpose(1, 2)
    for kwargs in ({"position_ids": pos},  # boundaries derived from position_ids
                   {"cu_seq_lens_q": torch.tensor([0, 5, 6, 15]), "max_length_q": 9, "position_ids": pos}):
        att._last[:] = [None, None]
        got, _ = att.varlen_attention_forward(None, q, k, v, None, scaling=0.3, **kwargs)
        assert got.shape == (1, n, hq, d)
        assert torch.allclose(got, want, atol=1e-5)


def test_varlen_refuses_padded_batches():
    q = torch.zeros(2, 2, 3, 4)
    try:
        att.varlen_attention_forward(None, q, q, q, None)
    except ValueError as e:
        assert "padding-free" in str(e)
    else:
        raise AssertionError("a padded batch must be refused")
