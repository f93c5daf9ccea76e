"""Property-based tests: any input to the loaders and parsers gives a clear error (DataError,
or a flagged line) or a correct result, never a traceback or a silently dropped item.

Seeded and bounded (derandomize, max_examples) so CI runs the same cases every time; the
number run is printed at the end of the session ("fuzz: N cases", conftest.FUZZ_CASES)."""
import gzip
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from guardrsft.benchmarks import from_guardreasoner, from_table, read_records
from guardrsft.classify_file import EMPTY, MALFORMED, OVERSIZED, _parse, classify_file
from guardrsft.config import POLICY_IDS, BenchmarkParams
from guardrsft.data import DataError, load_notebook_file, strip_classification
from guardrsft.prompts import parse_verdict, strip_verdict, target
from conftest import FUZZ_CASES

FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
FEW = settings(FUZZ, max_examples=40)

# text with the characters that break parsers: newlines, braces, markdown, a lone surrogate
text = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "\n", "{content}", "Classification: SAFE",
                                                        "\ud800", "a\u2028b", "reclassification: x"]))
keys = st.one_of(st.sampled_from(["content", "labels", "label", "source", "id", "reasoning", "classification",
                                  "samples", "reasoning_traces", "metadata"]), st.text(max_size=8))
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
                           | st.sampled_from(list(POLICY_IDS)),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
                           max_leaves=8)


def count(name):
    FUZZ_CASES[name] += 1


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


# ------------------------------------------------------------------ training-file loader
policy_lists = st.lists(st.sampled_from(POLICY_IDS), max_size=3)
good_sample = st.fixed_dictionaries({"content": st.text(min_size=1, max_size=30).filter(str.strip),
                                     "labels": policy_lists}, optional={"source": text, "id": text})
bad_sample = st.fixed_dictionaries({"content": text}, optional={
    "labels": st.one_of(st.lists(st.sampled_from(list(POLICY_IDS) + ["spam"]), max_size=3), json_values),
    "source": json_values, "label": json_values, "id": json_values})
# a well-formed sample with one key misspelled (the "label" for "labels")
typo_sample = st.builds(lambda s, k, cut: {(k[:cut] + k[cut + 1:] if x == k else x): v for x, v in s.items()},
                        good_sample, st.sampled_from(["content", "labels"]), st.integers(0, 6))
trace_key = st.one_of(st.builds(lambda i, q: f"sample_{i}_{q}", st.integers(0, 4), st.sampled_from(POLICY_IDS)),
                      st.text(max_size=12))
trace = st.one_of(st.fixed_dictionaries({"reasoning": text, "classification": st.sampled_from(["SAFE", "unsafe"])}),
                  st.fixed_dictionaries({"reasoning": text, "classification": st.sampled_from(["maybe", None])},
                                        optional={"reasonig": text}), json_values)
# mostly well-formed files with a few mistakes (so that some load), and anything JSON
notebook = st.one_of(st.fixed_dictionaries(
    {"samples": st.one_of(st.lists(good_sample, max_size=5), st.lists(st.one_of(good_sample, typo_sample), max_size=4),
                          st.lists(st.one_of(good_sample, bad_sample, json_values), max_size=5))},
    optional={"reasoning_traces": st.one_of(st.dictionaries(trace_key, trace, max_size=3), json_values),
              "metadata": json_values}), json_values)


@FUZZ
@given(raw=notebook)
def test_training_loader_any_structure(d, raw):
    count("training_loader")
    path = d / "training_data.json"
    path.write_text(json.dumps(raw))
    try:
        kept, report = load_notebook_file(path)
    except DataError as e:
        assert str(path) in str(e)  # names the file
        return
    # a correct result: every input sample kept or reported as a duplicate, labels as given
    assert len(kept) + report["duplicates_dropped"] == len(raw["samples"])
    for s in kept:
        given_ = raw["samples"][s["index"]]
        assert set(given_) <= {"content", "labels", "source", "id"}
        assert s["labels"] == [q for q in POLICY_IDS if q in given_["labels"]]
        for q, t in s["traces"].items():
            assert t["classification"] == ("UNSAFE" if q in s["labels"] else "SAFE")


