"""The base model's licence, inherited by every export: model card, GGUF metadata, Modelfile, files.

Where it comes from (the first found wins):
1. the base folder's own model card: README.md front matter `license`, `license_name`,
   `license_link`, else a `license` key in its config.json. For a Hub id, the copy in the local
   Hugging Face cache (never fetched: exports run offline);
2. KNOWN below, by model id or folder name, for bases without a local card: the embedded SmolLM2
   (converted from a GGUF, so its folder has no card) and Meta's Llama 3.x ids and their mirrors
   (unsloth/Llama-3.2-3B-Instruct);
3. otherwise unknown: the card says so and export warns. Nothing is guessed.

Llama 3.x community licences (e.g. https://www.llama.com/llama3_2/license/, section 1.b) ask whoever
distributes a derivative to (i) give a copy of the agreement with it, (ii) display "Built with
Llama", (iii) begin the derived model's name with "Llama", and (iv) keep a "Notice" text file with
an attribution line. So for a Llama base: published_name() begins with "Llama", the card carries the
licence and "Built with Llama", and write_files() puts LICENSE, USE_POLICY.md and NOTICE beside the
weights. Meta's licence text cannot be downloaded offline: it is copied from the base folder when
there, else LICENSE is a note naming the licence and its URL that says the text must be added.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .config import Params
from .io import write_text

# files of a base folder that travel with its derivatives, copied as they are
CARRIED = ("LICENSE", "LICENSE.txt", "LICENSE.md", "USE_POLICY.md", "NOTICE", "NOTICE.txt")


def _llama(v: str) -> dict:
    slug = "llama3" if v == "3" else f"llama{v.replace('.', '_')}"
    title = "Meta Llama 3" if v == "3" else f"Llama {v}"
    return dict(id=f"llama{v}", name=f"{title} Community License Agreement",
                link=f"https://www.llama.com/{slug}/license/", policy=f"https://www.llama.com/{slug}/use-policy/",
                llama=v, notice=f"{title} is licensed under the {title} Community License, "
                                "Copyright © Meta Platforms, Inc. All Rights Reserved.")


# (regex searched in the model's name: a Hub id's or folder's last part, case-insensitive) -> licence; first match wins.
# Only bases guardrsft ships presets for or converts itself; anything else needs its own card.
KNOWN = [
    (r"smollm2", dict(id="apache-2.0", name="Apache License 2.0", link="https://www.apache.org/licenses/LICENSE-2.0")),
    (r"llama[-_ ]?3\.3", _llama("3.3")),
    (r"llama[-_ ]?3\.2", _llama("3.2")),
    (r"llama[-_ ]?3\.1", _llama("3.1")),
    (r"llama[-_ ]?3(?![.\d])", _llama("3")),
]


@dataclass
class Licence:
    id: Optional[str]  # the Hub's licence id (apache-2.0, llama3.2, other...); None: unknown
    source: str  # where it was found, said in the card and the log
    name: Optional[str] = None
    link: Optional[str] = None
    llama: Optional[str] = None  # "3.2" when a Llama 3.x licence's redistribution terms apply
    policy: Optional[str] = None  # the acceptable use policy's URL (Llama)
    notice: Optional[str] = None  # the attribution line the NOTICE file must hold (Llama)
    files: dict = field(default_factory=dict)  # name -> path of CARRIED files found with the base


def _base_files(model: str) -> dict[str, Path]:
    """README.md, config.json and CARRIED files of the base: its folder, or a Hub id's local cache."""
    names = ("README.md", "config.json", *CARRIED)
    if model.startswith("embedded:"):
        return {}
    folder = Path(model).expanduser()
    if folder.is_dir():
        return {n: folder / n for n in names if (folder / n).is_file()}
    if model.count("/") != 1:
        return {}
    from huggingface_hub import try_to_load_from_cache

    found = {n: try_to_load_from_cache(model, n) for n in names}  # local only: no request is made
    return {n: Path(f) for n, f in found.items() if isinstance(f, str)}


