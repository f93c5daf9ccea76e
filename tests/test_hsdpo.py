"""Hard-sample DPO: pairing and weights on hand-made samples (pure, fast), sampling through the
guard on a tiny random Llama (k answers differ, batch-independent, resumable), weighted DPO on
that model (the reference is the R-SFT adapter, loss moves, a weight scales a pair's gradient,
resume from a checkpoint), mining refuses evaluation data, and the disabled stages."""
import dataclasses
import json
import math
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, copy_repo
from fixtures.tiny_model import build_tiny_model
from guardrsft import hsdpo
from guardrsft.guard import load_guard
from guardrsft.io import read_jsonl, write_jsonl

GOOD = "Reasoning:\nStep 1 (intent): harmless.\nClassification: SAFE"
BAD = "Reasoning:\nStep 1 (intent): a threat.\nClassification: UNSAFE"


@pytest.fixture
def params(pp_params):
    # HS-DPO samples per-policy answers (Guard.sample and hsdpo.enabled refuse prompt.mode joint)
    return pp_params


def s(j, verdict, raw=None):
    return {"index": j, "verdict": verdict, "raw": raw if raw is not None else f"Step {j}\nClassification: {verdict}\n",
            "reasoning": f"Step {j}", "is_parse_error": verdict is None}


ITEM = {"id": "a", "content": "How do I kill a stuck process?", "gold": {"violence": "SAFE"},
        "trace": {"violence": "Step 1 (intent): a computing question."}}


# ---------------------------------------------------------------- pure
def test_hardness_and_pair_from_disagreeing_samples():
    samples = [s(0, None, "rambling"), s(1, "SAFE"), s(2, "UNSAFE"), s(3, "SAFE")]
    st = hsdpo.item_stats("SAFE", samples)
    assert st == {"gold": "SAFE", "k": 4, "correct": 2, "wrong_verdict": 1, "parse_errors": 1, "hardness": 0.5}
    pair = hsdpo.build_pair(ITEM, "violence", samples)
    # chosen: the first correct sample; rejected: a wrong verdict is preferred over an unparseable answer
    assert pair["chosen_sample"] == 1 and pair["rejected_sample"] == 2 and pair["rejected_kind"] == "wrong_verdict"
    assert pair["chosen"] == "Reasoning:\nStep 1\nClassification: SAFE"
    assert pair["rejected"].endswith("Classification: UNSAFE") and pair["hardness"] == 0.5
    only_unparsed = hsdpo.build_pair(ITEM, "violence", [s(0, "SAFE"), s(1, None, "  no verdict  ")])
    assert only_unparsed["rejected"] == "no verdict" and only_unparsed["rejected_kind"] == "parse_error"


def test_agreeing_samples_give_no_pair_unless_trace_fallback():
    assert hsdpo.build_pair(ITEM, "violence", [s(j, "SAFE") for j in range(4)]) is None
    wrong = [s(j, "UNSAFE") for j in range(4)]
    assert hsdpo.item_stats("SAFE", wrong)["hardness"] == 1.0
    assert hsdpo.build_pair(ITEM, "violence", wrong) is None  # the paper's rule: no correct answer, no pair
    pair = hsdpo.build_pair(ITEM, "violence", wrong, trace_fallback=True)
    assert pair["chosen_source"] == "trace" and pair["chosen"].startswith("Reasoning:\nStep 1 (intent): a computing")
    assert pair["chosen"].endswith("Classification: SAFE") and pair["rejected_kind"] == "wrong_verdict"
    # empty answers are no rejected example
    assert hsdpo.build_pair(ITEM, "violence", [s(0, "SAFE"), s(1, None, "   ")]) is None


