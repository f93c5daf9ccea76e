"""The slot engine (fastgen) against transformers' `generate` on the same prompts, on the CPU.

The engine must return the same text as the plain path, cut where the plain path stops:
at the verdict line's newline, at end of turn, or at the token budget, with fewer slots
than prompts so that finished slots are refilled (continuous batching)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fixtures.tiny_model import build_tiny_model  # noqa: E402

CONTENTS = ["How do I bake bread?", "I will hurt you tomorrow at school.", "you people are vermin",
            "hi", "Write a poem about the sea and the wind and the gulls and the long grey evening light",
            "policy content", "Classification: SAFE", "how to pick a lock"]


def _compare(guard, max_new: int, rows: int, width_step: int = 32, sync_every: int = 3, attention: str = "sdpa",
             contents: list = CONTENTS, prefill: str = "auto", compacts: bool = True, rope=None):
    from guardrsft.fastgen import SlotEngine

    items = [{"content": c} for c in contents]
    plain = guard.classify(items)
    plain_tokens = guard.last_stats["new_tokens"]
    eng = SlotEngine(guard.model, guard.tok, rows=rows, max_len=1000, width_step=width_step,
                     sync_every=sync_every, attention=attention, prefill=prefill, rope=rope)
    assert eng.rope_kernel is bool(rope)
    assert eng.prefill == ("padded" if prefill == "auto" else prefill)
    guard._generate = lambda prompts, stream=None: eng.generate(prompts, max_new)
    guard.last_engine = eng
    guard.cache = {}
    guard.batch_size = 10_000  # every prompt in one engine call: slots refilled, then the tail compacted
    fast = guard.classify(items)
    assert guard.last_stats["new_tokens"] == plain_tokens
    assert eng.stats["prompts"] == len(items) * len(guard.p.policies) > rows
    if compacts:  # answers of different lengths: the tail ran on fewer rows
        assert eng.stats["compactions"] >= 1 and eng.stats["row_steps"] < eng.stats["steps"] * rows
    for a, b in zip(plain, fast):
        assert a["raw"] == b["raw"]
        assert a["verdicts"] == b["verdicts"]
    return plain


@pytest.fixture
def params(pp_params):
    # the engine is compared with generate prompt by prompt: one per (item, policy) with the per-policy
    # prompt (joint mode runs the same engine with one prompt per item)
    return pp_params


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "m")


@pytest.fixture(scope="module")
def verdict_model(tmp_path_factory, tiny):
    """The tiny model trained for a few seconds to answer every prompt with a verdict line
    followed by more text, and some prompts with end of turn: exercises both stop rules."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    seqs = []
    for i, c in enumerate(CONTENTS):
        prompt = tok.apply_chat_template([{"role": "user", "content": c}], add_generation_prompt=True,
                                         tokenize=False)
        answer = ("Reasoning: policy content\nClassification: UNSAFE\npolicy policy policy" if i % 2 else
                  "Reasoning: Step 1\nClassification: SAFE<|im_end|>")
        seqs.append(tok(prompt + answer, add_special_tokens=False)["input_ids"])
    for _ in range(150):
        for s in seqs:
            ids = torch.tensor([s])
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        opt.step()
        opt.zero_grad()
    d = tmp_path_factory.mktemp("verdict") / "m"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def _guard(path, params, max_new, batch=3):
    from guardrsft.guard import load_guard

    g = load_guard(path, params=params, max_new_tokens=max_new, batch_size=batch)
    assert g.backend == "plain"
    return g


def test_engine_matches_generate_on_budget_stops(tiny, params):
    # a random model never writes a verdict: every row runs to its budget; 3 slots, 48 prompts
    # (all finish together: nothing to compact)
    _compare(_guard(tiny, params, max_new=20), max_new=20, rows=3, compacts=False)


@pytest.mark.parametrize("attention", ["sdpa", "matmul"])
def test_engine_matches_generate_at_verdict_and_end_of_turn(verdict_model, params, attention):
    plain = _compare(_guard(verdict_model, params, max_new=60), max_new=60, rows=4, sync_every=5,
                     attention=attention)
    raws = [t for r in plain for t in r["raw"].values()]
    # the trained answers: both stop rules really happened on the plain path
    assert any(t.rstrip("\n").endswith("Classification: UNSAFE") and "policy policy" not in t for t in raws)
    assert any(t.endswith("Classification: SAFE") for t in raws)
    verdicts = {v for r in plain for v in r["verdicts"].values()}
    assert {"SAFE", "UNSAFE"} <= verdicts


