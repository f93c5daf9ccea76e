"""The training set from declared sources: params `data` (the build_data stage).

    data.sources: []   the shipped sample set (the stage's first argument), passed through as is
    data.sources: [{name, path | hub, ...}, ...]   each source read, mapped onto params `policies`

A source is a local file or folder (`path`, relative to the repository root; .json / .jsonl /
.csv / .parquet, optionally .gz, read by `datasets`), or a `datasets` Hub id (`hub`, with
`split`, `config`, `revision`). `format: notebook` is a training_data.json (its labels already
are policy ids, its traces kept); `format: table` has rows with `text_field` (and an optional
`response_field`, judged with its request as the guard frames an exchange) and `label_field`,
whose value (or list of values) `labels` maps:
- a list of policy ids: the item violates those (`[]`: benign for every policy); an id ending
  in `?` counts only when `data.keywords[id]` matches the text (none of a list's matched: as
  `keywords` below);
- null: skip the item (its policies lie outside ours: per-policy gold unknown);
- `keywords`: the policies whose `data.keywords` regex matches; none: the item is harmful with
  no policy ("open"), left out, or labelled by `data.pseudo_label` (self-training).
The key "" maps an empty value or empty list. A row value with no key is an error naming it.

Then: texts of `data.exclude` (evaluate.benchmark_sets names) are dropped, as are texts given
two label sets; with `data.max_items` a balanced selection (guardrsft.sources.select) is taken.
The output is a training_data.json, validated by the prepare stage's own loader before it is
written. Pseudo-labelled items get source `pseudo:<name>`; prepare keeps them in the train split.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

from .config import Params, ParamsError
from .data import DataError, content_id, load_notebook_file, normalize_content, read_json_file

FORMATS = ("table", "notebook")
KEYWORDS = "keywords"
PSEUDO = "pseudo:"  # source prefix of pseudo-labelled items (prepare: train split only)


# ------------------------------------------------------------------ validation (check_params)
def check_declaration(p: Params) -> None:
    """Shape of params `data`; paths are checked when build_data runs (a missing pool must not
    stop the other stages)."""
    d, src = p.data, p.source
    pol = list(p.policies)

    def need(ok: bool, key: str, what: str):
        if not ok:
            raise ParamsError(f"{src}: `{key}` {what}.")

    for q, rx in d.keywords.items():
        need(q in p.policies, f"data.keywords.{q}", f"names no policy; policies: {', '.join(pol)}")
        try:
            re.compile(rx)
        except (re.error, TypeError) as e:
            need(False, f"data.keywords.{q}", f"must be a regular expression ({e})")
    names = [s.name for s in d.sources]
    need(len(set(names)) == len(names), "data.sources", "gives two sources one name; names must differ")
    for i, s in enumerate(d.sources):
        key = f"data.sources[{i}]"
        need(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", s.name)), f"{key}.name",
             "must be letters, digits, `_`, `.`, `-` (it names the items' source)")
        need((s.path is None) != (s.hub is None), key,
             "needs exactly one of `path` (a local file or folder) and `hub` (a `datasets` id)")
        need(s.format in FORMATS, f"{key}.format", f"must be one of {', '.join(FORMATS)} (got {s.format!r})")
        need(0 < s.cap <= 1, f"{key}.cap", "must be in (0, 1]")
        need(s.max_items is None or s.max_items > 0, f"{key}.max_items", "must be null (all) or > 0")
        if s.format == "notebook":
            for k in ("text_field", "response_field", "label_field"):
                need(getattr(s, k) is None, f"{key}.{k}", "applies to format table only; remove it")
            need(not s.labels, f"{key}.labels", "applies to format table only (a notebook file has policy ids)")
            continue
        need(bool(s.text_field), f"{key}.text_field", "must name the column holding the text (format table)")
        need(bool(s.label_field), f"{key}.label_field", "must name the column of the source's label")
        need(bool(s.labels), f"{key}.labels", "must map the source's label values onto policy ids, "
             "e.g. {hate: [hate_speech], neutral: []}")
        for v, m in s.labels.items():
            where = f"{key}.labels.{v}" if str(v) else f'{key}.labels.""'
            if m is None or m == KEYWORDS:
                need(m is None or bool(d.keywords), where, "is `keywords` but data.keywords is empty")
                continue
            need(isinstance(m, list) and all(isinstance(x, str) for x in m), where,
                 f"must be a list of policy ids ([] for benign), null (skip) or `keywords`; got {m!r}")
            for x in m:
                q = x.rstrip("?")
                close = [c for c in pol if c.startswith(q[:4])][:1]
                need(q in p.policies, where, f"maps to unknown policy {q!r}; policies: {', '.join(pol)}"
                     + (f" (did you mean {close[0]!r}?)" if close else ""))
                need(not x.endswith("?") or q in d.keywords, where,
                     f"has {x!r} but data.keywords has no regex for {q!r}")
    for n in d.exclude:
        need(n in p.evaluate.benchmark_sets, "data.exclude",
             f"names {n!r}, which is not in evaluate.benchmark_sets ({', '.join(p.evaluate.benchmark_sets)})")
    need(d.max_items is None or d.max_items >= 10, "data.max_items", "must be null (all) or >= 10")
    need(0 < d.harmful_share < 1, "data.harmful_share", "must be in (0, 1)")
    pl = d.pseudo_label
    need(pl.k >= 0 and pl.min_votes >= 1 and pl.temperature > 0, "data.pseudo_label",
         "needs k >= 0, min_votes >= 1 and temperature > 0")


def _local(p: Params, i: int, path: str) -> Path:
    from .tracking import repo_path

    full = repo_path(path)
    if not full.exists():
        raise ParamsError(f"{p.source}: `data.sources[{i}].path` is {path!r}, which does not exist ({full}). "
                          f"Fix the path in {p.source} (relative paths start at the repository root) or use "
                          "`hub:` for a `datasets` id.")
    return full


def fingerprint(p: Params) -> dict:
    """What check_params records for build_data: each local source's md5 (so DVC reruns the stage
    when a file outside the repo changes) or its Hub id and revision."""
    from .tracking import repo_path

    out = {}
    for s in p.data.sources:
        if s.hub:
            out[s.name] = f"hub {s.hub} {s.config or ''} {s.split} @{s.revision or 'unpinned'}"
            continue
        full = repo_path(s.path)
        files = sorted(f for f in full.rglob("*") if f.is_file()) if full.is_dir() else [full]
        h = hashlib.md5()
        for f in files:
            if not f.exists():
                return {**out, s.name: "missing"}  # build_data says so, by name
            h.update(f"{f.relative_to(full) if full.is_dir() else f.name}\0".encode() + f.read_bytes())
        out[s.name] = h.hexdigest()
    return out


# ------------------------------------------------------------------ reading
def read_rows(p: Params, i: int) -> list[dict]:
    """Rows of source i through `datasets` (a local file or folder, or a Hub id)."""
    import datasets

    s = p.data.sources[i]
    where = f"{p.source} `data.sources[{i}]` ({s.name})"
    try:
        if s.hub:
            ds = datasets.load_dataset(s.hub, name=s.config, split=s.split, revision=s.revision)
        else:
            full = _local(p, i, s.path)
            if full.is_dir():
                ds = datasets.load_dataset(str(full), split=s.split)
            else:
                name = full.name.lower().removesuffix(".gz")
                kind = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(Path(name).suffix)
                if kind is None:
                    raise DataError(f"{full}: unknown file type; use .json, .jsonl, .csv or .parquet (optionally .gz)")
                ds = datasets.load_dataset(kind, data_files=str(full), split="train")
    except (DataError, ParamsError):
        raise
    except Exception as e:  # offline, unknown id, a file datasets cannot parse: say which source
        raise DataError(f"{where}: cannot load ({type(e).__name__}: {str(e)[:300]}). Check `path`/`hub`, "
                        "`split` and `config`; a Hub id needs a network or a local copy.") from None
    return list(ds)


def _keywords(p: Params, text: str) -> set[str]:
    return {q for q, rx in p.data.keywords.items() if re.search(rx, text, re.IGNORECASE)}


def map_row(p: Params, i: int, row: dict, n: int) -> dict:
    """One table row -> {"content", "labels" (None: skip, "open": harmful, no policy), "harmful"}."""
    from .guard import render_content

    s = p.data.sources[i]
    where = f"data.sources[{i}] ({s.name}) row {n + 1}"
    text = row.get(s.text_field)
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: `{s.text_field}` is missing or not text; fix `data.sources[{i}].text_field` "
                        f"in {p.source} (columns: {', '.join(map(str, row))})")
    content = text.strip()
    if s.response_field:
        resp = row.get(s.response_field)
        if not isinstance(resp, str) or not resp.strip():
            raise DataError(f"{where}: `{s.response_field}` is missing or not text (data.sources[{i}].response_field)")
        content = render_content({"content": content, "response": resp.strip()})
    if s.label_field not in row:
        raise DataError(f"{where}: no column {s.label_field!r}; fix `data.sources[{i}].label_field` in {p.source} "
                        f"(columns: {', '.join(map(str, row))})")
    raw = row[s.label_field]
    values = [str(v) for v in raw] if isinstance(raw, list) else [str(raw) if raw is not None else ""]
    values = values or [""]
    labels, skip, open_, harmful = set(), False, False, False
    found = _keywords(p, content) if p.data.keywords else set()
    for v in values:
        if v not in s.labels:
            raise DataError(f"{where}: label {v!r} of column {s.label_field!r} is not in `data.sources[{i}].labels`; "
                            f"map it in {p.source}: a list of policy ids, [] (benign), null (skip) or `keywords`. "
                            f"Mapped: {', '.join(map(repr, s.labels))}")
        m = s.labels[v]
        if m is None:
            skip, harmful = True, True
        elif m == KEYWORDS:
            harmful = True
            hit = found & set(p.policies)
            labels |= hit
            open_ = open_ or not hit
        else:
            got = {x for x in m if not x.endswith("?")} | {x[:-1] for x in m if x.endswith("?") and x[:-1] in found}
            harmful = harmful or bool(m)
            open_ = open_ or (bool(m) and not got)  # only `<policy>?` entries, none found: harmful, no policy
            labels |= got
    if labels:
        return {"content": content, "labels": [q for q in p.policies if q in labels], "harmful": True}
    if skip:
        return {"content": content, "labels": None, "harmful": True}
    if open_:
        return {"content": content, "labels": "open", "harmful": True}
    return {"content": content, "labels": [], "harmful": harmful}


# ------------------------------------------------------------------ selection
def interleave(groups: dict[str, list[dict]]) -> list[dict]:
    """Round-robin over sources (sorted names) so no source fills a policy alone."""
    lists = [list(groups[k]) for k in sorted(groups)]
    out = []
    while any(lists):
        for li in lists:
            if li:
                out.append(li.pop(0))
    return out


def select(p: Params, cands: list[dict], rng: random.Random) -> list[dict]:
    """data.max_items items, data.harmful_share of them harmful: harmful items drawn policy by
    policy, always for the policy with the fewest positives so far (rare ones taken whole),
    sources interleaved and capped (`cap`: share of the harmful budget); benign: `keep_all`
    sources whole, then the others up to their caps, scaled together to the room left."""
    n, pol = p.data.max_items, list(p.policies)
    cap = {s.name: s.cap for s in p.data.sources}
    keep_all = {s.name for s in p.data.sources if s.keep_all}
    harm = [c for c in cands if c["labels"]]
    ben = [c for c in cands if not c["labels"]]
    rng.shuffle(harm)
    rng.shuffle(ben)
    h_budget = round(n * p.data.harmful_share)
    caps = {s: int(f * h_budget) for s, f in cap.items()}
    pools = {q: interleave({s: [c for c in harm if q in c["labels"] and c["source"] == s]
                            for s in {c["source"] for c in harm}}) for q in pol}
    taken, chosen, per_policy, per_source = set(), [], Counter(), Counter()
    while len(chosen) < h_budget:
        open_q = [q for q in pol if pools[q]]
        if not open_q:
            break
        q = min(open_q, key=lambda x: (per_policy[x], pol.index(x)))
        c = pools[q].pop(0)
        if c["id"] in taken or per_source[c["source"]] >= caps.get(c["source"], h_budget):
            continue
        taken.add(c["id"])
        chosen.append(c)
        per_policy.update(c["labels"])
        per_source[c["source"]] += 1
    b_budget = n - len(chosen)
    hard = [c for c in ben if c["source"] in keep_all][:b_budget]
    chosen += hard
    others = sorted({c["source"] for c in ben} - keep_all)
    avail = {s: [c for c in ben if c["source"] == s] for s in others}
    want = {s: min(len(avail[s]), int(cap.get(s, 1.0) * b_budget)) for s in others}
    scale = min(1.0, (b_budget - len(hard)) / max(sum(want.values()), 1))
    for s in others:
        chosen += avail[s][:int(want[s] * scale)]
    chosen += interleave({s: avail[s][int(want[s] * scale):] for s in others})[:n - len(chosen)]  # rounding
    rng.shuffle(chosen)
    return chosen


# ------------------------------------------------------------------ build
def _excluded(p: Params) -> set[str]:
    """content ids of every text in the data.exclude benchmark sets (never trained on)."""
    import dataclasses

    from .benchmarks import load_benchmark

    ids = set()
    for name in p.data.exclude:
        spec = dataclasses.replace(p.evaluate.benchmark_sets[name], max_samples=0)
        ids |= {content_id(it["content"]) for it in load_benchmark(p, name, spec)["items"]}
    return ids


def _notebook(p: Params, i: int, path: Path) -> tuple[list[dict], dict]:
    """A training_data.json source: raw samples (source defaulted to the source's name) and its
    traces, validated by prepare's loader first."""
    load_notebook_file(path, list(p.policies))
    raw = read_json_file(path)
    return raw["samples"], raw.get("reasoning_traces") or {}


def build(p: Params, default_path: str, out_path: str, metrics_out: str) -> dict:
    from .io import atomic_path, write_json

    if not p.data.sources:  # the shipped sample set, as it is (prepare's input unchanged)
        samples, traces = _notebook(p, -1, Path(default_path))
        doc = {"samples": samples, "reasoning_traces": traces}
        report = {"sources": {"default": {"path": default_path, "items": len(samples)}}, "items": len(samples)}
    else:
        doc, report = _from_sources(p)
    with atomic_path(out_path) as tmp:
        tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
        load_notebook_file(tmp, list(p.policies))  # prepare's own validation, before the rename
    write_json(metrics_out, report)
    return report


def _from_sources(p: Params) -> tuple[dict, dict]:
    counts, given, cands, open_items = Counter(), [], [], []
    for i, s in enumerate(p.data.sources):
        if s.format == "notebook":
            if not s.path:
                raise ParamsError(f"{p.source}: `data.sources[{i}]`: format notebook reads a local `path` only")
            rows, tr = _notebook(p, i, _local(p, i, s.path))
            own: dict[int, dict] = defaultdict(dict)
            for k, t in tr.items():  # sample_{idx}_{policy}: kept with its sample, re-keyed on output
                idx, _, pol = k[len("sample_"):].partition("_")
                own[int(idx)][pol] = t
            given += [(dict(r, source=r.get("source") or s.name), own.get(n, {})) for n, r in enumerate(rows)]
            counts[f"{s.name}:items"] += len(rows)
            continue
        rows = read_rows(p, i)
        if s.max_items and len(rows) > s.max_items:
            rows = random.Random(p.seed).sample(rows, s.max_items)
        for n, row in enumerate(rows):
            m = map_row(p, i, row, n)
            kind = "skipped" if m["labels"] is None else "open" if m["labels"] == "open" else \
                "harmful" if m["labels"] else "benign"
            counts[f"{s.name}:{kind}"] += 1
            item = {"content": normalize_content(m["content"]), "labels": m["labels"], "source": s.name}
            if kind == "open":
                open_items.append(item)
            elif kind != "skipped":
                cands.append(item)
    excluded = _excluded(p)
    kept = [(r, t) for r, t in given if content_id(r["content"]) not in excluded]
    counts["dropped_excluded"] += len(given) - len(kept)
    # a notebook file's items win over a table's same text (theirs are curated, with traces)
    known = {content_id(r["content"]): sorted(r.get("labels") or []) for r, _ in kept}
    cands = _dedupe(cands, excluded, counts, known)
    if p.data.max_items:
        cands = select(p, cands, random.Random(p.seed))
    if p.data.pseudo_label.adapter and open_items:
        taken = excluded | set(known) | {c["id"] for c in cands}
        open_items = [c for c in _dedupe(open_items, set(), Counter()) if c["id"] not in taken]
        labelled, stats = pseudo_label(p, open_items)
        counts.update({f"pseudo_label:{k}": v for k, v in stats.items()})
        cands += labelled
    samples, traces = [], {}
    for r, t in kept:
        traces.update({f"sample_{len(samples)}_{pol}": v for pol, v in t.items()})
        samples.append(r)
    samples += [{"id": c["id"], "content": c["content"], "labels": c["labels"], "source": c["source"]} for c in cands]
    per_policy = Counter(q for x in samples for q in x["labels"])
    report = {"items": len(samples), "harmful": sum(bool(x["labels"]) for x in samples),
              "per_policy": {q: per_policy.get(q, 0) for q in p.policies},
              "per_source": dict(sorted(Counter(x["source"] for x in samples).items())),
              "open_harmful": len(open_items), "filtering": dict(sorted(counts.items()))}
    return {"samples": samples, "reasoning_traces": traces}, report


def _dedupe(cands: list[dict], excluded: set[str], counts: Counter, known: dict | None = None) -> list[dict]:
    """One item per normalized text; texts in data.exclude, or given two label sets (here or in
    `known`: content id -> labels of notebook items), dropped."""
    known = known or {}
    by_id: dict[str, list[dict]] = defaultdict(list)
    for c in cands:
        cid = content_id(c["content"])
        if cid in excluded:
            counts["dropped_excluded"] += 1
            continue
        if cid in known:
            counts["dropped_duplicates" if known[cid] == sorted(c["labels"]) else "dropped_conflicting_labels"] += 1
            continue
        by_id[cid].append(c)
    out = []
    for cid, group in by_id.items():
        if len({tuple(c["labels"]) if isinstance(c["labels"], list) else c["labels"] for c in group}) > 1:
            counts["dropped_conflicting_labels"] += len(group)
            continue
        counts["dropped_duplicates"] += len(group) - 1
        out.append(dict(group[0], id=cid))
    return out


# ------------------------------------------------------------------ self-training
def policies_of(verdicts: dict, unsafe_samples: dict | None, min_votes: int = 1) -> list[str] | None:
    """One item's pseudo-label: the greedy answer's UNSAFE policies, else the most-UNSAFE-sampled
    policies (at least min_votes UNSAFE samples; ties all kept), else None."""
    flagged = sorted(q for q, v in verdicts.items() if v == "UNSAFE")
    if flagged or not unsafe_samples:
        return flagged or None
    top = max(unsafe_samples.values())
    return sorted(q for q, n in unsafe_samples.items() if n == top) if top >= max(min_votes, 1) else None


def label_items(guard, items: list[dict], k: int, temperature: float, seed: int,
                min_votes: int = 1) -> tuple[list[dict], Counter]:
    """Items the guard names policies for (source `pseudo:<source>`), and how each was decided."""
    res = guard.classify([{"content": it["content"]} for it in items], progress=True)
    unflagged = [i for i, r in enumerate(res) if r["verdict"] != "UNSAFE"]
    votes: dict[int, dict] = {}
    if unflagged and k:
        sampled = guard.sample([{"content": items[i]["content"]} for i in unflagged], k, temperature, 1.0, seed)
        votes = {i: {q: sum(x["verdict"] == "UNSAFE" for x in ss) for q, ss in r["samples"].items()}
                 for i, r in zip(unflagged, sampled)}
    out, stats = [], Counter()
    for i, (it, r) in enumerate(zip(items, res)):
        labels = policies_of(r["verdicts"], votes.get(i), min_votes)
        stats["greedy" if r["verdict"] == "UNSAFE" else ("sampled" if labels else "left_out")] += 1
        if labels:
            out.append({**it, "labels": labels, "source": PSEUDO + it["source"]})
    return out, stats


def pseudo_label(p: Params, items: list[dict]) -> tuple[list[dict], Counter]:
    """data.pseudo_label: the adapter (trained with these params' prompt) labels the open items."""
    from .guard import load_guard

    pl = p.data.pseudo_label
    if not Path(pl.adapter).exists():
        raise ParamsError(f"{p.source}: `data.pseudo_label.adapter` is {pl.adapter!r}, which does not exist; "
                          "point it at a trained adapter folder (e.g. a copy of models/adapter) or set it to null")
    items = items[: pl.max_items] if pl.max_items else items
    guard = load_guard(p.model, adapter=pl.adapter, params=p, max_new_tokens=p.max_new_tokens,
                       batch_size=p.eval_batch_size, backend="auto")  # auto: it samples
    return label_items(guard, items, pl.k, pl.temperature, p.seed, pl.min_votes)
