"""build_data: the training set from declared sources (guardrsft.sources), params `data`."""
import csv
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from guardrsft.config import ParamsError, load_params
from guardrsft.data import DataError, load_notebook_file
from guardrsft.pipeline import _prepare
from guardrsft.sources import build, fingerprint, label_items, map_row, policies_of

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data/raw/training_data.json"


def params_with(tmp_path, data: dict, name="params.yaml", **top):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"] = {**raw["data"], **data}
    raw["mlflow"]["enabled"] = False
    raw.update(top)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def repo_root(tmp_path, monkeypatch):
    monkeypatch.setenv("GUARDRSFT_ROOT", str(tmp_path))  # relative source paths start here


def dir_md5(d: Path) -> str:
    """DVC's md5 of a folder (as dvc.lock records it)."""
    entries = sorted(({"md5": hashlib.md5(f.read_bytes()).hexdigest(), "relpath": f.relative_to(d).as_posix()}
                      for f in d.rglob("*") if f.is_file()), key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def test_default_declaration_reproduces_todays_prepared_data(tmp_path):
    p = load_params(ROOT / "params.yaml")
    assert p.data.sources == []  # the shipped sample set is the default
    build(p, str(SAMPLE), str(tmp_path / "built.json"), str(tmp_path / "build.json"))
    _prepare(p, str(tmp_path / "built.json"), str(tmp_path / "via_build"), str(tmp_path / "a.json"))
    _prepare(p, str(SAMPLE), str(tmp_path / "direct"), str(tmp_path / "b.json"))  # the old pipeline
    assert dir_md5(tmp_path / "via_build") == dir_md5(tmp_path / "direct")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    # and what dvc.lock recorded for prepare before build_data existed (same params, same sample file)
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]["prepare"]
    out = {o["path"]: o["md5"] for o in lock["outs"]}
    if any(d["path"] == "data/raw/training_data.json" and d["md5"] == hashlib.md5(SAMPLE.read_bytes()).hexdigest()
           for d in lock["deps"]) or "data/built/training_data.json" in {d["path"] for d in lock["deps"]}:
        assert dir_md5(tmp_path / "via_build") == out["data/prepared"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"text": "people of that group are vermin and should be shot", "cat": "hate"},
        {"text": "that group of people lives mostly in the north", "cat": "neutral"},
        {"text": "a cooking blog about bread", "cat": "neutral"},
        {"text": "adult film review", "cat": "porn"}]
LABELS = {"hate": ["hate_speech", "violence?"], "neutral": [], "porn": None}
KEYWORDS = {"violence": r"\bshot\b|\bkill"}


def table(name, path, **kw):
    return {"name": name, "path": str(path), "text_field": "text", "label_field": "cat", "labels": LABELS, **kw}


@pytest.mark.parametrize("kind", ["jsonl", "csv", "folder"])
def test_a_local_source_is_mapped_onto_the_policies(tmp_path, kind):
    if kind == "jsonl":
        src = write_jsonl(tmp_path / "pool/t.jsonl", ROWS)
    elif kind == "csv":
        src = tmp_path / "pool/t.csv"
        src.parent.mkdir()
        with open(src, "w", newline="") as f:
            w = csv.DictWriter(f, ["text", "cat"])
            w.writeheader()
            w.writerows(ROWS)
    else:  # a folder `datasets` reads (split `train` from its file name)
        src = tmp_path / "pool"
        write_jsonl(src / "train.jsonl", ROWS)
    rel = src.relative_to(tmp_path)  # relative: from the repository root
    p = load_params(params_with(tmp_path, {"sources": [table("mine", rel)], "keywords": KEYWORDS}))
    report = build(p, str(SAMPLE), str(tmp_path / "built.json"), str(tmp_path / "m.json"))
    samples, _ = load_notebook_file(tmp_path / "built.json", list(p.policies))
    got = {s["content"]: s["labels"] for s in samples}
    assert got == {ROWS[0]["text"]: ["hate_speech", "violence"], ROWS[1]["text"]: [], ROWS[2]["text"]: []}
    assert {s["source"] for s in samples} == {"mine"}
    assert report["filtering"]["mine:skipped"] == 1  # adult content: outside the policies
    assert json.loads((tmp_path / "m.json").read_text())["items"] == 3


def test_hub_sources_go_through_datasets_load_dataset(tmp_path, monkeypatch):
    import datasets

    seen = {}

    def fake(path, name=None, split=None, revision=None, **kw):
        seen.update(path=path, name=name, split=split, revision=revision)
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    src = {**table("hubsrc", "x"), "path": None, "hub": "org/safety", "split": "test", "revision": "abc123"}
    p = load_params(params_with(tmp_path, {"sources": [src], "keywords": KEYWORDS}))
    build(p, str(SAMPLE), str(tmp_path / "built.json"), str(tmp_path / "m.json"))
    assert seen == {"path": "org/safety", "name": None, "split": "test", "revision": "abc123"}
    assert fingerprint(p) == {"hubsrc": "hub org/safety  test @abc123"}


