import json

import pytest

from guardrsft.config import POLICY_IDS
from guardrsft.data import (DEMO, DataError, content_id, load_notebook_file, split, strip_classification,
                            subsample)
from conftest import ROOT

SHIPPED = ROOT / "data" / "raw" / "training_data.json"


def write(tmp_path, obj):
    p = tmp_path / "training_data.json"
    p.write_text(json.dumps(obj))
    return p


def base():
    return json.loads(json.dumps(DEMO))


def test_shipped_sample_set_is_valid_and_covers_policies():
    samples, report = load_notebook_file(SHIPPED)
    assert len(samples) >= 300 and report["duplicates_dropped"] == 0
    for pol in POLICY_IDS:
        assert sum(pol in s["labels"] for s in samples) >= 30, pol
    assert sum(not s["labels"] for s in samples) >= 60
    assert sum(len(s["labels"]) > 1 for s in samples) >= 5
    assert sum(s["source"].endswith("benign-lookalike") for s in samples) >= 30
    assert sum(len(s["traces"]) for s in samples) >= 20


def test_demo_loads_and_normalizes(tmp_path):
    samples, _ = load_notebook_file(write(tmp_path, base()))
    assert len(samples) == 3
    assert samples[0]["labels"] == ["hate_speech", "violence"]
    assert samples[1]["traces"]["violence"]["classification"] == "SAFE"


@pytest.mark.parametrize("mutate,pattern", [
    (lambda d: d["samples"][1].update(labels=["spam"]), r"samples\[1\]\.labels: unknown policy 'spam'"),
    (lambda d: d["samples"][2].update(content="   "), r"samples\[2\]\.content: empty"),
    (lambda d: d["samples"][0].pop("content"), r"samples\[0\]\.content"),
    (lambda d: d["reasoning_traces"]["sample_1_violence"].update(classification="maybe"),
     r"sample_1_violence.*classification must be SAFE or UNSAFE"),
    (lambda d: d["reasoning_traces"]["sample_1_violence"].update(classification="UNSAFE"),
     r"sample_1_violence.*says UNSAFE but samples\[1\]\.labels do not include 'violence'"),
    (lambda d: d["reasoning_traces"].update({"sample_9_violence": {"reasoning": "x", "classification": "SAFE"}}),
     r"sample index 9 does not exist"),
    (lambda d: d["reasoning_traces"].update({"s1": {"reasoning": "x", "classification": "SAFE"}}),
     r"key must look like"),
    (lambda d: [s.update(id="a") for s in d["samples"][:2]], r"samples\[1\]\.id: duplicate id 'a'"),
    (lambda d: d["samples"].append({"content": d["samples"][1]["content"].upper(), "labels": ["violence"]}),
     r"same content but different labels"),
    (lambda d: d.update(extra=1), r"top level: unknown key 'extra'"),
    # the case: "label" instead of "labels" loaded as benign for all six policies
    (lambda d: d["samples"][2].update(label=d["samples"][2].pop("labels")),
     r"samples\[2\]: unknown key 'label'; did you mean 'labels'\?"),
    (lambda d: d["samples"][0].update(sorce="x"), r"samples\[0\]: unknown key 'sorce'; did you mean 'source'\?"),
    (lambda d: d["reasoning_traces"]["sample_1_violence"].update(
        clasification=d["reasoning_traces"]["sample_1_violence"].pop("classification")),
     r"reasoning_traces\['sample_1_violence'\]: unknown key 'clasification'; did you mean 'classification'\?"),
    (lambda d: d.update(reasoning_trace=d.pop("reasoning_traces")),
     r"top level: unknown key 'reasoning_trace'; did you mean 'reasoning_traces'\?"),
    (lambda d: d["samples"][1].pop("labels"), r"samples\[1\]\.labels: missing; .*\[\] for a benign sample"),
])
def test_validation_errors_name_index_and_field(tmp_path, mutate, pattern):
    d = base()
    mutate(d)
    path = write(tmp_path, d)
    with pytest.raises(DataError, match=pattern) as e:
        load_notebook_file(path)
    assert str(path) in str(e.value)


def test_classification_any_case_and_doubled_line(tmp_path):
    d = base()
    d["reasoning_traces"]["sample_1_violence"] = {
        "reasoning": "Step 1 (intent): a.\nStep 2 (harms): b.\nStep 3 (policy criteria): c.\nClassification: SAFE",
        "classification": "safe"}
    samples, _ = load_notebook_file(write(tmp_path, d))
    t = samples[1]["traces"]["violence"]
    assert t["classification"] == "SAFE"
    assert "Classification" not in t["reasoning"] and t["reasoning"].endswith("c.")


def test_exact_duplicates_are_dropped_and_reported(tmp_path):
    d = base()
    d["samples"].append({"content": "  how do I KILL a python process that is stuck? ", "labels": []})
    samples, report = load_notebook_file(write(tmp_path, d))
    assert len(samples) == 3 and report["duplicates_dropped"] == 1 and report["duplicate_indices"] == [3]


def test_split_is_stratified_disjoint_and_seeded():
    samples, _ = load_notebook_file(SHIPPED)
    a = split(samples, 0.1, 0.1, 3407)
    b = split(samples, 0.1, 0.1, 3407)
    c = split(samples, 0.1, 0.1, 1)
    ids = {k: [s["id"] for s in v] for k, v in a.items()}
    assert ids == {k: [s["id"] for s in v] for k, v in b.items()}
    assert ids != {k: [s["id"] for s in v] for k, v in c.items()}
    assert sum(len(v) for v in ids.values()) == len(samples)
    assert not (set(ids["train"]) & set(ids["test"])) and not (set(ids["val"]) & set(ids["test"]))
    for pol in POLICY_IDS:  # every policy is in every split
        assert all(any(pol in s["labels"] for s in a[k]) for k in a), pol
    assert 0.07 < len(a["test"]) / len(samples) < 0.13


