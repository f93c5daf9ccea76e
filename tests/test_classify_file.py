"""classify-file resumes only what the same setup answered (fast: a scripted guard, no model)."""
import dataclasses
import json
from types import SimpleNamespace

from guardrsft.classify_file import classify_file, setup_key
from guardrsft.guard import build_result


class Scripted:
    """A guard whose every answer is `verdict`; counts what it was asked."""

    def __init__(self, params, verdict):
        self.p, self.verdict, self.asked = params, verdict, 0
        self.config, self.max_new_tokens = SimpleNamespace(), 8  # no context length: no check

    def classify(self, items, policies):
        self.asked += len(items)
        return [build_result(it, {q: f"Reasoning: r\nClassification: {self.verdict}" for q in policies})
                for it in items]


def test_rerun_with_another_setup_redoes_the_lines_and_says_so(tmp_path, params, capsys):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"content": f"text {i}"}) + "\n" for i in range(5)))
    a = Scripted(params, "SAFE")
    s = classify_file(lambda: a, str(src), str(out), ["violence"], chunk=2, progress=False, setup="model-a")
    assert s["counts"] == {"ok": 5} and a.asked == 5
    # the same setup: nothing asked again, every line reused
    again = Scripted(params, "SAFE")
    s = classify_file(lambda: again, str(src), str(out), ["violence"], progress=False, setup="model-a")
    assert again.asked == 0 and s["reused"] == 5 and s["redone"] == 0
    # another model (or adapter, policy list, prompt...): the old verdicts are not kept
    b = Scripted(params, "UNSAFE")
    s = classify_file(lambda: b, str(src), str(out), ["violence"], progress=False, setup="model-b")
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert b.asked == 5 and s["reused"] == 0 and s["redone"] == 5
    assert [r["verdict"] for r in rows] == ["UNSAFE"] * 5 and {r["setup"] for r in rows} == {"model-b"}
    assert "5 lines of" in capsys.readouterr().err


def test_setup_key_holds_everything_that_decides_an_answer(tmp_path, params):
    model, adapter = tmp_path / "merged", tmp_path / "adapter"
    for d in (model, adapter):
        d.mkdir()
        (d / "model.safetensors").write_bytes(d.name.encode())
    base = setup_key(str(model), None, params, ["violence"], 8000)
    assert setup_key(str(model), None, params, ["violence"], 8000) == base
    prompt = dataclasses.replace(params.prompt, template=params.prompt.template + " ")
    others = [setup_key(str(model), str(adapter), params, ["violence"], 8000),
              setup_key(str(model), None, params, ["violence", "illegal"], 8000),
              setup_key(str(model), None, params, None, 8000),
              setup_key(str(model), None, dataclasses.replace(params, prompt=prompt), ["violence"], 8000),
              setup_key(str(model), None, params, ["violence"], 4000)]
    (model / "model.safetensors").write_bytes(b"retrained")
    others.append(setup_key(str(model), None, params, ["violence"], 8000))
    assert len(set(others + [base])) == len(others) + 1