def test_a_notebook_source_keeps_its_traces_and_excluded_texts_are_dropped(tmp_path):
    nb = {"samples": [{"content": "kill the python process", "labels": [], "source": "a"},
                      {"content": ROWS[0]["text"], "labels": ["hate_speech"], "source": "b"}],
          "reasoning_traces": {"sample_0_violence": {"reasoning": "A process, not a person.", "classification": "SAFE"}}}
    (tmp_path / "nb.json").write_text(json.dumps(nb))
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"t": ROWS[2]["text"], "y": 0}])
    src = [{"name": "nb", "path": "nb.json", "format": "notebook"}, table("tab", write_jsonl(tmp_path / "t.jsonl", ROWS))]
    p = load_params(params_with(tmp_path, {"sources": src, "keywords": KEYWORDS, "exclude": ["dev"]}, evaluate={
        **yaml.safe_load((ROOT / "params.yaml").read_text())["evaluate"],
        "benchmark_sets": {"dev": {"path": str(dev), "format": "table", "text_field": "t", "harmful_columns": ["y"]}}}))
    report = build(p, str(SAMPLE), str(tmp_path / "built.json"), str(tmp_path / "m.json"))
    samples, _ = load_notebook_file(tmp_path / "built.json", list(p.policies))
    texts = [s["content"] for s in samples]
    assert ROWS[2]["text"] not in texts and report["filtering"]["dropped_excluded"] == 1
    assert samples[0]["traces"]["violence"]["classification"] == "SAFE"
    # the same text with two label sets across sources: prepare would stop; the build keeps the notebook's
    assert texts.count(ROWS[0]["text"]) == 1 and report["filtering"]["dropped_conflicting_labels"] == 1


@pytest.mark.parametrize("data,msg", [
    ({"sources": [{"name": "x", "path": "a.jsonl", "text_feild": "t"}]},
     "unknown key `data.sources[0].text_feild`. Did you mean `data.sources[0].text_field`?"),
    ({"sources": [table("x", "a.jsonl", labels={"hate": ["hate_speach"]})]},
     "`data.sources[0].labels.hate` maps to unknown policy 'hate_speach'; policies: hate_speech, violence, "
     "self_harm, sexual_minors, harassment, illegal (did you mean 'hate_speech'?)"),
    ({"sources": [table("x", "a.jsonl", labels={"hate": "hate_speech"})]},
     "`data.sources[0].labels.hate` must be a list of policy ids ([] for benign), null (skip) or `keywords`; "
     "got 'hate_speech'"),
    ({"sources": [table("x", "a.jsonl", labels={"hate": ["violence?"]})]},
     "`data.sources[0].labels.hate` has 'violence?' but data.keywords has no regex for 'violence'"),
    ({"sources": [{**table("x", "a.jsonl"), "hub": "org/x"}]}, "needs exactly one of `path`"),
    ({"exclude": ["nope"]}, "`data.exclude` names 'nope', which is not in evaluate.benchmark_sets"),
])
def test_a_bad_declaration_fails_at_load_naming_file_field_and_fix(tmp_path, data, msg):
    path = params_with(tmp_path, data, name="recipe.yaml")
    with pytest.raises(ParamsError) as e:
        load_params(path)
    assert str(e.value).startswith(f"{path}: ") and msg in str(e.value)


def test_a_missing_source_file_fails_when_build_data_runs_naming_it(tmp_path):
    path = params_with(tmp_path, {"sources": [table("x", "pool/missing.jsonl")], "keywords": KEYWORDS})
    p = load_params(path)  # check_params passes: a missing pool must not stop the other stages
    with pytest.raises(ParamsError, match=rf"{path}: `data.sources\[0\].path` is 'pool/missing.jsonl', which does "
                                          "not exist .*Fix the path in"):
        build(p, str(SAMPLE), str(tmp_path / "built.json"), str(tmp_path / "m.json"))
    assert not (tmp_path / "built.json").exists()
    assert fingerprint(p) == {"x": "missing"}


def test_a_label_value_the_mapping_lacks_is_an_error_naming_it(tmp_path):
    src = write_jsonl(tmp_path / "t.jsonl", ROWS + [{"text": "spam", "cat": "spam"}])
    p = load_params(params_with(tmp_path, {"sources": [table("mine", src)], "keywords": KEYWORDS}))
    with pytest.raises(DataError, match=r"data.sources\[0\] \(mine\) row 5: label 'spam' of column 'cat' is not in "
                                        r"`data.sources\[0\].labels`; map it in .*params.yaml"):
        build(p, str(SAMPLE), str(tmp_path / "built.json"), str(tmp_path / "m.json"))


