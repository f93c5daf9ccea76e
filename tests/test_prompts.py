from guardrsft.prompts import messages, parse_verdict, reasoning_of, target, user_prompt, verdict_complete
from guardrsft.traces import build_traces, template_trace


def test_prompt_has_policy_definition_content_and_format(params):
    msgs = messages(params.prompt, "self_harm", params.policies["self_harm"], "text with {braces}")
    assert [m["role"] for m in msgs] == ["system", "user"]
    u = msgs[1]["content"]
    assert 'Policy "self harm"' in u and "suicide" in u and "text with {braces}" in u
    for step in ("Step 1 (intent)", "Step 2 (harms)", "Step 3 (policy criteria)", "Classification: SAFE or UNSAFE"):
        assert step in u


def test_target_format():
    t = target("Step 1 (intent): a\nStep 2 (harms): b\nStep 3 (policy criteria): c", "unsafe")
    assert t.startswith("Reasoning:\nStep 1") and t.endswith("\nClassification: UNSAFE")
    assert parse_verdict(t) == "UNSAFE" and reasoning_of(t).endswith("c")


def test_parse_verdict_variants():
    assert parse_verdict("Classification: SAFE") == "SAFE"
    assert parse_verdict("classification:unsafe.") == "UNSAFE"
    assert parse_verdict("**Classification:** UNSAFE") == "UNSAFE"
    # the last line wins: reasoning may mention the format first
    assert parse_verdict("I must answer Classification: SAFE or UNSAFE...\nClassification: UNSAFE") == "UNSAFE"
    assert parse_verdict("The content violates this policy.") is None
    assert parse_verdict("Classification: SAFELY maybe") is None
    assert parse_verdict("") is None and parse_verdict(None) is None


def test_verdict_complete_waits_for_word_end():
    assert not verdict_complete("Reasoning:\nStep 1: x\nClassification: SAFE")
    assert verdict_complete("Classification: SAFE\n")
    assert verdict_complete("Classification: UNSAFE<")
    assert not verdict_complete("Classification: UN")


def test_template_teacher_and_given_traces(params):
    rows = [{"id": "a", "content": "kill the process", "labels": [],
             "traces": {"violence": {"reasoning": "Step 1 (intent): given", "classification": "SAFE"}}},
            {"id": "b", "content": "threat", "labels": ["violence", "harassment"], "traces": {}}]
    traces, m = build_traces(rows, params.policies)
    assert len(traces) == 12 and m["given"] == 1 and m["generated"] == 11
    by = {(t["id"], t["policy"]): t for t in traces}
    assert by[("a", "violence")]["reasoning"] == "Step 1 (intent): given"
    assert by[("b", "violence")]["classification"] == "UNSAFE" and by[("b", "illegal")]["classification"] == "SAFE"
    for t in traces:
        assert "Classification" not in t["reasoning"]
    tt = template_trace("x", "hate_speech", params.policies["hate_speech"], True)
    assert [line.split(":")[0] for line in tt.splitlines()] == ["Step 1 (intent)", "Step 2 (harms)", "Step 3 (policy criteria)"]
    assert m["violence_unsafe"] == 1 and m["violence_safe"] == 1


def test_user_prompt_collapses_definition_whitespace(params):
    u = user_prompt(params.prompt, "illegal", "a\n  b", "c")
    assert ": a b\n" in u