def test_weights_follow_hardness_with_mean_one():
    pairs = [{"hardness": h} for h in (0.25, 0.5, 0.75)]
    w = [x["weight"] for x in hsdpo.assign_weights(pairs, "hardness")]
    assert w == pytest.approx([0.5, 1.0, 1.5]) and sum(w) / 3 == pytest.approx(1.0)
    assert [x["weight"] for x in hsdpo.assign_weights(pairs, "uniform")] == [1.0, 1.0, 1.0]
    assert hsdpo.assign_weights([], "hardness") == []
    # balanced: each gold class carries half of the total weight, the mean stays 1
    golds = [dict(x, gold=g) for x, g in zip(pairs, ["SAFE", "SAFE", "UNSAFE"])]
    b = [x["weight"] for x in hsdpo.assign_weights(golds, "hardness", balance=True)]
    assert sum(b[:2]) == pytest.approx(b[2]) and sum(b) == pytest.approx(3.0)
    assert b[0] / b[1] == pytest.approx(w[0] / w[1])  # hardness order kept within a class
    one_class = [dict(x, gold="SAFE") for x in pairs]
    assert hsdpo.assign_weights(one_class, "hardness", balance=True) == hsdpo.assign_weights(one_class, "hardness")
    with pytest.raises(hsdpo.HsdpoError, match="weighting"):
        hsdpo.assign_weights(pairs, "inverse")


def _traces(path, contents, split=None):
    rows = [{"id": f"id{i}", "policy": q, "content": c, "classification": "UNSAFE" if (q == "violence" and i % 2) else "SAFE",
             "reasoning": "Step 1 (intent): x.", "origin": "template", **({"split": split} if split else {})}
            for i, c in enumerate(contents) for q in ("violence", "illegal")]
    write_jsonl(path, rows)
    return path


def test_mining_refuses_evaluation_data(tmp_path):
    train = _traces(tmp_path / "train.jsonl", ["a", "b"])
    test = tmp_path / "test.jsonl"
    write_jsonl(test, [{"id": "t", "content": "b", "labels": []}])
    with pytest.raises(hsdpo.HsdpoError, match="evaluation file .*test.jsonl"):
        hsdpo.check_training_split(str(train), [str(test)])
    with pytest.raises(hsdpo.HsdpoError, match="named like evaluation data"):
        hsdpo.check_training_split(str(_traces(tmp_path / "val.jsonl", ["c"])))
    with pytest.raises(hsdpo.HsdpoError, match="split='test'"):
        hsdpo.check_training_split(str(_traces(tmp_path / "mine.jsonl", ["c"], split="test")))
    write_jsonl(test, [{"id": "t", "content": "z", "labels": []}])
    hsdpo.check_training_split(str(train), [str(test), str(tmp_path / "absent.jsonl")])


def test_training_items_group_policies_and_skip_rejected(params, tmp_path):
    rows = read_jsonl(_traces(tmp_path / "train.jsonl", ["a", "b", "c"]))
    rows.append({"id": "id0", "policy": "self_harm", "content": "a", "classification": "SAFE", "reasoning": None,
                 "origin": "rejected"})
    items = hsdpo.training_items(rows, params.policies, None, params.seed)
    assert len(items) == 3 and all(set(it["gold"]) == {"violence", "illegal"} for it in items)
    assert {it["id"]: it["labels"] for it in items}["id1"] == ["violence"]
    assert len(hsdpo.training_items(rows, params.policies, 2, params.seed)) == 2


# ---------------------------------------------------------------- tiny model
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-hsdpo")
    return build_tiny_model(d / "model", adapter_dir=d / "adapter"), str(d / "adapter")


SAMPLE_ITEMS = [{"content": "How do I kill a stuck Python process?"}, {"content": "hi"},
                {"content": "Tell me a short story about a cat, with a long and winding plot."}]


