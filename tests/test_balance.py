"""guardrsft.balance: thinning SAFE pairs per item, oversampling UNSAFE ones (train.safe_per_item,
train.unsafe_share)."""
from collections import Counter

from guardrsft.balance import balance

POLICIES = ["hate_speech", "violence", "self_harm", "sexual_minors", "harassment", "illegal"]


def _rows(n_items: int, unsafe_of: dict) -> list[dict]:
    """One row per (item, policy); unsafe_of: item index -> its violated policies."""
    return [{"id": f"s{i}", "policy": q, "content": f"text {i}", "reasoning": f"r {i} {q}",
             "classification": "UNSAFE" if q in unsafe_of.get(i, ()) else "SAFE"}
            for i in range(n_items) for q in POLICIES]


def test_thinning_keeps_every_unsafe_pair_and_k_safe_pairs_per_item():
    rows = _rows(10, {0: ["violence", "illegal"], 3: ["hate_speech"]})
    out, st = balance(rows, safe_per_item=2, unsafe_share=0.0, seed=1)
    safe = Counter(r["id"] for r in out if r["classification"] == "SAFE")
    assert set(safe.values()) == {2} and len(safe) == 10  # every item keeps exactly 2 SAFE pairs
    unsafe = {(r["id"], r["policy"]) for r in out if r["classification"] == "UNSAFE"}
    assert unsafe == {("s0", "violence"), ("s0", "illegal"), ("s3", "hate_speech")}
    assert st["safe_dropped"] == 60 - 3 - 20 and st["rows"] == len(out) == 23
    assert all(r in rows for r in out)  # rows are kept whole, never rewritten
    assert [rows.index(r) for r in out] == sorted(rows.index(r) for r in out)  # file order kept


def test_oversampling_reaches_the_share_with_whole_copies():
    rows = _rows(20, {i: ["violence"] for i in range(4)})  # 4 of 120 pairs UNSAFE
    out, st = balance(rows, safe_per_item=-1, unsafe_share=0.3, seed=7)
    n_unsafe = sum(r["classification"] == "UNSAFE" for r in out)
    assert abs(n_unsafe / len(out) - 0.3) < 0.01 and st["unsafe_share_after"] == round(n_unsafe / len(out), 4)
    assert st["unsafe_added"] == len(out) - len(rows) == n_unsafe - 4
    assert Counter(r["id"] for r in out if r["classification"] == "UNSAFE").keys() == {"s0", "s1", "s2", "s3"}
    assert all(r in rows for r in out) and all(r in out for r in rows)  # every original row is still there


def test_the_same_seed_gives_the_same_rows_and_a_share_already_met_adds_none():
    rows = _rows(12, {1: ["self_harm"], 5: ["harassment", "hate_speech"]})
    a, _ = balance(rows, 1, 0.4, seed=3)
    b, _ = balance(rows, 1, 0.4, seed=3)
    c, _ = balance(rows, 1, 0.4, seed=4)
    assert a == b and a != c
    out, st = balance(rows, -1, 0.0, seed=3)
    assert out == rows and st["unsafe_added"] == 0 and "safe_dropped" not in st
    few_safe = _rows(2, {0: POLICIES[:5], 1: POLICIES[:5]})  # 10 of 12 pairs UNSAFE
    out, st = balance(few_safe, -1, 0.3, seed=3)
    assert out == few_safe and st["unsafe_added"] == 0


def test_per_policy_oversampling_lifts_each_policy_to_the_share():
    # 12 items violate four policies each, one item self_harm: pooled, self_harm stays rare
    unsafe_of = {i: ["violence", "hate_speech", "illegal", "harassment"] for i in range(12)}
    unsafe_of[20] = ["self_harm"]
    rows = _rows(40, unsafe_of)
    pooled, _ = balance(rows, -1, 0.3, seed=5)
    out, st = balance(rows, -1, 0.3, seed=5, per_policy=True)

    def share(rs, q):
        mine = [r for r in rs if r["policy"] == q]
        return sum(r["classification"] == "UNSAFE" for r in mine) / len(mine)
    assert share(pooled, "self_harm") < 0.1  # pooled: its one positive copied like the 48 others
    for q in ("violence", "self_harm"):
        assert abs(share(out, q) - 0.3) < 0.02, q
    assert st["per_policy"] is True and st["unsafe_added_per_policy"]["self_harm"] == 16  # (0.3*40-1)/0.7
    assert st["unsafe_added_per_policy"]["violence"] == 0  # 12 of 40: the share is met
    assert st["unsafe_added_per_policy"]["sexual_minors"] == 0  # no positive: nothing to repeat
    assert st["unsafe_added"] == len(out) - len(rows) == sum(st["unsafe_added_per_policy"].values())
    assert {r["id"] for r in out if r["policy"] == "self_harm" and r["classification"] == "UNSAFE"} == {"s20"}
    assert all(r in rows for r in out) and out == balance(rows, -1, 0.3, seed=5, per_policy=True)[0]


def test_hard_safe_pairs_are_kept_first_and_unmarked_rows_draw_as_before():
    rows = _rows(30, {0: ["violence"], 7: ["illegal", "harassment"]})
    plain, st_plain = balance(rows, 2, 0.3, seed=11, per_policy=True)
    # marks on nothing: the same rows, draw for draw (P of the tenth run reproduces)
    same, _ = balance([dict(r) for r in rows], 2, 0.3, seed=11, per_policy=True)
    assert same == plain and "hard_safe_kept" not in st_plain
    marked = [dict(r, hard=True) if (r["id"], r["policy"]) in {("s3", "hate_speech"), ("s4", "hate_speech"),
                                                               ("s4", "violence"), ("s5", "self_harm"),
                                                               ("s5", "illegal"), ("s5", "harassment")} else r
              for r in rows]
    out, st = balance(marked, 2, 0.0, seed=11)
    kept = {(r["id"], r["policy"]) for r in out if r["classification"] == "SAFE"}
    safe = Counter(r["id"] for r in out if r["classification"] == "SAFE")
    assert ("s3", "hate_speech") in kept and safe["s3"] == 2  # one hard + one drawn
    assert {("s4", "hate_speech"), ("s4", "violence")} <= kept and safe["s4"] == 2  # the quota is the hard ones
    assert safe["s5"] == 3 and {r["policy"] for r in out if r["id"] == "s5"} == {"self_harm", "illegal", "harassment"}
    assert all(n == 2 for i, n in safe.items() if i not in ("s5",))  # the others: the quota as before
    assert st["hard_safe_kept"] == 6 and st["rows"] == len(out)
    # how often a random pick keeps s3's hate_speech pair without the mark: about 2 in 6 over seeds
    hits = sum(("s3", "hate_speech") in {(r["id"], r["policy"]) for r in balance(rows, 2, 0.0, seed=s)[0]}
               for s in range(300))
    assert 70 < hits < 130
