"""export: merged model, GGUF (written with `gguf`, read back by transformers), Modelfile, card,
Hub push messages, and the classify / classify-file commands on the exported files.

Most tests use a 2-layer random Llama with a ChatML byte-level tokenizer (seconds); one test
exports a LoRA adapter on the embedded SmolLM2-135M for real (about a minute)."""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from guardrsft.config import load_params
from typer.testing import CliRunner

from conftest import ROOT
from fixtures.tiny_model import CHATML, make_tokenizer

runner = CliRunner()
# the structure of Llama 3's template: BOS, header tokens, a system block written even without a system turn
LLAMA3 = ("{{- bos_token }}{%- if messages[0]['role'] == 'system' %}{%- set sys = messages[0]['content'] %}"
          "{%- set messages = messages[1:] %}{%- else %}{%- set sys = '' %}{%- endif %}"
          "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\n{{ sys }}<|eot_id|>"
          "{%- for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
          "{%- endfor %}{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif %}")


TINY_LICENSE = "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT (the tiny base's copy)\n"
# what evaluate writes (metrics/eval.json), reduced to the keys the card reads
EVAL = {"exact_match": 0.5, "binary_accuracy": 0.75, "harmful_f1": 0.6, "macro_f1": 0.4, "baseline": {},
        "benchmarks": {"toxicchat": {"exact_match": 0.25, "binary_accuracy": 0.8, "harmful_f1": None}}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model is slower with 2 threads on 2 busy cores (4x, measured): use one."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield n
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random 2-layer Llama (GQA: 4 query heads, 2 kv heads) and a LoRA adapter with nonzero B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    d = tmp_path_factory.mktemp("tiny")
    tok = make_tokenizer(d / "base")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(d / "base")
    # a Llama 3.2 base by its own card (its folder name says nothing), with its licence text
    (d / "base/README.md").write_text("---\nlicense: llama3.2\nlibrary_name: transformers\n---\n# tiny\n")
    (d / "base/LICENSE").write_text(TINY_LICENSE)
    peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(d / "adapter")
    return d


def tiny_params(params, **export):
    params.evaluate.max_new_tokens = 6
    params.mlflow.enabled = False
    params.export.check_prompts = 3
    for k, v in export.items():
        setattr(params.export, k, v)
    return params


@pytest.fixture(scope="module")
def tiny_export(tiny, tmp_path_factory):
    """The whole export stage on the tiny model: merged/, gguf/ (F16, Q8_0, Modelfile), metrics.

    llama-cpp-python is hidden here (the skip path): on this random 2-layer model llama.cpp
    fails to decode some prompts over 512 tokens; the SmolLM2 test below runs it for real."""
    from guardrsft.config import load_params
    from guardrsft.export import export

    mp = pytest.MonkeyPatch()
    mp.setenv("GUARDRSFT_BASE_MODEL", str(tiny / "base"))
    mp.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` raises ImportError
    try:
        out = tmp_path_factory.mktemp("tiny-export")
        (out / "eval.json").write_text(json.dumps(EVAL))
        p = tiny_params(load_params(ROOT / "params.yaml"), gguf_types=["F16", "Q8_0"])
        export(p, str(tiny / "adapter"), str(out / "merged"), str(out / "eval.json"), gguf_dir=str(out / "gguf"),
               metrics_out=str(out / "export.json"))
    finally:
        mp.undo()
    return out, p


def test_tiny_export_writes_everything_and_round_trips(tiny, tiny_export):
    from safetensors.torch import load_file

    out, p = tiny_export
    assert sorted(f.name for f in (out / "gguf").iterdir()) == \
        ["LICENSE", "Modelfile", "NOTICE", "README.md", "USE_POLICY.md", "guardrsft-F16.gguf", "guardrsft-Q8_0.gguf"]
    merged, base = load_file(out / "merged/model.safetensors"), load_file(tiny / "base/model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert merged[q].dtype.is_floating_point and str(merged[q].dtype) == "torch.float16"
    assert (merged[q].float() - base[q]).abs().max() > 1e-3  # the adapter was merged in
    rep = json.loads((out / "export.json").read_text())
    rt = rep["gguf"]["roundtrip"]
    # check_prompts 3 -> per_policy: 2 texts x 2 policies; joint (params.yaml's default): 3 texts x 1 prompt
    joint = load_params(ROOT / "params.yaml").prompt.mode == "joint"
    assert rt["passed"] and rt["prompts"] == (3 if joint else 4)
    f16, q8 = rt["types"]["F16"], rt["types"]["Q8_0"]
    # F16 from a float16 merge is lossless: same logits, same greedy texts
    assert f16["max_logit_diff"] <= p.export.check_max_logit_diff and f16["argmax_agreement"] == 1.0
    assert f16["text_agreement"] == 1.0 and f16["tokens_identical"]
    assert 0 < q8["max_logit_diff"] and q8["verdict_agreement"] >= p.export.check_min_agreement
    assert f16["llama_cpp"].startswith("skipped: llama-cpp-python is not installed")
    assert rep["push"] == {"status": "off"}
    card = (out / "merged/README.md").read_text()
    assert "guardrsft-Q8_0.gguf" in card and "## Intended use and limits" in card and p.prompt.template in card


def test_llama_base_licence_travels_with_every_export(tiny_export):
    """The tiny base's card says llama3.2: both cards carry the licence and the evaluation as
    model-index, the name begins with "Llama", "Built with Llama" is shown, and LICENSE (the base's
    own text), USE_POLICY.md and NOTICE sit beside the weights and GGUFs; Ollama gets LICENSE too."""
    from huggingface_hub import ModelCard

    out, p = tiny_export
    for folder in ("merged", "gguf"):
        card = ModelCard.load(out / folder / "README.md")
        assert card.data.license == "llama3.2" and card.data.model_name == "Llama-3.2-guardrsft"
        assert "# Llama-3.2-guardrsft: a reasoning safety classifier" in card.text and "Built with Llama" in card.text
        got = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
        assert got == {("guardrsft-test-split", "exact_match"): 0.5, ("guardrsft-test-split", "accuracy"): 0.75,
                       ("guardrsft-test-split", "f1"): 0.6, ("toxicchat", "exact_match"): 0.25,
                       ("toxicchat", "accuracy"): 0.8}  # a null metric is left out, not written as 0
        assert (out / folder / "LICENSE").read_text() == TINY_LICENSE
        assert "Llama 3.2 is licensed under the Llama 3.2 Community License, Copyright © Meta Platforms" in \
            (out / folder / "NOTICE").read_text()
        assert "https://www.llama.com/llama3_2/use-policy/" in (out / folder / "USE_POLICY.md").read_text()
    mf = (out / "gguf/Modelfile").read_text()
    assert f'LICENSE """{TINY_LICENSE.strip()}"""' in mf and "ollama create llama-3.2-guardrsft -f Modelfile" in mf
    assert json.loads((out / "export.json").read_text())["licence"]["id"] == "llama3.2"


def render_legacy(template: str, system, prompt: str) -> str:
    """Ollama's rendering of our single-turn template (its if/else and three fields), for the test."""
    m = re.fullmatch(r"\{\{ if \.System \}\}(.*)\{\{ \.System \}\}(.*)\{\{ else \}\}(.*)\{\{ end \}\}"
                     r"\{\{ \.Prompt \}\}(.*)\{\{ \.Response \}\}(.*)", template, re.S)
    assert m, template
    pre, between, bare, header, _ = m.groups()
    return (pre + system + between if system else bare) + prompt + header


@pytest.mark.parametrize("llama3", [False, True])
def test_modelfile_reproduces_the_training_prompt(tmp_path, params, llama3):
    from guardrsft.modelfile import modelfile
    from guardrsft.prompts import messages

    tok = make_tokenizer(tmp_path, LLAMA3 if llama3 else CHATML, llama3=llama3)
    text, parts = modelfile(params, tok, "guardrsft-Q8_0.gguf", add_bos=llama3)
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1)
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.S | re.M).group(1)
    msgs = messages(params.prompt, "violence", params.policies["violence"], "some content")
    assert system == msgs[0]["content"]
    want = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if llama3:  # llama.cpp adds BOS itself (add_bos_token), so the template must not
        assert want.startswith("<|begin_of_text|>")
        want = want.removeprefix("<|begin_of_text|>")
    assert render_legacy(template, system, msgs[1]["content"]) == want
    bare = tok.apply_chat_template(msgs[1:], tokenize=False, add_generation_prompt=True)
    assert render_legacy(template, "", msgs[1]["content"]) == bare.removeprefix("<|begin_of_text|>")
    stops = re.findall(r'^PARAMETER stop "(.*)"$', text, re.M)
    assert stops == (["<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"] if llama3
                     else ["<|im_end|>", "<|im_start|>"])
    assert "FROM ./guardrsft-Q8_0.gguf" in text and "PARAMETER temperature 0" in text


def test_gguf_metadata_and_q8_tensors(tiny_export):
    import gguf

    out, _ = tiny_export
    r = gguf.GGUFReader(out / "gguf/guardrsft-Q8_0.gguf")
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.ggml.") or
         k in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.eos_token_id")}
    assert f["general.architecture"] == "llama" and f["llama.attention.head_count_kv"] == 2
    assert f["general.name"] == "Llama-3.2-guardrsft" and f["general.license"] == "llama3.2"
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    assert "<|im_start|>" in f["tokenizer.chat_template"]
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied embeddings: llama.cpp reuses token_embd


def test_llama3_shaped_gguf(tmp_path, monkeypatch):
    """Llama 3's tokenizer split regex, BOS from the post-processor and llama3 rope scaling: the
    GGUF says llama-bpe, add_bos and carries rope_freqs; llama.cpp (when installed) tokenizes the
    chat prompt like transformers and gives the same logits."""
    import numpy as np
    import torch
    from tokenizers import Regex, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import LlamaConfig, LlamaForCausalLM

    from guardrsft.gguf_export import _LLAMA3_SPLIT, load_gguf, write_gguf

    tok = make_tokenizer(tmp_path / "m", LLAMA3, llama3=True)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", tok.bos_token_id)])
    tok.save_pretrained(tmp_path / "m")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      initializer_range=0.1,
                      rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    ref = LlamaForCausalLM(cfg).eval()
    ref.save_pretrained(tmp_path / "m")
    info = write_gguf(tmp_path / "m", tmp_path / "g/m.gguf", "F16")
    assert info["pre_tokenizer"] == "llama-bpe" and info["add_bos"]
    import gguf

    assert "rope_freqs.weight" in {t.name for t in gguf.GGUFReader(tmp_path / "g/m.gguf").tensors}
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Classification: SAFE 123"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
    made = []

    class Counting(gguf.GGUFReader):
        def __init__(self, path, *a, **kw):
            made.append(str(path))
            super().__init__(path, *a, **kw)

    monkeypatch.setattr(gguf, "GGUFReader", Counting)
    gmodel, gtok = load_gguf(tmp_path / "g/m.gguf")
    # tokenizer, config and weights share one parse (transformers alone parses the file three
    # times), and the reader is gguf's own again afterwards
    assert made == [str(tmp_path / "g/m.gguf")] and gguf.GGUFReader is Counting
    assert gtok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False) == ids
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].numpy()
        # transformers reads no rope_freqs: its copy runs unscaled RoPE (|delta| 1.7 measured), the error
        # llama.cpp would show if the tensor were missing
        unscaled = float(np.abs(gmodel(torch.tensor([ids])).logits[0].numpy() - want).max())
        lent, _ = load_gguf(tmp_path / "g/m.gguf", config=ref.config)  # what the round trip does
        assert float(np.abs(lent(torch.tensor([ids])).logits[0].numpy() - want).max()) < 0.05
    if importlib.util.find_spec("llama_cpp") is None:
        return
    from llama_cpp import Llama

    llm = Llama(model_path=str(tmp_path / "g/m.gguf"), n_ctx=256, logits_all=True, verbose=False)
    try:  # llama.cpp adds BOS itself (add_bos_token), as the Modelfile template assumes
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        got_ids = llm.tokenize(text.removeprefix("<|begin_of_text|>").encode(), add_bos=True, special=True)
        assert got_ids == ids
        llm.eval(got_ids)
        got = float(np.abs(np.array(llm.scores[:len(ids)]) - want).max())
        assert got < 0.05 and got < unscaled / 10, (got, unscaled)  # 0.005 measured: rope_freqs applied
    finally:
        llm.close()


def test_push_to_hub_is_skipped_with_a_message(params, monkeypatch, tmp_path, capsys):
    from guardrsft.export import push_to_hub

    params.export.push_to_hub, params.export.hub_repo = True, "me/guard"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert push_to_hub(params, {"": str(tmp_path)})["status"].startswith("skipped: offline (HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored login either
    assert "set HF_TOKEN" in push_to_hub(params, {"": str(tmp_path)})["status"]
    assert "push_to_hub skipped" in capsys.readouterr().err


def test_export_params_are_checked(tmp_path, params_text):
    from conftest import write_params
    from guardrsft.config import ParamsError, load_params

    for old, new, msg in [
        ("gguf_types: [Q8_0]", "gguf_types: [F16, Q4_K]", "`export.gguf_types` must list distinct types"),
        ("modelfile_type: Q8_0", "modelfile_type: F32", "`export.modelfile_type` must be one of"),
        ("push_to_hub: false", "push_to_hub: true", "`export.hub_repo` must be `owner/name`"),
        ("check_min_agreement: 0.75", "check_min_agreement: 1.5", "`export.check_min_agreement` must be in [0, 1]"),
        ("name: guardrsft ", "name: My Guard ", "`export.name` must be lowercase"),
    ]:
        assert old in params_text, old
        with pytest.raises(ParamsError, match=re.escape(msg)):
            load_params(write_params(tmp_path, params_text.replace(old, new)))


def test_classify_streams_from_a_gguf(tiny_export, monkeypatch):
    out, _ = tiny_export
    from guardrsft.cli import app

    r = runner.invoke(app, ["classify", "Is this fine?", "-p", "violence", "-p", "illegal",
                            "--model", str(out / "gguf/guardrsft-F16.gguf"), "--params", str(ROOT / "params.yaml")])
    # a random model gives no verdict: exit 1, but the one joint answer (params.yaml's prompt.mode)
    # was streamed under both policies' names and each policy reported
    assert r.exit_code == 1, r.output
    assert "== violence, illegal\n" in r.output and "-> illegal: PARSE ERROR" in r.output
    assert "-> violence: PARSE ERROR" in r.output and r.output.rstrip().endswith("verdict: PARSE ERROR")
    r = runner.invoke(app, ["classify", "x", "--model", str(out / "nope.gguf"), "--params", str(ROOT / "params.yaml")])
    assert r.exit_code == 2 and "nope.gguf: GGUF file not found" in r.output


def test_classify_file_flags_and_resumes_in_a_real_process(tiny_export, tmp_path):
    out, _ = tiny_export
    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": "a", "content": "first text"}), "", "{not json", json.dumps({"content": "x" * 50}),
             json.dumps({"content": "   "}), json.dumps(["a list"]), json.dumps({"id": 7, "content": "last one"})]
    src.write_text("\n".join(lines) + "\n")
    dst = tmp_path / "out.jsonl"
    # a run killed after line 1, mid-way through writing line 2 (same model, policy, --max-chars)
    from guardrsft.classify_file import setup_key
    from guardrsft.config import load_params

    setup = setup_key(str(out / "merged"), None, load_params(ROOT / "params.yaml"), ["violence"], 40)
    first = {"line": 1, "id": "a", "input_sha256": __import__("hashlib").sha256(lines[0].encode()).hexdigest()[:16],
             "status": "ok", "verdict": "SAFE", "flagged": [], "verdicts": {"violence": "SAFE"}, "reasoning": {},
             "setup": setup}
    dst.write_text(json.dumps(first) + "\n" + '{"line": 2, "sta')
    cmd = [str(Path(sys.executable).parent / "guardrsft"), "classify-file", str(src), "--out", str(dst),
           "-p", "violence", "--model", str(out / "merged"), "--max-chars", "40", "--chunk", "2",
           "--params", str(ROOT / "params.yaml")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 1, res.stderr  # some lines are flagged
    rows = [json.loads(x) for x in dst.read_text().splitlines()]
    assert [r["line"] for r in rows] == list(range(1, 8))
    assert rows[0] == first  # kept, not redone
    assert [r["status"] for r in rows[1:6]] == ["empty", "malformed", "oversized", "empty", "malformed"]
    assert all(r["error"] for r in rows[1:6])
    assert rows[6]["id"] == 7 and rows[6]["status"] in ("ok", "parse_error") and "violence" in rows[6]["verdicts"]
    assert "resuming: 1/7 lines" in res.stderr and "not ok: lines 2, 3, 4, 5, 6" in res.stderr
    assert "1 lines reused from the last run" in res.stderr
    # done: a rerun loads no model and changes nothing; another input is refused
    before = dst.read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 1 and dst.read_text() == before
    src.write_text("\n".join(reversed(lines)) + "\n")
    other = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert other.returncode == 2 and "does not belong to line 1 of this input" in other.stderr


def test_export_of_the_embedded_model(embedded_model, tmp_path, params, one_thread):
    """A LoRA adapter on SmolLM2-135M (its real 49k-token tokenizer, ChatML template and GQA shapes),
    exported to F16 (Q8_0 is covered on the tiny model; each transformers read-back costs ~30 s here):
    the GGUF gives the merged model's logits, and llama.cpp, when installed, its greedy text."""
    import torch

    torch.set_num_threads(one_thread)  # a real model: all cores
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from guardrsft.export import export

    model = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "down_proj"],
                                            init_lora_weights=False))
    with torch.no_grad():  # small random B: the merge matters but the model stays a language model
        for n, w in peft.named_parameters():
            if "lora_B" in n:
                w.normal_(std=2e-3)
    peft.save_pretrained(tmp_path / "adapter")
    p = tiny_params(params, gguf_types=["F16"], modelfile_type="F16", check_prompts=2)
    export(p, str(tmp_path / "adapter"), str(tmp_path / "merged"), None, gguf_dir=str(tmp_path / "gguf"),
           metrics_out=str(tmp_path / "export.json"))
    rep = json.loads((tmp_path / "export.json").read_text())["gguf"]
    assert rep["pre_tokenizer"] == "gpt-2" and rep["roundtrip"]["prompts"] == 2
    f16 = rep["roundtrip"]["types"]["F16"]
    # the float16 merge is stored bit for bit: identical logits and greedy texts
    assert f16["max_logit_diff"] < 1e-3 and f16["argmax_agreement"] == 1.0 and f16["tokens_identical"]
    assert f16["text_agreement"] == 1.0
    if importlib.util.find_spec("llama_cpp"):  # llama.cpp tokenizes and writes like transformers
        lc = f16["llama_cpp"]
        assert lc["tokens_identical"] and lc["text_agreement"] == 1.0 and lc["verdict_agreement"] == 1.0, lc
    else:
        assert f16["llama_cpp"].startswith("skipped")
    mf = (tmp_path / "gguf/Modelfile").read_text()
    assert "FROM ./guardrsft-F16.gguf" in mf and 'PARAMETER stop "<|im_end|>"' in mf
    assert "<|im_start|>assistant\n{{ .Response }}<|im_end|>" in mf


def test_export_adapter_choice(params, tmp_path):
    """export.adapter: auto ships the HS-DPO adapter when the DPO branch ran and its evaluation
    scores at least R-SFT's on export.auto_metric, else R-SFT's with the reason; a missing HS-DPO
    adapter is an error that names the folder and the fix, never a silent R-SFT export."""
    from guardrsft.export import choose_adapter, model_card

    rsft, hsdpo = str(tmp_path / "adapter"), tmp_path / "adapter_hsdpo"
    hsdpo.mkdir()
    (hsdpo / "hsdpo.json").write_text('{"enabled": false}')  # what the disabled branch writes
    ev, evh = tmp_path / "eval.json", tmp_path / "eval_hsdpo.json"
    ev.write_text('{"exact_match": 0.60, "harmful_f1": 0.70}')
    evh.write_text('{"enabled": false}')
    args = (rsft, str(hsdpo), str(ev), str(evh))
    assert not params.hsdpo_enabled  # cpu preset
    which, path, metrics, why = choose_adapter(params, *args)
    assert (which, path, metrics) == ("rsft", rsft, str(ev)) and "hsdpo.enabled is false" in why
    params.hsdpo.enabled = True
    evh.write_text('{"exact_match": 0.60, "harmful_f1": 0.50}')  # a tie on exact_match goes to HS-DPO
    with pytest.raises(FileNotFoundError, match="adapter_hsdpo: no HS-DPO adapter.*export.adapter: rsft"):
        choose_adapter(params, *args)
    (hsdpo / "adapter_config.json").write_text("{}")
    which, path, metrics, why = choose_adapter(params, *args)
    assert (which, path, metrics) == ("hsdpo", str(hsdpo), str(evh)) and "0.6000 >= R-SFT 0.6000" in why
    params.export.auto_metric = "harmful_f1"  # HS-DPO lost F1: R-SFT ships, and the message says how to override
    which, path, metrics, why = choose_adapter(params, *args)
    assert (which, path, metrics) == ("rsft", rsft, str(ev))
    assert "lower on harmful_f1 (0.5000 < R-SFT 0.7000)" in why and "export.adapter: hsdpo" in why
    evh.write_text('{"exact_match": 0.0, "harmful_f1": null}')  # nothing to compare: GuardReasoner's choice
    assert choose_adapter(params, *args)[0] == "hsdpo"
    assert choose_adapter(params, rsft, str(hsdpo), None, None)[0] == "hsdpo"
    which, _, _, why = choose_adapter(params, rsft, None, str(ev), None)  # no DPO folder given
    assert which == "rsft" and "no HS-DPO adapter folder was given" in why
    params.export.adapter = "hsdpo"  # forced: shipped even though it scored lower
    params.export.auto_metric = "exact_match"
    evh.write_text('{"exact_match": 0.1}')
    assert choose_adapter(params, *args)[0] == "hsdpo"
    params.export.adapter = "rsft"
    assert choose_adapter(params, *args)[0] == "rsft"
    card = model_card(params, None, hsdpo=True)
    assert "then hard-sample DPO (HS-DPO)" in card and f"k={params.hsdpo.k} samples" in card
    assert "HS-DPO" not in model_card(params, None)
    bal = {"rows_in": 48, "safe_per_item": 2, "unsafe_share": 0.3, "rows": 25, "unsafe_share_after": 0.32}
    card = model_card(params, None, train_metrics={"steps": 4, "epochs": 1.0, "examples": 25, "balance": bal})
    assert "over 25 (sample, policy) examples" in card and "48 trace rows -> 25 examples, 32% UNSAFE" in card
    assert "of the examples: 48" in card and "of each policy" not in card
    card = model_card(params, None, train_metrics={"steps": 4, "epochs": 1.0, "examples": 25,
                                                   "balance": {**bal, "per_policy": True}})
    assert "repeated to 0.3 of the examples of each policy: 48 trace rows" in card


def test_base_licence_sources(tmp_path, monkeypatch):
    """The base's own card wins; without one the KNOWN table (by id or folder name); else unknown."""
    from guardrsft.licensing import base_licence

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached: the table decides
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    lic = base_licence("embedded:smollm2-135m-instruct")
    assert (lic.id, lic.llama) == ("apache-2.0", None)
    for model, lid in [("meta-llama/Llama-3.1-8B-Instruct", "llama3.1"), ("unsloth/Llama-3.2-3B-Instruct", "llama3.2"),
                       ("meta-llama/Meta-Llama-3-8B", "llama3"), ("meta-llama/Llama-3.3-70B-Instruct", "llama3.3")]:
        lic = base_licence(model)
        assert lic.id == lid and lic.llama == lid[5:] and lic.link.startswith("https://www.llama.com/"), model
    assert base_licence("someone/some-model").id is None
    folder = tmp_path / "Llama-3.2-3B-local"  # a folder's own card beats its name
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: other\nlicense_name: my-terms\nlicense_link: LICENSE\n---\n")
    lic = base_licence(str(folder))
    assert (lic.id, lic.name, lic.link, lic.llama) == ("other", "my-terms", "LICENSE", None)
    (folder / "README.md").write_text("# no front matter\n")
    assert base_licence(str(folder)).id == "llama3.2"  # then the name
    other = folder / "qwen-base"  # the folder's own name counts, not the path above it
    other.mkdir()
    assert base_licence(str(other)).id is None


def test_llama_names_notes_and_hub_repo(params, tmp_path, monkeypatch):
    """A Llama base's export is named "Llama-..."; without the base's licence text a LICENSE note
    names the licence and its URL; a Hub repo whose name does not begin with Llama is refused
    before any merging, with the fix."""
    from guardrsft.export import export, model_card
    from guardrsft.gguf_export import ExportError
    from guardrsft.licensing import base_licence, published_name, write_files

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("GUARDRSFT_BASE_MODEL", "unsloth/Llama-3.2-3B-Instruct")
    lic = base_licence(params.model)
    assert published_name(params, lic) == "Llama-3.2-3B-Instruct-guardrsft"
    params.export.name = "llama-guard-mine"
    assert published_name(params, lic) == "llama-guard-mine"  # already begins with Llama
    assert write_files(lic, params.model, tmp_path) == ["LICENSE", "NOTICE", "USE_POLICY.md"]
    note = (tmp_path / "LICENSE").read_text()
    assert "Llama 3.2 Community License Agreement" in note and "https://www.llama.com/llama3_2/license/" in note
    assert "must accompany this model" in note
    card = model_card(params, None)
    assert "license: llama3.2" in card and "model-index" not in card  # no evaluation: no results to index
    params.export.push_to_hub, params.export.hub_repo = True, "me/guard"
    with pytest.raises(ExportError, match=r"export.hub_repo.*begin with \"Llama\".*me/llama-guard-mine"):
        export(params, str(tmp_path / "no-adapter"), str(tmp_path / "merged"))
    monkeypatch.setenv("GUARDRSFT_BASE_MODEL", "someone/some-model")  # unknown: said, not guessed
    card = model_card(params, None)
    assert "\nlicense:" not in card and "The base model's licence is unknown to guardrsft" in card


def test_gguf_vocab_accepts_the_byte_level_decoder_transformers_writes_from_gguf(tmp_path):
    """transformers 5.x, converting a GGUF to a HF folder (the GPU machine's base model), writes the
    decoder Sequence[ByteFallback, Fuse, Replace, ByteLevel] for the same byte-level vocabulary: the
    export reads the same tokens as from a plain ByteLevel decoder; a sentencepiece decoder is refused."""
    from tokenizers import decoders

    from guardrsft.gguf_export import ExportError, _vocab

    tok = make_tokenizer(tmp_path / "plain", CHATML)
    want = _vocab(tmp_path / "plain", len(tok))
    tok.backend_tokenizer.decoder = decoders.Sequence([
        decoders.ByteFallback(), decoders.Fuse(), decoders.Replace("\u2581", " "), decoders.ByteLevel()])
    tok.save_pretrained(tmp_path / "seq")
    assert json.loads((tmp_path / "seq/tokenizer.json").read_text())["decoder"]["type"] == "Sequence"
    assert _vocab(tmp_path / "seq", len(tok))[0] == want[0]
    tok.backend_tokenizer.decoder = decoders.Metaspace()
    tok.save_pretrained(tmp_path / "sp")
    with pytest.raises(ExportError, match="byte-level BPE"):
        _vocab(tmp_path / "sp", len(tok))


def test_attaching_an_adapter_warns_nothing_a_user_cannot_act_on(tiny):
    """PEFT reads transformers 5's deprecated `is_gradient_checkpointing` when it wraps a model:
    a FutureWarning in every evaluate and export log that no user can act on (issue 25)."""
    import warnings

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from guardrsft.models import attach_adapter

    def caught(load):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            load(AutoModelForCausalLM.from_pretrained(tiny / "base"), str(tiny / "adapter"))
        return [str(x.message) for x in w if "is_gradient_checkpointing" in str(x.message)]

    assert caught(PeftModel.from_pretrained)  # the warning this hides is real
    assert caught(attach_adapter) == []