def test_samples_differ_are_batch_independent_and_resume(tiny, params, tmp_path):
    model, _ = tiny
    pol = ["violence", "illegal"]
    g = load_guard(model, params=params, max_new_tokens=8, batch_size=4, cache_path=str(tmp_path / "c.jsonl"))
    res = g.sample(SAMPLE_ITEMS, 3, 0.9, 0.95, seed=1, policies=pol)
    assert g.last_stats["generated_answers"] == 18
    for r in res:
        for q in pol:
            raws = [x["raw"] for x in r["samples"][q]]
            assert len(raws) == 3 and len(set(raws)) == 3  # k draws at temperature > 0 differ
            assert all(x["is_parse_error"] == (x["verdict"] is None) for x in r["samples"][q])
    # another seed draws other answers; other batch sizes and item orders draw the same ones
    other = load_guard(model, params=params, max_new_tokens=8, batch_size=5).sample(SAMPLE_ITEMS, 3, 0.9, 0.95, 2,
                                                                                     policies=pol)
    assert other[0]["samples"]["violence"][0]["raw"] != res[0]["samples"]["violence"][0]["raw"]
    shuffled = load_guard(model, params=params, max_new_tokens=8, batch_size=2).sample(SAMPLE_ITEMS[::-1], 3, 0.9,
                                                                                       0.95, 1, policies=pol)
    assert shuffled[::-1] == res
    # resume: a run that saved the first item's answers only, then the full run
    cache = tmp_path / "resume.jsonl"
    load_guard(model, params=params, max_new_tokens=8, batch_size=4, cache_path=str(cache)).sample(
        SAMPLE_ITEMS[:1], 3, 0.9, 0.95, 1, policies=pol)
    g2 = load_guard(model, params=params, max_new_tokens=8, batch_size=4, cache_path=str(cache))
    assert g2.sample(SAMPLE_ITEMS, 3, 0.9, 0.95, 1, policies=pol) == res
    assert g2.last_stats["cached_answers"] == 6 and g2.last_stats["generated_answers"] == 12
    assert len(cache.read_text().splitlines()) == 18  # nothing drawn twice
    # greedy classify answers are other cache entries (sampling never answers for classify)
    assert g2._sample_key("hi", "violence", 0.9, 0.95, 1, 0) != g2._key("hi", "violence")


def test_mine_on_tiny_model_writes_pairs_items_and_counts(tiny, params, tmp_path):
    model, adapter = tiny
    p = dataclasses.replace(params, hsdpo=dataclasses.replace(params.hsdpo, k=2, max_items=3, max_new_tokens=6))
    traces = _traces(tmp_path / "train.jsonl", ["alpha text", "beta text", "gamma text", "delta text"])
    out = tmp_path / "hard"
    m = hsdpo.mine(p, str(traces), str(out), str(tmp_path / "m.json"), adapter=adapter, base=model,
                   cache_path=str(tmp_path / "s.jsonl"), progress=False)
    assert json.loads((tmp_path / "m.json").read_text()) == m
    assert m["items"] == 3 and m["item_policies"] == 6 and m["samples"] == 12 and m["generated_answers"] == 12
    items = read_jsonl(out / "items.jsonl")
    assert len(items) == 6 and sum(r["paired"] for r in items) == m["pairs"] == len(read_jsonl(out / "pairs.jsonl"))
    assert m["hard"] + m["all_correct"] + m["all_wrong"] == 6
    # a random model writes no verdict in 6 tokens: every answer is wrong, no pair (the paper's rule)...
    assert m["all_wrong"] == 6 and m["pairs"] == 0 and m["sample_parse_error_rate"] == 1.0
    # ...unless the training trace is the chosen answer (benchmark option); the samples come from the cache
    m2 = hsdpo.mine(p, str(traces), str(out), str(tmp_path / "m.json"), adapter=adapter, base=model,
                    cache_path=str(tmp_path / "s.jsonl"), trace_fallback=True, progress=False)
    pairs = read_jsonl(out / "pairs.jsonl")
    assert m2["cached_answers"] == 12 and m2["pairs"] == m2["pairs_from_trace"] == len(pairs) == 6
    assert all(x["chosen_source"] == "trace" for x in pairs)
    # every pair equally hard (all samples wrong); hsdpo.balance (default): each gold class
    # carries an equal share of the total weight, whose mean stays 1
    golds = {x["gold"] for x in pairs}
    for g in golds:
        assert sum(x["weight"] for x in pairs if x["gold"] == g) == pytest.approx(len(pairs) / len(golds))


