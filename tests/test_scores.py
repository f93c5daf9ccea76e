"""Verdict scores (P(UNSAFE) at the verdict word), threshold tuning, AUROC/AUPRC, their params."""
import json

import numpy as np
import pytest
from conftest import ROOT, write_params
from fixtures.tiny_model import build_tiny_model

from guardrsft.config import ParamsError, load_params
from guardrsft.guard import build_result, load_guard
from guardrsft.metrics import compute, pr_curve
from guardrsft.scores import objective_value, score_answers, tune

POL = ["violence", "illegal"]
ANSWER = "Reasoning:\nlooks fine\nviolence: UNSAFE\nillegal: SAFE\nClassification: UNSAFE"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def _by_hand(guard, prompt_ids, answer, prefix, word):
    """softmax over the whole vocabulary at the verdict word, renormalized over its two first tokens."""
    import torch

    ids = prompt_ids + guard.tok(answer[:len(prefix)], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(guard.model(input_ids=torch.tensor([ids])).logits[0, -1].double(), dim=-1)
    u = guard.tok(" UNSAFE", add_special_tokens=False)["input_ids"][0]
    s = guard.tok(" SAFE", add_special_tokens=False)["input_ids"][0]
    return float(probs[u] / (probs[u] + probs[s]))


def test_score_equals_a_softmax_of_the_models_logits(tiny_model, params):
    guard = load_guard(tiny_model, params=params, max_new_tokens=8, batch_size=2)
    p_ids = guard._prompt_ids("some content", "*")
    other = guard._prompt_ids("other, longer content to pad the batch", "*")
    got = score_answers(guard.model, guard.tok, [other, p_ids], ["no verdict here", ANSWER], POL + ["self_harm"])
    assert got[0] == {"violence": None, "illegal": None, "self_harm": None}  # parse error: no score
    assert got[1]["self_harm"] is None  # no line for it
    v_prefix = ANSWER[:ANSWER.index("violence: ") + len("violence:")]
    i_prefix = ANSWER[:ANSWER.index("illegal: ") + len("illegal:")]
    assert got[1]["violence"] == pytest.approx(_by_hand(guard, p_ids, ANSWER, v_prefix, "UNSAFE"), abs=1e-5)
    assert got[1]["illegal"] == pytest.approx(_by_hand(guard, p_ids, ANSWER, i_prefix, "SAFE"), abs=1e-5)


def test_classify_results_carry_scores_and_none_on_parse_error(tiny_model, params):
    guard = load_guard(tiny_model, params=params, max_new_tokens=6, batch_size=2)
    res = guard.classify([{"content": "hello"}, {"content": "another text"}])
    for r in res:  # a random 2-layer model writes no verdict in 6 tokens: every policy unparsed
        assert set(r["scores"]) == set(params.policies)
        assert all(v is None for v in r["scores"].values()) and r["is_parse_error"]
    # a parsed answer's scores come with its result; thresholds decide, the written verdicts are kept
    r = build_result({"content": "x"}, dict.fromkeys(POL, ANSWER), joint=True, scores={"violence": 0.3, "illegal": 0.7},
                     thresholds={"violence": 0.5, "illegal": 0.6})
    assert r["verdicts"] == {"violence": "SAFE", "illegal": "UNSAFE"}
    assert r["verdicts_as_written"] == {"violence": "UNSAFE", "illegal": "SAFE"}
    assert r["flagged"] == ["illegal"] and r["verdict"] == "UNSAFE" and not r["is_parse_error"]
    r = build_result({"content": "x"}, dict.fromkeys(POL, "no answer"), joint=True, thresholds={"violence": 0.5})
    assert r["scores"] == {"violence": None, "illegal": None} and r["is_parse_error"] and r["verdict"] is None


def test_model_thresholds_are_read_from_its_description(tiny_model, params, tmp_path):
    from guardrsft import spec

    spec.write(tiny_model, params, thresholds={"violence": 0.25})
    try:
        guard = load_guard(tiny_model, params=params, max_new_tokens=4)
        assert guard.thresholds == {"violence": 0.25}
        bad = dict(spec.describe(params), verdict={"thresholds": {"violence": 2}})
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / spec.FILE).write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="verdict.thresholds"):
            spec.thresholds(tmp_path / "m")
    finally:
        (spec.Path(tiny_model) / spec.FILE).unlink()


def _synthetic(seed=0, n=300):
    rng = np.random.default_rng(seed)
    golds = [{q for q in POL if rng.random() < 0.25} for _ in range(n)]
    scores = [{q: (None if rng.random() < 0.03 else float(np.clip(rng.normal(0.55 if q in g else 0.35, 0.15), 0, 1)))
               for q in POL} for g in golds]
    return scores, golds


def _grid_best(scores, golds, thr, q, objective):
    grid = np.linspace(0, 1, 401)
    return max(objective_value(scores, golds, POL, {**thr, q: t}, objective) for t in grid)