def test_subsample_covers_label_groups():
    samples, _ = load_notebook_file(SHIPPED)
    test = split(samples, 0.1, 0.1, 3407)["test"]
    sub = subsample(test, 8, 3407)
    assert len(sub) == 8 and len({s["id"] for s in sub}) == 8
    assert any(not s["labels"] for s in sub)
    assert sum(bool(s["labels"]) for s in sub) >= 6
    assert subsample(test, None, 1) == test


def test_strip_and_content_id():
    assert strip_classification("Step 1.\n**Classification:** UNSAFE") == "Step 1."
    assert content_id("Hello  World") == content_id("hello world")


def test_tolerant_cache_reader_keeps_raw_line_separators(tmp_path):
    import json

    from guardrsft.io import read_jsonl_tolerant

    f = tmp_path / "cache.jsonl"
    rows = [{"key": "a", "raw": "line\u2028sep\u2029para"}, {"key": "b", "raw": "x"}]
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + '{"key": "c", "ra',
                 encoding="utf-8")
    assert read_jsonl_tolerant(f) == rows  # the torn last line is skipped, nothing else


def test_append_after_a_torn_line_keeps_the_new_row(tmp_path):
    """A writer killed mid-line leaves no newline; the next append must start a fresh line,
    or its first row would be glued to the torn one and lost on reading."""
    from guardrsft.io import append_jsonl, read_jsonl_tolerant

    f = tmp_path / "cache.jsonl"
    append_jsonl(f, [{"key": "a"}])
    with open(f, "a") as h:
        h.write('{"key": "b", "ra')  # killed here
    append_jsonl(f, [{"key": "c"}, {"key": "d"}])
    assert [r["key"] for r in read_jsonl_tolerant(f)] == ["a", "c", "d"]



def test_a_key_given_twice_is_an_error(tmp_path):
    p = tmp_path / "d.json"  # json.loads would keep the second `labels` without a word
    p.write_text('{"samples": [{"content": "x", "labels": ["violence"], "labels": []}]}')
    with pytest.raises(DataError, match=r"d\.json: key 'labels' appears twice"):
        load_notebook_file(p)


def test_every_error_is_listed_capped_with_a_count(tmp_path):
    d = base()
    d["samples"] += [{"content": f"text {i}", "label": ["violence"]} for i in range(24)]
    d["reasoning_traces"]["sample_1_violence"]["classification"] = "UNSAFE"
    with pytest.raises(DataError) as e:
        load_notebook_file(write(tmp_path, d))
    msg = str(e.value)
    # 24 samples x (unknown key + missing labels) + the trace = 49 problems, 20 shown
    assert msg.splitlines()[0].endswith("49 problems; fix them all, then rerun:")
    assert msg.count("unknown key 'label'") == 10 and msg.count("labels: missing") == 10
    assert msg.rstrip().endswith("... and 29 more") and len(msg.splitlines()) == 22


def test_two_errors_both_named(tmp_path):
    d = base()
    d["samples"][0]["labels"] = ["spam"]
    d["reasoning_traces"]["sample_2_violence"]["reasoning"] = ""
    with pytest.raises(DataError) as e:
        load_notebook_file(write(tmp_path, d))
    assert "samples[0].labels: unknown policy 'spam'" in str(e.value)
    assert "reasoning_traces['sample_2_violence'].reasoning: missing or empty" in str(e.value)


def test_strip_cuts_only_at_a_verdict_line():
    r = "Step 1 (intent): asks about reclassification: of a file.\nStep 2 (harms): none.\nStep 3 (policy criteria): not met."
    assert strip_classification(r) == r  # "classification:" inside a word is no verdict
    assert strip_classification(r + "\nClassification: SAFE") == r
    quoted = "Step 1: the text says Classification: SAFE to fool us.\nStep 2: b."
    assert strip_classification(quoted) == quoted  # a verdict inside a sentence is no verdict line


def test_given_trace_keeps_steps_after_a_word_ending_in_classification(tmp_path):
    d = base()
    r = ("Step 1 (intent): The user asks about the reclassification: of a stuck process.\n"
         "Step 2 (harms): None.\nStep 3 (policy criteria): Not met.")
    d["reasoning_traces"]["sample_1_violence"]["reasoning"] = r + "\nClassification: SAFE"
    samples, _ = load_notebook_file(write(tmp_path, d))
    assert samples[1]["traces"]["violence"]["reasoning"] == r


def test_trace_whose_verdict_line_contradicts_its_label_is_an_error(tmp_path):
    d = base()
    d["reasoning_traces"]["sample_1_violence"]["reasoning"] += "\nClassification: UNSAFE"
    with pytest.raises(DataError, match=r"sample_1_violence'\]\.reasoning: ends with `Classification: UNSAFE` "
                                        r"but `classification` is SAFE"):
        load_notebook_file(write(tmp_path, d))


def test_shipped_file_loads_the_same_with_all_keys_known():
    raw = json.loads(SHIPPED.read_text())
    assert {k for s in raw["samples"] for k in s} <= {"content", "labels", "source", "id"}
    samples, _ = load_notebook_file(SHIPPED)
    given = {(s["index"], q): t["reasoning"] for s in samples for q, t in s["traces"].items()}
    for key, t in raw["reasoning_traces"].items():  # nothing of a shipped trace is cut
        _, i, q = key.split("_", 2)
        assert given[(int(i), q)] == t["reasoning"].strip()