def test_sharded_mining_draws_the_samples_of_one_process(tiny, params, tmp_path):
    """evaluate.processes = 2: two worker processes (shard.run_sharded) draw exactly the answers
    one process draws (each answer's generator is seeded from its own key)."""
    model, adapter = tiny
    p1 = dataclasses.replace(params, hsdpo=dataclasses.replace(params.hsdpo, k=2, max_items=3, max_new_tokens=6))
    p2 = dataclasses.replace(p1, evaluate=dataclasses.replace(p1.evaluate, processes=2))
    traces = _traces(tmp_path / "train.jsonl", ["alpha text", "beta text", "gamma text", "delta text"])
    runs = {}
    for name, p in (("one", p1), ("two", p2)):
        runs[name] = hsdpo.mine(p, str(traces), str(tmp_path / name), str(tmp_path / f"{name}.json"), adapter=adapter,
                                base=model, cache_path=str(tmp_path / f"{name}.jsonl"), progress=False)
    assert runs["two"]["generated_answers"] == runs["one"]["generated_answers"] == 12
    one = {r["key"]: r["raw"] for r in read_jsonl(tmp_path / "one.jsonl")}
    shards = sorted((tmp_path / "two-shards").glob("shard-*.jsonl"))
    assert len(shards) == 2
    assert {r["key"]: r["raw"] for f in shards for r in read_jsonl(f)} == one and len(one) == 12
    assert read_jsonl(tmp_path / "one/items.jsonl") == read_jsonl(tmp_path / "two/items.jsonl")


def _dpo_params(params, **hs):
    return dataclasses.replace(
        params, hsdpo=dataclasses.replace(params.hsdpo, **{"lr": 5e-3, "max_steps": 6, "batch_size": 2, **hs}),
        train=dataclasses.replace(params.train, max_length=2048, save_steps=1, warmup_ratio=0.0))


def _pairs(path, weights):
    write_jsonl(path, [{"id": str(i), "policy": "violence", "content": f"text number {i}", "gold": "SAFE",
                        "hardness": 0.5, "weight": w, "chosen": GOOD, "rejected": BAD} for i, w in enumerate(weights)])
    return str(path)


def test_weight_scales_each_pairs_gradient(tiny, params, tmp_path):
    """Gradients of one batch: weights (1, 0) give half the gradient of pair 0 alone (TRL
    averages over the batch), (2, 2) twice that of (1, 1), (0, 0) none."""
    import torch
    from datasets import Dataset
    from peft import PeftModel

    from guardrsft.models import load_model, load_tokenizer

    model_path, adapter = tiny
    p = _dpo_params(params)
    tok = load_tokenizer(model_path, padding_side="left")

    def grads(weights, contents=("a", "b")):
        recs = [{"prompt": [{"role": "user", "content": c}], "chosen": [{"role": "assistant", "content": GOOD}],
                 "rejected": [{"role": "assistant", "content": BAD}], "weight": w} for c, w in zip(contents, weights)]
        torch.manual_seed(0)
        m = PeftModel.from_pretrained(load_model(model_path, p.hw), adapter, is_trainable=True)
        tr = hsdpo.weighted_dpo_trainer_class()(model=m, args=hsdpo.dpo_config(p, str(tmp_path / "g")),
                                                train_dataset=Dataset.from_list(recs), processing_class=tok)
        tr.data_collator = hsdpo._WeightCollator(tr.data_collator)
        batch = tr.data_collator([tr.train_dataset[i] for i in range(len(recs))])  # in order (the loader shuffles)
        assert batch["weight"].tolist() == list(map(float, weights))
        tr.model.train()
        tr.model.zero_grad()
        tr.compute_loss(tr.model, dict(batch)).backward()
        return torch.cat([q.grad.flatten() for n, q in tr.model.named_parameters() if q.requires_grad and q.grad is not None])

    one = grads([1.0], contents=("a",))
    assert one.abs().sum() > 0
    assert torch.allclose(grads([1.0, 0.0]), one / 2, atol=1e-6)
    g11 = grads([1.0, 1.0])
    assert torch.allclose(grads([2.0, 2.0]), 2 * g11, atol=1e-6) and not torch.allclose(g11, one / 2, atol=1e-6)
    assert grads([0.0, 0.0]).abs().max() == 0


class _Crash(Exception):
    pass


