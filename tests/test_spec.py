"""A model folder describes itself (guardrsft.spec): load_guard uses the folder's own prompt,
policies and answer budget; evaluate (strict) refuses a model trained with other ones."""
import dataclasses
import json

import pytest
from fixtures.tiny_model import build_tiny_model

from guardrsft import spec
from guardrsft.guard import load_guard


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def test_describe_round_trips_and_apply_restores_the_trained_prompt(tmp_path, params):
    spec.write(tmp_path, params)
    d = json.loads((tmp_path / "guardrsft.json").read_text())
    assert d["format"] == spec.FORMAT and d["prompt"]["mode"] == params.prompt.mode
    assert d["policies"] == params.policies and d["decoding"]["max_new_tokens"] == params.max_new_tokens
    other = dataclasses.replace(params, prompt=dataclasses.replace(params.prompt, template="Q: {content} ({policy_names})"),
                                policies={"violence": "hurts people"})
    assert set(spec.differences(other, d)) == {"prompt.template", "policies"}
    back = spec.apply(other, tmp_path)
    assert back.prompt == params.prompt and back.policies == params.policies
    assert spec.differences(back, d) == []


def test_strict_refuses_a_model_trained_with_other_params(tmp_path, params):
    spec.write(tmp_path, params)
    other = dataclasses.replace(params, policies={**params.policies, "violence": "something else"})
    with pytest.raises(ValueError, match=r"guardrsft.json: the model was trained with other policies"):
        spec.apply(other, tmp_path, strict=True)
    assert spec.apply(params, tmp_path, strict=True) is params  # same params: nothing to report


def test_folder_without_a_description_leaves_params_as_they_are(tmp_path, params):
    (tmp_path / "guardrsft.json").write_text(json.dumps({"base_model": "x", "preset": "cpu"}))  # an older file
    assert spec.apply(params, tmp_path) is params
    assert spec.apply(params, None) is params
    (tmp_path / "guardrsft.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        spec.read(tmp_path)


def test_load_guard_uses_the_models_own_prompt_and_says_so(tiny_model, params, capsys, tmp_path):
    from pathlib import Path

    trained = dataclasses.replace(params, prompt=dataclasses.replace(params.prompt, system="Trained system prompt."))
    spec.write(tiny_model, trained)
    try:
        g = load_guard(tiny_model, params=params, max_new_tokens=4, batch_size=2)
        assert g.p.prompt.system == "Trained system prompt."
        assert "using the model's own prompt.system" in capsys.readouterr().err
        with pytest.raises(ValueError, match="trained with other prompt.system"):
            load_guard(tiny_model, params=params, max_new_tokens=4, batch_size=2, strict=True)
    finally:
        (Path(tiny_model) / "guardrsft.json").unlink()