def test_keywords_choose_policies_and_open_items_wait_for_pseudo_labels(tmp_path):
    p = load_params(params_with(tmp_path, {"keywords": KEYWORDS, "sources": [
        table("gr", "t.jsonl", labels={"harmful": "keywords", "safe": [], "odd": ["violence?"]})]}))
    row = lambda t, c: map_row(p, 0, {"text": t, "cat": c}, 0)  # noqa: E731
    assert row("how to kill a neighbour", "harmful")["labels"] == ["violence"]
    assert row("write a nasty essay", "harmful")["labels"] == "open"  # harmful, no policy found
    assert row("write a nasty essay", "odd")["labels"] == "open"
    assert row("a recipe", "safe") == {"content": "a recipe", "labels": [], "harmful": False}


class FakeGuard:
    def classify(self, items, progress=False):
        out = []
        for it in items:
            flag = "hate" in it["content"]
            out.append({"verdict": "UNSAFE" if flag else "SAFE",
                        "verdicts": {"hate_speech": "UNSAFE" if flag else "SAFE", "violence": "SAFE"}})
        return out

    def sample(self, items, k, temperature, top_p, seed):
        return [{"samples": {"violence": [{"verdict": "UNSAFE" if "hit" in it["content"] else "SAFE"}] * k,
                             "hate_speech": [{"verdict": "SAFE"}] * k}} for it in items]


def test_pseudo_labels_greedy_then_sampled_votes_else_left_out():
    items = [{"id": str(i), "content": c, "source": "gr"} for i, c in enumerate(["hate it", "hit it", "meh"])]
    out, stats = label_items(FakeGuard(), items, k=4, temperature=1.0, seed=1, min_votes=2)
    assert [(x["content"], x["labels"], x["source"]) for x in out] == [
        ("hate it", ["hate_speech"], "pseudo:gr"), ("hit it", ["violence"], "pseudo:gr")]
    assert stats == {"greedy": 1, "sampled": 1, "left_out": 1}
    assert policies_of({"a": "SAFE"}, {"a": 1, "b": 1}, min_votes=2) is None


def test_prepare_keeps_pseudo_labelled_items_in_the_train_split(tmp_path):
    p = load_params(ROOT / "params.yaml")
    nb = json.loads(SAMPLE.read_text())
    extra = [{"content": f"pseudo item {i} about hate", "labels": ["hate_speech"], "source": "pseudo:gr"}
             for i in range(30)]
    (tmp_path / "in.json").write_text(json.dumps({**nb, "samples": nb["samples"] + extra}))
    m = _prepare(p, str(tmp_path / "in.json"), str(tmp_path / "out"), str(tmp_path / "m.json"))
    for split in ("val", "test"):
        rows = [json.loads(x) for x in (tmp_path / "out" / f"{split}.jsonl").read_text().splitlines()]
        assert not any(r["source"].startswith("pseudo:") for r in rows)
    assert m["train"]["samples"] == 264 + 30 and m["test"]["samples"] == 38  # the rest split as before


def test_the_gpu_recipe_loads_and_differs_from_params_yaml_only_in_recipe_keys():
    p = load_params(ROOT / "params/gpu-recipe.yaml")
    assert (p.preset, p.lr, p.train.method, p.train.epochs) == ("a100", 5e-5, "full", 2)
    assert (p.train.lora_r, p.train.lora_alpha) == (128, 128)  # C as LoRA: -S train.method=lora -S lr=5e-4
    assert p.evaluate.benchmarks == ["openai_moderation", "toxicchat_gr"] and p.prompt.mode == "per_policy"
    assert p.data.max_items == 12000 and p.data.pseudo_label.k == 4 and not p.hsdpo_enabled
    assert all(s.path.startswith("../shared/data/") for s in p.data.sources)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    recipe = yaml.safe_load((ROOT / "params/gpu-recipe.yaml").read_text())
    changed = {k for k in base if base[k] != recipe[k]}
    assert changed == {"preset", "base_model", "lr", "prompt", "data", "prepare", "train", "evaluate", "hsdpo"}
    assert set(recipe) == set(base)
    # every key of a section is there, so `dvc exp run -S train.method=full` works on the recipe as on
    # params.yaml (DVC refuses to set a key the file lacks: "Key 'method' is not in struct")
    for k, v in base.items():
        if isinstance(v, dict) and k != "policies":
            assert set(v) <= set(recipe[k]), (k, sorted(set(v) - set(recipe[k])))
