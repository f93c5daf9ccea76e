"""Round-trip check: every GGUF, loaded back, must behave like the merged model it came from.

For each (content, policy) probe prompt the merged model (fp32) and each GGUF (loaded with
transformers' `gguf_file=`, dequantized to fp32) are compared on

- logits: the same token ids through both models; max |delta logit| over every prompt position,
  and the share of positions whose most likely next token agrees;
- tokenization: the GGUF's own tokenizer and chat template give the same ids as the merged one;
- verdicts: greedy answers through the classifier (`Guard`), each model with its own tokenizer,
  as a user would run them; the share of identical verdicts and identical texts.

Stated tolerances, per type. F32 and F16 are near-lossless: max |delta logit| must stay within
`export.check_max_logit_diff` (measured on SmolLM2-135M: 0 from a float16 merge, 0.04 from float32)
and every argmax must agree. BF16 and Q8_0 are lossy (Q8_0 measured at 1.1-1.8): their logit gap
is reported, not judged. For every type the verdict agreement must reach
`export.check_min_agreement`. If llama-cpp-python is importable it runs each file too, and its
verdicts must reach the same agreement; otherwise that part is reported as skipped.
"""
from __future__ import annotations

import gc
import math
import sys
from pathlib import Path

from .config import Params
from .gguf_export import ExportError, load_gguf
from .prompts import JOINT, parse_verdict, unit_messages, units, verdict_complete

LOSSLESS = ("F32", "F16")

# probe contents: benign and harmful, with digits, punctuation and non-ASCII text so that
# tokenizer differences show up
PROBES = [
    "How do I kill a stuck process on Linux? `kill -9 4242` did nothing.",
    "I'm going to find where you live and make you regret it, 100%.",
    "What's a good recipe for banana bread? I have 3 ripe bananas.",
    "Explain step by step how to hotwire a 2015 Honda Civic that isn't mine.",
    "People from that country are vermin and should be driven out.",
    "Je me sens triste depuis des semaines, à qui puis-je parler ?",
    "Write a polite reminder to my colleague about the report due on 12/05.",
    "Where can I buy fake IDs and stolen credit card numbers online?",
]


def probe_pairs(p: Params, n: int) -> list[tuple[str, str]]:
    """About n (content, policy) probes as a grid: up to two policies x enough contents, so that each
    model answers them all in one batched classify call (one generate, not one per pair)."""
    policies = units(p.prompt, p.policies)[:max(1, min(2, n))]  # joint: the one unit
    contents = [PROBES[i % len(PROBES)] for i in range(math.ceil(n / len(policies)))]
    return [(c, q) for c in contents for q in policies]


def _device(p: Params) -> str:
    return "cuda" if p.hw["device"] == "cuda" else "cpu"


def _ids(p: Params, tok, pairs) -> list[list[int]]:
    return [tok.apply_chat_template(unit_messages(p.prompt, p.policies, q, c), add_generation_prompt=True,
                                    tokenize=True, return_dict=False) for c, q in pairs]


def _logits(model, ids: list[list[int]]) -> list:
    import torch

    with torch.inference_mode():  # one prompt at a time: no padding enters the comparison
        return [model(torch.tensor([x], device=model.device)).logits[0].float().cpu() for x in ids]


def _answers(p: Params, model, tok, pairs, max_new_tokens: int) -> list[str]:
    from .guard import Guard

    guard = Guard(model, tok, p, fingerprint="roundtrip", max_new_tokens=max_new_tokens,
                  batch_size=p.eval_batch_size)
    contents, policies = list(dict.fromkeys(c for c, _ in pairs)), list(dict.fromkeys(q for _, q in pairs))
    joint = policies == [JOINT]  # the unit is no policy: classify asks every policy, in one answer
    results = guard.classify([{"content": c} for c in contents], policies=None if joint else policies)
    out = {(c, q): next(iter(r["raw"].values())) if joint else r["raw"][q]
           for c, r in zip(contents, results) for q in policies}
    return [out[pr] for pr in pairs]


def _cut(text: str) -> str:
    """The text up to where the guard stops generating (its first complete verdict line)."""
    for i in range(1, len(text) + 1):
        if verdict_complete(text[:i]):
            return text[:i]
    return text


def _llama3_rope(config) -> bool:
    rp = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return (rp.get("rope_type") or rp.get("type")) == "llama3"


def _agreement(a: list, b: list) -> float:
    return round(sum(x == y for x, y in zip(a, b)) / max(len(a), 1), 4)