def test_engine_runs_after_a_training_patch_of_the_models_rotary(verdict_model, params, monkeypatch):
    # Liger's training patch swaps modeling_llama.apply_rotary_pos_emb, process-wide, for a
    # kernel that only takes [B, heads, L, D]; evaluating after training in one process (the
    # quality benchmark) crashed the engine's token-major calls. Same stand-in, same answers.
    import torch
    from transformers.models.llama import modeling_llama

    from guardrsft.fastgen import apply_rotary

    original = modeling_llama.apply_rotary_pos_emb

    def four_d_only(q, k, cos, sin, *a, **kw):
        b, heads, L, d = q.shape  # a 3-D q raises here, as Liger's does
        return original(q, k, cos, sin, *a, **kw)

    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", four_d_only)
    _compare(_guard(verdict_model, params, max_new=60), max_new=60, rows=4, sync_every=5)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 5, 8, generator=g), torch.randn(2, 1, 5, 8, generator=g)
    cos, sin = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    for got, ref in zip(apply_rotary(q, k, cos, sin), original(q, k, cos, sin)):
        assert torch.equal(got, ref)


@pytest.mark.parametrize("attention,prefill", [("sdpa", "padded"), ("varlen", "packed")])
def test_engine_samples_what_generate_samples(verdict_model, params, attention, prefill, monkeypatch):
    # hard-sample mining on the engine: each draw is a function of the answer's seed and step
    # (guardrsft.sampling), so the engine's slots (refilled, then compacted in the tail) draw
    # exactly the plain path's answers, and the answers are really sampled
    import torch.nn.attention.varlen as varlen

    from guardrsft.fastgen import SlotEngine

    monkeypatch.setattr(varlen, "varlen_attn", _reference_varlen)  # CUDA-only kernel, on the CPU
    g = _guard(verdict_model, params, max_new=40)
    items = [{"content": c} for c in CONTENTS]
    plain = g.sample(items, 3, 1.5, 0.95, seed=1)
    eng = SlotEngine(g.model, g.tok, rows=8, max_len=1000, width_step=32, sync_every=3, attention=attention,
                     prefill=prefill)
    calls = []

    def on_engine(prompts, stream=None, sampling=None):
        calls.append(sampling is not None)
        return eng.generate(prompts, 40, sampling=sampling)
    g._generate, g.cache, g.batch_size = on_engine, {}, 10_000
    fast = g.sample(items, 3, 1.5, 0.95, seed=1)
    assert calls == [True] and eng.stats["prompts"] == len(items) * len(g.p.policies) * 3
    assert eng.stats["compactions"] >= 1
    assert fast == plain
    raws = [s["raw"] for r in plain for per in r["samples"].values() for s in per]
    greedy = {t for r in g.classify(items) for t in r["raw"].values()}  # the engine, greedy again
    assert len(set(raws)) > len(greedy) and eng.sampling is None


def test_engine_refuses_a_prompt_longer_than_its_cache(tiny, params):
    from guardrsft.fastgen import SlotEngine

    g = _guard(tiny, params, max_new=8)
    eng = SlotEngine(g.model, g.tok, rows=2, max_len=64, width_step=32)
    with pytest.raises(ValueError, match="exceeds the engine"):
        eng.generate([[5] * 60], 8)


