"""Fast greedy decoding for the guard: a slot engine with continuous batching.

A small guard model decodes in an overhead-bound regime, and a static batch wastes most of
its steps: answers end after 40 to 250 tokens, and plain `generate` keeps decoding the
finished rows until the longest one stops. This engine keeps `rows` slots busy instead:
- every slot has its own KV cache row and position, so a finished answer's slot is refilled
  with the next prompt (continuous batching) while the others go on decoding;
- prompts are prefilled in groups (on CUDA packed back to back, else right-padded; causal),
  then one decoding step for all slots runs as a single CUDA graph per attention width
  bucket: no per-kernel launch cost, and attention reads only the cache prefix the active
  slots use;
- once no prompt waits, the busy slots are moved into the first half of the rows whenever
  they fit, and steps run on those rows only: the tail of an evaluation (the last, longest
  answers) no longer pays for thousands of idle rows;
- on CUDA the layers' pointwise work (norms, SiLU gating, residuals) runs through
  torch.compile and their rotary through a Triton kernel (decode_attn.rotary), both
  self-checked against the eager modules at build (GUARDRSFT_FASTGEN_COMPILE=0 turns
  compiling off);
- the stop rule (`prompts.verdict_complete`, the guard's own) runs on the CPU every
  `sync_every` steps, only on rows that wrote a newline; end of turn and the token budget
  stop rows on the GPU. A row's text is cut exactly where the plain path would have stopped;
  lines without a colon token are not decoded (a verdict line has one), and the answers are
  decoded in one batch at the end.
It reuses the model's own modules (projections, norms, MLP, rotary tables), so any merged
or attached LoRA applies; only attention and the cache are ours. Llama-shaped decoders
(llama, mistral without sliding window, qwen2) are supported; others use the plain path.
On the CPU it runs the same code without graphs (the tests compare it with `generate`).

Sampled decoding (hard-sample mining): `generate(..., sampling=(seeds, temperature, top_p))`
draws each token with guardrsft.sampling.pick from the slot's seed and its step, the same
draws as the plain path's. pick is tensor arithmetic on the engine's static buffers (no host
sync, no generator state), so sampled steps are captured in CUDA graphs like greedy ones,
one graph per (width, rows, temperature, top_p). On the H200, 6,144 sampled answers: decoding
10.3 s eager, 6.0 s captured, the same 6,144 answers (docs/BENCHMARKS.md). What is left of a
sampled step is mostly pick's sort of the whole vocabulary per row.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Optional

import numpy as np

from . import decode_attn
from .prompts import verdict_complete
from .sampling import pick

SUPPORTED = ("llama", "mistral", "qwen2")
ATTENTION = ("sdpa", "matmul", "varlen", "triton")
# prefill: "padded" groups through SDPA (any cache layout), or "packed": every prompt's tokens
# back to back, no padding, one FlashAttention varlen call per layer that writes and reads
# the slot-major cache (CUDA, varlen/triton attention). "auto" is packed where it runs (CUDA,
# slot-major cache, the build-time self-check passes), else padded: on the H200, 2,048 items x
# 6 policies, packed prefill took 3.7-3.8 s against padded's 7.0 s in the same run
# (docs/BENCHMARKS.md). GUARDRSFT_FASTGEN_PREFILL=padded|packed forces one.
PREFILL = ("auto", "padded", "packed")

# engine settings generate_static uses (bench/eval_throughput.py compares them). attention
# "auto" on CUDA: triton (guardrsft.decode_attn, one program per slot and KV head) when Triton
# is installed, else varlen (PyTorch's FlashAttention over each slot's own length) when
# PyTorch has it, else sdpa; on the CPU sdpa. GUARDRSFT_FASTGEN_ATTENTION=<one of ATTENTION>
# forces one. graphs None: decoding steps captured in CUDA graphs on CUDA (the engine's own
# default); False runs every step eagerly (the baseline of eval_throughput.py --sample-eager).
DEFAULTS = {"attention": "auto", "sync_every": 8, "prefill": "auto", "graphs": None}


def _rotate_half(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(q, k, cos, sin, unsqueeze_dim: int = 1):
    """transformers' llama rotary (x * cos + rotate_half(x) * sin), our own copy: Liger's
    training patch replaces `modeling_llama.apply_rotary_pos_emb` process-wide with a kernel
    that takes only the [B, heads, L, D] layout, so a process that trained first (the quality
    benchmark, HS-DPO mining after R-SFT) would break the token-major [N, heads, D] calls here."""
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _attn_in(layer, x, cos, sin, h: int, hkv: int, d: int, rope: bool = True):
    """Tokens x [N, hidden] -> q [N, h, d], k and v [N, hkv, d]: the layer's input norm, its
    projections and (rope) the model's rotary (cos/sin [N, d]). Token-major, the layout of the
    slot-major cache, varlen and the decoding kernel."""
    a = layer.self_attn
    hn = layer.input_layernorm(x)
    q, k = a.q_proj(hn).view(-1, h, d), a.k_proj(hn).view(-1, hkv, d)
    if rope:
        q, k = apply_rotary(q, k, cos, sin, unsqueeze_dim=1)
    return q, k, a.v_proj(hn).view(-1, hkv, d)


def _attn_out(layer, x, attn):
    """The rest of the layer: output projection, residual, post-attention norm, MLP, residual."""
    x = x + layer.self_attn.o_proj(attn)
    return x + layer.mlp(layer.post_attention_layernorm(x))


def _compiled(fn):
    """fn through torch.compile (Inductor fuses the norms, SiLU gating and residual adds into a
    few Triton kernels: about 40% of a step's GPU time was those pointwise kernels,
    bench/engine_profile.py; its rotary was slow, so decode_attn.rotary does that). One graph
    serves every layer (the modules are its inputs) and every token count (dynamic shapes)."""
    import torch

    return torch.compile(fn, dynamic=True)


def _reason(e: Exception) -> str:
    """A self-check's failure in one line: the exception's type and the first line of its text."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _usable(why: Optional[str], what: str, instead: str) -> bool:
    """True if a self-check found nothing (why is None); else say what is off and what runs instead."""
    if why:
        print(f"[guardrsft] fastgen: {what} unavailable ({why}); {instead}", file=sys.stderr, flush=True)
    return not why