def test_train_dpo_reference_is_rsft_loss_moves_and_resumes(tiny, params, tmp_path, cache_dir):
    from transformers import TrainerCallback

    model_path, adapter = tiny
    p = _dpo_params(params)
    pairs = _pairs(tmp_path / "pairs.jsonl", [1.0, 0.5, 1.5, 1.0])
    out = tmp_path / "adapter_hsdpo"

    class CrashAt3(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise _Crash()

    with pytest.raises(_Crash):
        hsdpo.train_dpo(p, pairs, adapter, str(out), str(tmp_path / "m.json"), str(tmp_path / "l.csv"),
                        base=model_path, callbacks=[CrashAt3()])
    assert not out.exists()
    res = hsdpo.train_dpo(p, pairs, adapter, str(out), str(tmp_path / "m.json"), str(tmp_path / "l.csv"),
                          base=model_path)
    m = res["metrics"]
    assert m["resumed"] and m["steps"] == 6 and m["trained"] and m["pairs"] == 4
    # a fresh run from the start: step 1's loss is ln 2 exactly, so the reference equals the
    # starting policy (the R-SFT adapter, not the base model); then the loss falls
    fresh = hsdpo.train_dpo(p, pairs, adapter, str(out), str(tmp_path / "m.json"), str(tmp_path / "l.csv"),
                            base=model_path)["metrics"]
    assert not fresh["resumed"] and fresh["first_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert fresh["final_loss"] < fresh["first_loss"] - 1e-3 and fresh["final_rewards_margin"] > 0
    lines = (tmp_path / "l.csv").read_text().splitlines()
    assert lines[0].startswith("step,loss") and len(lines) == 7
    # the saved adapter is the trained `default` one only (no `ref` copy), and it moved
    from safetensors.torch import load_file

    assert not (out / "ref").exists() and json.loads((out / "hsdpo.json").read_text())["trained"]
    a, b = load_file(f"{adapter}/adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert set(a) == set(b) and any(not (a[k] == b[k]).all() for k in a)


def test_no_pairs_copies_the_rsft_adapter(tiny, params, tmp_path):
    _, adapter = tiny
    res = hsdpo.train_dpo(params, _pairs(tmp_path / "p.jsonl", []), adapter, str(tmp_path / "o"),
                          str(tmp_path / "m.json"), str(tmp_path / "l.csv"))
    assert res["metrics"] == {"enabled": True, "trained": False, "reason": "no pairs", "pairs": 0, "steps": 0}
    assert (tmp_path / "o/adapter_model.safetensors").read_bytes() == (
        open(f"{adapter}/adapter_model.safetensors", "rb").read())


# ---------------------------------------------------------------- stages
def test_disabled_stages_write_enabled_false_without_a_model(tmp_path):
    """The cpu preset's default: the three stage scripts finish at once; a model load would
    fail (GUARDRSFT_BASE_MODEL points nowhere) and so would reading the missing inputs."""
    repo = copy_repo(tmp_path / "repo")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), GUARDRSFT_BASE_MODEL=str(tmp_path / "no-model"))
    t0 = time.time()
    for cmd in (["stages/mine_hard_samples.py", "data/traces/train.jsonl", "models/adapter", "data/hard_samples",
                 "metrics/hard_samples.json", "data/prepared/val.jsonl", "data/prepared/test.jsonl"],
                ["stages/train_hsdpo.py", "data/hard_samples/pairs.jsonl", "models/adapter", "models/adapter_hsdpo",
                 "metrics/hsdpo.json", "metrics/plots/hsdpo_loss.csv"],
                ["stages/evaluate_hsdpo.py", "data/prepared/test.jsonl", "models/adapter_hsdpo",
                 "metrics/eval_detail.json", "data/predictions/test.jsonl", "metrics/eval_hsdpo_detail.json",
                 "data/predictions/hsdpo", "metrics/plots/eval_hsdpo", "metrics/eval_hsdpo.json"]):
        out = subprocess.run([sys.executable, *cmd], cwd=repo, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "[hsdpo] disabled: hsdpo.enabled is false" in out.stderr
    assert time.time() - t0 < 60
    for f in ("metrics/hard_samples.json", "metrics/hsdpo.json", "metrics/eval_hsdpo_detail.json",
              "models/adapter_hsdpo/hsdpo.json", "data/predictions/hsdpo/hsdpo.json"):
        assert json.loads((repo / f).read_text())["enabled"] is False, f
    assert json.loads((repo / "metrics/eval_hsdpo.json").read_text()) == {}  # the DVC metrics file: no row of text
    assert (repo / "data/hard_samples/pairs.jsonl").read_text() == ""
    assert (repo / "metrics/plots/hsdpo_loss.png").stat().st_size > 0
