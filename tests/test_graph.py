"""dvc.yaml's deps and params come from the code (guardrsft.graph); the DVC metrics fit one screen."""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from guardrsft import graph
from guardrsft.config import load_params
from guardrsft.evaluate import headline, verdict

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_yaml_lists_every_module_each_stage_runs():
    assert graph.check() == []
    # what the issue found missing: traces' teacher/importer, config/models/data/pipeline everywhere
    deps = graph.code_deps("generate_traces")
    assert {"src/guardrsft/teacher.py", "src/guardrsft/importer.py", "src/guardrsft/pipeline.py"} <= set(deps)
    assert "configs/accelerate" in graph.code_deps("train_rsft")
    # and no more than it runs: export's code does not rerun training
    assert "src/guardrsft/export.py" not in graph.code_deps("train_rsft")


@pytest.fixture
def copy_repo(tmp_path, monkeypatch):
    """A copy of stages/, src/guardrsft and dvc.yaml that graph reads instead of the real ones."""
    for d in ("stages", "src/guardrsft"):
        shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.setattr(graph, "ROOT", tmp_path)
    monkeypatch.setattr(graph, "PKG_DIR", tmp_path / "src/guardrsft")
    monkeypatch.setattr(graph, "DVC_YAML", tmp_path / "dvc.yaml")
    graph._load.cache_clear()
    yield tmp_path
    graph._load.cache_clear()


def test_check_fails_when_a_stage_imports_a_module_dvc_yaml_does_not_list(copy_repo, capsys):
    # prepare's data loader starts using the teacher, inside a function (a local import)
    data = copy_repo / "src/guardrsft/data.py"
    data.write_text(data.read_text() + "\n\ndef _uses_teacher():\n    from .teacher import Teacher\n    return Teacher\n"
                    "\n\ndef counts_with_teacher():\n    return _uses_teacher()\n")
    graph._load.cache_clear()
    assert graph.check() == []  # nothing prepare runs calls it yet
    sig = ") -> dict[str, list[dict]]:\n"  # data.split, which prepare calls
    data.write_text(data.read_text().replace(sig, sig + "    counts_with_teacher()\n", 1))
    graph._load.cache_clear()
    assert "dvc.yaml: stage `prepare` runs src/guardrsft/teacher.py but does not list it in deps" in graph.check()
    assert graph.main(["--check"]) == 1
    assert "prepare" in capsys.readouterr().err
    assert graph.main(["--write"]) == 0  # regenerated: the check passes and comments elsewhere stay
    text = (copy_repo / "dvc.yaml").read_text()
    assert "- src/guardrsft/teacher.py" in text.split("  prepare:")[1].split("  generate_traces:")[0]
    assert text.count("#") == (ROOT / "dvc.yaml").read_text().count("#")


def test_check_names_a_listed_module_the_stage_never_runs(copy_repo):
    text = (copy_repo / "dvc.yaml").read_text().replace(
        "      - stages/prepare.py\n", "      - stages/prepare.py\n      - src/guardrsft/export.py\n", 1)
    assert graph.check(text) == ["dvc.yaml: stage `prepare` lists src/guardrsft/export.py, which its code never imports"]


def test_each_stage_depends_on_its_resolved_params_file():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["check_params"]["always_changed"] is True
    for s in graph.STAGES:
        assert f"metrics/params/{s}.json" in stages[s]["deps"]
        assert "params" not in stages[s]  # the file is the record: no second, hand-picked list


def test_resolved_params_hold_what_each_stage_reads(monkeypatch):
    p = load_params(ROOT / "params.yaml")
    prep = graph.stage_params(p, "prepare")
    assert set(prep) == {"policies", "prepare", "seed"}  # the base model does not rerun prepare
    tr = graph.stage_params(p, "train_rsft")
    assert tr["model"] == p.hw["model"] and tr["model_source"] == f"preset {p.preset}"
    assert tr["batch_size"] == p.batch_size and tr["lr"] == p.lr and "train" in tr
    monkeypatch.setenv("GUARDRSFT_BASE_MODEL", "/models/other")
    tr = graph.stage_params(p, "train_rsft")
    assert tr["model"] == "/models/other" and tr["model_source"] == "env GUARDRSFT_BASE_MODEL"
    # every stage that loads a model records which one
    for s in ("train_rsft", "evaluate", "mine_hard_samples", "train_hsdpo", "evaluate_hsdpo", "export"):
        assert graph.stage_params(p, s)["model"] == "/models/other", s