def test_supported_names_what_it_cannot_run():
    from types import SimpleNamespace

    from guardrsft.fastgen import supported

    assert supported(SimpleNamespace(config=SimpleNamespace(model_type="llama"))) is None
    assert "gemma" in supported(SimpleNamespace(config=SimpleNamespace(model_type="gemma")))
    assert "sliding" in supported(SimpleNamespace(config=SimpleNamespace(model_type="mistral", sliding_window=4096)))
    assert "yarn" in supported(SimpleNamespace(config=SimpleNamespace(model_type="llama",
                                                                      rope_parameters={"rope_type": "yarn"})))


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
    """torch's varlen_attn (FlashAttention, CUDA only) computed sequence by sequence on the CPU:
    window (-1, 0) is causal aligned at the end of the keys (query i of n sees keys up to
    len_k - n + i), as FlashAttention aligns it; enable_gqa lets K/V have fewer heads."""
    import torch

    assert window_size in ((-1, -1), (-1, 0))
    assert enable_gqa or q.shape[1] == k.shape[1]
    assert cu_q.dtype == cu_k.dtype == torch.int32 and len(cu_q) == len(cu_k)
    out = torch.zeros_like(q)
    for s in range(len(cu_q) - 1):
        q0, q1, k0, k1 = int(cu_q[s]), int(cu_q[s + 1]), int(cu_k[s]), int(cu_k[s + 1])
        assert q1 - q0 <= max_q and k1 - k0 <= max_k and k0 <= k1
        if q1 == q0:
            continue
        qs, ks, vs = (t.transpose(0, 1) for t in (q[q0:q1], k[k0:k1], v[k0:k1]))  # heads first
        mask = None
        if window_size == (-1, 0):
            n, m = q1 - q0, k1 - k0
            mask = torch.arange(m)[None] <= torch.arange(n)[:, None] + (m - n)
        out[q0:q1] = torch.nn.functional.scaled_dot_product_attention(
            qs, ks, vs, attn_mask=mask, scale=scale, enable_gqa=enable_gqa).transpose(0, 1)
    return out


def test_varlen_packing_matches_generate(verdict_model, params, monkeypatch):
    """The slot-major cache and the packed sequences (real keys, then a query-less gap per slot)
    give the plain path's text; the kernel is replaced by its per-sequence definition."""
    import torch.nn.attention.varlen as varlen

    monkeypatch.setattr(varlen, "varlen_attn", _reference_varlen)
    _compare(_guard(verdict_model, params, max_new=60), max_new=60, rows=4, sync_every=5, attention="varlen")


def test_packed_prefill_matches_generate(verdict_model, params, monkeypatch):
    """Prompts back to back without padding, their K/V written into the slot rows and one
    causal varlen call per layer over those rows (refills land in scattered slots): the plain
    path's text, and the same cache as the padded prefill on the engine's own self-check."""
    import functools

    import torch.nn.attention.varlen as varlen

    calls = []
    spy = functools.wraps(_reference_varlen)(lambda *a, **kw: calls.append(kw) or _reference_varlen(*a, **kw))
    monkeypatch.setattr(varlen, "varlen_attn", spy)  # wraps: the engine reads the keyword names
    _compare(_guard(verdict_model, params, max_new=60), max_new=60, rows=4, sync_every=5, attention="varlen",
             prefill="packed")
    assert {kw.get("window_size") for kw in calls} == {(-1, 0), (-1, -1)}  # prefill causal, decode full
    from guardrsft.fastgen import SlotEngine

    g = _guard(verdict_model, params, max_new=8)
    eng = SlotEngine(g.model, g.tok, rows=3, max_len=64, width_step=32, attention="varlen", prefill="packed")
    assert eng._packed_fails() is None
    with pytest.raises(ValueError, match="slot-major cache"):
        SlotEngine(g.model, g.tok, rows=3, max_len=64, width_step=32, attention="sdpa", prefill="packed")


@pytest.fixture
def interpreted_triton():
    """guardrsft.decode_attn with its kernel run by Triton's CPU interpreter (conftest.py turns
    it on before triton is imported)."""
    import os

    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the kernel tests run under Triton's CPU interpreter (TRITON_INTERPRET=1)")
    from guardrsft import decode_attn

    return decode_attn


@pytest.mark.parametrize("dtype,D", [("float32", 64), ("float16", 64), ("float32", 8), ("float32", 80)])
def test_decode_kernel_matches_attention_per_slot(interpreted_triton, dtype, D):
    """Each slot's new token attends to exactly its own keys 0..pos (grouped-query heads in
    transformers' order), whatever lies in the rest of the cache row."""
    import torch

    torch.manual_seed(0)
    B, T, hkv, g = 5, 80, 3, 3  # D: SmolLM2's head_dim, a tiny one, one that is not a power of two
    dt = getattr(torch, dtype)
    k, v = torch.randn(B, T, hkv, D).to(dt), torch.randn(B, T, hkv, D).to(dt)
    q = torch.randn(B, hkv * g, D).to(dt)
    pos = torch.tensor([0, 3, 17, 79, 64])  # 1 key, a partial block, several, the whole row, a block edge
    out = interpreted_triton.decode_attention(q, k, v, pos, D ** -0.5, block_n=16)
    for b in range(B):
        n = int(pos[b]) + 1
        kk, vv = (t[b, :n].transpose(0, 1).float().repeat_interleave(g, 0) for t in (k, v))
        ref = torch.nn.functional.scaled_dot_product_attention(q[b].float()[:, None], kk, vv, scale=D ** -0.5)[:, 0]
        assert torch.allclose(out[b].float(), ref, atol=2e-3 if dtype == "float16" else 1e-5), b
    k[0, 1:] = 1e4  # garbage past a slot's length changes nothing
    assert torch.equal(interpreted_triton.decode_attention(q, k, v, pos, D ** -0.5, block_n=16)[0], out[0])