@pytest.mark.parametrize("objective", ["f1", "exact_match"])
def test_tuned_thresholds_maximize_the_objective(objective):
    scores, golds = _synthetic()
    thr = tune(scores, golds, POL, objective)
    got = objective_value(scores, golds, POL, thr, objective)
    for q in POL:  # no threshold of any one policy does better (f1: per policy; exact match: coordinate-wise)
        assert got >= _grid_best(scores, golds, thr, q, objective) - 1e-9
    # never below the written verdicts (threshold 0.5) on the data it was tuned on, and it does move
    assert got >= objective_value(scores, golds, POL, dict.fromkeys(POL, 0.5), objective)
    assert thr != dict.fromkeys(POL, 0.5)


def test_single_policy_exact_match_is_the_global_optimum():
    scores, golds = _synthetic(seed=1)
    one = [{"violence": s["violence"]} for s in scores]
    gold1 = [g & {"violence"} for g in golds]
    thr = tune(one, gold1, ["violence"], "exact_match")
    best = max(objective_value(one, gold1, ["violence"], {"violence": t}, "exact_match") for t in np.linspace(0, 1, 1001))
    assert objective_value(one, gold1, ["violence"], thr, "exact_match") == pytest.approx(best)


def test_auroc_auprc_and_pr_curve_equal_sklearn():
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    scores, golds = _synthetic(seed=2, n=120)
    results = [build_result({"content": "x"}, dict.fromkeys(POL, "Classification: SAFE"), scores=s) for s in scores]
    m = compute([sorted(g) for g in golds], results, POL)
    for q in POL:  # a missing score is the wrong extreme (like a parse failure elsewhere)
        y = [q in g for g in golds]
        s = [float(not t) if r[q] is None else r[q] for t, r in zip(y, scores)]
        assert m["per_policy"][q]["auroc"] == round(roc_auc_score(y, s), 4)
        assert m["per_policy"][q]["auprc"] == round(average_precision_score(y, s), 4)
    y = [bool(g) for g in golds]
    s = [max(v for v in r.values() if v is not None) for r in scores]
    assert m["auroc"] == round(roc_auc_score(y, s), 4) and m["auprc"] == round(average_precision_score(y, s), 4)
    prec, rec, _ = precision_recall_curve(y, s)
    pts = pr_curve([sorted(g) for g in golds], results, POL)
    assert [x["precision"] for x in pts] == [round(float(v), 4) for v in prec]
    assert [x["recall"] for x in pts] == [round(float(v), 4) for v in rec]
    # results without scores (older caches, vllm): unknown, not zero
    bare = compute([sorted(g) for g in golds], [dict(r, scores={}) for r in results], POL)
    assert bare["auroc"] is None and bare["per_policy"]["violence"]["auroc"] is None


@pytest.mark.parametrize("thresholds, objective, match", [
    ("sometimes", "exact_match", "evaluate.thresholds"),
    ("{violence: 1.5}", "exact_match", "evaluate.thresholds.violence"),
    ("{violenz: 0.4}", "exact_match", "not in `policies`"),
    ("null", "auc", "evaluate.threshold_objective"),
])
def test_threshold_params_are_validated(tmp_path, params_text, thresholds, objective, match):
    bad = params_text.replace("  thresholds: null\n", f"  thresholds: {thresholds}\n", 1).replace(
        "  threshold_objective: exact_match", f"  threshold_objective: {objective}", 1)
    with pytest.raises(ParamsError, match=match):
        load_params(write_params(tmp_path, bad))
    vllm = params_text.replace("  thresholds: null\n", "  thresholds: auto\n", 1).replace(
        "  backend: auto", "  backend: vllm", 1)
    with pytest.raises(ParamsError, match="vllm backend does not give"):
        load_params(write_params(tmp_path, vllm))


def test_fixed_thresholds_are_applied_to_the_fine_tuned_results_only(tmp_path, params_text):
    from guardrsft import spec
    from guardrsft.evaluate import _thresholds

    ok = params_text.replace("  thresholds: null\n", "  thresholds: {violence: 0.4, illegal: 0.6}\n", 1)
    p = load_params(write_params(tmp_path, ok))
    res = [build_result({"content": "x"}, dict.fromkeys(POL, ANSWER), joint=True, scores={"violence": 0.35, "illegal": 0.65})]
    results = {"finetuned": {"test": res}, "baseline": {"test": list(res)}}
    assert _thresholds(p, None, results) == {"objective": None, "values": {"violence": 0.4, "illegal": 0.6}}
    assert results["finetuned"]["test"][0]["verdicts"] == {"violence": "SAFE", "illegal": "UNSAFE"}
    assert results["finetuned"]["test"][0]["verdicts_as_written"] == {"violence": "UNSAFE", "illegal": "SAFE"}
    assert results["baseline"]["test"][0] is res[0]  # the zero-shot base keeps its written verdicts
    # training does not read them: the adapter's description has none (export writes what evaluate applied)
    assert "thresholds" not in spec.describe(p)["verdict"]


