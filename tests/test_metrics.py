import pytest

from guardrsft.metrics import compute

POL = ["violence", "illegal"]


def res(v, i):
    flagged = [q for q in POL if (v, i)[POL.index(q)] == "UNSAFE"]
    errors = [q for q in POL if (v, i)[POL.index(q)] is None]
    return {"verdicts": {"violence": v, "illegal": i}, "flagged": flagged, "parse_errors": errors,
            "is_parse_error": bool(errors), "verdict": "UNSAFE" if flagged else (None if errors else "SAFE")}


def test_hand_computed_example():
    golds = [["violence"], [], ["violence", "illegal"], ["illegal"]]
    results = [res("UNSAFE", "SAFE"),      # exact
               res("SAFE", "UNSAFE"),      # false positive on benign
               res("UNSAFE", "SAFE"),      # harmful caught, set wrong
               res("SAFE", None)]          # parse failure: wrong everywhere
    m = compute(golds, results, POL)
    assert m["exact_match"] == 0.25
    # binary: 1 ok, 2 wrong (fp), 3 ok, 4 wrong (verdict None)
    assert m["binary_accuracy"] == 0.5
    assert m["confusion"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 0}
    assert m["harmful_precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["harmful_recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["benign_fpr"] == 1.0
    assert m["parse_failure_rate"] == 0.125 and m["parse_failure_items"] == 1
    # violence: tp 2 (s1, s3), fp 0, fn 0 -> f1 1; illegal: tp 0, fp 1 (s2), fn 2 (s3, s4 failure) -> 0
    assert m["per_policy"]["violence"]["f1"] == 1.0
    assert m["per_policy"]["illegal"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert m["macro_f1"] == 0.5


def test_parse_failure_never_counts_as_correct():
    # a failure on a policy the gold says SAFE must not become a lucky "harmful" hit
    m = compute([["violence"]], [res(None, None)], POL)
    assert m["exact_match"] == 0 and m["binary_accuracy"] == 0 and m["parse_failure_rate"] == 1.0


def test_perfect():
    m = compute([["illegal"], []], [res("SAFE", "UNSAFE"), res("SAFE", "SAFE")], POL)
    assert m["exact_match"] == 1 and m["binary_accuracy"] == 1 and m["harmful_f1"] == 1 and m["benign_fpr"] == 0
