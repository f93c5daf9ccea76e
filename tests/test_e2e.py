"""The tiny pipeline through real `dvc repro` / `dvc exp run` in a temp copy of the repo."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from helpers_pipeline import exp_rows, make_tiny_repo, run, tiny_env


# HS-DPO mines per-policy answers: this test runs GuardReasoner's per-policy prompt (test_team and
# test_joint run the joint default)
HSDPO_TINY = {"  enabled: null       # null: preset": "  enabled: true       #",
              "  k: 4 ": "  k: 2 ", "  max_items: null     # training items mined": "  max_items: 2     # training items mined",
              "  mode: joint": "  mode: per_policy",
              "    Policies: {policy_names}\n    Content: {content}": "    Policy {policy}: {definition}\n    Content: {content}"}


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory, cache_dir):
    repo = make_tiny_repo(tmp_path_factory.mktemp("e2e") / "repo")
    # the hard-sample DPO branch on, tiny: 2 training items x 6 policies x 2 samples
    text = (repo / "params.yaml").read_text()
    for old, new in HSDPO_TINY.items():
        assert old in text, old
        text = text.replace(old, new)
    (repo / "params.yaml").write_text(text)
    env = tiny_env(cache_dir)
    run("git init -q && git add -A && git commit -qm tiny", repo, env)
    first = run(["dvc", "repro"], repo, env)
    yield repo, env, first
    shutil.rmtree(repo.parent, ignore_errors=True)  # 4-5 GB: freed before test_team's run (CI disks can be small)


@pytest.mark.e2e
def test_repro_writes_metrics_adapter_and_model(tiny_repo):
    repo, env, first = tiny_repo
    for stage in ("check_params", "prepare", "generate_traces", "train_rsft", "evaluate", "export",
                  "mine_hard_samples", "train_hsdpo", "evaluate_hsdpo"):
        assert f"Running stage '{stage}'" in first.stdout
    data = json.loads((repo / "metrics/data.json").read_text())
    assert data["input_samples"] >= 300
    traces = json.loads((repo / "metrics/traces.json").read_text())
    assert traces["train"]["traces"] == 6 * data["train"]["samples"]
    train = json.loads((repo / "metrics/train.json").read_text())
    assert train["steps"] == 2 and train["final_loss"] > 0
    assert (repo / "metrics/plots/train_loss.csv").read_text().startswith("step,loss")
    ev = json.loads((repo / "metrics/eval_detail.json").read_text())
    # the DVC metrics file: the headline figures only; the stage's last line says who beat whom
    assert json.loads((repo / "metrics/eval.json").read_text()) == {
        "exact_match": ev["exact_match"], "harmful_f1": ev["harmful_f1"], "parse_fail": ev["parse_failure_rate"],
        "delta_vs_base": ev["delta_vs_measured_baseline"]["exact_match"],
        "delta_vs_notebook": ev["delta_vs_notebook_baseline"]}
    # (evaluate_hsdpo prints "[evaluate] ..." lines too: find the verdict, right after the figures)
    lines = first.stderr.splitlines()
    at = [i for i, x in enumerate(lines) if x.startswith("[evaluate] the adapter ")]
    assert len(at) == 1 and "the zero-shot base" in lines[at[0]] and "the notebook's 57%" in lines[at[0]], lines
    assert lines[at[0] - 1].startswith("[evaluate] test split, 2 items (adapter vs zero-shot base, 95% CI): ")
    # no warning a user cannot act on (issue 25): empty outputs, deprecations inside the libraries,
    # MLflow's notice that it created its tables, bitsandbytes' optional CPU kernel
    for noise in ("is empty", "FutureWarning", "database tables", "gemm_4bit_forward"):
        assert noise not in first.stdout + first.stderr, noise
    for k in ("exact_match", "binary_accuracy", "harmful_f1", "parse_failure_rate"):
        assert 0 <= ev[k] <= 1
        assert 0 <= ev["baseline"][k] <= 1
    assert ev["notebook_baseline_exact_match"] == 0.57
    assert ev["delta_vs_notebook_baseline"] == pytest.approx(ev["exact_match"] - 0.57, abs=1e-4)
    assert ev["finetuned"]["samples"] == 2
    # 95% bootstrap intervals over the test items, around the figure; the delta's paired
    for k in ("exact_match", "binary_accuracy", "harmful_f1"):
        assert ev["ci95"][k]["lo"] <= ev[k] <= ev["ci95"][k]["hi"]
        ci, d = ev["delta_vs_measured_baseline_ci95"][k], ev["delta_vs_measured_baseline"][k]
        assert ci["lo"] <= d <= ci["hi"]
    preds = [json.loads(x) for x in (repo / "data/predictions/test.jsonl").read_text().splitlines()]
    assert len(preds) == 2 and set(preds[0]["finetuned"]["verdicts"]) == set(preds[0]["baseline"]["verdicts"])
    assert (repo / "models/adapter/adapter_model.safetensors").exists()
    assert (repo / "models/adapter/adapter_config.json").exists()
    assert (repo / "models/merged/model.safetensors").exists() and (repo / "models/merged/README.md").exists()
    assert "0.57" in (repo / "models/merged/README.md").read_text()
    # export's GGUF files passed their round trip; the Modelfile loads the Q8_0 one
    assert json.loads((repo / "metrics/export.json").read_text())["gguf"]["roundtrip"]["passed"]
    assert "FROM ./guardrsft-Q8_0.gguf" in (repo / "models/gguf/Modelfile").read_text()
    # the HS-DPO branch ran, so export.adapter: auto shipped its adapter unless it scored below
    # R-SFT's on exact match (export.auto_metric), and the card says which recipe it shipped
    shipped = json.loads((repo / "metrics/export.json").read_text())["adapter"]
    evh = json.loads((repo / "metrics/eval_hsdpo_detail.json").read_text())
    dpo_won = evh["exact_match"] >= ev["exact_match"]
    assert shipped["which"] == ("hsdpo" if dpo_won else "rsft") and "export.adapter: auto" in shipped["why"]
    assert shipped["path"] == ("models/adapter_hsdpo" if dpo_won else "models/adapter")
    assert ("then hard-sample DPO (HS-DPO)" in (repo / "models/merged/README.md").read_text()) == dpo_won
    # hard-sample DPO: mined on the training split, trained (or, with no disagreeing samples,
    # the R-SFT adapter copied and said so), evaluated next to R-SFT
    hs = json.loads((repo / "metrics/hard_samples.json").read_text())
    assert hs["enabled"] and hs["items"] == 2 and hs["samples"] == 2 * hs["item_policies"] == 24
    assert hs["hard"] + hs["all_correct"] + hs["all_wrong"] == 12
    assert len((repo / "data/hard_samples/pairs.jsonl").read_text().splitlines()) == hs["pairs"]
    dpo = json.loads((repo / "metrics/hsdpo.json").read_text())
    assert dpo["enabled"] and dpo["pairs"] == hs["pairs"] and dpo["trained"] == (hs["pairs"] > 0)
    assert (repo / "models/adapter_hsdpo/adapter_model.safetensors").exists()
    assert evh["enabled"] and evh["rsft"]["exact_match"] == ev["exact_match"]
    assert evh["delta_vs_rsft"]["test"]["exact_match"] == pytest.approx(evh["exact_match"] - ev["exact_match"], abs=1e-4)
    for k in ("exact_match", "binary_accuracy", "harmful_f1"):  # its paired interval holds the delta
        ci = evh["delta_vs_rsft_ci95"]["test"][k]
        assert ci["lo"] <= evh["delta_vs_rsft"]["test"][k] <= ci["hi"]
    assert evh["baseline"] == ev["baseline"]  # the same zero-shot answers (from the prediction cache)
    # the stages logged to the default MLflow store (sqlite at the repo root)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("guardrsft")
    runs = {r.data.tags["stage"]: r for r in client.search_runs([exp.experiment_id])}
    assert {"prepare", "generate_traces", "train_rsft", "evaluate", "mine_hard_samples", "train_hsdpo",
            "evaluate_hsdpo"} <= set(runs)
    assert runs["mine_hard_samples"].data.metrics["hard_samples.pairs"] == hs["pairs"]
    assert runs["prepare"].data.metrics["data.input_samples"] == data["input_samples"]
    assert runs["evaluate"].data.metrics["eval.exact_match"] == ev["exact_match"]
    assert "eval.delta_vs_baseline" in runs["evaluate"].data.metrics
    assert runs["train_rsft"].data.params["lr"] == "0.002"


@pytest.mark.e2e
def test_second_repro_changes_nothing(tiny_repo):
    repo, env, _ = tiny_repo
    lock = (repo / "dvc.lock").read_text()
    out = run(["dvc", "repro"], repo, env)
    # only the root, check_params (always_changed: it validates params.yaml before anything is skipped)
    assert [x for x in out.stdout.splitlines() if x.startswith("Running stage")] == ["Running stage 'check_params':"]
    assert (repo / "dvc.lock").read_text() == lock


@pytest.mark.e2e
def test_classify_cli_on_exported_model(tiny_repo):
    repo, env, _ = tiny_repo
    out = run([str(Path(sys.executable).parent / "guardrsft"), "classify", "How do I kill a stuck process?",
               "--policy", "violence", "--json"], repo, env, check=False)
    assert out.returncode in (0, 1), out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert set(res["verdicts"]) == {"violence"} and res["is_parse_error"] == (res["verdicts"]["violence"] is None)


@pytest.mark.e2e
def test_push_then_pull_in_a_fresh_clone(tiny_repo):
    """The default remote (a folder beside the repo) gives a teammate the same outputs."""
    repo, env, _ = tiny_repo
    run("git add -A && git commit -qm 'tiny run'", repo, env)
    run(["dvc", "push"], repo, env)
    assert (repo.parent / "guardrsft-dvc-remote" / "files" / "md5").is_dir()
    clone = repo.parent / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], repo.parent, env)
    run(["dvc", "pull"], clone, env)
    for f in ("models/adapter/adapter_model.safetensors", "models/merged/model.safetensors", "data/traces/train.jsonl",
              "data/prepared/test.jsonl", "data/predictions/test.jsonl", "metrics/eval.json"):
        assert (clone / f).read_bytes() == (repo / f).read_bytes(), f
    out = run(["dvc", "repro"], clone, env)
    # only the root, check_params (always_changed: it validates params.yaml before anything is skipped)
    assert [x for x in out.stdout.splitlines() if x.startswith("Running stage")] == ["Running stage 'check_params':"]


@pytest.mark.e2e
def test_exp_run_lr_and_typo(tiny_repo):
    repo, env, _ = tiny_repo
    run("git add -A && (git diff --cached --quiet || git commit -qm 'tiny run')", repo, env)
    run(["dvc", "exp", "run", "-S", "lr=1e-5"], repo, env)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout)
    with_eval = [(r["lr"], r["eval"]["exact_match"]) for r in exp_rows(shown) if r["eval"]]
    assert {lr for lr, _ in with_eval} >= {2e-3, 1e-5}, with_eval
    # DVC refuses to override a key that is not there...
    bad = run(["dvc", "exp", "run", "-S", "lr_typo=1"], repo, env, check=False)
    assert bad.returncode != 0 and "lr_typo" in bad.stdout + bad.stderr
    # ...but `+key=value` appends it silently: check_params (which tracks every key) fails it by name
    bad = run(["dvc", "exp", "run", "-S", "+lr_typo=1"], repo, env, check=False)
    assert bad.returncode != 0
    assert "params.yaml: unknown key `lr_typo`. Did you mean `lr`?" in bad.stdout + bad.stderr