def test_auto_thresholds_are_tuned_on_val_applied_by_evaluate_and_exported(tmp_path, monkeypatch):
    """evaluate with thresholds auto: the fine-tuned model also answers the validation split
    (canned answers, real teacher-forced scores), thresholds are tuned there and applied to the
    test split; export writes them into the merged model, whose guard then decides by them."""
    from guardrsft import spec
    from guardrsft.evaluate import evaluate
    from guardrsft.export import merge
    from guardrsft.guard import Guard
    from guardrsft.io import read_jsonl, write_jsonl

    base = build_tiny_model(tmp_path / "base", adapter_dir=tmp_path / "adapter")
    monkeypatch.setenv("GUARDRSFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GUARDRSFT_BASE_MODEL", base)
    p = load_params(write_params(tmp_path, (ROOT / "params.yaml").read_text().replace(
        "  thresholds: null\n", "  thresholds: auto\n", 1)))
    pol = list(p.policies)
    for name, n in (("val", 18), ("test", 9)):
        write_jsonl(tmp_path / f"{name}.jsonl", [{"id": f"{name}{i}", "content": f"{name} text {i} " + "x" * (i % 7),
                                                  "labels": ["violence"] if i % 3 == 0 else []} for i in range(n)])

    def canned(self, prompts, stream=None, sampling=None):  # every answer says UNSAFE for violence only
        lines = "".join(f"{q}: {'UNSAFE' if q == 'violence' else 'SAFE'}\n" for q in pol)
        return [f"Reasoning:\nchecked.\n{lines}Classification: UNSAFE"] * len(prompts), [9] * len(prompts)

    monkeypatch.setattr(Guard, "_generate", canned)
    out = evaluate(p, str(tmp_path / "test.jsonl"), str(tmp_path / "adapter"), str(tmp_path / "detail.json"),
                   str(tmp_path / "pred/test.jsonl"), str(tmp_path / "plots"), val_path=str(tmp_path / "val.jsonl"))
    rep = out["thresholds"]
    thr = rep["values"]
    assert set(thr) == set(pol) and rep["objective"] == "exact_match" and rep["val_items"] == 18
    assert rep["val_thresholded"]["exact_match"] >= rep["val_as_written"]["exact_match"]
    assert "finetuned_as_written" in out and out["finetuned"]["samples"] == 9  # val answers are not test's
    for r in read_jsonl(tmp_path / "pred/test.jsonl"):
        s = r["finetuned"]["scores"]["violence"]
        assert s is not None and r["finetuned"]["verdicts"]["violence"] == ("UNSAFE" if s >= thr["violence"] else "SAFE")
        assert r["baseline"]["verdicts"]["violence"] == "UNSAFE"  # the zero-shot base: as written
    assert (tmp_path / "plots/pr_curve.csv").exists() and (tmp_path / "plots/pr_curve.png").exists()
    merge(p, str(tmp_path / "adapter"), str(tmp_path / "merged"), thresholds=thr)
    assert spec.thresholds(tmp_path / "merged") == thr
    assert load_guard(str(tmp_path / "merged"), params=p).thresholds == thr


def test_evaluate_writes_the_pr_curve_plot_files(tmp_path, params):
    import csv

    from guardrsft import plots
    from guardrsft.evaluate import _pr_curve

    scores, golds = _synthetic(seed=3, n=40)
    suite = {"name": "test", "items": [{"gold": {"labels": sorted(g), "known": None, "harmful": None}} for g in golds]}
    res = [build_result({"content": "x"}, dict.fromkeys(POL, "Classification: SAFE"), scores=s) for s in scores]
    assert _pr_curve(params, suite, {"finetuned": {"test": res}}, tmp_path / "pr_curve.csv")
    rows = list(csv.DictReader(open(tmp_path / "pr_curve.csv")))
    want = pr_curve([sorted(g) for g in golds], res, list(params.policies))
    assert [float(r["precision"]) for r in rows] == [x["precision"] for x in want] and float(rows[-1]["recall"]) == 0
    assert plots.pr_curve(tmp_path / "pr_curve.csv", tmp_path / "pr.png").read_bytes()[:4] == b"\x89PNG"
    # no scores (the vllm backend): no file, rather than an empty plot
    bare = [dict(r, scores={}) for r in res]
    assert not _pr_curve(params, suite, {"finetuned": {"test": bare}}, tmp_path / "none.csv")
    assert not (tmp_path / "none.csv").exists()


def test_auto_without_a_validation_path_is_refused_before_evaluating(tmp_path, params_text):
    from guardrsft.pipeline import evaluate

    p = load_params(write_params(tmp_path, params_text.replace("  thresholds: null\n", "  thresholds: auto\n", 1)))
    with pytest.raises(ParamsError, match="data/prepared/val.jsonl"):
        evaluate(p, *(str(tmp_path / f) for f in ("test.jsonl", "adapter", "d.json", "p.jsonl", "plots")))
    zero = params_text.replace("  thresholds: null\n", "  thresholds: auto\n", 1).replace(
        "  val_fraction: 0.1", "  val_fraction: 0.0", 1)
    with pytest.raises(ParamsError, match="prepare.val_fraction is 0"):
        load_params(write_params(tmp_path, zero))
