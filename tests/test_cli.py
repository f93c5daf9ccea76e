import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from guardrsft.cli import app
from conftest import ROOT

runner = CliRunner()


def test_help_lists_stage_commands():
    out = subprocess.run([str(Path(sys.executable).parent / "guardrsft"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("sample-data", "prepare", "traces", "train", "evaluate", "export", "classify"):
        assert cmd in out.stdout


def test_sample_data_then_prepare(tmp_path):
    demo = tmp_path / "training_data.json"
    r = runner.invoke(app, ["sample-data", str(demo)])
    assert r.exit_code == 0 and "3 samples" in r.output
    assert len(json.loads(demo.read_text())["samples"]) == 3
    r = runner.invoke(app, ["prepare", "--input", str(demo), "--out-dir", str(tmp_path / "prep"),
                            "--metrics", str(tmp_path / "data.json"), "--params", str(ROOT / "params.yaml")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "data.json").read_text())
    assert m["input_samples"] == 3 and sum(m[s]["samples"] for s in ("train", "val", "test")) == 3


def test_prepare_bad_data_exits_2_with_message(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"samples": [{"content": "x", "labels": ["hate"]}]}))
    r = runner.invoke(app, ["prepare", "--input", str(bad), "--out-dir", str(tmp_path / "p"),
                            "--metrics", str(tmp_path / "m.json"), "--params", str(ROOT / "params.yaml")])
    assert r.exit_code == 2
    assert "samples[0].labels: unknown policy 'hate'" in r.output
    assert not (tmp_path / "p").exists()  # nothing half-written


def test_classify_missing_model_is_explained(tmp_path, monkeypatch):
    r = runner.invoke(app, ["classify", "hello", "--model", str(tmp_path / "nope"),
                            "--params", str(ROOT / "params.yaml")])
    assert r.exit_code == 2 and "nope' not found" in r.output
    monkeypatch.chdir(tmp_path)  # no models/merged here
    r = runner.invoke(app, ["classify", "hello", "--params", str(ROOT / "params.yaml")])
    assert r.exit_code == 2 and "export writes models/merged" in r.output