def base_licence(model: str) -> Licence:
    """The licence of base `model` (Params.model: `embedded:NAME`, a folder or a Hub id)."""
    files = _base_files(model)
    carried = {n: f for n, f in files.items() if n in CARRIED}
    meta, source = {}, None
    if "README.md" in files:
        from huggingface_hub.repocard import metadata_load

        meta = {k: v for k, v in (metadata_load(files["README.md"]) or {}).items()
                if k in ("license", "license_name", "license_link") and v}
        source = f"{files['README.md']} (the base model's card)" if meta.get("license") else None
    if not source and "config.json" in files:
        lic = json.loads(files["config.json"].read_text()).get("license")
        meta, source = ({"license": lic}, f"{files['config.json']}") if isinstance(lic, str) and lic else ({}, None)
    if source:
        text = f"{meta['license']} {meta.get('license_name', '')}"
        known = next((k for pat, k in KNOWN if k.get("llama") and re.search(pat, text, re.I)), {})
        return Licence(meta["license"], source, meta.get("license_name") or known.get("name"),
                       meta.get("license_link") or known.get("link"), known.get("llama"), known.get("policy"),
                       known.get("notice"), carried)
    name = Path(model.split(":", 1)[-1].rstrip("/")).name  # not the whole path: /work/llama3.2-runs/qwen
    for pat, k in KNOWN:
        if re.search(pat, name, re.I):
            return Licence(source=f"guardrsft.licensing.KNOWN ({pat!r} matches {model})", files=carried, **k)
    return Licence(None, f"unknown: no `license` in a local card or config of {model}, and not in "
                         "guardrsft.licensing.KNOWN", files=carried)


def published_name(p: Params, lic: Licence) -> str:
    """The model's name in its card, GGUF metadata and Ollama: export.name, prefixed with the
    base's name when a Llama licence asks derived names to begin with "Llama"."""
    name = p.export.name
    if not lic.llama or name.lower().startswith("llama"):
        return name
    stem = Path(p.model.split(":", 1)[-1].rstrip("/")).name
    return f"{stem if stem.lower().startswith('llama') else 'Llama-' + lic.llama}-{name}"


def hub_name_problem(p: Params, lic: Licence) -> Optional[str]:
    """Why export.hub_repo cannot carry this model (a Llama derivative's name must begin with Llama)."""
    if lic.llama and p.export.push_to_hub and p.export.hub_repo and \
            not p.export.hub_repo.split("/")[-1].lower().startswith("llama"):
        owner = p.export.hub_repo.split("/")[0]
        return (f"{p.source}: `export.hub_repo` is {p.export.hub_repo!r}, but the base {p.model} is under the "
                f"{lic.name}, which asks that a derived model's name begin with \"Llama\". Set export.hub_repo "
                f"to e.g. {owner}/{published_name(p, lic)}")
    return None


def licence_text(lic: Licence, model: str) -> Optional[str]:
    """What LICENSE holds: the base's own file, else (a known licence) a note naming it."""
    for n in ("LICENSE", "LICENSE.txt", "LICENSE.md"):
        if n in lic.files:
            return lic.files[n].read_text(errors="replace")
    if not lic.id:
        return None
    where = f"the full text of the {lic.name or lic.id}" + (f" ({lic.link})" if lic.link else "")
    return (f"This model is derived from {model} and is distributed under the {lic.name or lic.id} "
            f"(licence id `{lic.id}`{f': {lic.link}' if lic.link else ''}).\n\n"
            f"{where} must accompany this model wherever it is distributed. guardrsft could not copy it: the "
            "base model folder has no LICENSE file and exports run offline. Download it from the link above "
            "and save it as this file before sharing the model.\n")


def write_files(lic: Licence, model: str, folder: str | Path) -> list[str]:
    """LICENSE (and for Llama USE_POLICY.md and NOTICE) into `folder`; returns the names written."""
    folder = Path(folder)
    written = []
    for n, src in lic.files.items():
        shutil.copyfile(src, folder / n)
        written.append(n)
    text = licence_text(lic, model)
    if text is not None and not any(n.startswith("LICENSE") for n in written):
        write_text(folder / "LICENSE", text)
        written.append("LICENSE")
    if lic.llama and "USE_POLICY.md" not in written:
        write_text(folder / "USE_POLICY.md", f"# Acceptable use\n\nUse of this model must comply with the "
                                             f"{lic.name.replace('Community License Agreement', 'Acceptable Use Policy')}"
                                             f": {lic.policy}\n")
        written.append("USE_POLICY.md")
    if lic.llama and not {"NOTICE", "NOTICE.txt"} & set(written):
        write_text(folder / "NOTICE", lic.notice + "\n")
        written.append("NOTICE")
    return sorted(written)
