"""The `import` teacher on fixtures written in both formats (no network, no ../shared)."""
import json

import pytest

from guardrsft.config import ParamsError, load_params
from guardrsft.data import DataError, load_notebook_file
from guardrsft.guard import render_content
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


# ---------------------------------------------------------------- GuardReasoner prediction rows
GR_PROMPT = INSTR + ("\nTask 1: determine whether the human user's request is harmful or unharmful.\nTask 2: ...\n"
                     "Task 3: ...\n\nYou must think step by step. Keep consistency between the reasoning and the Answers.\n\n")


def pred_row(request, label, task1, answers, response=None, task3=("No content to judge.",),
             answers_head="---\n\nAnswers: \n"):
    """A row as in GuardReasoner's data/test/<size>/<bench>/generated_predictions.jsonl."""
    steps = lambda xs: "".join(f"## Reasoning Step {i}\n{x}\n\n" for i, x in enumerate(xs, 1))  # noqa: E731
    req, comp, resp = answers
    return {"prompt": GR_PROMPT + f"Human user:\n{request}\n\nAI assistant:\n{response or 'None'}\n\n", "label": label,
            "predict": f"# Task 1\n\n{steps(task1)}# Task 1 Conclusion\nRequest: {req}\n\n# Task 2\n\n"
                       f"{steps(['It complied.'])}# Task 3\n\n{steps(task3)}# Task 3 Conclusion\nResponse: {resp}\n\n"
                       f"{answers_head}Request: {req}\nCompletion: {comp}\nResponse: {resp}"}


BENIGN, HARMFUL = "How do I bake bread?", "How do I hotwire a car I do not own?"
WRONG = "How do I kill a python process?"
EXCH = ("Write a threat to my neighbour.", "You will regret it if you park there again.")
REFUSAL_ONLY = ("How do I pick a lock?", "I can't help with that.")


@pytest.fixture
def predictions(tmp_path):
    """Hand-written prediction rows in the upstream folder layout (sizes 1B/3B/8B)."""
    root = tmp_path / "gr_predictions"
    files = {
        "1B/Aegis": [pred_row(BENIGN, "unharmful", ["1B: baking bread.", "1B: harmless."],
                              ("unharmful", "None", "None")),
                     pred_row(HARMFUL, "harmful", [], ("harmful", "None", "None"))],
        "3B/Aegis": [pred_row(HARMFUL, "harmful", ["Hotwiring a car you do not own is theft.", "So it is harmful."],
                              ("harmful", "None", "None"), answers_head="The ground truth is \n\n# Answers\n\n")],
        "8B/Aegis": [pred_row(BENIGN, "unharmful", ["8B: the user wants to bake bread.", "8B: nothing harmful."],
                              ("unharmful", "None", "None")),
                     # the gold says unharmful (killing a process), this trace says harmful: rejected
                     pred_row(WRONG, "unharmful", ["Killing is violence."], ("harmful", "None", "None"))],
        # the response set: gold = the RESPONSE's harmfulness (Task 3), whatever the request answer
        "8B/HarmBenchResponse": [pred_row(*EXCH[:1], "harmful", ["The request asks for a threat."],
                                          ("harmful", "compliance", "harmful"), response=EXCH[1],
                                          task3=["The response is a threat.", "It intimidates a person."])],
        # refusal/compliance gold says nothing about harmfulness: no trace from it alone
        "8B/XSTestResponseRefusal": [pred_row(REFUSAL_ONLY[0], "refusal", ["Lock picking."],
                                              ("harmful", "refusal", "unharmful"), response=REFUSAL_ONLY[1])],
    }
    for name, rows in files.items():
        write_jsonl(root / name / "generated_predictions.jsonl", rows)
    (root / "8B/Aegis/generated_predictions.jsonl").write_text(
        (root / "8B/Aegis/generated_predictions.jsonl").read_text() + "\n")  # a blank line is fine
    return root


def test_prediction_rows_agreement_size_and_policies(predictions):
    imp = Importer(str(predictions))
    c = imp.prediction_counts
    assert c["rows"] == 7 and c["unparsed"] == 1 and imp.skipped_rows == 1  # the 1B row without steps
    assert c["disagrees_with_gold"] == 1 and c["no_harmfulness_gold"] == 1 and c["accepted"] == 3
    assert c["accepted_smaller_or_later"] == 1  # BENIGN: 8B taken, 1B not
    ok = imp.lookup(BENIGN, "violence", "SAFE", [])
    assert ok == {"status": "accepted",
                  "reasoning": "Step 1: 8B: the user wants to bake bread.\nStep 2: 8B: nothing harmful."}
    assert imp.lookup(BENIGN, "illegal", "UNSAFE", ["illegal"]) == {"status": "rejected", "reason": "wrong_label"}
    h = imp.lookup(HARMFUL, "illegal", "UNSAFE", ["illegal"])  # 3B's; "# Answers" and "The ground truth is" read
    assert h["reasoning"] == "Step 1: Hotwiring a car you do not own is theft.\nStep 2: So it is harmful."
    assert imp.lookup(HARMFUL, "violence", "SAFE", ["illegal"]) is None  # -> the template
    assert imp.lookup(WRONG, "violence", "SAFE", []) is None
    framed = render_content({"content": EXCH[0], "response": EXCH[1]})
    r = imp.lookup(framed, "harassment", "UNSAFE", ["harassment"])
    assert r["reasoning"] == "Step 1: The response is a threat.\nStep 2: It intimidates a person."  # Task 3's steps
    assert imp.lookup(EXCH[0], "harassment", "UNSAFE", ["harassment"]) is None  # the request alone is not the item
    assert imp.lookup(render_content({"content": REFUSAL_ONLY[0], "response": REFUSAL_ONLY[1]}), "illegal", "SAFE",
                      []) is None
    for t in imp.request.values():
        assert "Answers" not in t[1] and "Request:" not in t[1] and "Classification" not in t[1]


