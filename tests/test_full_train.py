"""train.method full: every weight trained, a whole model folder out, used by load_guard and export."""
import json

import pytest
from conftest import ROOT, per_policy_text, write_params
from fixtures.tiny_model import build_tiny_model

from guardrsft.config import ParamsError, load_params
from guardrsft.io import write_jsonl

EDITS = {"  max_steps: null ": "  max_steps: 3 ", "  batch_size: null    # null: preset": "  batch_size: 2",
         "  grad_accum: null": "  grad_accum: 1", "  max_length: null": "  max_length: 1536",
         "  method: lora ": "  method: full ", "  enabled: true\n  log_adapter": "  enabled: false\n  log_adapter"}


def full_params(d, **more):
    text = (ROOT / "params.yaml").read_text()
    for a, b in {**EDITS, **more}.items():
        assert a in text, a
        text = text.replace(a, b, 1)
    return load_params(write_params(d, per_policy_text(text)))


def test_full_training_writes_a_whole_model_that_load_guard_and_export_use(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from guardrsft import spec
    from guardrsft.export import merge
    from guardrsft.guard import load_guard
    from guardrsft.train import train

    base = build_tiny_model(tmp_path / "base")
    monkeypatch.setenv("GUARDRSFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GUARDRSFT_BASE_MODEL", base)
    p = full_params(tmp_path)
    assert p.train.method == "full" and p.max_steps == 3
    rows = [{"id": f"s{i}", "policy": "violence", "content": f"policy content number {i}",
             "reasoning": "Step 1 (intent): x.", "classification": "SAFE" if i % 2 else "UNSAFE", "origin": "template"}
            for i in range(6)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    out = tmp_path / "out" / "model"
    res = train(p, str(tmp_path / "train.jsonl"), str(out), str(tmp_path / "out/train.json"), str(tmp_path / "loss.csv"))
    assert res["metrics"]["steps"] == 3 and res["metrics"]["method"] == "full"
    names = {f.name for f in out.iterdir()}
    assert {"config.json", "model.safetensors", "guardrsft.json", "tokenizer.json"} <= names
    assert "adapter_config.json" not in names and "adapter_model.safetensors" not in names
    trained, orig = load_file(out / "model.safetensors"), load_file(tmp_path / "base/model.safetensors")
    # every weight matrix trained, not only LoRA targets: the MLP and the embeddings moved too
    for k in ("model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight",
              "model.embed_tokens.weight"):
        assert (trained[k] - orig[k]).abs().max() > 0, k

    guard = load_guard(base, adapter=str(out), params=p, max_new_tokens=4)
    assert type(guard.model).__name__ == "LlamaForCausalLM"  # the folder itself, no PEFT wrapper
    q = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(guard.model.state_dict()[q], trained[q])
    assert len(guard.classify([{"content": "hello"}], policies=["violence"])) == 1

    # export: nothing to merge, the model in export.dtype, the trained model's thresholds carried
    spec.write(out, p, thresholds={"violence": 0.3})
    merge(p, str(out), str(tmp_path / "merged"))
    merged = load_file(tmp_path / "merged/model.safetensors")
    assert merged[q].dtype == torch.float16 and torch.allclose(merged[q].float(), trained[q], atol=1e-3)
    assert json.loads((tmp_path / "merged" / spec.FILE).read_text())["verdict"]["thresholds"] == {"violence": 0.3}


@pytest.mark.parametrize("more, match", [
    ({"preset: cpu": "preset: t4"}, "4 bits .*set train.method: lora"),
    ({"  enabled: null ": "  enabled: true "}, "HS-DPO trains a LoRA adapter"),
    ({"  method: full ": "  method: qlora "}, "train.method"),
])
def test_full_method_conflicts_are_refused_with_the_fix(tmp_path, more, match):
    with pytest.raises(ParamsError, match=match):
        full_params(tmp_path, **more)
