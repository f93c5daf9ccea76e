"""bench/pseudo_label.py's labelling rule and bench/build_quality_data.py's unlabeled pool, on hand-made rows."""
from collections import Counter

import pytest
from helpers_bench import bench_module

from guardrsft.data import content_id


@pytest.fixture(scope="module")
def pl():
    yield from bench_module("pseudo_label")


@pytest.fixture(scope="module")
def bq():
    yield from bench_module("build_quality_data")


def test_policies_of(pl):
    assert pl.policies_of({"violence": "UNSAFE", "illegal": "UNSAFE", "self_harm": "SAFE"}, None) == ["illegal", "violence"]
    # greedy flags win over samples
    assert pl.policies_of({"violence": "UNSAFE", "illegal": "SAFE"}, {"illegal": 5, "violence": 0}) == ["violence"]
    # no greedy flag: the most-UNSAFE-sampled policies, ties kept
    assert pl.policies_of({"violence": "SAFE", "illegal": None}, {"violence": 2, "illegal": 2, "harassment": 1}) == \
        ["illegal", "violence"]
    assert pl.policies_of({"violence": "SAFE"}, {"violence": 0, "illegal": 0}) is None
    assert pl.policies_of({"violence": "SAFE"}, None) is None
    assert pl.policies_of({}, {}) is None
    # min_votes: one UNSAFE sample of k is not enough when two are asked for
    assert pl.policies_of({"violence": "SAFE"}, {"violence": 1, "illegal": 1}, min_votes=2) is None
    assert pl.policies_of({"violence": "SAFE"}, {"violence": 2, "illegal": 1}, min_votes=2) == ["violence"]


class ScriptedGuard:
    """Answers fixed per content; records what was sampled."""
    def __init__(self, greedy: dict, samples: dict):
        self.greedy, self.samples, self.sampled = greedy, samples, []

    def classify(self, items, progress=False):
        out = []
        for it in items:  # the guard's rule: any UNSAFE, else None when a policy did not parse, else SAFE
            v = self.greedy[it["content"]]
            out.append({"verdicts": v, "verdict": "UNSAFE" if "UNSAFE" in v.values() else
                        (None if None in v.values() else "SAFE")})
        return out

    def sample(self, items, k, temperature, top_p, seed):
        self.sampled += [it["content"] for it in items]
        return [{"samples": {q: [{"verdict": "UNSAFE"}] * n + [{"verdict": "SAFE"}] * (k - n)
                             for q, n in self.samples[it["content"]].items()}} for it in items]


def test_label_greedy_sampled_left_out(pl):
    items = [{"id": c, "content": c, "source": "gr_harmful"} for c in ("a", "b", "c", "d")]
    g = ScriptedGuard({"a": {"violence": "UNSAFE", "illegal": "SAFE"}, "b": {"violence": "SAFE", "illegal": "SAFE"},
                       "c": {"violence": "SAFE", "illegal": "SAFE"}, "d": {"violence": None, "illegal": "SAFE"}},
                      {"b": {"violence": 1, "illegal": 3}, "c": {"violence": 0, "illegal": 0},
                       "d": {"violence": 2, "illegal": 0}})
    out, stats = pl.label(g, items, k=4, temperature=1.0, seed=1)
    assert g.sampled == ["b", "c", "d"]  # the items greedy flags under no policy, an unparsed one too
    assert [(r["id"], r["labels"], r["source"]) for r in out] == \
        [("a", ["violence"], "pseudo:gr_harmful"), ("b", ["illegal"], "pseudo:gr_harmful"),
         ("d", ["violence"], "pseudo:gr_harmful")]
    assert stats == Counter({"greedy": 1, "sampled": 2, "left_out": 1, "policy:violence": 2, "policy:illegal": 1})
    # min_votes 3: b's illegal (3 of 4) stays, d's violence (2 of 4) does not
    out, _ = pl.label(ScriptedGuard(g.greedy, g.samples), items, k=4, temperature=1.0, seed=1, min_votes=3)
    assert [r["id"] for r in out] == ["a", "b"]
    # k = 0: no sampling, the unflagged are left out
    out, stats = pl.label(ScriptedGuard(g.greedy, {}), items, k=0, temperature=1.0, seed=1)
    assert [r["id"] for r in out] == ["a"] and stats["left_out"] == 3


def test_unlabeled_harmful(bq):
    def it(text, source, kind="harmful"):
        return bq.item(text, None, source, kind, category="gr:X")
    unknown = [it("how do I do the thing", "gr_harmful"), it("how  do I do the thing ", "gr_harmful"),  # a repeat
               it("taken text", "gr_harmful"), it("dev text", "gr_predictions"), it("x" * 4000, "gr_harmful"),
               it("a benign one", "gr_harmful", kind="benign"), it("outside the policies", "beavertails"),
               it("new aegis prompt", "gr_predictions")]
    taken = {content_id("taken text"), content_id("dev text")}
    counts = Counter()
    out = bq.unlabeled_harmful(unknown, taken, counts)
    assert [(o["content"], o["source"]) for o in out] == [("how do I do the thing", "gr_harmful"),
                                                         ("new aegis prompt", "gr_predictions")]
    assert out[0]["id"] == content_id("how do I do the thing")
    assert counts["unlabeled_left_out"] == 4  # repeat, taken, dev, too long (benign / categorized: not candidates)