def _has_varlen() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def _without_triton(device_type: str) -> str:
    return "varlen" if device_type == "cuda" and _has_varlen() else "sdpa"


def resolve_attention(name: str, device_type: str) -> str:
    name = os.environ.get("GUARDRSFT_FASTGEN_ATTENTION") or name
    if name != "auto":
        return name
    if device_type == "cuda" and decode_attn.available() is None:
        return "triton"
    return _without_triton(device_type)


def _triton_fails(device, dtype, h: int, hkv: int, d: int) -> Optional[str]:
    """Run the kernel once on small random data against plain attention: None if it agrees,
    else why not (compilation error, no Triton backend for this device, wrong numbers)."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    shapes = ((3, h, d), (3, 40, hkv, d), (3, 40, hkv, d))
    q, k, v = (torch.randn(shape, generator=g).to(device, dtype) for shape in shapes)
    pos = torch.tensor([0, 17, 39], device=device)
    try:
        got = decode_attn.decode_attention(q, k, v, pos, d ** -0.5)
    except Exception as e:  # noqa: BLE001 - any failure means: use another attention path
        return _reason(e)
    for b in range(3):
        n = int(pos[b]) + 1
        kk, vv = (t[b, :n].float().transpose(0, 1).repeat_interleave(h // hkv, 0) for t in (k, v))
        ref = torch.softmax(q[b].float()[:, None] @ kk.transpose(1, 2) * d ** -0.5, -1) @ vv
        if not torch.allclose(got[b].float(), ref[:, 0], atol=2e-2, rtol=2e-2):  # bf16 rounding
            return "its output differs from plain attention on a self-check"
    return None


def supported(model) -> Optional[str]:
    """None when the engine can run this model, else why not."""
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in SUPPORTED:
        return f"model_type {kind!r} is not one of {', '.join(SUPPORTED)}"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", kind == "mistral"):
        return "sliding-window attention"
    rope = (getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    if rope.get("rope_type", "default") not in ("default", "llama3", "linear"):
        return f"rope_type {rope.get('rope_type')!r} (position-dependent scaling)"
    return None


def _varlen_options() -> set:
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    return set(inspect.signature(varlen_attn).parameters)


def _round_up(x: int, step: int) -> int:
    return -(-x // step) * step


class SlotEngine:
    """Greedy decoding of many prompts through `rows` slots (see the module docstring)."""

    def __init__(self, model, tok, rows: int, max_len: int, width_step: int = 128,
                 sync_every: int = 8, graphs: Optional[bool] = None, attention: str = "sdpa",
                 prefill: str = "auto", compile: Optional[bool] = None, rope: Optional[bool] = None):
        import torch

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.torch, self.model, self.tok = torch, base, tok
        self.inner = base.model
        cfg = base.config
        self.n_layers = cfg.num_hidden_layers
        self.h = cfg.num_attention_heads
        self.hkv = getattr(cfg, "num_key_value_heads", None) or self.h
        self.d = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.h
        self.rows, self.width_step, self.sync_every = rows, width_step, sync_every
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, got {attention!r}")
        self.requested = attention  # what the caller asked for (generate_static reuses on it)
        self.stats: dict = {}
        self.max_len = _round_up(max_len, width_step)
        self.device = next(base.parameters()).device
        if attention == "triton":
            why = ("more than 16 query heads per KV head" if self.h // self.hkv > 16
                   else _triton_fails(self.device, base.dtype, self.h, self.hkv, self.d))
            # a shape the kernel does not take, or a GPU/toolchain where it does not run
            if not _usable(why, "Triton decoding attention", f"using {_without_triton(self.device.type)}"):
                attention = _without_triton(self.device.type)
        self.attention = attention
        self.dtype = self.inner.embed_tokens.weight.dtype
        self.graphs = (self.device.type == "cuda") if graphs is None else graphs
        dev, B, T = self.device, rows, self.max_len
        # varlen: slot-major cache (B, T, heads, dim) read as one packed key sequence per slot,
        # so attention reads each slot's own length; sdpa/matmul: (B, heads, T, dim) up to a
        # common width (the longest slot's)
        self.flat = attention in ("varlen", "triton")
        shape = (B, T, self.hkv, self.d) if self.flat else (B, self.hkv, T, self.d)
        self.k = [torch.zeros(shape, dtype=self.dtype, device=dev) for _ in range(self.n_layers)]
        self.v = [torch.zeros(shape, dtype=self.dtype, device=dev) for _ in range(self.n_layers)]
        with torch.no_grad():
            probe = torch.zeros(1, dtype=self.dtype, device=dev)
            cos, sin = self.inner.rotary_emb(probe, torch.arange(T, device=dev)[None])
        self.cos, self.sin = cos[0], sin[0]  # [T, D], the model's own rotary (scaling included)
        eos = base.generation_config.eos_token_id if base.generation_config is not None else None
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tok.eos_token_id is not None:
            eos.append(tok.eos_token_id)
        self.eos = torch.tensor(sorted(set(eos)) or [-1], device=dev)
        self.eos_set = set(self.eos.tolist())
        # decoding state: static buffers (a CUDA graph reads and writes them in place)
        self.cur = torch.zeros(B, dtype=torch.long, device=dev)
        self.pos = torch.zeros(B, dtype=torch.long, device=dev)
        self.n_gen = torch.zeros(B, dtype=torch.long, device=dev)
        self.active = torch.zeros(B, dtype=torch.bool, device=dev)
        self.max_new = torch.zeros((), dtype=torch.long, device=dev)
        self.seed = torch.zeros(B, dtype=torch.long, device=dev)  # each slot's sampling seed
        self.sampling: Optional[tuple[float, float]] = None  # (temperature, top_p) while sampling
        self.out: Optional[object] = None
        self._graphs: dict[tuple, object] = {}
        self._pool = None
        self._arange_b = torch.arange(B, device=dev)
        self._cu: dict = {}  # varlen decoding offsets per row count
        self._varlen_opts: Optional[set] = None  # varlen_attn's keyword names, read once
        # tokens whose text holds a newline: the only places a verdict line can complete
        vocab = len(tok)
        self.newline = np.zeros(max(vocab, base.config.vocab_size), dtype=bool)
        # tokens that may carry a verdict line's colon (or a piece of a multi-byte character,
        # such as the full-width colon's): a line without one is not decoded by the stop scan
        self.colon = np.zeros_like(self.newline)
        for i, text in enumerate(tok.batch_decode([[i] for i in range(vocab)])):
            self.newline[i] = "\n" in text
            self.colon[i] = ":" in text or "\uff1a" in text or "\ufffd" in text
        self.nl_gpu = torch.from_numpy(self.newline).to(dev)
        self.nl_seen = torch.zeros(B, dtype=torch.bool, device=dev)  # wrote a newline since the last scan
        self._in, self._out = _attn_in, _attn_out  # eager now; compiled below, after the prefill check
        self.rope_kernel = False  # the model's rotary for the prefill check; the kernel is decided below
        if prefill not in PREFILL:
            raise ValueError(f"prefill must be one of {', '.join(PREFILL)}, got {prefill!r}")
        self.requested_prefill = prefill
        if prefill == "auto":
            prefill = "packed" if self.flat and self.device.type == "cuda" else "padded"
        if prefill == "packed" and not self.flat:
            raise ValueError("prefill='packed' writes the slot-major cache of attention 'varlen' or 'triton'")
        if (prefill == "packed" and self.device.type == "cuda"
                and not _usable(self._packed_fails(), "packed prefill", "using padded groups")):
            prefill = "padded"
        self.prefill = prefill
        # rotary through guardrsft.decode_attn.rotary (CUDA with Triton by default), self-checked
        want = (self.device.type == "cuda" and decode_attn.available() is None) if rope is None else rope
        self.rope_kernel = want and _usable(self._rope_fails(), "Triton rotary", "using the model's")
        # compiled layer pieces: CUDA only (the CPU path stays eager: no compiler needed there)
        want = (self.device.type == "cuda") if compile is None else compile
        self.compiled = want and _usable(self._compile_fails(), "torch.compile", "running the layers eagerly")

    # ------------------------------------------------------------------ model pieces
    def _layer_qkv(self, layer, x, cos, sin):
        a = layer.self_attn
        n, L, _ = x.shape
        h = layer.input_layernorm(x)
        q = a.q_proj(h).view(n, L, self.h, self.d).transpose(1, 2)
        k = a.k_proj(h).view(n, L, self.hkv, self.d).transpose(1, 2)
        v = a.v_proj(h).view(n, L, self.hkv, self.d).transpose(1, 2)
        q, k = apply_rotary(q, k, cos, sin)  # cos [n, L, D] -> unsqueezed over heads
        return q, k, v

    def _prefill(self, slots: list[int], prompts: list[list[int]]) -> object:
        """Write the prompts' KV into their slots (whose seeds are set); returns each prompt's
        first new token."""
        fill = self._prefill_packed if self.prefill == "packed" else self._prefill_padded
        logits = fill(slots, prompts)
        if self.sampling is None:
            return logits.argmax(-1)
        idx = self.torch.tensor(slots, device=self.device)
        return self._choose(logits, self.seed[idx], self.torch.zeros_like(idx))  # the first token: step 0

    def _choose(self, logits, seeds, steps):
        """The next token of each row: greedy, or drawn from (seed, step) while sampling."""
        if self.sampling is None:
            return logits.argmax(-1)
        return pick(logits, seeds, steps, *self.sampling)

    def _prefill_padded(self, slots: list[int], prompts: list[list[int]]) -> object:
        torch = self.torch
        F = torch.nn.functional
        n, lens = len(prompts), [len(p) for p in prompts]
        L = max(lens)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        ids = torch.tensor([p + [pad] * (L - len(p)) for p in prompts], device=self.device)
        idx = torch.tensor(slots, device=self.device)
        cos, sin = self.cos[:L][None].expand(n, L, -1), self.sin[:L][None].expand(n, L, -1)
        x = self.inner.embed_tokens(ids)
        g = self.h // self.hkv
        for i, layer in enumerate(self.inner.layers):
            q, k, v = self._layer_qkv(layer, x, cos, sin)
            if self.flat:
                self.k[i][idx, :L] = k.transpose(1, 2)
                self.v[i][idx, :L] = v.transpose(1, 2)
            else:
                self.k[i][idx, :, :L] = k
                self.v[i][idx, :, :L] = v
            # right padding under a causal mask: real tokens never see the pads after them
            kk, vv = (k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)) if g > 1 else (k, v)
            attn = F.scaled_dot_product_attention(q, kk, vv, is_causal=True)
            x = _attn_out(layer, x, attn.transpose(1, 2).reshape(n, L, -1))
        last = x[torch.arange(n, device=self.device), torch.tensor(lens, device=self.device) - 1]
        return self.model.lm_head(self.inner.norm(last))  # logits; _prefill picks

    def _prefill_packed(self, slots: list[int], prompts: list[list[int]]) -> object:
        """The prompts back to back (no padding): each token's K/V goes straight into its slot's
        cache row, then one varlen call per layer attends causally within each slot's row. The
        varlen sequences are two per slot, in slot order (as in _varlen): the prompt's keys with
        its queries, then the rest of the row with none; slots outside this group have no keys."""
        torch = self.torch
        from torch.nn.attention.varlen import varlen_attn

        B, T, dev = self.rows, self.max_len, self.device
        order = sorted(range(len(slots)), key=lambda r: slots[r])
        sizes = np.array([len(prompts[r]) for r in order], dtype=np.int64)  # in slot order
        lens = np.zeros(B, dtype=np.int64)
        lens[[slots[r] for r in order]] = sizes
        starts = np.arange(B, dtype=np.int64) * T
        cu_q = np.zeros(2 * B + 1, dtype=np.int64)
        cu_q[1::2] = np.cumsum(lens)
        cu_q[2::2] = cu_q[1::2]
        cu_k = np.zeros(2 * B + 1, dtype=np.int64)
        cu_k[0::2] = np.arange(B + 1) * T
        cu_k[1::2] = starts + lens
        ids = np.concatenate([prompts[r] for r in order])
        pos = np.concatenate([np.arange(len(prompts[r])) for r in order])
        cells = np.repeat(starts[[slots[r] for r in order]], sizes) + pos
        ids_t, pos_t, cells_t = (torch.from_numpy(a).to(dev) for a in (ids, pos, cells))
        cq, ck = (torch.from_numpy(a).to(device=dev, dtype=torch.int32) for a in (cu_q, cu_k))
        extra = self._varlen_kwargs(causal=True)
        if self.h != self.hkv and "enable_gqa" in self._varlen_opts:
            extra["enable_gqa"] = True
        N, max_q = len(ids), int(lens.max())
        x = self.inner.embed_tokens(ids_t)  # [N, hidden]: tokens, not (batch, length)
        cos, sin = self.cos[pos_t], self.sin[pos_t]  # [N, D]; unsqueezed over the heads below
        for i, layer in enumerate(self.inner.layers):
            # [N, heads, D] straight from the projections: the layout varlen and the cache take
            q, k, v = self._qkv(layer, x, cos, sin)
            kf, vf = self.k[i].view(B * T, self.hkv, self.d), self.v[i].view(B * T, self.hkv, self.d)
            kf.index_copy_(0, cells_t, k)
            vf.index_copy_(0, cells_t, v)
            attn = varlen_attn(q, kf, vf, cq, ck, max_q, T, **extra)
            x = self._out(layer, x, attn.reshape(N, self.h * self.d))
        ends = np.cumsum(sizes) - 1
        last_sorted = x[torch.from_numpy(ends).to(dev)]
        inv = np.empty(len(order), dtype=np.int64)
        inv[order] = np.arange(len(order))
        last = last_sorted[torch.from_numpy(inv).to(dev)]  # back to the callers' order
        return self.model.lm_head(self.inner.norm(last))  # logits; _prefill picks

    def _packed_fails(self) -> Optional[str]:
        """Prefill two short prompts both ways: None if the packed path writes the same cache
        (within bf16 rounding), else why not (a PyTorch without GQA varlen, a kernel error)."""
        torch = self.torch
        g = torch.Generator(device="cpu").manual_seed(0)
        prompts = [torch.randint(0, 100, (n,), generator=g).tolist() for n in (7, 19)]
        try:
            with torch.inference_mode():
                self._prefill_padded([0, 1], prompts)
                ref = [self.k[-1][b, :len(p)].float().clone() for b, p in enumerate(prompts)]
                self._prefill_packed([1, 0], prompts[::-1])
        except Exception as e:  # noqa: BLE001 - any failure means: use padded groups
            return _reason(e)
        for b, p in enumerate(prompts):
            if not torch.allclose(self.k[-1][b, :len(p)].float(), ref[b], atol=5e-2, rtol=5e-2):
                return "its cache differs from the padded prefill's on a self-check"
        return None

    def _qkv(self, layer, x, cos, sin):
        """q [N, h, d], k and v [N, hkv, d] of tokens x [N, hidden] at positions cos/sin [N, d]."""
        if self.rope_kernel:
            q, k, v = self._in(layer, x, cos, sin, self.h, self.hkv, self.d, False)
            return decode_attn.rotary(q, cos, sin), decode_attn.rotary(k, cos, sin), v
        return self._in(layer, x, cos, sin, self.h, self.hkv, self.d, True)

    def _rope_fails(self) -> Optional[str]:
        """None if the Triton rotary gives the model's rotary here (llama's equal cos/sin halves,
        a head_dim the kernel takes, the same numbers on random heads), else why not."""
        torch, half = self.torch, self.d // 2
        if not (torch.equal(self.cos[:, :half], self.cos[:, half:]) and torch.equal(self.sin[:, :half],
                                                                                    self.sin[:, half:])):
            return "this model's rotary halves differ"
        try:
            g = torch.Generator(device="cpu").manual_seed(0)
            x = torch.randn(5, self.h, self.d, generator=g).to(device=self.device, dtype=self.dtype)
            at = [0, 1, 7, min(100, self.max_len - 1), self.max_len - 1]
            cos, sin = self.cos[at], self.sin[at]
            ref = apply_rotary(x, x, cos, sin, unsqueeze_dim=1)[0]
            got = decode_attn.rotary(x, cos, sin)
        except Exception as e:  # noqa: BLE001 - any failure means: use the model's rotary
            return _reason(e)
        if not torch.allclose(got.float(), ref.float(), atol=3e-2, rtol=3e-2):
            return "its output differs from the model's rotary on a self-check"
        return None

    def _compile_fails(self) -> Optional[str]:
        """Compile the two layer pieces now (on 2 and 3 tokens: the dynamic-shape graphs every
        later call reuses) and compare them with the eager modules; None if they agree."""
        torch = self.torch
        fin, fout = _compiled(_attn_in), _compiled(_attn_out)
        layer, dims = self.inner.layers[0], (self.h, self.hkv, self.d)
        try:
            with torch.inference_mode():
                for n in (2, 3):
                    x = torch.randn(n, self.inner.embed_tokens.weight.shape[1], device=self.device,
                                    dtype=self.dtype)
                    cos, sin = self.cos[:n], self.sin[:n]
                    got = fin(layer, x, cos, sin, *dims, not self.rope_kernel)
                    ref = _attn_in(layer, x, cos, sin, *dims, not self.rope_kernel)
                    attn = ref[0].reshape(n, -1)
                    got, ref = got + (fout(layer, x, attn),), ref + (_attn_out(layer, x, attn),)
                    for a, b in zip(got, ref):
                        if not torch.allclose(a.float(), b.float(), atol=5e-2, rtol=5e-2):
                            return "compiled layers differ from the eager ones on a self-check"
        except Exception as e:  # noqa: BLE001 - any failure means: run eagerly
            return _reason(e)
        self._in, self._out = fin, fout
        return None

    def _step(self, width: int, r: int) -> None:
        """One decoding step for the first r slots (inactive ones compute but change nothing;
        the engine moves the busy slots below r before it narrows r, see _compact)."""
        torch = self.torch
        F = torch.nn.functional
        B, g = r, self.h // self.hkv
        pos, cur, ar = self.pos[:r], self.cur[:r], self._arange_b[:r]
        cos, sin = self.cos[pos], self.sin[pos]
        x = self.inner.embed_tokens(cur)  # [B, hidden]: one token per slot
        if not self.flat:  # the token at `pos` sees cache positions 0..pos (varlen: from the lengths)
            mask = (torch.arange(width, device=self.device)[None] <= pos[:, None])[:, None, None, :]
        for i, layer in enumerate(self.inner.layers):
            q, k, v = self._qkv(layer, x, cos, sin)  # [B, heads, D]
            kr, vr = self.k[i][:r], self.v[i][:r]  # views: the writes below land in the cache
            if self.flat:
                kr[ar, pos] = k
                vr[ar, pos] = v
                if self.attention == "triton":
                    attn = decode_attn.decode_attention(q, kr, vr, pos, self.d ** -0.5)
                else:
                    attn = self._varlen(q, kr, vr, pos)
                x = self._out(layer, x, attn.reshape(B, self.h * self.d))
                continue
            kr[ar, :, pos] = k
            vr[ar, :, pos] = v
            # grouped-query attention without copying the cache: the g query heads that share
            # a KV head become g "query positions" of one head (same keys, same mask)
            qg, kc, vc = q.reshape(B, self.hkv, g, self.d), kr[:, :, :width], vr[:, :, :width]
            if self.attention == "sdpa":
                attn = F.scaled_dot_product_attention(qg, kc, vc, attn_mask=mask)
            else:  # two strided batched GEMMs: reads each cache row once, no kernel-choice surprises
                scores = torch.matmul(qg, kc.transpose(-1, -2)).float() * self.d ** -0.5
                scores = scores.masked_fill(~mask, float("-inf"))
                attn = torch.matmul(scores.softmax(-1).to(vc.dtype), vc)
            x = self._out(layer, x, attn.reshape(B, self.h * self.d))
        act, n_gen, out = self.active[:r], self.n_gen[:r], self.out[:r]
        nxt = self._choose(self.model.lm_head(self.inner.norm(x)), self.seed[:r], n_gen)
        col = n_gen.clamp(max=out.shape[1] - 1)
        out[ar, col] = torch.where(act, nxt, out[ar, col])
        self.nl_seen[:r] |= act & self.nl_gpu[nxt]
        n_gen += act
        pos += act
        cur.copy_(torch.where(act, nxt, cur))
        act &= ~(nxt[:, None] == self.eos[None]).any(-1) & (n_gen < self.max_new)

    def _varlen_kwargs(self, causal: bool) -> dict:
        """varlen_attn's keywords on this PyTorch: the scale, and either every key of a sequence
        (decoding: a slot's one query sees its whole row) or causal aligned at the end of the
        keys (prefill), as a window where varlen_attn takes one, else as is_causal."""
        if self._varlen_opts is None:
            self._varlen_opts = _varlen_options()
        kw = {"scale": self.d ** -0.5}
        if "window_size" in self._varlen_opts:
            kw["window_size"] = (-1, 0) if causal else (-1, -1)
        elif causal or "is_causal" in self._varlen_opts:
            kw["is_causal"] = causal
        return kw

    def _varlen(self, q, kc, vc, pos):
        """FlashAttention varlen over the slot-major cache: slot b's keys are rows b*T..b*T+pos[b]
        of the flattened cache, and the unused rest of its row is a key sequence with no
        queries (skipped by the kernel). The g query heads of a KV head are g queries."""
        import torch
        from torch.nn.attention.varlen import varlen_attn

        B, T, g = len(pos), self.max_len, self.h // self.hkv
        if B not in self._cu:  # static offsets per row count (a captured graph reads them)
            cu_q = torch.arange(2 * B + 1, device=self.device, dtype=torch.int32).add(1).div(
                2, rounding_mode="floor").mul(g).to(torch.int32)  # 0, g, g, 2g, 2g, ... Bg
            cu_k = torch.zeros(2 * B + 1, device=self.device, dtype=torch.int32)
            cu_k[0::2] = torch.arange(B + 1, device=self.device, dtype=torch.int32) * T
            self._cu[B] = (cu_q, cu_k)
        cu_q, cu_k = self._cu[B]
        cu_k[1::2] = (self._arange_b[:B] * T + pos + 1).to(torch.int32)
        qp = q.reshape(B, self.hkv, g, self.d).transpose(1, 2).reshape(B * g, self.hkv, self.d)
        out = varlen_attn(qp, kc.view(B * T, self.hkv, self.d), vc.view(B * T, self.hkv, self.d),
                          cu_q, cu_k, g, T, **self._varlen_kwargs(causal=False))
        return out.view(B, g, self.hkv, self.d).transpose(1, 2).reshape(B, 1, self.h * self.d)

    def _run_step(self, width: int, r: int) -> None:
        torch = self.torch
        if not self.graphs:
            with torch.inference_mode():
                self._step(width, r)
            return
        # temperature and top_p are constants of the captured kernels: part of the key
        key = (width, r, self.sampling)
        graph = self._graphs.get(key)
        if graph is None:
            # warm up on a side stream (cuBLAS/SDPA workspaces), then capture; the warm-up
            # step's effects are undone by saving and restoring the state it changes
            state = (self.cur, self.pos, self.n_gen, self.active, self.out, self.nl_seen)
            saved = [t.clone() for t in state]
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s), torch.inference_mode():
                self._step(width, r)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool), torch.inference_mode():
                self._step(width, r)
            self._pool = graph.pool()
            for t, v in zip(state, saved):
                t.copy_(v)
            self._graphs[key] = graph
        graph.replay()

    # ------------------------------------------------------------------ driver
    def generate(self, prompts: list[list[int]], max_new_tokens: int, prefill_tokens: int = 65536,
                 sampling: Optional[tuple[list[int], float, float]] = None) -> tuple[list[str], list[int]]:
        """Greedy completions (new text only, cut at the guard's stop rule) and their token
        counts, in the order of `prompts`; sampling = (one 32-bit seed per prompt, temperature,
        top_p) draws them instead (guardrsft.sampling)."""
        torch = self.torch
        seeds = sampling[0] if sampling else None
        self.sampling = (float(sampling[1]), float(sampling[2])) if sampling else None
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.max_len:
            raise ValueError(f"prompt of {longest} tokens + {max_new_tokens} new exceeds the engine's {self.max_len}")
        B = r = self.rows  # r: the slots decoded now (the first r; fewer once the queue is empty)
        if self.out is None or self.out.shape[1] != max_new_tokens:
            self.out = torch.zeros((B, max_new_tokens), dtype=torch.long, device=self.device)
            self._graphs.clear()  # graphs captured the old buffer
        self.max_new.fill_(max_new_tokens)
        self.active.zero_()
        self.n_gen.zero_()
        self.pos.zero_()
        st = {"prompts": len(prompts), "prefill_s": 0.0, "decode_s": 0.0, "host_s": 0.0, "steps": 0,
              "slot_steps": 0, "row_steps": 0, "prefill_calls": 0, "compactions": 0}
        t_start = time.perf_counter()
        done: list[Optional[list[int]]] = [None] * len(prompts)  # token ids, decoded at the end in one call
        counts = [0] * len(prompts)
        slot_of: list[Optional[int]] = [None] * B  # prompt index in each slot
        checked = np.zeros(B, dtype=np.int64)  # tokens already scanned for the stop rule
        host_pos = np.zeros(B, dtype=np.int64)
        queue = 0
        refill_at = max(1, B // 16)  # prefill in groups: one small prefill per freed slot is slow

        def finish(b: int, toks: list[int]) -> None:
            j = slot_of[b]
            done[j] = toks
            counts[j] = len(toks)
            slot_of[b] = None

        while True:
            free = [b for b in range(B) if slot_of[b] is None]
            if queue < len(prompts) and (len(free) >= refill_at or len(free) == B):
                while free and queue < len(prompts):
                    group, budget = [], prefill_tokens
                    while free and queue < len(prompts) and (not group or budget >= len(prompts[queue])):
                        group.append((free.pop(0), queue))
                        budget -= len(prompts[queue])
                        queue += 1
                    slots = [b for b, _ in group]
                    tp = time.perf_counter()
                    with torch.inference_mode():
                        idx = torch.tensor(slots, device=self.device)
                        if seeds is not None:
                            self.seed[idx] = torch.tensor([seeds[j] for _, j in group], device=self.device)
                        first = self._prefill(slots, [prompts[j] for _, j in group])
                        self.cur[idx] = first
                        self.out[idx, 0] = first
                        self.n_gen[idx] = 1
                        self.pos[idx] = torch.tensor([len(prompts[j]) for _, j in group], device=self.device)
                        self.active[idx] = ~(first[:, None] == self.eos[None]).any(-1) & (max_new_tokens > 1)
                        self.nl_seen[idx] = self.nl_gpu[first]
                    for b, j in group:
                        slot_of[b], checked[b], host_pos[b] = j, 0, len(prompts[j])
                    if self.device.type == "cuda":
                        torch.cuda.synchronize()
                    st["prefill_s"] += time.perf_counter() - tp
                    st["prefill_calls"] += 1
            if all(s is None for s in slot_of):
                break
            width = min(self.max_len, _round_up(int(host_pos.max()) + self.sync_every + 1, self.width_step))
            t0 = time.perf_counter()
            for _ in range(self.sync_every):
                self._run_step(width, r)
            # small per-slot state only; the token rows come over just for the slots to look at
            n_gen = self.n_gen.cpu().numpy()  # waits for the steps
            active = self.active.cpu().numpy()
            seen = self.nl_seen.cpu().numpy()
            host_pos = self.pos.cpu().numpy().copy()
            t1 = time.perf_counter()
            st["decode_s"] += t1 - t0
            st["steps"] += self.sync_every
            st["row_steps"] += self.sync_every * r
            st["slot_steps"] += self.sync_every * sum(s is not None for s in slot_of)
            # rows that wrote a newline since the last scan (the only ones whose verdict line can
            # have completed; flagged on the GPU) and rows the GPU stopped
            look = [b for b in np.nonzero(seen | ~active)[0].tolist() if slot_of[b] is not None]
            self.nl_seen.zero_()
            rows = self.out[torch.tensor(look, device=self.device)].cpu().numpy() if look else None
            stop_now = []
            for i, b in enumerate(look):
                n = int(n_gen[b])
                row = rows[i, :n]
                cut = None
                for t in (checked[b] + np.nonzero(self.newline[row[checked[b]:]])[0]).tolist():
                    if self._completes(row, t):
                        cut = t + 1
                        break
                if cut is not None:
                    stop_now.append(b)
                    finish(b, row[:cut].tolist())
                elif not active[b]:
                    toks = row.tolist()
                    if toks and toks[-1] in self.eos_set:
                        toks = toks[:-1]  # end of turn: not part of the text, not counted (pad = eos)
                    finish(b, toks)
            checked[:] = n_gen
            if stop_now:
                self.active[torch.tensor(stop_now, device=self.device)] = False
            host_pos[[b for b in range(B) if slot_of[b] is None]] = 0
            busy = sum(s is not None for s in slot_of)
            if queue >= len(prompts) and busy:  # the tail: decode only as many rows as are busy
                r_new = self._narrower(r, busy)
                if r_new < r:
                    self._compact(r_new, slot_of, checked, host_pos)
                    r = r_new
                    st["compactions"] += 1
            st["host_s"] += time.perf_counter() - t1
        texts = self.tok.batch_decode([t or [] for t in done], skip_special_tokens=True)
        st["seconds"] = time.perf_counter() - t_start
        self.stats = {k: round(v, 3) if isinstance(v, float) else v for k, v in st.items()}
        # busy slots over the rows the steps computed
        self.stats["slot_occupancy"] = round(st["slot_steps"] / max(st["row_steps"], 1), 3)
        return texts, counts

    def _narrower(self, r: int, busy: int) -> int:
        """The row count for `busy` slots: r halved while they fit (at least rows/32 rows, so
        that a long tail does not capture a graph for every small count)."""
        floor = max(1, self.rows // 32)
        while r // 2 >= max(busy, floor):
            r //= 2
        return r

    def _compact(self, r: int, slot_of: list, checked, host_pos) -> None:
        """Move the busy slots at r or above into free slots below r (cache rows up to each
        slot's length, decoding state, host bookkeeping), so that steps over the first r rows
        decode every busy slot. Only in the tail, when no prompt waits for a slot."""
        torch = self.torch
        src = [b for b in range(r, self.rows) if slot_of[b] is not None]
        dst = [b for b in range(r) if slot_of[b] is None][:len(src)]
        if src:
            s_t, d_t = torch.tensor(src, device=self.device), torch.tensor(dst, device=self.device)
            n = int(host_pos[src].max()) + 1  # cache cells written so far (pos, plus the next one)
            with torch.inference_mode():
                for kv in (self.k, self.v):
                    for c in kv:
                        if self.flat:
                            c[d_t, :n] = c[s_t, :n]
                        else:
                            c[d_t, :, :n] = c[s_t, :, :n]
                for t in (self.cur, self.pos, self.n_gen, self.active, self.out, self.nl_seen, self.seed):
                    t[d_t] = t[s_t]
                self.active[s_t] = False
        for a, b in zip(src, dst):
            slot_of[b], slot_of[a] = slot_of[a], None
            checked[b], host_pos[b], host_pos[a] = checked[a], host_pos[a], 0

    def _completes(self, row, t: int) -> bool:
        """Does the newline in token t complete a verdict line? Lines before it ended at earlier
        newline tokens, already checked, so only the text since the previous newline token is
        decoded (that token's text up to its last newline dropped): the stop rule's answer on the
        whole text at a fraction of the decoding."""
        prev = np.nonzero(self.newline[row[:t]])[0]
        start = int(prev[-1]) if len(prev) else 0
        if not self.colon[row[start:t + 1]].any():  # no colon, no verdict line: skip the decoding
            return False
        text = self.tok.decode(row[start:t + 1].tolist(), skip_special_tokens=True)
        if len(prev):
            head = self.tok.decode(row[start:start + 1].tolist(), skip_special_tokens=True)
            text = text[head.rfind("\n") + 1:] if "\n" in head else text
        return verdict_complete(text)


# transformers' own stop strings for the fallback path: the verdict line up to its newline
STOP_STRINGS = [f"\nClassification: {v}{end}\n" for v in ("SAFE", "UNSAFE") for end in ("", ".")]


def _generate_hf(model, tok, prompts: list[list[int]], max_new_tokens: int) -> tuple[list[str], list[int]]:
    """Models the engine does not support: one left-padded static batch through `generate`
    with a static cache (compiled by transformers) and the stop rule on the GPU."""
    import torch

    pad = tok.pad_token_id
    width = _round_up(max(len(x) for x in prompts), 128)
    ids = torch.tensor([[pad] * (width - len(x)) + x for x in prompts], device=model.device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in prompts], device=model.device)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             temperature=None, top_p=None, top_k=None, pad_token_id=pad,
                             cache_implementation="static", stop_strings=STOP_STRINGS, tokenizer=tok)
    gen = out[:, width:]
    return tok.batch_decode(gen, skip_special_tokens=True), (gen != pad).sum(dim=1).tolist()


def generate_static(model, tok, prompts: list[list[int]], max_new_tokens: int, rows: int,
                    width_step: int = 128, sampling: Optional[tuple[list[int], float, float]] = None
                    ) -> tuple[list[str], list[int]]:
    """Greedy completions (new text only) and new-token counts for any number of prompts,
    decoded through `rows` slots (sampled instead with `sampling`, see SlotEngine.generate).
    The engine (KV cache, captured graphs) is kept on the model and reused while it is large
    enough."""
    if supported(model) is not None:
        if sampling is not None:
            raise ValueError(f"the slot engine cannot sample this model ({supported(model)}): use the plain path")
        out = ([], [])
        for b in range(0, len(prompts), rows):
            t, c = _generate_hf(model, tok, prompts[b:b + rows], max_new_tokens)
            out[0].extend(t)
            out[1].extend(c)
        return out
    need = max(len(p) for p in prompts) + max_new_tokens
    eng = getattr(model, "_guardrsft_engine", None)
    attention = resolve_attention(DEFAULTS["attention"], model.device.type)
    prefill = os.environ.get("GUARDRSFT_FASTGEN_PREFILL") or DEFAULTS["prefill"]
    compile_ = None if os.environ.get("GUARDRSFT_FASTGEN_COMPILE", "1") != "0" else False
    if (eng is None or eng.rows != rows or eng.max_len < need or eng.requested != attention
            or eng.requested_prefill != prefill or (compile_ is False and eng.compiled)):
        if eng is not None:
            model._guardrsft_engine = eng = None
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        eng = SlotEngine(model, tok, rows=rows, max_len=max(need, 512), width_step=width_step,
                         sync_every=DEFAULTS["sync_every"], attention=attention, prefill=prefill, compile=compile_)
        model._guardrsft_engine = eng
    eng.sync_every = DEFAULTS["sync_every"]
    eng.graphs = (eng.device.type == "cuda") if DEFAULTS["graphs"] is None else DEFAULTS["graphs"]
    return eng.generate(prompts, max_new_tokens, sampling=sampling)
