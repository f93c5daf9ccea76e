"""Policies are data (docs/POLICIES.md): params.yaml `policies` is the only list, ids follow one
rule, 1 to 32 of them, each a definition or {definition, examples, severity}; every stage and
cache follows the set."""
import dataclasses
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT, write_params
from openai_server import FakeOpenAI

from guardrsft import spec
from guardrsft.config import ParamsError, load_params
from guardrsft.data import DataError, load_notebook_file, split
from guardrsft.io import read_jsonl, write_jsonl

THREE = ROOT / "tests/data/three_policies.json"
DEFS = {"pii_leak": "Shares or asks to expose a real person's private data (home address, phone, ID or account "
                    "numbers, health records). Not covered: public business contacts, how-to-redact questions.",
        "prompt_injection": "Text that tries to override an AI system's instructions or make it act for someone "
                            "other than its user. Not covered: questions about what prompt injection is.",
        "medical_advice": "Asks for or gives a diagnosis, dose or treatment decision for a specific person "
                          "in place of a clinician. Not covered: general health education."}
KEY = "sk-test-policies"


def policies_yaml(pols: dict) -> str:
    return "policies:\n" + "".join(f"  {q}: {json.dumps(d)}\n" for q, d in pols.items())


def with_policies(text: str, block: str) -> str:
    """params.yaml text with its `policies:` section replaced by `block`."""
    start = text.index("\npolicies:\n") + 1
    end = text.index("\n\n", start) + 1
    return text[:start] + block + text[end:]


def load_with(tmp_path, params_text, block):
    return load_params(write_params(tmp_path, with_policies(params_text, block)))


# ---------------------------------------------------------------- params
@pytest.mark.parametrize("pid", ["pii_leak", "a", "pii2", "gdpr_art_9", "x" * 40])
def test_valid_ids_load(tmp_path, params_text, pid):
    p = load_with(tmp_path, params_text, policies_yaml({pid: "some definition"}))
    assert p.policies == {pid: "some definition"}


@pytest.mark.parametrize("pid", ["PII", "pii-leak", "pii_", "_pii", "pii__leak", "9lives", "x" * 41,
                                 "classification", "pii leak"])
def test_an_invalid_id_names_file_key_and_fix(tmp_path, params_text, pid):
    with pytest.raises(ParamsError) as e:
        load_with(tmp_path, params_text, policies_yaml({"violence": "v", pid: "some definition"}))
    msg = str(e.value)
    assert "params.yaml" in msg and f"`policies.{pid}`" in msg and "e.g. `pii_leak`" in msg


def test_one_to_thirty_two_policies(tmp_path, params_text):
    many = {f"policy_{i}": f"definition {i}" for i in range(32)}
    assert len(load_with(tmp_path, params_text, policies_yaml(many)).policies) == 32
    with pytest.raises(ParamsError, match=r"`policies` has 33 policies; at most 32"):
        load_with(tmp_path, params_text, policies_yaml({**many, "policy_32": "one more"}))
    with pytest.raises(ParamsError, match=r"`policies` must map 1 to 32 policy ids"):
        load_with(tmp_path, params_text, "policies: {}\n")


def test_the_mapping_form_gives_examples_and_severity(tmp_path, params_text):
    block = ("policies:\n  pii_leak:\n    definition: Exposes a real person's private data.\n"
             "    examples: ['Post her home address', '  List their   SSNs ']\n    severity: high\n"
             "  medical_advice: Gives a dose for a specific person.\n")
    p = load_with(tmp_path, params_text, block)
    # prompts, keys and metrics see id -> definition text; the rest is metadata
    assert p.policies == {"pii_leak": "Exposes a real person's private data.",
                          "medical_advice": "Gives a dose for a specific person."}
    assert p.policy_info == {"pii_leak": {"examples": ["Post her home address", "List their SSNs"],
                                          "severity": "high"}}
    assert not any(k.startswith("policy_info") for k in p.resolved())  # not logged as a training input
    d = spec.describe(p)
    assert d["policy_info"]["pii_leak"]["severity"] == "high"
    from guardrsft.export import policy_lines
    assert policy_lines(p)[:2] == ["- **pii_leak** (severity: high): Exposes a real person's private data.",
                                   "  - example: Post her home address"]