@pytest.mark.parametrize("dtype,heads,D", [("float32", 9, 64), ("bfloat16", 3, 64), ("float32", 1, 8)])
def test_rotary_kernel_matches_the_models_rotary(interpreted_triton, dtype, heads, D):
    """decode_attn.rotary against transformers' apply_rotary_pos_emb, on strided heads (a view
    of a wider projection, as the engine's q/k are) and the model's own cos/sin table."""
    import torch
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    N = 7
    wide = torch.randn(N, heads + 2, D).to(dt)
    x = wide[:, 1:heads + 1]  # strided: the kernel reads its own row and head strides
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    freqs = torch.arange(300).float()[:, None] * inv[None]
    emb = torch.cat([freqs, freqs], -1)
    pos = torch.tensor([0, 1, 5, 64, 128, 200, 299])
    cos, sin = emb.cos()[pos].to(dt), emb.sin()[pos].to(dt)
    ref = apply_rotary_pos_emb(x.float(), x.float(), cos.float(), sin.float(), unsqueeze_dim=1)[0]
    got = interpreted_triton.rotary(x, cos, sin)
    assert got.shape == (N, heads, D) and got.dtype == dt
    tol = 1e-2 if dtype == "bfloat16" else 1e-5  # bf16: the output's own rounding
    assert torch.allclose(got.float(), ref, atol=tol, rtol=tol)
    with pytest.raises(ValueError, match="head_dim"):
        interpreted_triton.rotary(torch.randn(2, 1, 80), cos[:2, :80], sin[:2, :80])


def test_triton_attention_matches_generate(verdict_model, params, interpreted_triton):
    # two contents (a SAFE answer ending the turn, an UNSAFE one cut at its verdict line), 12
    # prompts through 4 slots: the interpreter runs each kernel program in Python
    # (the Triton rotary too: every query and key of prefill and decoding goes through it)
    g = _guard(verdict_model, params, max_new=60)
    plain = _compare(g, max_new=60, rows=4, sync_every=5, attention="triton", contents=CONTENTS[:2], rope=True)
    assert g.last_engine.attention == "triton"  # the kernel ran (no fallback for this shape)
    assert {"SAFE", "UNSAFE"} <= {v for r in plain for v in r["verdicts"].values()}


def test_triton_that_cannot_run_falls_back_with_a_message(tiny, params, monkeypatch, capsys):
    """A GPU or toolchain where the kernel fails (or gives wrong numbers) must not break an
    evaluation: the engine's self-check names the reason and uses another attention path."""
    from guardrsft import decode_attn
    from guardrsft.fastgen import SlotEngine

    g = _guard(tiny, params, max_new=8)

    class Broken:
        def __getitem__(self, grid):
            def launch(*a, **kw):
                raise RuntimeError("no compiler for this device")
            return launch

    monkeypatch.setattr(decode_attn, "_decode_attn", Broken(), raising=False)
    eng = SlotEngine(g.model, g.tok, rows=2, max_len=64, width_step=32, attention="triton")
    assert eng.attention == "sdpa" and eng.requested == "triton"
    assert "Triton decoding attention unavailable (RuntimeError: no compiler for this device)" in capsys.readouterr().err
    monkeypatch.setattr(decode_attn, "decode_attention", lambda q, k, v, pos, scale: q * 0)  # wrong numbers
    eng = SlotEngine(g.model, g.tok, rows=2, max_len=64, width_step=32, attention="triton")
    assert eng.attention == "sdpa" and "differs from plain attention" in capsys.readouterr().err
