import pytest

from guardrsft.config import PRESETS, ParamsError, load_params
from conftest import write_params


def test_default_params_resolve_cpu_preset(params):
    assert params.preset == "cpu"
    assert params.lr == 2e-3 and params.seed == 3407
    assert params.model == "embedded:smollm2-135m-instruct"
    assert params.batch_size == PRESETS["cpu"]["batch_size"]
    assert params.max_steps == PRESETS["cpu"]["max_steps"]
    assert set(params.policies) == {"hate_speech", "violence", "self_harm", "sexual_minors", "harassment", "illegal"}
    t = params.train
    assert (t.epochs, t.lora_r, t.lora_alpha, t.lora_dropout, t.weight_decay, t.lr_scheduler) == (1, 16, 16, 0.0, 0.01, "linear")
    assert params.prompt.mode == "joint" and params.lora_layers == 12 and params.hsdpo_enabled is False
    assert (params.max_steps, params.eval_max_samples, params.max_new_tokens, params.eval_batch_size) == (-1, None, 120, 40)
    assert t.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert params.baseline.exact_match == 0.57


@pytest.mark.parametrize("preset,model,dtype,four_bit,bs,ga", [
    ("t4", "unsloth/Llama-3.2-3B-Instruct", "float16", True, 2, 4),
    ("a100", "meta-llama/Llama-3.1-8B-Instruct", "bfloat16", False, 4, 2),
    ("cpu", "embedded:smollm2-135m-instruct", "float32", False, 4, 1),
])
def test_presets(tmp_path, params_text, preset, model, dtype, four_bit, bs, ga):
    p = load_params(write_params(tmp_path, params_text.replace("preset: cpu", f"preset: {preset}")))
    assert (p.model, p.hw["dtype"], p.hw["load_in_4bit"], p.batch_size, p.grad_accum) == (model, dtype, four_bit, bs, ga)
    assert p.resolved()["resolved.batch_size"] == bs


def test_explicit_value_beats_preset(tmp_path, params_text):
    text = params_text.replace("  batch_size: null    # null: preset", "  batch_size: 7")
    text = text.replace("  max_steps: null ", "  max_steps: 3 ")
    p = load_params(write_params(tmp_path, text))
    assert p.batch_size == 7 and p.max_steps == 3


def test_dvc_written_float_string_is_coerced(tmp_path, params_text):
    # DVC writes `lr: 1e-05`; PyYAML reads that as the string '1e-05'
    p = load_params(write_params(tmp_path, params_text.replace("lr: 2.0e-3", "lr: 1e-05")))
    assert p.lr == pytest.approx(1e-5) and isinstance(p.lr, float)


def test_unknown_top_level_key_is_named(tmp_path, params_text):
    path = write_params(tmp_path, params_text + "\nlr_typo: 1\n")
    with pytest.raises(ParamsError) as e:
        load_params(path)
    msg = str(e.value)
    assert "lr_typo" in msg and str(path) in msg and "`lr`" in msg  # suggests the close match
    # how to undo a failed `dvc exp run -S +lr_typo=1`, which leaves the key behind
    assert "Delete the `lr_typo:` line" in msg and "dvc exp run -S +lr_typo=" in msg
    assert f"git checkout -- {path}" in msg


def test_unknown_nested_key_is_named(tmp_path, params_text):
    path = write_params(tmp_path, params_text.replace("  lora_r: 16", "  lora_rank: 16"))
    with pytest.raises(ParamsError, match=r"train\.lora_rank.*train\.lora_r"):
        load_params(path)


@pytest.mark.parametrize("old,new,pattern", [
    ("preset: cpu", "preset: tpu", "preset"),
    ("lr: 2.0e-3", "lr: fast", "lr"),
    ("lr: 2.0e-3", "lr: 2", "lr"),
    ("  lora_dropout: 0.0", "  lora_dropout: 1.5", "lora_dropout"),
    ("  epochs: 1", "  epochs: three", "train.epochs"),
    ("  test_fraction: 0.1", "  test_fraction: 0", "test_fraction"),
    ("  teacher: template ", "  teacher: gpt5 ", "traces.teacher"),
    ("  adapter: auto ", "  adapter: dpo ", "export.adapter.*auto, rsft or hsdpo"),
    ("  adapter: auto ", "  adapter: hsdpo ", "export.adapter.*hsdpo.enabled is false.*preset `cpu`"),
    ("  auto_metric: exact_match ", "  auto_metric: loss ", "export.auto_metric.*exact_match, binary_accuracy"),
    ("  safe_per_item: 2", "  safe_per_item: 0", "train.safe_per_item.*-1"),
    ("  safe_per_item: 2", "  safe_per_item: two", "train.safe_per_item"),
    ("  unsafe_share: 0.3", "  unsafe_share: 1.0", r"train.unsafe_share.*\[0, 1\)"),
    ("  balance_per_policy: true", "  balance_per_policy: maybe", "train.balance_per_policy.*bool"),
])
def test_bad_values_fail_with_the_key(tmp_path, params_text, old, new, pattern):
    assert old in params_text
    with pytest.raises(ParamsError, match=pattern):  # the first occurrence: train's `epochs`, not hsdpo's
        load_params(write_params(tmp_path, params_text.replace(old, new, 1)))


def test_policies_are_data_but_ids_follow_the_rule(tmp_path, params_text):
    # any id may replace the notebook's six (docs/POLICIES.md; tests/test_policies.py has the rest)
    p = load_params(write_params(tmp_path, params_text.replace("  illegal: >-", "  spam: >-")))
    assert list(p.policies)[-1] == "spam"
    with pytest.raises(ParamsError, match=r"`policies.Spam`: 'Spam' is not a valid policy id"):
        load_params(write_params(tmp_path, params_text.replace("  illegal: >-", "  Spam: >-")))


def test_missing_file_message(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