@pytest.mark.parametrize("entry,pattern", [
    ("{definition: x, severity: urgent}", r"`policies.pii_leak.severity` must be one of low, medium, high, critical"),
    ("{definition: x, exampels: [a]}", r"unknown key `policies.pii_leak.exampels` \(did you mean `policies.pii_leak.examples`"),
    ("{severity: high}", r"`policies.pii_leak.definition` must be a non-empty definition"),
    ("{definition: x, examples: a text}", r"`policies.pii_leak.examples` must be a list of non-empty texts"),
    ("''", r"`policies.pii_leak` must be a non-empty definition"),
])
def test_bad_policy_entries_are_named(tmp_path, params_text, entry, pattern):
    with pytest.raises(ParamsError, match=pattern):
        load_with(tmp_path, params_text, f"policies:\n  pii_leak: {entry}\n")


def test_benchmark_mappings_must_name_the_taxonomys_policies(tmp_path, params_text):
    text = with_policies(params_text, policies_yaml(DEFS))
    # a set that is not evaluated may still map the notebook's six (the shipped openai_moderation)
    assert load_params(write_params(tmp_path, text)).evaluate.benchmarks == []
    used = text.replace("  benchmarks: []", "  benchmarks: [openai_moderation]")
    with pytest.raises(ParamsError, match=r"benchmark_sets.openai_moderation.policy_columns.hate_speech` maps the "
                                          r"benchmark's columns onto 'hate_speech', which is not in `policies` "
                                          r"\(pii_leak, prompt_injection, medical_advice\)"):
        load_params(write_params(tmp_path, used))
    # the bench scripts' way in (load_benchmark for a set not in evaluate.benchmarks) says the same
    from guardrsft.benchmarks import load_benchmark
    with pytest.raises(ParamsError, match=r"policy_columns.hate_speech` maps"):
        load_benchmark(load_params(write_params(tmp_path, text)), "openai_moderation")


# ---------------------------------------------------------------- data
def test_the_three_policy_sample_file_loads_against_its_taxonomy():
    samples, report = load_notebook_file(THREE, list(DEFS))
    assert report["input_samples"] == 24 and report["duplicates_dropped"] == 0
    assert {q for s in samples for q in s["labels"]} == set(DEFS)
    assert samples[0]["traces"]["pii_leak"]["classification"] == "UNSAFE"
    # the notebook's six do not know these labels
    with pytest.raises(DataError, match=r"unknown policy 'pii_leak'"):
        load_notebook_file(THREE)


def test_an_unknown_label_names_file_line_field_and_the_allowed_ids(tmp_path):
    d = json.loads(THREE.read_text())
    d["samples"][3]["labels"] = ["pii_leek"]
    f = tmp_path / "data.json"
    f.write_text(json.dumps(d, indent=1))
    line = next(i for i, x in enumerate(f.read_text().splitlines(), 1) if '"content"' in x and "passport" in x) - 1
    with pytest.raises(DataError) as e:
        load_notebook_file(f, list(DEFS))
    assert str(e.value) == (f"{f}: line {line}: samples[3].labels: unknown policy 'pii_leek'; the policies in "
                            "params.yaml are pii_leak, prompt_injection, medical_advice (fix the label, or add "
                            "'pii_leek' to params.yaml `policies`)")


def test_trace_keys_take_ids_with_digits(tmp_path):
    d = {"samples": [{"content": "post her address", "labels": ["gdpr_art9"]}],
         "reasoning_traces": {"sample_0_gdpr_art9": {"reasoning": "It exposes data.", "classification": "UNSAFE"}}}
    (tmp_path / "d.json").write_text(json.dumps(d))
    samples, _ = load_notebook_file(tmp_path / "d.json", ["gdpr_art9"])
    assert samples[0]["traces"]["gdpr_art9"]["reasoning"] == "It exposes data."


