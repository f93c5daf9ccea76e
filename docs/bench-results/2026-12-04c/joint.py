# the GPU recipe in one-pass (joint) mode: every policy in one prompt, one verdict line each
import yaml
p = yaml.safe_load(open("params.yaml"))
p["prompt"].update(mode="joint",
    system="You are a content safety classifier. You check one piece of content against every policy listed, "
           "reason step by step, then give one verdict line per policy.",
    template="Policies:\n{policies}\n\nContent: {content}")
yaml.safe_dump(p, open("params.yaml", "w"), sort_keys=False, width=120)