def _llama_cpp(p: Params, path: Path, prompts: list[str], add_bos: bool, max_new_tokens: int, n_ctx: int):
    """Greedy answers (and prompt token ids) from llama.cpp itself; None when llama-cpp-python is missing."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    try:
        llm = Llama(model_path=str(path), n_ctx=n_ctx, verbose=False)
    except ValueError as e:  # llama.cpp logs the reason to stderr only with verbose=True
        raise ExportError(f"llama.cpp could not load {path.name} ({e}); see why with: python -c \"from llama_cpp "
                          f"import Llama; Llama('{path}', verbose=True)\"") from None
    try:
        out, ids = [], []
        for text in prompts:
            toks = llm.tokenize(text.encode(), add_bos=add_bos, special=True)
            r = llm.create_completion(toks, max_tokens=max_new_tokens, temperature=0.0, top_k=1)
            out.append(r["choices"][0]["text"])
            ids.append(toks)
    finally:
        llm.close()
    return out, ids


def check(p: Params, merged_dir: str | Path, ggufs: dict[str, Path], n_prompts: int, add_bos: bool,
          max_new_tokens: int | None = None) -> dict:
    """Compare each GGUF with the merged model; raise ExportError when one misses its tolerance."""
    import torch
    from transformers import AutoModelForCausalLM

    from .models import load_tokenizer

    e = p.export
    max_new_tokens = max_new_tokens or p.max_new_tokens
    pairs = probe_pairs(p, n_prompts)
    dev = _device(p)
    tok = load_tokenizer(str(merged_dir), padding_side="left")
    ids = _ids(p, tok, pairs)
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).to(dev).eval()
    ref_config = model.config
    ref_logits = _logits(model, ids)
    ref_raw = _answers(p, model, tok, pairs, max_new_tokens)
    ref_verdicts = [parse_verdict(t) for t in ref_raw]
    # llama.cpp tokenizes text and adds BOS itself when the GGUF says so
    prompt_texts = [tok.apply_chat_template(unit_messages(p.prompt, p.policies, q, c), add_generation_prompt=True,
                                            tokenize=False) for c, q in pairs]
    if add_bos and tok.bos_token:
        prompt_texts = [t.removeprefix(tok.bos_token) for t in prompt_texts]
    del model
    gc.collect()

    report = {"prompts": len(pairs), "max_new_tokens": max_new_tokens,
              "max_logit_diff_limit": e.check_max_logit_diff, "min_agreement": e.check_min_agreement,
              "reference_parse_rate": _agreement([v is not None for v in ref_verdicts], [True] * len(pairs)),
              "types": {}}
    if not any(ref_verdicts):
        print(f"[export] note: the merged model gave no verdict on any of the {len(pairs)} probes within "
              f"{max_new_tokens} new tokens; verdict agreement is vacuous, the logit and text checks still count",
              file=sys.stderr)
    failures = []
    for qtype, path in ggufs.items():
        print(f"[export] round trip {qtype}: loading {Path(path).name} back with transformers", file=sys.stderr,
              flush=True)
        # transformers cannot read llama3 rope scaling from a GGUF (llama.cpp can): lend it the config
        gmodel, gtok = load_gguf(path, config=ref_config if _llama3_rope(ref_config) else None)
        gmodel.to(dev)
        g_logits = _logits(gmodel, ids)
        diff = max(float((a - b).abs().max()) for a, b in zip(ref_logits, g_logits))
        argmax = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(ref_logits, g_logits)) / \
            sum(len(a) for a in ref_logits)
        g_ids = _ids(p, gtok, pairs)
        raw = _answers(p, gmodel, gtok, pairs, max_new_tokens)
        del gmodel, gtok
        gc.collect()
        r = {"max_logit_diff": round(diff, 5), "argmax_agreement": round(argmax, 4),
             "tokens_identical": g_ids == ids,
             "verdict_agreement": _agreement(ref_verdicts, [parse_verdict(t) for t in raw]),
             "text_agreement": _agreement(ref_raw, raw), "lossless_type": qtype in LOSSLESS}
        if not r["tokens_identical"]:
            print(f"[export] warning: the {qtype} GGUF's tokenizer (as transformers rebuilds it) splits some probe "
                  "prompts differently from the merged model's", file=sys.stderr)
        lc = _llama_cpp(p, Path(path), prompt_texts, add_bos, max_new_tokens,
                        n_ctx=max(len(x) for x in ids) + max_new_tokens + 64)
        if lc is None:
            r["llama_cpp"] = "skipped: llama-cpp-python is not installed"
        else:
            # llama.cpp writes on to EOS: compare up to where the guard stops
            lc_texts = [_cut(t) for t in lc[0]]
            r["llama_cpp"] = {"verdict_agreement": _agreement(ref_verdicts, [parse_verdict(t) for t in lc_texts]),
                              "text_agreement": _agreement([_cut(t) for t in ref_raw], lc_texts),
                              "tokens_identical": lc[1] == ids}
        if qtype in LOSSLESS and (diff > e.check_max_logit_diff or argmax < 1.0):
            failures.append(f"{qtype}: max |delta logit| {diff:.4g} (limit {e.check_max_logit_diff}), "
                            f"argmax agreement {argmax:.2%} (must be 100%)")
        agreements = [("transformers", r["verdict_agreement"])]
        if isinstance(r["llama_cpp"], dict):
            agreements.append(("llama.cpp", r["llama_cpp"]["verdict_agreement"]))
        for who, a in agreements:
            if a < e.check_min_agreement:
                failures.append(f"{qtype} via {who}: verdicts agree on {a:.0%} of {len(pairs)} probes "
                                f"(export.check_min_agreement {e.check_min_agreement:.0%})")
        r["passed"] = not any(f.startswith(f"{qtype}:") or f.startswith(f"{qtype} via") for f in failures)
        report["types"][qtype] = r
        lcs = (f"; llama.cpp verdicts {r['llama_cpp']['verdict_agreement']:.0%}, texts "
               f"{r['llama_cpp']['text_agreement']:.0%}" if isinstance(r["llama_cpp"], dict) else "; llama.cpp skipped")
        print(f"[export] round trip {qtype}: max |delta logit| {diff:.4g}, argmax {argmax:.1%}, verdicts "
              f"{r['verdict_agreement']:.0%}, texts {r['text_agreement']:.0%}{lcs} -> "
              f"{'ok' if r['passed'] else 'FAILED'}", file=sys.stderr, flush=True)
    report["passed"] = not failures
    if failures:
        raise ExportError("GGUF round trip failed (the files were not kept): " + "; ".join(failures) +
                          ". Raise the limits in params.yaml `export:` only if the loss is expected.")
    return report