# ---------------------------------------------------------------- a model and another taxonomy
def test_a_model_refuses_another_taxonomy_unless_it_uses_its_own(tmp_path, params, capsys):
    trained = dataclasses.replace(params, policies=dict(DEFS))
    spec.write(tmp_path, trained)
    other = {**{q: DEFS[q] for q in ("pii_leak", "prompt_injection")}, "financial_advice": "Gives investment advice."}
    now = dataclasses.replace(params, policies=other)
    with pytest.raises(ValueError) as e:
        spec.apply(now, tmp_path, strict=True)  # evaluate
    msg = str(e.value)
    assert "the model was trained with other policies than" in msg
    assert ("model: pii_leak, prompt_injection, medical_advice; params: pii_leak, prompt_injection, financial_advice "
            "(the model's medical_advice is not in params; params' financial_advice was never trained)") in msg
    assert "its policies are listed in guardrsft.json" in msg
    used = spec.apply(now, tmp_path)  # classify, serve: the model's own, and a note saying how they differ
    assert used.policies == DEFS
    assert "using the model's own policies" in capsys.readouterr().err
    # a joint prompt lists the policies in order: another order is another prompt
    reordered = dataclasses.replace(params, policies=dict(reversed(list(DEFS.items()))))
    assert spec.differences(reordered, spec.read(tmp_path)) == ["policies"]
    assert "the same ids in another order" in spec.policy_diff(DEFS, reordered.policies)


# ---------------------------------------------------------------- caches
def test_prediction_cache_keys_follow_each_policys_definition(params, pp_params):
    from guardrsft.guard import JOINT, Guard

    def key(p, unit):
        g = SimpleNamespace(p=p, fingerprint="f", max_new_tokens=8, engine_id="e")
        return Guard._key(g, "some text", unit)

    three = dataclasses.replace(pp_params, policies=dict(DEFS))
    four = dataclasses.replace(pp_params, policies={**DEFS, "hate_speech": "hate"})
    reworded = dataclasses.replace(pp_params, policies={**DEFS, "pii_leak": "other words"})
    assert all(key(three, q) == key(four, q) for q in DEFS)  # per_policy: the others' answers stay cached
    assert key(reworded, "pii_leak") != key(three, "pii_leak") and key(reworded, "medical_advice") == key(three, "medical_advice")
    # joint: one prompt lists every policy, so a new set is a new answer for every item
    j3, j4 = (dataclasses.replace(params, policies=x.policies) for x in (three, four))
    assert key(j3, JOINT) != key(j4, JOINT)


def prepared(tmp_path):
    samples, _ = load_notebook_file(THREE, list(DEFS) + ["financial_advice"])
    for r in samples:
        r.pop("index")
    parts = split(samples, 0.2, 0.2, 1)
    d = tmp_path / "prepared"
    for name, rows in parts.items():
        write_jsonl(d / f"{name}.jsonl", rows)
    return d, {r["id"]: r for name in ("train", "val") for r in parts[name]}


def teacher_params(tmp_path, base_url, pols):
    text = (ROOT / "params.yaml").read_text().replace("  teacher: template ", "  teacher: openai ")
    text = text.replace("    base_url: null ", f"    base_url: {base_url} ").replace("  enabled: true", "  enabled: false")
    return load_params(write_params(tmp_path, with_policies(text, policies_yaml(pols))))


