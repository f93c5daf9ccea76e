# the GPU recipe with BeaverTails' response-level `discrimination,stereotype,injustice` flag mapped to
# `hate_speech?` (hate_speech only with a lexicon hit) instead of `hate_speech`: the next labels lever
# (docs/BENCHMARKS.md, 2026-12-04c). Run as PATCH=labels.py in exp.sh, then `dvc exp run -n gpu-c-full-labels`.
import yaml
p = yaml.safe_load(open("params.yaml"))
bt = next(s for s in p["data"]["sources"] if s["name"] == "beavertails")
assert bt["labels"]["discrimination,stereotype,injustice"] == ["hate_speech"]
bt["labels"]["discrimination,stereotype,injustice"] = ["hate_speech?"]
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False, width=120)
