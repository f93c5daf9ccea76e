"""bench/error_analysis.py on hand-made prediction rows (quality.py's file format)."""
import gzip
import json

import pytest
from helpers_bench import bench_module


@pytest.fixture(scope="module")
def ea():
    yield from bench_module("error_analysis")


def row(positive, gold, verdicts):
    v = {"hate_speech": "SAFE", "violence": "SAFE", **verdicts}
    verdict = "UNSAFE" if "UNSAFE" in v.values() else (None if None in v.values() else "SAFE")
    return {"id": "x", "positive": positive, "gold": gold, "verdict": verdict, "verdicts": v, "content": "c"}


ROWS = [row(True, ["hate_speech"], {"hate_speech": "UNSAFE"}),               # caught
        row(True, ["hate_speech"], {}),                                      # missed
        row(True, ["hate_speech", "violence"], {"violence": "UNSAFE"}),      # caught by another policy
        row(True, [], {"hate_speech": "UNSAFE"}),                            # harm no policy covers, caught
        row(False, [], {"hate_speech": "UNSAFE", "violence": "UNSAFE"}),     # over-refusal, two policies
        row(False, [], {"violence": None}),                                  # unparsed: wrong, no flag
        row(False, [], {})]


def test_counts_by_hand(ea):
    m = ea.analyse(ROWS)
    assert (m["items"], m["harmful"], m["benign"]) == (7, 4, 3)
    assert m["false_negatives"] == 1 and m["false_positives"] == 2 and m["benign_unparsed"] == 1
    assert m["recall_by_gold"] == {
        "hate_speech": {"items": 2, "caught": 1, "recall": 0.5},
        "hate_speech+violence": {"items": 1, "caught": 1, "recall": 1.0},
        ea.NO_POLICY: {"items": 1, "caught": 1, "recall": 1.0}}
    assert m["benign_flags_per_policy"] == {"hate_speech": 1, "violence": 1}


def test_set_without_policy_gold_is_not_called_out_of_scope(ea):
    m = ea.analyse([row(True, [], {"violence": "UNSAFE"}), row(True, [], {}), row(False, [], {})])
    assert m["recall_by_gold"] == {ea.NO_GOLD: {"items": 2, "caught": 1, "recall": 0.5}}


def test_cli_reads_gz_and_names_a_bad_file(ea, tmp_path, capsys):
    f = tmp_path / "rsft.om.jsonl.gz"
    with gzip.open(f, "wt") as g:
        g.write("".join(json.dumps(r) + "\n" for r in ROWS))
    ea.main([str(f)])
    assert json.loads(capsys.readouterr().out)[str(f)]["false_positives"] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    with pytest.raises(SystemExit, match="bad.jsonl: not a quality.py predictions file"):
        ea.main([str(bad)])
    with pytest.raises(SystemExit, match="missing.jsonl.gz: not found"):
        ea.main([str(tmp_path / "missing.jsonl.gz")])