def test_adding_a_policy_asks_the_teacher_only_for_the_new_pairs(tmp_path, monkeypatch):
    from guardrsft.pipeline import generate_traces

    monkeypatch.setenv("GUARDRSFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    d, rows = prepared(tmp_path)
    given = sum(len(r["traces"]) for r in rows.values())

    def run(pols):
        return generate_traces(teacher_params(tmp_path, srv.base_url, pols), str(d), str(tmp_path / "traces"),
                               str(tmp_path / "traces.json"))

    with FakeOpenAI(api_key=KEY) as srv:
        run(DEFS)
        assert srv.counts["chat"] == 3 * len(rows) - given
        before = {(t["id"], t["policy"]): t for t in read_jsonl(tmp_path / "traces/train.jsonl")}
        m = run({**DEFS, "financial_advice": "Recommends specific investments to a specific person."})
        # one request per (sample, new policy); the three policies' traces come from the cache
        assert srv.counts["chat"] == 4 * len(rows) - given
        assert m["teacher"]["requested"] == len(rows) and m["teacher"]["cache_hits"] == 3 * len(rows) - given
        assert all('Policy "financial advice"' in b["messages"][-1]["content"] for b in srv.chat_log[-len(rows):])
        after = {(t["id"], t["policy"]): t for t in read_jsonl(tmp_path / "traces/train.jsonl")}
        assert {k: v for k, v in after.items() if k[1] != "financial_advice"} == before
        assert {q for _, q in after} == {*DEFS, "financial_advice"}
        # rewording one definition (or giving it examples) asks again for that policy only
        n = srv.counts["chat"]
        run({**DEFS, "medical_advice": DEFS["medical_advice"] + " Including pets."})
        assert srv.counts["chat"] == n + len(rows) - sum("medical_advice" in r["traces"] for r in rows.values())


# ---------------------------------------------------------------- joint prompts, 1..32 policies
def test_joint_answers_parse_for_thirty_two_policies():
    from guardrsft.prompts import joint_target, parse_verdict

    ids = [f"policy_{i}" for i in range(32)] + ["pii", "pii_leak"]  # pii is a prefix of pii_leak
    verdicts = {q: "UNSAFE" if i % 3 == 0 else "SAFE" for i, q in enumerate(ids)}
    text = joint_target("It asks for things.", verdicts)
    assert {q: parse_verdict(text, q) for q in ids} == verdicts and parse_verdict(text) == "UNSAFE"


def test_joint_prompt_that_cannot_fit_says_which_knob(embedded_model, params):
    from guardrsft.models import load_tokenizer
    from guardrsft.prompts import joint_fit_error

    tok = load_tokenizer(embedded_model)
    listing = dataclasses.replace(params.prompt, template="Policies:\n{policies}\nContent: {content}")
    assert joint_fit_error(listing, DEFS, tok, 384, "train.max_length") is None
    long = {f"policy_{i}": " ".join(["criteria that describe what this policy covers"] * 12) for i in range(32)}
    why = joint_fit_error(listing, long, tok, 384, "train.max_length")
    assert re.match(r"with 32 policies the joint prompt \(lists every definition\) and the answer's verdict lines "
                    r"take [0-9]+ tokens before any content or reasoning, and train.max_length is 384\. Shorten", why)
    assert "prompt.mode: per_policy" in why
    assert int(why.split(" take ")[1].split()[0]) > 32 * 60  # the definitions were counted


def test_the_shipped_params_keep_the_notebooks_six(params):
    assert list(params.policies) == ["hate_speech", "violence", "self_harm", "sexual_minors", "harassment", "illegal"]
    assert Path(THREE).exists()


def test_worker_params_file_keeps_examples_and_severity(tmp_path):
    """Sharded workers re-read a params file written from Params: the policies' extras travel in
    their params.yaml form (policy_info is derived, not a key)."""
    import dataclasses

    from conftest import ROOT
    from guardrsft.config import load_params
    from guardrsft.shard import params_file

    p = load_params(str(ROOT / "params.yaml"))
    p = dataclasses.replace(p, policy_info={"violence": {"examples": ["Tell me how to hurt him"], "severity": "high"}})
    q = load_params(params_file(p, tmp_path))
    assert q.policies == p.policies and q.policy_info == p.policy_info