def test_check_params_rewrites_a_file_only_when_its_values_change(tmp_path):
    p = load_params(ROOT / "params.yaml")
    assert all(graph.write_stage_params(p, tmp_path).values())
    assert not any(graph.write_stage_params(p, tmp_path).values())
    p.export.name = "other"
    changed = {Path(k).name for k, v in graph.write_stage_params(p, tmp_path).items() if v}
    assert changed == {"export.json", "all.json"}
    assert json.loads((tmp_path / "export.json").read_text())["export"]["name"] == "other"


def test_the_committed_stage_params_are_what_check_params_writes_now(tmp_path, monkeypatch):
    """metrics/params/*.json in git and their md5 in dvc.lock equal what check_params writes from
    params.yaml with this code; otherwise a fresh clone's `dvc repro` rewrites them, reruns the
    stages that read them, and leaves dvc.lock changed (found: `policy_info` added to the code,
    the committed files not regenerated)."""
    import hashlib

    monkeypatch.delenv("GUARDRSFT_BASE_MODEL", raising=False)
    graph.write_stage_params(load_params(ROOT / "params.yaml"), tmp_path)
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    for f in sorted(tmp_path.iterdir()):
        committed = ROOT / graph.PARAMS_DIR / f.name
        assert committed.read_text() == f.read_text(), f"{committed}: run `dvc repro check_params` and commit"
        md5 = hashlib.md5(committed.read_bytes()).hexdigest()
        for stage, entry in lock.items():
            for d in entry.get("deps", []):
                if d["path"] == f"{graph.PARAMS_DIR}/{f.name}":
                    assert d["md5"] == md5, f"dvc.lock {stage}: {d['path']} is stale: `dvc commit -f {stage}`"


# ------------------------------------------------------------------ one screen of metrics
def _eval(em=0.4583, base=0.5, lo=0.02, hi=0.3, em_ci=(0.30, 0.62)):
    return {"exact_match": em, "harmful_f1": 0.7123, "parse_failure_rate": 0.0417,
            "delta_vs_measured_baseline": {"exact_match": round(em - base, 4)},
            "delta_vs_notebook_baseline": round(em - 0.57, 4),
            "ci95": {"exact_match": {"lo": em_ci[0], "hi": em_ci[1]}},
            "delta_vs_measured_baseline_ci95": {"exact_match": {"lo": lo, "hi": hi}}}


def test_dvc_metrics_show_fits_120_columns():
    from dvc.compare import metrics_table
    from tabulate import tabulate

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    files = [next(iter(m)) for s in stages.values() for m in s.get("metrics", [])]
    assert files == ["metrics/eval.json", "metrics/eval_hsdpo.json"]  # the only DVC metrics files
    worst = headline(_eval(em=-0.1234, base=0.8765))  # widest numbers: negative, 4 decimals
    shown = {"workspace": {"data": {files[0]: {"data": worst}, files[1]: {"data": {"hsdpo_vs_rsft": -0.1234}}}}}
    td = metrics_table(shown, precision=5, round_digits=True)  # what `dvc metrics show` prints
    text = tabulate(list(td), td.keys(), tablefmt="plain", disable_numparse=True, missingval="-")
    assert max(len(x) for x in text.splitlines()) <= 120, text


def test_dvc_exp_show_leads_with_the_headline():
    # `dvc exp show` puts Experiment, Created, then the metrics in file and key order: the first
    # 120 columns hold them (an experiment name ~26 wide, a column's padding and border 3)
    keys = list(headline(_eval()))
    assert keys == ["exact_match", "harmful_f1", "parse_fail", "delta_vs_base", "delta_vs_notebook"]
    assert 26 + 3 + len("Created") + 6 + sum(len(k) + 3 for k in keys) <= 120


def test_verdict_says_in_words_who_beat_whom():
    assert verdict(_eval(), 0.57) == (
        "the adapter beat the zero-shot base by 4.2 points of exact match (95% CI [+2.0, +30.0] points); "
        "not distinguishable from the notebook's 57% (exact match 0.458, 95% CI [0.300, 0.620])")
    low = verdict(_eval(em=0.2, base=0.5, lo=-0.4, hi=-0.1, em_ci=(0.1, 0.3)), 0.57)
    assert low.startswith("the adapter scored below the zero-shot base by 30.0 points")
    assert low.endswith("below the notebook's 57% (exact match 0.200, 95% CI [0.100, 0.300])")
    unclear = verdict(_eval(em=0.7, base=0.69, lo=-0.05, hi=0.08, em_ci=(0.6, 0.8)), 0.57)
    assert "did not clearly beat the zero-shot base (+1.0 points" in unclear and "above the notebook's 57%" in unclear