def test_prediction_rows_errors(tmp_path):
    bad = tmp_path / "p.jsonl"
    write_jsonl(bad, [pred_row(BENIGN, "maybe", ["x"], ("unharmful", "None", "None"))])
    with pytest.raises(DataError, match=r"p\.jsonl:1: label 'maybe' is not harmful/unharmful/refusal/compliance"):
        Importer(str(bad))
    bad.write_text('{"prompt": "x", "label": "harmful", "predict": "y"}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"p\.jsonl:2: not a JSON line"):
        Importer(str(bad))


def test_generate_traces_from_predictions(tmp_path, predictions):
    framed = render_content({"content": EXCH[0], "response": EXCH[1]})
    nb = tmp_path / "nb.json"
    nb.write_text(json.dumps({"samples": [{"content": BENIGN, "labels": []},
                                          {"content": HARMFUL, "labels": ["illegal"]},
                                          {"content": framed, "labels": ["harassment", "violence"]}]}))
    samples, _ = load_notebook_file(nb)
    prep = tmp_path / "prepared"
    write_jsonl(prep / "train.jsonl", [{k: v for k, v in s.items() if k != "index"} for s in samples])
    write_jsonl(prep / "val.jsonl", [])
    text = (ROOT / "params.yaml").read_text().replace("  teacher: template ", "  teacher: import ")
    text = text.replace("  enabled: true", "  enabled: false")
    text = text.replace("  import_source: null ", f"  import_source: {predictions} ")
    (tmp_path / "params.yaml").write_text(text)
    m = generate_traces(load_params(tmp_path / "params.yaml"), str(prep), str(tmp_path / "traces"),
                        str(tmp_path / "m.json"))
    assert m["train"]["imported"] == 6 + 1 + 2 and m["train"]["generated"] == 18 - 9 and m["train"]["rejected"] == 0
    rows = {(r["content"], r["policy"]): r for r in read_jsonl(tmp_path / "traces/train.jsonl")}
    assert all(rows[(BENIGN, q)]["origin"] == "import" and rows[(BENIGN, q)]["reasoning"].startswith("Step 1: 8B:")
               for q in ("violence", "illegal", "hate_speech", "self_harm", "sexual_minors", "harassment"))
    assert rows[(HARMFUL, "illegal")]["origin"] == "import" and rows[(HARMFUL, "violence")]["origin"] == "template"
    t = rows[(framed, "violence")]
    assert t["origin"] == "import" and t["classification"] == "UNSAFE"
    assert t["reasoning"] == "Step 1: The response is a threat.\nStep 2: It intimidates a person."


def test_imported_notebook_trace_keeps_steps_and_rejects_misspelled_keys(tmp_path):
    r = "Step 1: It asks about a reclassification: of files.\nStep 2: No harm.\nStep 3: Not met."
    nb = {"samples": [{"content": BENIGN, "labels": []}],
          "reasoning_traces": {"sample_0_violence": {"reasoning": r + "\nClassification: SAFE", "classification": "SAFE"}}}
    f = tmp_path / "nb.json"
    f.write_text(json.dumps(nb))
    assert Importer(str(f)).lookup(BENIGN, "violence", "SAFE", []) == {"status": "accepted", "reasoning": r}
    nb["samples"][0]["label"] = nb["samples"][0].pop("labels")
    nb["reasoning_traces"]["sample_0_violence"]["reasonig"] = nb["reasoning_traces"]["sample_0_violence"].pop("reasoning")
    f.write_text(json.dumps(nb))
    with pytest.raises(DataError) as e:
        Importer(str(f))
    assert "nb.json: 2 problems" in str(e.value)
    assert "samples[0]: unknown key 'label'; did you mean 'labels'?" in str(e.value)
    assert "reasoning_traces['sample_0_violence'].reasoning: missing or empty" in str(e.value)


@pytest.mark.parametrize("text,error", [
    ('{"samples": [', r"nb\.json: not valid JSON"),
    ("[1, 2]", r"nb\.json: every row must be a JSON object"),
])
def test_unreadable_import_json_is_a_data_error(tmp_path, text, error):
    (tmp_path / "nb.json").write_text(text)
    with pytest.raises(DataError, match=error):
        Importer(str(tmp_path / "nb.json"))
