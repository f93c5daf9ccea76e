"""bench/bootstrap_ci.py on the evaluate stage's predictions (data/predictions/benchmarks/<set>.jsonl):
the figures and the paired difference a BENCHMARKS row quotes."""
import gzip
import json
import subprocess
import sys

from helpers_bench import ROOT

POL = ("hate_speech", "violence", "self_harm", "sexual_minors", "harassment", "illegal")


def answer(flagged):
    v = {p: ("UNSAFE" if p in flagged else "SAFE") for p in POL}
    return {"verdict": "UNSAFE" if flagged else "SAFE", "flagged": list(flagged), "verdicts": v,
            "scores": {p: float(p in flagged) for p in POL}, "is_parse_error": False}


def write(path, golds, flags):
    rows = [{"id": str(i), "gold": {"labels": g, "known": list(POL), "harmful": bool(g)}, "positive": bool(g),
             "finetuned": answer(f), "baseline": answer([])} for i, (g, f) in enumerate(zip(golds, flags))]
    with gzip.open(path, "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def test_reads_the_evaluate_stage_predictions_and_pairs_two_runs(tmp_path):
    golds = [["violence"]] * 10 + [[]] * 10
    # run a: 8 of 10 harmful caught, 2 false positives; run b: all 10 caught, no false positive
    write(tmp_path / "a.jsonl.gz", golds, [["violence"]] * 8 + [[]] * 2 + [["violence"]] * 2 + [[]] * 8)
    write(tmp_path / "b.jsonl.gz", golds, [["violence"]] * 10 + [[]] * 10)
    out = subprocess.run([sys.executable, str(ROOT / "bench/bootstrap_ci.py"), str(tmp_path / "b.jsonl.gz"),
                          "--against", str(tmp_path / "a.jsonl.gz"), "--resamples", "200"],
                         capture_output=True, text=True, check=True, env={"PYTHONPATH": str(ROOT / "src")}).stdout
    row = json.loads(out)[str(tmp_path / "b.jsonl.gz")]
    assert row["items"] == 20 and row["exact_match"] == 1.0 and row["harmful_f1"] == 1.0
    assert row["delta"]["exact_match"] == 0.2  # 16 of 20 right before, 20 of 20 now
    assert row["delta_ci95"]["exact_match"]["lo"] > 0  # every resample favours b
    base = subprocess.run([sys.executable, str(ROOT / "bench/bootstrap_ci.py"), str(tmp_path / "a.jsonl.gz"),
                           "--model", "baseline", "--resamples", "50"], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(ROOT / "src")}).stdout
    assert json.loads(base)[str(tmp_path / "a.jsonl.gz")]["exact_match"] == 0.5  # the base flags nothing