@FUZZ
@given(data=st.binary(max_size=200))
def test_training_loader_any_bytes(d, data):
    count("training_loader_bytes")
    path = d / "bytes.json"
    path.write_bytes(data)
    try:
        load_notebook_file(path)
    except DataError as e:
        assert str(path) in str(e)


clean = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40).filter(
    lambda s: s.strip() and parse_verdict(s) is None)


@FUZZ
@given(items=st.lists(st.tuples(clean, st.lists(st.sampled_from(POLICY_IDS), max_size=3, unique=True),
                                st.one_of(st.none(), clean)), min_size=1, max_size=5))
def test_training_loader_valid_input_round_trips(d, items):
    """A valid file always loads, with every sample, label and trace as written."""
    count("training_loader_valid")
    samples = [{"content": f"item {i}: {c}", "labels": labels, "source": "fuzz"}
               for i, (c, labels, _) in enumerate(items)]
    traces = {f"sample_{i}_{POLICY_IDS[0]}": {"reasoning": r, "classification":
                                              "UNSAFE" if POLICY_IDS[0] in labels else "safe"}
              for i, (_, labels, r) in enumerate(items) if r is not None}
    path = d / "valid.json"
    path.write_text(json.dumps({"samples": samples, "reasoning_traces": traces}))
    kept, report = load_notebook_file(path)
    assume(report["duplicates_dropped"] == 0)  # "item 1: x" and "item 1:  x" normalize alike
    assert [s["labels"] for s in kept] == [[q for q in POLICY_IDS if q in labels] for _, labels, _ in items]
    for s, (_, _, r) in zip(kept, items):
        assert s["traces"] == ({} if r is None else {POLICY_IDS[0]: {
            "reasoning": r.strip(), "classification": "UNSAFE" if POLICY_IDS[0] in s["labels"] else "SAFE"}})


# ------------------------------------------------------------------ benchmark loaders
gr_input = st.builds(lambda p, r: f"Human user:\n{p}\n\nAI assistant:\n{r}\n\n", text, st.one_of(st.just("None"), text))
gr_output = st.one_of(st.sampled_from(["harmful", "unharmful", "refusal", "compliance",
                                       "Answers:\nRequest: harmful\nCompletion: None\nResponse: None"]), json_values)
gr_row = st.one_of(st.fixed_dictionaries({"instruction": text, "input": st.one_of(gr_input, json_values),
                                          "output": gr_output}), json_values)


@FUZZ
@given(rows=st.lists(gr_row, max_size=4))
def test_guardreasoner_loader(d, rows):
    count("guardreasoner_loader")
    path = d / "gr.json"
    path.write_text(json.dumps(rows))
    try:
        items, task = from_guardreasoner(path)
    except DataError as e:
        assert str(path) in str(e)
        return
    assert len(items) == len(rows) and task in ("prompt", "response", "refusal")  # none dropped
    assert all(it["content"].strip() and isinstance(it["positive"], bool) for it in items)


TABLE = BenchmarkParams(path="t.jsonl", format="table", text_field="text", id_field=None,
                        policy_columns={"violence": ["violence"], "hate_speech": ["hate"]})


@FUZZ
@given(rows=st.lists(st.one_of(st.fixed_dictionaries({"text": st.one_of(text, json_values)},
                                                     optional={"violence": json_values, "hate": json_values,
                                                               "other": json_values}), json_values), max_size=4))
def test_table_loader(d, rows):
    count("table_loader")
    path = d / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        items, _ = from_table(path, "t", TABLE, list(POLICY_IDS), "params.yaml")
    except DataError as e:
        assert str(path) in str(e)
        return
    assert len(items) == len(rows)
    for it in items:  # the harmful columns are the policy columns: harmful iff a policy is set
        assert set(it["gold"]["labels"]) <= {"violence", "hate_speech"}
        assert it["positive"] == bool(it["gold"]["labels"])


