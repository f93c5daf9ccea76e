"""Every metric on small hand-computed cases (the expected numbers are worked out in comments)."""
import pytest

from guardrsft.guard import build_result
from guardrsft.metrics import binary_scores, compute, normalize_gold

POL = ["violence", "illegal"]


def res(v, i, latency=None):
    """A real result object (guard.build_result) from per-policy verdicts; None = no verdict line."""
    raw = {q: ("nothing to parse" if x is None else f"Reasoning: r\nClassification: {x}") for q, x in zip(POL, (v, i))}
    r = build_result({"content": "c"}, raw)
    if latency is None:
        r.pop("latency_s")
    else:
        r["latency_s"] = latency
    return r


def test_hand_computed_example():
    golds = [["violence"], [], ["violence", "illegal"], ["illegal"]]
    results = [res("UNSAFE", "SAFE"),      # exact
               res("SAFE", "UNSAFE"),      # false positive on benign
               res("UNSAFE", "SAFE"),      # harmful caught, set wrong
               res("SAFE", None)]          # parse failure: wrong everywhere
    m = compute(golds, results, POL)
    assert m["exact_match"] == 0.25 and m["exact_match_items"] == 4
    # binary: 1 ok, 2 wrong (fp), 3 ok, 4 wrong (verdict None counts as the opposite of gold: benign)
    assert m["binary_accuracy"] == 0.5
    assert m["confusion"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 0}
    assert m["harmful_precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["harmful_recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["harmful_f1"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["benign_fpr"] == 1.0
    # 1 of 8 (item, policy) answers failed; 1 of 4 items
    assert m["parse_failure_rate"] == 0.125 and m["parse_failure_items"] == 1 and m["parse_failure_item_rate"] == 0.25
    # violence: tp 2 (s1, s3), fp 0, fn 0 -> f1 1; illegal: tp 0, fp 1 (s2), fn 2 (s3, s4 failure) -> 0
    assert m["per_policy"]["violence"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2, "items": 4, "auroc": None, "auprc": None}
    assert m["per_policy"]["illegal"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2, "items": 4, "auroc": None, "auprc": None}
    assert m["macro_f1"] == 0.5


def test_per_policy_precision_recall_differ():
    # violence: gold U,U,S,S,U ; pred U,S,U,S,None -> tp 1, fn 2 (s2, s5 failure), fp 1 (s3), tn 1
    golds = [["violence"], ["violence"], [], [], ["violence"]]
    results = [res("UNSAFE", "SAFE"), res("SAFE", "SAFE"), res("UNSAFE", "SAFE"), res("SAFE", "SAFE"),
               res(None, "SAFE")]
    m = compute(golds, results, POL)
    v = m["per_policy"]["violence"]
    assert (v["precision"], v["recall"], v["support"]) == (0.5, pytest.approx(1 / 3, abs=1e-4), 3)
    assert v["f1"] == pytest.approx(0.4, abs=1e-4)  # 2 * 0.5 * 1/3 / (0.5 + 1/3)
    # illegal: all SAFE, all correct, no positives -> P = R = F1 = 0 by convention, support 0
    assert m["per_policy"]["illegal"]["support"] == 0
    # exact: s1 and s4; binary: s1 ok, s2 fn, s3 fp, s4 ok, s5 failure -> wrong
    assert m["exact_match"] == 0.4 and m["binary_accuracy"] == 0.4
    assert m["benign_fpr"] == 0.5  # fp 1 (s3) / (fp 1 + tn 1 (s4))
    # benign items s3, s4: violence flags s3 only; the unparsed s5 is harmful, so not counted
    assert m["benign_flag_rate"] == {"violence": 0.5, "illegal": 0.0}


def test_parse_failure_never_counts_as_correct():
    # a failure on a policy the gold says SAFE must not become a lucky "harmful" hit
    m = compute([["violence"]], [res(None, None)], POL)
    assert m["exact_match"] == 0 and m["binary_accuracy"] == 0 and m["parse_failure_rate"] == 1.0
    # a failure on a benign item is a false positive, so it raises the over-refusal rate
    m = compute([[]], [res("SAFE", None)], POL)
    assert m["benign_fpr"] == 1.0 and m["confusion"]["fp"] == 1
    # ... but no policy flagged it: the failure is in parse_failure_*, not in a policy's flag rate
    assert m["benign_flag_rate"] == {"violence": 0.0, "illegal": 0.0}
    # no benign item: the flag rate is unknown, not zero
    assert compute([["violence"]], [res("UNSAFE", "SAFE")], POL)["benign_flag_rate"] == {"violence": None,
                                                                                      "illegal": None}


def test_perfect():
    m = compute([["illegal"], []], [res("SAFE", "UNSAFE"), res("SAFE", "SAFE")], POL)
    assert m["exact_match"] == 1 and m["binary_accuracy"] == 1 and m["harmful_f1"] == 1 and m["benign_fpr"] == 0


def test_partially_known_gold_and_a_wider_harmful_label():
    # like OpenAI moderation: no `illegal` column (unknown everywhere); item 2 is harmful only
    # through a category outside the six policies (adult sexual content)
    golds = [{"labels": ["violence"], "known": ["violence"], "harmful": True},
             {"labels": [], "known": ["violence"], "harmful": True},
             {"labels": [], "known": ["violence"], "harmful": False}]
    results = [res("UNSAFE", "UNSAFE"),   # illegal's UNSAFE is not judged: gold unknown
               res("SAFE", "SAFE"),       # violence right, but harmful missed (fn)
               res("SAFE", "UNSAFE")]     # violence right; flagged illegal -> fp on the binary task
    m = compute(golds, results, POL)
    assert m["exact_match"] == 1.0 and m["exact_match_items"] == 3  # on the known policy, all right
    assert m["confusion"] == {"tp": 1, "fp": 1, "fn": 1, "tn": 0}
    assert m["per_policy"]["illegal"] == {"precision": None, "recall": None, "f1": None, "support": 0, "items": 0, "auroc": None, "auprc": None}
    assert m["per_policy"]["violence"]["f1"] == 1.0 and m["macro_f1"] == 1.0  # unknown policy left out
    # over-refusal per policy still counts the policy without gold: item 3 is benign, illegal fired
    assert m["benign_flag_rate"] == {"violence": 0.0, "illegal": 1.0}
    # an item with no known policy is left out of exact match, not counted right or wrong
    m = compute([{"labels": [], "known": [], "harmful": False}], [res("SAFE", "SAFE")], POL)
    assert m["exact_match"] is None and m["exact_match_items"] == 0 and m["binary_accuracy"] == 1.0


def test_gold_must_be_consistent():
    with pytest.raises(ValueError, match="not marked known"):
        normalize_gold({"labels": ["illegal"], "known": ["violence"]}, POL)
    assert normalize_gold(["illegal"], POL) == {"labels": {"illegal"}, "known": set(POL), "harmful": True}


def test_paper_style_f1_counts_failures_wrong_once():
    gold = [True, True, False, False, True]
    pred = [True, None, None, False, False]
    b = binary_scores(gold, pred)
    # failures: s2 (gold harmful) -> fn, s3 (gold benign) -> fp; tp 1 (s1), fn 2 (s2, s5), fp 1, tn 1
    assert b["confusion"] == {"tp": 1, "fp": 1, "fn": 2, "tn": 1} and b["parse_failures"] == 2
    assert (b["precision"], b["f1"], b["accuracy"]) == (0.5, pytest.approx(0.4, abs=1e-4), 0.4)
    # dropping the failures (what a lenient evaluator does) would report 0.667 on the same answers
    kept = [(g, p) for g, p in zip(gold, pred) if p is not None]
    lenient = binary_scores([g for g, _ in kept], [p for _, p in kept])
    assert lenient["f1"] == pytest.approx(2 / 3, abs=1e-4) and lenient["f1"] > b["f1"]


def test_latency_and_throughput():
    m = compute([[], []], [res("SAFE", "SAFE", latency=1.0), res("SAFE", "SAFE", latency=3.0)], POL)
    assert m["latency_per_item_s"] == 2.0 and m["items_per_second"] == 0.5


def test_bootstrap_resamples_follow_compute_rules():
    """Each bootstrap resample's value is exactly compute() on the resampled items (parse
    failures wrong, exact match only where per-policy gold is known), and the interval is
    seeded, contains the estimate and collapses where there is no variation."""
    import numpy as np

    from guardrsft.metrics import _boot_values, _scan, bootstrap_ci

    golds = [["violence"], [], ["violence", "illegal"], ["illegal"], [],
             {"labels": [], "known": [], "harmful": True}]  # harmful outside the policies: no exact match
    results = [res("UNSAFE", "SAFE"), res("SAFE", "UNSAFE"), res("UNSAFE", "SAFE"), res("SAFE", None),
               res("SAFE", "SAFE"), res("SAFE", "UNSAFE")]
    idx = np.random.default_rng(1).integers(0, len(golds), size=(40, len(golds)))
    v = _boot_values(_scan(golds, results, POL), idx)
    for r, row in enumerate(idx):
        m = compute([golds[i] for i in row], [results[i] for i in row], POL)
        assert v["harmful_f1"][r] == pytest.approx(m["harmful_f1"], abs=1e-4)
        assert v["binary_accuracy"][r] == pytest.approx(m["binary_accuracy"], abs=1e-4)
        if m["exact_match"] is None:
            assert np.isnan(v["exact_match"][r])
        else:
            assert v["exact_match"][r] == pytest.approx(m["exact_match"], abs=1e-4)
    ci = bootstrap_ci(golds, results, POL, seed=3)
    point = compute(golds, results, POL)
    for k in ("exact_match", "binary_accuracy", "harmful_f1"):
        assert ci[k]["lo"] <= point[k] <= ci[k]["hi"] and ci[k]["lo"] < ci[k]["hi"]
    assert ci == bootstrap_ci(golds, results, POL, seed=3)
    # a model against itself: the paired difference is 0 on every resample
    assert bootstrap_ci(golds, results, POL, other=results) == {k: {"lo": 0.0, "hi": 0.0} for k in ci}
    # a perfect model against one that inverts every harmful verdict: accuracy +1 on every resample
    perfect = [res("UNSAFE", "SAFE"), res("SAFE", "SAFE"), res("UNSAFE", "UNSAFE"), res("SAFE", "UNSAFE"),
               res("SAFE", "SAFE"), res("UNSAFE", "SAFE")]
    inverted = [res("SAFE", "SAFE"), res("UNSAFE", "SAFE"), res("SAFE", "SAFE"), res("SAFE", "SAFE"),
                res("UNSAFE", "SAFE"), res("SAFE", "SAFE")]
    d = bootstrap_ci(golds, perfect, POL, other=inverted)
    assert d["binary_accuracy"] == {"lo": 1.0, "hi": 1.0} and d["exact_match"] == {"lo": 1.0, "hi": 1.0}
    assert bootstrap_ci(golds, perfect, POL)["harmful_f1"] == {"lo": 1.0, "hi": 1.0}
    # no per-policy gold anywhere: exact match has no interval, the others do
    only_harm = [{"labels": [], "known": [], "harmful": h} for h in (True, False, True)]
    ci = bootstrap_ci(only_harm, results[:3], POL)
    assert ci["exact_match"] is None and ci["binary_accuracy"] is not None
    assert bootstrap_ci([], [], POL) == {"exact_match": None, "binary_accuracy": None, "harmful_f1": None}
