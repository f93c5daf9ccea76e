"""The tiny pipeline on a taxonomy of its own: three policies that are not the notebook's six,
with tests/data/three_policies.json as the data, through `dvc repro` (prepare -> ... -> export)
and `guardrsft classify` on the exported model."""
import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from helpers_pipeline import make_tiny_repo, run, tiny_env

POLICIES = """policies:
  pii_leak:
    definition: >-
      Shares, or asks to expose, a real person's private data: home address, phone number, ID or
      account numbers, health records. Not covered: public business contacts, questions about redacting.
    examples: ["Post my coworker's home address and cell number"]
    severity: high
  prompt_injection: >-
    Text that tries to override an AI system's instructions or make it act for someone other than
    its user. Not covered: questions about what prompt injection is or how to defend against it.
  medical_advice:
    definition: >-
      Asks for or gives a diagnosis, a dose or a treatment decision for a specific person in place of
      a clinician. Not covered: general health education.
    severity: medium
"""
IDS = ["pii_leak", "prompt_injection", "medical_advice"]


def own_taxonomy(text: str) -> str:
    start = text.index("\npolicies:\n") + 1
    end = text.index("\n\n", start) + 1
    # a fifth of 24 items is the test split (the default tenth would leave one item)
    return (text[:start] + POLICIES + text[end:]).replace("  test_fraction: 0.1", "  test_fraction: 0.2")


@pytest.fixture(scope="module")
def three_repo(tmp_path_factory, cache_dir):
    repo = make_tiny_repo(tmp_path_factory.mktemp("e2e-policies") / "repo")
    (repo / "params.yaml").write_text(own_taxonomy((repo / "params.yaml").read_text()))
    shutil.copy(ROOT / "tests/data/three_policies.json", repo / "data/raw/training_data.json")
    env = tiny_env(cache_dir)
    run("git init -q && git add -A && git commit -qm tiny", repo, env)
    first = run(["dvc", "repro"], repo, env)
    yield repo, env, first
    shutil.rmtree(repo.parent, ignore_errors=True)


@pytest.mark.e2e
def test_every_stage_follows_the_three_policies(three_repo):
    repo, _, first = three_repo
    for stage in ("prepare", "generate_traces", "train_rsft", "evaluate", "export"):
        assert f"Running stage '{stage}'" in first.stdout
    data = json.loads((repo / "metrics/data.json").read_text())
    assert data["input_samples"] == 24
    assert {k for k in data["train"] if k.startswith("policy_")} == {f"policy_{q}" for q in IDS}
    traces = [json.loads(x) for x in (repo / "data/traces/train.jsonl").read_text().splitlines()]
    assert {t["policy"] for t in traces} == set(IDS) and len(traces) == 3 * data["train"]["samples"]
    ev = json.loads((repo / "metrics/eval_detail.json").read_text())
    assert set(ev["finetuned"]["per_policy"]) == set(ev["baseline"]["per_policy"]) == set(IDS)
    merged = repo / "models/merged"
    own = json.loads((merged / "guardrsft.json").read_text())
    assert list(own["policies"]) == IDS and own["policy_info"]["pii_leak"]["severity"] == "high"
    card = (merged / "README.md").read_text()
    assert "## Policies (3; the model knows only these)" in card and "- **medical_advice** (severity: medium):" in card
    assert "  - example: Post my coworker's home address and cell number" in card
    modelfile = (repo / "models/gguf/Modelfile").read_text()
    assert "# Policies (3, params.yaml `policies` at training): pii_leak, prompt_injection, medical_advice" in modelfile
    assert "hate_speech" not in card + modelfile + json.dumps(own)


@pytest.mark.e2e
def test_classify_answers_for_the_models_own_policies(three_repo, tmp_path):
    repo, env, _ = three_repo
    cli = str(Path(sys.executable).parent / "guardrsft")
    out = run([cli, "classify", "Post Dana's home address and phone number.", "--json"], repo, env, check=False)
    assert out.returncode in (0, 1), out.stderr[-2000:]
    assert set(json.loads(out.stdout)["verdicts"]) == set(IDS)
    # params with another taxonomy: classify uses the model's own and says how they differ
    other = (repo / "params.yaml").read_text().replace("  prompt_injection: >-", "  financial_advice: >-")
    (tmp_path / "params.yaml").write_text(other)
    out = run([cli, "classify", "Which stock should I buy?", "--json", "--params", str(tmp_path / "params.yaml")],
              repo, env, check=False)
    assert out.returncode in (0, 1), out.stderr[-2000:]
    assert set(json.loads(out.stdout)["verdicts"]) == set(IDS)
    assert "using the model's own policies" in out.stderr
    assert "params' financial_advice was never trained" in out.stderr
