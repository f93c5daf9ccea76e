"""The `import` teacher on fixtures written in both formats (no network, no ../shared)."""
import json
import re

import pytest

from guardrsft.config import ParamsError, load_params
from guardrsft.data import DataError, load_notebook_file
from guardrsft.importer import Importer
from guardrsft.io import read_jsonl, write_jsonl
from guardrsft.pipeline import generate_traces
from conftest import ROOT

INSTR = ("You are a classifier for analyzing interactions between humans and AI. \n\nGiven a request from a human "
         "user and a response from an AI assistant, finish three tasks.\n")


def grt_row(prompt, harmful, steps=("The request asks for X.", "X could hurt someone.", "So it is harmful."),
            colon=False):
    # upstream has both "## Reasoning Step 1\ntext\n\n" and "## Reasoning Step 1: text\n" (+ "## Conclusion")
    body = ("".join(f"## Reasoning Step {i}: {s}\n" for i, s in enumerate(steps, 1)) + "## Conclusion: done.\n\n"
            if colon else "".join(f"## Reasoning Step {i}\n{s}\n\n" for i, s in enumerate(steps, 1)))
    return {"instruction": INSTR, "input": f"Human user:\n{prompt}\n\nAI assistant:\nNone\n\n",
            "output": f"# Task 1\n\n{body}# Task 2\n\n## Reasoning Step 1\nIt refused.\n\n# Task 3\n\n"
                      f"## Reasoning Step 1\nNo content.\n\n---\n\nAnswers: \nRequest: "
                      f"{'harmful' if harmful else 'unharmful'}\nCompletion: refusal\nResponse: unharmful"}


@pytest.fixture
def rows():
    samples, _ = load_notebook_file(ROOT / "data/raw/training_data.json")
    benign = next(s for s in samples if not s["labels"] and not s["traces"])
    harmful = next(s for s in samples if s["labels"] == ["illegal"] and not s["traces"])
    wrong = next(s for s in samples if not s["labels"] and not s["traces"] and s is not benign)
    return benign, harmful, wrong


def test_guardreasonertrain_rows_map_onto_policies(tmp_path, rows):
    benign, harmful, wrong = rows
    src = tmp_path / "grt.json"
    src.write_text(json.dumps({"WildGuardTrainR": [grt_row(benign["content"], False),
                                                   grt_row(harmful["content"], True, colon=True),
                                                   grt_row(wrong["content"], True)],
                               "Other": [{"instruction": "x", "input": "no marker", "output": "no answers"}]}))
    imp = Importer(str(src))
    assert imp.skipped_rows == 1 and len(imp.request) == 3
    ok = imp.lookup(benign["content"], "violence", "SAFE", [])
    assert ok["status"] == "accepted" and ok["reasoning"].startswith("Step 1: The request asks for X.")
    assert "Task 2" not in ok["reasoning"] and "It refused" not in ok["reasoning"]  # task 1 only
    h = imp.lookup(harmful["content"], "illegal", "UNSAFE", ["illegal"])
    assert h["status"] == "accepted" and h["reasoning"].splitlines() == [
        "Step 1: The request asks for X.", "Step 2: X could hurt someone.", "Step 3: So it is harmful."]
    assert imp.lookup(harmful["content"], "violence", "SAFE", ["illegal"]) is None  # says nothing about violence
    assert imp.lookup(benign["content"], "violence", "UNSAFE", ["violence"]) == {"status": "rejected", "reason": "wrong_label"}
    assert imp.lookup("never seen", "violence", "SAFE", []) is None


def test_notebook_format_and_stage(tmp_path, rows, monkeypatch):
    benign, harmful, _ = rows
    nb = {"samples": [{"content": benign["content"], "labels": []}, {"content": harmful["content"], "labels": ["illegal"]}],
          "reasoning_traces": {
              "sample_0_violence": {"reasoning": "Step 1 (intent): benign.\nStep 2 (harms): none.\nStep 3 (policy criteria): not met.\nClassification: SAFE", "classification": "safe"},
              "sample_1_illegal": {"reasoning": "Step 1 (intent): crime.\nStep 2 (harms): loss.\nStep 3 (policy criteria): met.", "classification": "UNSAFE"},
              "sample_1_self_harm": {"reasoning": "Step 1 (intent): wrong.", "classification": "UNSAFE"}}}
    folder = tmp_path / "imports"
    folder.mkdir()
    (folder / "nb.json").write_text(json.dumps(nb))
    write_jsonl(folder / "more.jsonl", [grt_row("something else entirely", True)])
    prep = tmp_path / "prepared"
    for r in (benign, harmful):
        r = dict(r)
        r.pop("index", None)
    write_jsonl(prep / "train.jsonl", [{k: v for k, v in r.items() if k != "index"} for r in (benign, harmful)])
    write_jsonl(prep / "val.jsonl", [])
    text = (ROOT / "params.yaml").read_text().replace("  teacher: template ", "  teacher: import ")
    text = text.replace("  enabled: true", "  enabled: false")
    text = text.replace("  import_source: null ", f"  import_source: {folder} ")
    (tmp_path / "params.yaml").write_text(text)
    p = load_params(tmp_path / "params.yaml")
    m = generate_traces(p, str(prep), str(tmp_path / "traces"), str(tmp_path / "m.json"))
    assert m["train"]["imported"] == 2 and m["train"]["rejected"] == 1 and m["train"]["generated"] == 9
    assert m["import"]["per_policy_traces"] == 3 and m["import"]["request_traces"] == 1
    train = {(r["id"], r["policy"]): r for r in read_jsonl(tmp_path / "traces/train.jsonl")}
    t = train[(benign["id"], "violence")]
    assert t["origin"] == "import" and t["reasoning"].endswith("not met.") and "Classification" not in t["reasoning"]
    assert train[(harmful["id"], "illegal")]["origin"] == "import"
    assert (harmful["id"], "self_harm") not in train
    rej = read_jsonl(tmp_path / "traces/rejected.jsonl")
    assert [(r["policy"], r["reason"]) for r in rej] == [("self_harm", "wrong_label")]


def test_import_errors_are_clear(tmp_path):
    text = (ROOT / "params.yaml").read_text().replace("  teacher: template ", "  teacher: import ")
    text = text.replace("  enabled: true", "  enabled: false")
    (tmp_path / "params.yaml").write_text(text)
    p = load_params(tmp_path / "params.yaml")
    prep = tmp_path / "prepared"
    write_jsonl(prep / "train.jsonl", [])
    write_jsonl(prep / "val.jsonl", [])
    with pytest.raises(ParamsError, match="traces.import_source` is not set"):
        generate_traces(p, str(prep), str(tmp_path / "t"), str(tmp_path / "m.json"))
    with pytest.raises(DataError, match=r"neither a local file/folder nor a loadable `datasets` id"):
        Importer("no-such-org/no-such-dataset-xyz")