@FUZZ
@given(data=st.binary(max_size=120), suffix=st.sampled_from([".json", ".jsonl", ".csv", ".csv.gz", ".jsonl.gz", ".txt"]),
       gz=st.booleans())
def test_benchmark_reader_any_bytes(d, data, suffix, gz):
    count("benchmark_reader_bytes")
    path = d / f"any{suffix}"
    path.write_bytes(gzip.compress(data) if gz and suffix.endswith(".gz") else data)
    try:
        rows = read_records(path)
    except DataError as e:
        assert str(path) in str(e)
        return
    assert isinstance(rows, list)


# ------------------------------------------------------------------ verdict parser
@settings(FUZZ, max_examples=300)
@given(reasoning=st.text(max_size=80), label=st.sampled_from(["safe", "UNSAFE"]))
def test_verdict_parser(reasoning, label):
    count("verdict_parser")
    assert parse_verdict(reasoning) in (None, "SAFE", "UNSAFE")
    # whatever the reasoning says, the target's own verdict line is the one read
    assert parse_verdict(target(reasoning, label)) == label.upper()
    cut = strip_classification(reasoning)
    assert cut in reasoning.strip() and parse_verdict(cut + "\n" + "Classification: SAFE") == "SAFE"
    if parse_verdict(reasoning) is None:  # no verdict line: nothing is cut
        assert cut == reasoning.strip() == strip_verdict(reasoning)


# ------------------------------------------------------------------ classify-file line reader
@settings(FUZZ, max_examples=300)
@given(raw=st.one_of(st.binary(max_size=60), st.builds(lambda o: json.dumps(o).encode(), json_values),
                     st.builds(lambda c, r, i: json.dumps({"content": c, "response": r, "id": i}).encode(), text,
                               st.one_of(st.none(), text), text)))
def test_classify_file_line_reader(raw):
    count("classify_line_reader")
    obj, status, err = _parse(raw, 30)
    assert status in (None, EMPTY, MALFORMED, OVERSIZED) and (status is None) == (err == "")
    if status is None:  # classifiable: text that can be tokenized, within the limit
        assert obj["content"].strip() and len(obj["content"]) + len(obj.get("response") or "") <= 30
        assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in obj["content"] + (obj.get("response") or ""))


class _FakeGuard:
    """What classify_file needs of a guard: each item is SAFE."""
    config, p = object(), type("P", (), {"policies": {"violence": ""}})()

    def classify(self, items, policies):
        return [{"is_parse_error": False, "verdict": "SAFE", "flagged": [], "verdicts": {"violence": "SAFE"},
                 "reasoning": {"violence": "r"}, "parse_errors": []} for _ in items]


@FEW
@given(lines=st.lists(st.one_of(st.binary(max_size=30).filter(lambda b: b"\n" not in b and b"\r" not in b),
                                st.builds(lambda c, i: json.dumps({"content": c, "id": i}).encode(), text, text)),
                      max_size=6))
def test_classify_file_one_output_line_per_input_line(d, lines):
    count("classify_file")
    src, out = d / "in.jsonl", d / "out.jsonl"
    src.write_bytes(b"\n".join(lines) + (b"\n" if lines else b""))
    out.unlink(missing_ok=True)
    summary = classify_file(_FakeGuard, str(src), str(out), None, chunk=4, max_chars=100, progress=False)
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").split("\n") if x]  # not splitlines: U+2028
    assert [r["line"] for r in rows] == list(range(1, len(lines) + 1)) == list(range(1, summary["lines"] + 1))
    assert sum(summary["counts"].values()) == len(lines)
    assert all(r["status"] == "ok" or r["error"] for r in rows)  # every flagged line says why
