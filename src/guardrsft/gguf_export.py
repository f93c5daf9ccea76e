"""GGUF files for llama.cpp and Ollama, written with the `gguf` package alone.

    write_gguf("models/merged", "models/gguf/guardrsft-Q8_0.gguf", "Q8_0")
    model, tok = load_gguf("models/gguf/guardrsft-Q8_0.gguf")   # back into transformers

`gguf` ships the writer, the tensor name map and the quantizers but not llama.cpp's HF
converter, so this module does the converter's work for the one architecture guardrsft
trains: `llama` (SmolLM2, Llama 2 and 3.x). Tensors are streamed one at a time (an 8B model
never sits in memory twice) into a temp file that replaces the target only when complete.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Optional

from .io import atomic_path
from .models import ModelError, gguf_load_once

# the types llama.cpp and transformers both read, and `gguf` can write
QTYPES = ("F32", "F16", "BF16", "Q8_0")

# Split regexes of tokenizer.json -> llama.cpp's pre-tokenizer names (tokenizer.ggml.pre)
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


class ExportError(ModelError):
    """A model this exporter cannot convert, or an export that failed its check."""


def _config(model_dir: Path) -> dict:
    f = model_dir / "config.json"
    if not f.exists():
        raise ExportError(f"{model_dir}: no config.json; GGUF export needs a merged model folder (from export)")
    cfg = json.loads(f.read_text())
    if cfg.get("model_type") != "llama":
        raise ExportError(f"{model_dir}: GGUF export supports the `llama` architecture (SmolLM2, Llama 2/3.x); "
                          f"this model is `{cfg.get('model_type')}`. Set `export.gguf_types: []` in params.yaml "
                          "and convert models/merged with llama.cpp's convert_hf_to_gguf.py instead.")
    return cfg


def _rope(cfg: dict) -> tuple[float, dict]:
    # transformers 5 writes `rope_parameters`; older configs `rope_theta` + `rope_scaling`
    rp = dict(cfg.get("rope_scaling") or {}, **(cfg.get("rope_parameters") or {}))
    theta = float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    return theta, rp


def _permute(w, n_head: int):
    """HF's rotate-half q/k row order -> the interleaved pairs llama.cpp's RoPE expects
    (transformers' GGUF loader undoes exactly this)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_factors(head_dim: int, theta: float, rp: dict):
    """Llama 3.1+ frequency scaling, stored as the `rope_freqs` tensor llama.cpp divides by."""
    import numpy as np

    factor, lo, hi = rp["factor"], rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
    old_ctx = rp.get("original_max_position_embeddings", 8192)
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old_ctx / hi:
            out.append(1.0)
        elif wavelen > old_ctx / lo:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def pre_tokenizer_name(tokenizer_json: dict) -> Optional[str]:
    """llama.cpp's name for the way this tokenizer splits text before BPE, or None if unknown."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"  # llama.cpp's spelling (it rejects "gpt2" here)
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and (steps[0].get("pattern") or {}).get("Regex") == _LLAMA3_SPLIT:
        return "llama-bpe"
    return None


def _byte_level(step: dict | None) -> bool:
    """A ByteLevel decoder, alone or inside a Sequence: transformers' GGUF converter (5.x) writes
    Sequence[ByteFallback, Fuse, Replace, ByteLevel] for the same byte-level vocabulary."""
    step = step or {}
    return step.get("type") == "ByteLevel" or any(_byte_level(d) for d in step.get("decoders") or [])


def _vocab(model_dir: Path, n_vocab: int):
    """Tokens by id (byte-level spelling, as llama.cpp's `gpt2` model wants), their types, and BOS/EOS flags."""
    import gguf
    from transformers import AutoTokenizer

    tj = json.loads((model_dir / "tokenizer.json").read_text()) if (model_dir / "tokenizer.json").exists() else {}
    if (tj.get("model") or {}).get("type") != "BPE" or not _byte_level(tj.get("decoder")):
        raise ExportError(f"{model_dir}: GGUF export needs a byte-level BPE tokenizer.json (SmolLM2, Llama 3); "
                          "convert sentencepiece models (Llama 2) with llama.cpp's convert_hf_to_gguf.py")
    tok = AutoTokenizer.from_pretrained(model_dir)
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    plain = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a")["input_ids"]
    add_bos = len(full) > len(plain) and full[0] == tok.bos_token_id
    add_eos = len(full) > len(plain) and full[-1] == tok.eos_token_id
    return tokens, types, add_bos, add_eos, pre_tokenizer_name(tj)


def _tensor_files(model_dir: Path) -> dict[str, Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        wm = json.loads(index.read_text())["weight_map"]
        return {k: model_dir / v for k, v in wm.items()}
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{model_dir}: no *.safetensors weights to convert")
    from safetensors import safe_open

    out = {}
    for f in files:
        with safe_open(f, framework="pt") as sf:
            out.update({k: f for k in sf.keys()})
    return out


def _out_type(qtype: str, shape: tuple):
    import gguf

    Q = gguf.GGMLQuantizationType
    # norms and other vectors stay F32, as llama.cpp's converter keeps them
    if len(shape) == 1:
        return Q.F32
    if qtype == "Q8_0" and shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] != 0:
        return Q.F16  # a row that does not fill whole blocks cannot be Q8_0
    return getattr(Q, qtype)


def write_gguf(model_dir: str | Path, out_path: str | Path, qtype: str = "F16", name: Optional[str] = None,
               license: Optional[str] = None) -> dict:
    """Convert a merged HF llama model folder to one GGUF file; returns what was written.
    `name` and `license` (the Hub licence id) go to general.name and general.license."""
    import gguf
    import numpy as np
    from safetensors import safe_open

    if qtype not in QTYPES:
        raise ExportError(f"GGUF type {qtype!r} is not supported; use one of {', '.join(QTYPES)}")
    t0 = time.time()
    model_dir, out_path = Path(model_dir), Path(out_path)
    cfg = _config(model_dir)
    n_head, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    theta, rp = _rope(cfg)
    rope_type = rp.get("rope_type") or rp.get("type") or "default"
    if rope_type not in ("default", "linear", "llama3"):
        raise ExportError(f"{model_dir}: rope scaling `{rope_type}` is not supported by this exporter "
                          "(default, linear and llama3 are); use llama.cpp's convert_hf_to_gguf.py")
    tokens, types, add_bos, add_eos, pre = _vocab(model_dir, cfg["vocab_size"])
    files = _tensor_files(model_dir)
    tied = cfg.get("tie_word_embeddings", False)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg["num_hidden_layers"])

    # plan: (gguf name, hf name or None for generated, out type, shape); shapes come from headers only
    plan, shapes = [], {}
    for hf, f in files.items():
        if hf.endswith("rotary_emb.inv_freq") or (hf == "lm_head.weight" and tied):
            continue
        with safe_open(f, framework="pt") as sf:
            shapes[hf] = tuple(sf.get_slice(hf).get_shape())
        g = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if g is None:
            raise ExportError(f"{model_dir}: tensor {hf!r} has no GGUF name for the llama architecture")
        plan.append((g, hf, _out_type(qtype, shapes[hf]), shapes[hf]))
    if not tied and "lm_head.weight" not in files:
        raise ExportError(f"{model_dir}: lm_head.weight missing and tie_word_embeddings is false")
    if rope_type == "llama3":
        plan.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", None,
                     gguf.GGMLQuantizationType.F32, (head_dim // 2,)))

    w = gguf.GGUFWriter(None, "llama")
    w.add_type("model")
    w.add_name(name or cfg.get("_model_name_or_path") or model_dir.name)
    if license:
        w.add_license(license)
    w.add_finetune("guardrsft-rsft")
    n_params = sum(math.prod(s) for s in shapes.values())
    w.add_size_label(gguf.size_label(n_params, 0, 0, 0))
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(head_dim)
    if head_dim != cfg["hidden_size"] // n_head:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if rope_type == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rp["factor"])
    w.add_file_type({"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                     "BF16": gguf.LlamaFileType.MOSTLY_BF16, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("gpt2")
    if pre is None:
        print(f"[export] warning: {model_dir}/tokenizer.json splits text in a way this exporter does not know; "
              "writing tokenizer.ggml.pre=default (llama.cpp may tokenize some text differently)", flush=True)
    w.add_tokenizer_pre(pre or "default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    special.add_special_token = {}  # replaced by what the tokenizer is seen to do
    special.add_to_gguf(w, quiet=True)
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(add_eos)

    for g, hf, ot, shape in plan:
        nbytes = math.prod(gguf.quant_shape_to_byte_shape(shape, ot)) if ot.name == "Q8_0" else \
            math.prod(shape) * {"F32": 4, "F16": 2, "BF16": 2}[ot.name]
        byte_shape = gguf.quant_shape_to_byte_shape(shape, ot) if ot.name in ("Q8_0", "BF16") else shape
        np_dtype = np.uint8 if ot.name in ("Q8_0", "BF16") else (np.float32 if ot.name == "F32" else np.float16)
        w.add_tensor_info(g, byte_shape, np.dtype(np_dtype), nbytes, raw_dtype=ot if np_dtype is np.uint8 else None)

    with atomic_path(out_path) as tmp:
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for g, hf, ot, shape in plan:
            if hf is None:
                data = _llama3_rope_factors(head_dim, theta, rp)
            else:
                with safe_open(files[hf], framework="pt") as sf:
                    data = sf.get_tensor(hf).float().numpy()
                if re.search(r"self_attn\.q_proj\.", hf):
                    data = _permute(data, n_head)
                elif re.search(r"self_attn\.k_proj\.", hf):
                    data = _permute(data, n_kv)
            w.write_tensor_data(gguf.quants.quantize(np.ascontiguousarray(data), ot))
        w.close()
        os.chmod(tmp, 0o644)  # mkstemp made it private; a model file is for sharing
    return {"path": str(out_path), "type": qtype, "bytes": out_path.stat().st_size, "tensors": len(plan),
            "pre_tokenizer": pre or "default", "add_bos": add_bos, "seconds": round(time.time() - t0, 2)}


def load_gguf(path: str | Path, padding_side: str = "left", config=None):
    """(model, tokenizer) from a GGUF file through transformers' `gguf_file=` (weights dequantized to fp32).

    transformers ignores `rope_freqs` (Llama 3.1+ rope scaling) and runs plain RoPE; pass the
    merged model's `config` to compare like with like (llama.cpp applies the tensor)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GGUF file not found (export writes models/gguf/*.gguf)")
    with gguf_load_once():
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                     **({"config": config} if config is not None else {}))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    model.eval()
    return model, tok
