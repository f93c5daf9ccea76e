"""Typed, validated view of params.yaml.

Every stage loads the *whole* file through `load_params`, so a misspelled key
(`dvc exp run -S lr_typo=1` silently adds one) fails every stage with its name.
Presets are resolved here, in code: a `null` in a stage section means "take the
preset's value"; anything set explicitly wins.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

# the notebook's six: params.yaml's default taxonomy (bench scripts built on it import this).
# Policies themselves are data: params.yaml `policies` is the only list (docs/POLICIES.md).
POLICY_IDS = ("hate_speech", "violence", "self_harm", "sexual_minors", "harassment", "illegal")
# A policy id names trace keys (sample_{idx}_{id}), metric keys, CSV rows and the joint answer's
# `<id>: SAFE|UNSAFE` lines: lowercase words joined by single underscores, so no id is another id
# plus `_` (the verdict-line parser reads `pii_` after `pii` as decoration) and all survive YAML,
# MLflow and file names unchanged.
POLICY_ID_RULE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
POLICY_ID_MAX = 40
# a joint answer ends with `Classification: ...` after `Reasoning:`: ids equal to those would be
# read as the final verdict line
RESERVED_POLICY_IDS = ("classification", "reasoning")
MAX_POLICIES = 32  # every policy is a verdict line of every joint answer (and a prompt per item in per_policy)
SEVERITIES = ("low", "medium", "high", "critical")
POLICY_FORM_KEYS = ("definition", "examples", "severity")
# evaluation metrics (metrics/eval*.json, higher is better) export.adapter: auto may compare on
AUTO_METRICS = ("exact_match", "binary_accuracy", "harmful_f1", "macro_f1")
# prompt.mode -> the placeholders prompt.template must contain
# (joint: {policies} lists `- id: definition` lines, {policy_names} only the ids; one of them is needed)
PROMPT_MODES = {"per_policy": ("{policy}", "{definition}", "{content}"), "joint": ("{content}",)}


class ParamsError(ValueError):
    """A user mistake in params.yaml; the message names the file, key and fix."""


# --------------------------------------------------------------------------- presets
# One row per preset. Only hardware-dependent knobs live here; everything else is
# a plain param. `model` may be a Hub id, a local HF folder, or "embedded:smollm2".
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(
        model="embedded:smollm2-135m-instruct", device="cpu", dtype="float32", load_in_4bit=False,
        batch_size=4, grad_accum=1, max_length=384, attn_impl="sdpa", gradient_checkpointing=False,
        # one epoch of joint examples, LoRA in the top 12 of 30 layers (backpropagation stops there): the
        # recipe that learned within ~4 minutes of 2-core training (docs/BENCHMARKS.md, "The embedded run")
        max_steps=-1, lora_layers=12, eval_max_samples=None, eval_batch_size=40, max_new_tokens=120,
        padding_free=False,
        # HS-DPO off by default on 2 cores (k samples per item); the tiny test turns it on
        hsdpo_enabled=False, hsdpo_max_items=8, hsdpo_max_steps=4,
    ),
    "t4": dict(
        # unsloth's pre-quantized copy of the same weights, as the notebook used
        model="unsloth/Llama-3.2-3B-Instruct", device="cuda", dtype="float16", load_in_4bit=True,
        batch_size=2, grad_accum=4, max_length=2048, attn_impl="sdpa", gradient_checkpointing=True,
        max_steps=-1, lora_layers=None, eval_max_samples=None, eval_batch_size=32, max_new_tokens=512,
        # T4: no bf16 and no FlashAttention; SDPA with padded batches is the safe path
        padding_free=False,
        hsdpo_enabled=True, hsdpo_max_items=None, hsdpo_max_steps=-1,
    ),
    "a100": dict(
        model="meta-llama/Llama-3.1-8B-Instruct", device="cuda", dtype="bfloat16", load_in_4bit=False,
        batch_size=4, grad_accum=2, max_length=2048, attn_impl="sdpa", gradient_checkpointing=True,
        max_steps=-1, lora_layers=None, eval_max_samples=None, eval_batch_size=64, max_new_tokens=512,
        # each batch flattened into one row (no pad compute), attention kept per example via position_ids
        padding_free=True,
        hsdpo_enabled=True, hsdpo_max_items=None, hsdpo_max_steps=-1,
    ),
}


# --------------------------------------------------------------------------- sections
@dataclass
class PromptParams:
    system: str
    template: str
    # bump when the wording changes: it keys trace and prediction caches
    version: int = 1
    # per_policy: one prompt and answer per (content, policy), as GuardReasoner ({policy},
    # {definition}, {content}); joint: one prompt lists every policy ({policies}, {content}) and
    # the answer reasons once, then gives one `<policy>: SAFE|UNSAFE` line per policy
    mode: str = "per_policy"


@dataclass
class PrepareParams:
    val_fraction: float = 0.1
    test_fraction: float = 0.1


@dataclass
class SourceParams:
    """One declared training-data source of the build_data stage (fields: guardrsft.sources)."""
    name: str
    path: Optional[str] = None  # a local file or folder (relative: from the repository root)
    hub: Optional[str] = None  # or a `datasets` Hub id (then split, config, revision)
    split: str = "train"
    config: Optional[str] = None
    revision: Optional[str] = None  # a Hub commit or tag; pin it, the stage's params record it
    format: str = "table"  # table (rows with a text column) | notebook (training_data.json)
    text_field: Optional[str] = None
    response_field: Optional[str] = None  # an AI response judged with its request
    label_field: Optional[str] = None  # the column of the source's label (a value or a list of values)
    labels: dict = field(default_factory=dict)  # source label -> policy ids ([]: benign), null (skip) or `keywords`
    cap: float = 1.0  # data.max_items: the share of its class's budget (harmful / benign) it may fill
    keep_all: bool = False  # data.max_items: benign items taken whole first (hard negatives)
    max_items: Optional[int] = None  # a seeded sample of this many rows (null: all)


@dataclass
class PseudoLabelParams:
    """Self-training: a trained adapter names the policies of harmful items the mapping left open."""
    adapter: Optional[str] = None  # null: off
    k: int = 4  # samples per policy for items the greedy answer flags under no policy (0: greedy only)
    min_votes: int = 2  # UNSAFE samples a policy needs
    temperature: float = 1.0
    max_items: Optional[int] = None  # null: all open items


@dataclass
class DataParams:
    """build_data: the training set from declared sources (guardrsft.sources); [] = the shipped sample set."""
    sources: list[SourceParams] = field(default_factory=list)
    keywords: dict = field(default_factory=dict)  # policy -> regex, for `keywords` and `<policy>?` mappings
    exclude: list = field(default_factory=list)  # evaluate.benchmark_sets names never trained on
    max_items: Optional[int] = None  # null: every mapped item; N: a balanced selection of N
    harmful_share: float = 0.5  # with max_items
    pseudo_label: PseudoLabelParams = field(default_factory=PseudoLabelParams)


@dataclass
class OpenAITeacherParams:
    base_url: Optional[str] = None  # null: OpenAI; or a vLLM / Ollama / llama.cpp server's /v1
    # several OpenAI-compatible servers serving the same model (e.g. one vLLM per GPU): requests
    # are spread over them with `concurrency` in flight per server; non-empty: base_url unused
    base_urls: list = field(default_factory=list)
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"  # the key itself is only ever read from the environment
    give_gold_label: bool = True  # rationalization, as GuardReasoner's synthesis did
    temperature: float = 0.7
    max_tokens: int = 512
    concurrency: int = 8
    max_retries: int = 5  # per request, on 429 / 5xx / timeouts, honoring Retry-After
    max_attempts: int = 3  # fresh samples when an answer fails validation
    timeout_s: float = 60.0
    min_chars: int = 40
    max_chars: int = 4000
    wall_time_s: float = 0.0  # 0: no bound
    max_usd: Optional[float] = None
    usd_per_1m_input: float = 0.15
    usd_per_1m_output: float = 0.60
    batch_discount: float = 0.5  # the Batch API's price relative to synchronous calls
    batch_poll_s: float = 30.0
    batch_max_lines: int = 50000  # the Batch API's limit per input file (and 200 MB)


@dataclass
class TracesParams:
    teacher: str = "template"  # template (offline) | openai | batch | import
    import_source: Optional[str] = None  # teacher `import`: a local file/folder or a `datasets` id
    openai: OpenAITeacherParams = field(default_factory=OpenAITeacherParams)


@dataclass
class TrainParams:
    epochs: float = 3.0
    max_steps: Optional[int] = None  # null: preset; -1: run `epochs`; >0: notebook's quick test
    batch_size: Optional[int] = None
    grad_accum: Optional[int] = None
    max_length: Optional[int] = None
    # lora: a LoRA adapter on the frozen base; full: every weight trained (no peft), the stage's
    # output is a whole model folder (GuardReasoner's recipe; a 135M base fits many times on a GPU)
    method: str = "lora"
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    # null: the preset's (cpu: 12, GPU presets: every layer); N: LoRA only in the top N layers, so
    # backpropagation stops there (1.6x the tokens/s of all 30 layers on 2 cores at N=12)
    lora_layers: Optional[int] = None
    target_modules: list = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    warmup_ratio: float = 0.05
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.01
    logging_steps: int = 1
    save_steps: int = 10
    # speed knobs (null: the preset's choice). padding_free flattens each batch into one row
    # without pad tokens; attention stays within each example, the steps see the same examples.
    padding_free: Optional[bool] = None
    gradient_checkpointing: Optional[bool] = None
    liger: Optional[bool] = None  # null: on when CUDA and liger-kernel are there; true: required
    torch_compile: bool = False
    # several GPUs: `accelerate launch` with configs/accelerate/<distributed>.yaml (docs/SCALE.md)
    distributed: str = "none"  # none | ddp | fsdp | deepspeed_zero3
    num_processes: Optional[int] = None  # null: every visible GPU (distributed != none)
    # class balance of the examples (guardrsft.balance): at most this many SAFE pairs per item
    # (-1: all), then UNSAFE pairs repeated until they are this share (0: none added)
    safe_per_item: int = -1
    unsafe_share: float = 0.0
    balance_per_policy: bool = False  # the share within each policy's examples, not over all of them


@dataclass
class BenchmarkParams:
    """One evaluation set beside the test split; docs/EVALUATION.md explains each field."""
    path: str  # relative paths: from the repository root
    format: str  # notebook | guardreasoner | table
    text_field: Optional[str] = None  # table: the column with the content
    response_field: Optional[str] = None  # table: the column with an AI response (response task)
    id_field: Optional[str] = None  # table: a column with a stable id (null: the row number)
    # table: policy -> columns; a positive value in any of them means the policy is violated
    policy_columns: dict = field(default_factory=dict)
    # table: columns whose positive value makes an item harmful (null: every policy_columns column)
    harmful_columns: Optional[list] = None
    positive_values: list = field(default_factory=lambda: [1, "true", "yes", "harmful", "unsafe", "toxic"])
    negative_values: list = field(default_factory=lambda: [0, "false", "no", "safe", "unharmful", "benign"])
    task: Optional[str] = None  # table: prompt | response (null: response when response_field is set)
    max_samples: Optional[int] = None  # null: the preset's evaluate max_samples; 0: all


@dataclass
class EvaluateParams:
    max_samples: Optional[int] = None  # null: preset; 0: whole test split
    batch_size: Optional[int] = None
    max_new_tokens: Optional[int] = None
    processes: Optional[int] = None  # items sharded over this many processes (null: one per visible GPU)
    backend: str = "auto"  # auto: the slot engine on CUDA, transformers on CPU | vllm (greedy; guardrsft.vllm_backend)
    benchmarks: list = field(default_factory=list)  # names from benchmark_sets to evaluate too
    # per-policy decision thresholds on P(UNSAFE) at the verdict word (guardrsft.scores):
    # null: the verdict as written | auto: tuned on the validation split after train_rsft |
    # {policy: float}: fixed. Stored in the model's guardrsft.json; verdict = score >= threshold
    thresholds: Any = None
    threshold_objective: str = "exact_match"  # what auto maximizes on val: exact_match | f1 (per policy)
    benchmark_sets: dict[str, BenchmarkParams] = field(default_factory=dict)


@dataclass
class HsdpoParams:
    """Hard-sample DPO after R-SFT (GuardReasoner's second stage; docs/HSDPO.md)."""
    enabled: Optional[bool] = None  # null: preset (t4, a100: on; cpu: off)
    k: int = 4  # sampled answers per (training item, policy)
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: Optional[int] = None  # null: evaluate's (preset)
    max_items: Optional[int] = None  # training items mined (null: preset; 0: all)
    weighting: str = "hardness"  # hardness: pair weight from the share of wrong samples | uniform
    balance: bool = True  # each gold class (SAFE / UNSAFE) gets half of the total pair weight (measured: docs/HSDPO.md)
    beta: float = 0.1
    lr: float = 5.0e-6
    epochs: float = 1.0
    max_steps: Optional[int] = None  # null: preset; -1: epochs
    batch_size: Optional[int] = None  # null: train's (preset)
    grad_accum: Optional[int] = None


@dataclass
class ExportParams:
    # which adapter is merged and shipped: auto = the HS-DPO one when the DPO branch ran
    # (hsdpo.enabled, GuardReasoner's final model) and scored at least as well as R-SFT on
    # auto_metric in the two evaluations, else the R-SFT one | rsft | hsdpo
    adapter: str = "auto"
    # why a comparison: HS-DPO can make a model worse (tenth quality run: -9 F1 at hsdpo.lr 5e-5,
    # answers without a verdict line at 2e-4); parse failures count as wrong in every metric here
    auto_metric: str = "exact_match"
    dtype: str = "float16"  # the merged model's weights (always merged into a 16/32-bit base)
    name: str = "guardrsft"  # GGUF file names and the suggested Ollama model name
    gguf_types: list = field(default_factory=lambda: ["Q8_0"])  # of F32, F16, BF16, Q8_0; []: none
    modelfile_type: str = "Q8_0"  # the GGUF the Ollama Modelfile loads
    check_prompts: int = 4  # round-trip probe prompts per GGUF; 0: no check
    check_max_logit_diff: float = 0.25  # F32/F16: max |delta logit| vs the merged model
    check_min_agreement: float = 0.75  # every type: share of probe verdicts equal to the merged model's
    push_to_hub: bool = False  # upload merged model, GGUFs and Modelfile (needs HF_TOKEN and a network)
    hub_repo: Optional[str] = None  # `owner/name` on the Hugging Face Hub
    hub_private: bool = True


@dataclass
class BaselineParams:
    exact_match: float = 0.57


@dataclass
class MlflowParams:
    tracking_uri: Optional[str] = None  # null: MLFLOW_TRACKING_URI, else sqlite in the repo
    experiment: str = "guardrsft"
    enabled: bool = True
    log_adapter: bool = True  # the LoRA adapter as an artifact of the pipeline's parent run


@dataclass
class Params:
    preset: str
    lr: float
    seed: int
    policies: dict
    prompt: PromptParams
    prepare: PrepareParams
    traces: TracesParams
    train: TrainParams
    evaluate: EvaluateParams
    hsdpo: HsdpoParams
    export: ExportParams
    baseline: BaselineParams
    mlflow: MlflowParams
    data: DataParams = field(default_factory=DataParams)
    # the base model: null = the preset's; GUARDRSFT_BASE_MODEL overrides both (recorded as
    # model_source in metrics/params/<stage>.json, so DVC reruns the stages that load it)
    base_model: Optional[str] = None
    source: str = "params.yaml"
    # not a params.yaml key: each policy's optional `examples` and `severity` (policies.<id> in its
    # mapping form); `policies` itself is always id -> definition text (what prompts and keys use)
    policy_info: dict = field(default_factory=dict)

    # ---- preset resolution: explicit value > preset value
    def _pick(self, explicit, key):
        return PRESETS[self.preset][key] if explicit is None else explicit

    @property
    def hw(self) -> dict:
        return PRESETS[self.preset]

    @property
    def model(self) -> str:
        return os.environ.get("GUARDRSFT_BASE_MODEL") or self.base_model or self.hw["model"]

    @property
    def model_source(self) -> str:
        """Where `model` comes from: env GUARDRSFT_BASE_MODEL, params base_model, or the preset."""
        if os.environ.get("GUARDRSFT_BASE_MODEL"):
            return "env GUARDRSFT_BASE_MODEL"
        return "params base_model" if self.base_model else f"preset {self.preset}"

    @property
    def batch_size(self) -> int:
        return self._pick(self.train.batch_size, "batch_size")

    @property
    def grad_accum(self) -> int:
        return self._pick(self.train.grad_accum, "grad_accum")

    @property
    def max_length(self) -> int:
        return self._pick(self.train.max_length, "max_length")

    @property
    def padding_free(self) -> bool:
        return self._pick(self.train.padding_free, "padding_free")

    @property
    def gradient_checkpointing(self) -> bool:
        return self._pick(self.train.gradient_checkpointing, "gradient_checkpointing")

    @property
    def max_steps(self) -> int:
        return self._pick(self.train.max_steps, "max_steps")

    @property
    def eval_max_samples(self) -> Optional[int]:
        n = self._pick(self.evaluate.max_samples, "eval_max_samples")
        return None if not n else n

    @property
    def eval_batch_size(self) -> int:
        return self._pick(self.evaluate.batch_size, "eval_batch_size")

    @property
    def max_new_tokens(self) -> int:
        return self._pick(self.evaluate.max_new_tokens, "max_new_tokens")

    @property
    def hsdpo_enabled(self) -> bool:
        # the GPU presets' DPO branch pairs per-policy answers: off by default in joint mode
        if self.hsdpo.enabled is None and self.prompt.mode != "per_policy":
            return False
        return self._pick(self.hsdpo.enabled, "hsdpo_enabled")

    @property
    def lora_layers(self) -> Optional[int]:
        return self._pick(self.train.lora_layers, "lora_layers")

    @property
    def hsdpo_max_items(self) -> Optional[int]:
        n = self._pick(self.hsdpo.max_items, "hsdpo_max_items")
        return None if not n else n

    @property
    def hsdpo_max_steps(self) -> int:
        return self._pick(self.hsdpo.max_steps, "hsdpo_max_steps")

    def resolved(self) -> dict:
        """Flat dict of every effective value (logged to MLflow and metrics)."""
        d = dataclasses.asdict(self)
        d.pop("policy_info")  # documentation and serving metadata: not a training input
        out = flatten(d)
        out.pop("source", None)
        for k in ("model", "model_source", "batch_size", "grad_accum", "max_length", "max_steps", "padding_free",
                  "gradient_checkpointing", "eval_max_samples", "eval_batch_size", "max_new_tokens",
                  "hsdpo_enabled", "hsdpo_max_items", "hsdpo_max_steps", "lora_layers"):
            out[f"resolved.{k}"] = getattr(self, k)
        for k in ("device", "dtype", "load_in_4bit", "attn_impl"):
            out[f"resolved.{k}"] = self.hw[k]
        return out


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------- loading
DERIVED = ("source", "policy_info")  # Params fields set by load_params, never read from the file


def _coerce(value: Any, tp: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], where, source)
    bad = ParamsError(f"{source}: `{where}` must be {getattr(tp, '__name__', tp)}, got {value!r}. "
                      f"Fix the value in {source} (or the -S override).")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        # DVC writes `lr: 1e-05`, which YAML 1.1 (PyYAML) reads as a *string*
        if isinstance(value, bool):
            raise bad
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if tp is list or origin is list:
        if isinstance(value, list):
            args = typing.get_args(tp)
            if args and dataclasses.is_dataclass(args[0]):  # sections in a list (data.sources)
                return [_build(args[0], v, f"{where}[{i}]", source) for i, v in enumerate(value)]
            return value
        raise bad
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            args = typing.get_args(tp)
            if len(args) == 2 and dataclasses.is_dataclass(args[1]):  # name -> section (benchmark_sets)
                return {k: _build(args[1], v, f"{where}.{k}", source) for k, v in value.items()}
            return value
        raise bad
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, source)
    return value


def _build(cls, raw: Any, where: str, source: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: `{where}` must be a mapping, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in DERIVED]
    for key in raw:
        if key not in names:
            full = f"{where}.{key}" if where else key
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5) or \
                [n for n in names if str(key).startswith(n) or n.startswith(str(key))][:1]
            hint = f" Did you mean `{(where + '.') if where else ''}{close[0]}`?" if close else ""
            raise ParamsError(f"{source}: unknown key `{full}`.{hint} Known keys"
                              f"{' in ' + where if where else ''}: {', '.join(names)}. "
                              f"Delete the `{key}:` line{' under `' + where + ':`' if where else ''} in {source} "
                              f"or rename it. A failed `dvc exp run -S +{full}=...` leaves the key there and every "
                              f"later `dvc repro` stops here until it is removed: undo it by deleting that line "
                              f"(or `git checkout -- {source}`, which also drops your other uncommitted edits).")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in DERIVED:
            continue
        full = f"{where}.{f.name}" if where else f.name
        if f.name in raw:
            kwargs[f.name] = _coerce(raw[f.name], hints[f.name], full, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[f.name]):
                kwargs[f.name] = _build(hints[f.name], {}, full, source)
            else:
                raise ParamsError(f"{source}: missing required key `{full}`.")
    return cls(**kwargs)


def _check_ranges(p: Params) -> None:
    s = p.source

    def need(ok: bool, key: str, what: str):
        if not ok:
            raise ParamsError(f"{s}: `{key}` {what}.")

    need(p.preset in PRESETS, "preset", f"must be one of {', '.join(PRESETS)} (got {p.preset!r})")
    need(p.base_model is None or p.base_model.strip() != "", "base_model",
         "must be null (the preset's model) or a Hub id, local HF folder or embedded:<name>")
    need(0 < p.lr < 1, "lr", f"must be in (0, 1) (got {p.lr})")
    need(p.prompt.mode in PROMPT_MODES, "prompt.mode", f"must be one of {', '.join(PROMPT_MODES)} "
         f"(got {p.prompt.mode!r})")
    for ph in PROMPT_MODES.get(p.prompt.mode, ()):
        need(ph in p.prompt.template, "prompt.template", f"must contain the placeholder {ph} "
             f"(prompt.mode {p.prompt.mode})")
    need(p.prompt.mode != "joint" or "{policies}" in p.prompt.template or "{policy_names}" in p.prompt.template,
         "prompt.template", "must contain {policies} (ids and definitions) or {policy_names} (ids) in prompt.mode joint")
    need(p.prompt.mode == "per_policy" or not p.hsdpo_enabled, "hsdpo.enabled",
         "must be false with prompt.mode joint (hard-sample mining pairs per-policy answers); "
         "set hsdpo.enabled: false or prompt.mode: per_policy")
    pr = p.prepare
    need(0 <= pr.val_fraction < 0.5, "prepare.val_fraction", "must be in [0, 0.5)")
    need(0 < pr.test_fraction < 0.5, "prepare.test_fraction", "must be in (0, 0.5)")
    need(p.traces.teacher in ("template", "openai", "batch", "import"), "traces.teacher",
         "must be `template` (offline), `openai` (synchronous calls), `batch` (the OpenAI Batch API) or `import`")
    o = p.traces.openai
    need(o.concurrency > 0 and o.max_attempts > 0 and o.max_retries >= 0 and o.max_tokens > 0,
         "traces.openai.concurrency/max_attempts/max_tokens", "must be > 0 (max_retries >= 0)")
    need(0 < o.batch_max_lines <= 50000 and o.batch_poll_s > 0, "traces.openai.batch_max_lines/batch_poll_s",
         "must be in (0, 50000] and > 0")
    need(0 <= o.temperature <= 2, "traces.openai.temperature", "must be in [0, 2]")
    need(o.max_usd is None or o.max_usd > 0, "traces.openai.max_usd", "must be null (no cap) or > 0")
    need(0 <= o.min_chars < o.max_chars, "traces.openai.min_chars/max_chars", "must satisfy 0 <= min < max")
    need("KEY" in o.api_key_env.upper() or "TOKEN" in o.api_key_env.upper(), "traces.openai.api_key_env",
         "must name an environment variable (e.g. OPENAI_API_KEY), never the key itself")
    t = p.train
    need(t.epochs > 0, "train.epochs", "must be > 0")
    need(t.max_steps is None or t.max_steps == -1 or t.max_steps > 0, "train.max_steps",
         "must be null (preset), -1 (use epochs) or > 0")
    for k in ("batch_size", "grad_accum", "max_length"):
        v = getattr(t, k)
        need(v is None or v > 0, f"train.{k}", "must be null (preset) or > 0")
    need(t.method in TRAIN_METHODS, "train.method", f"must be lora (an adapter) or full (every weight), "
         f"got {t.method!r}")
    need(t.method != "full" or not p.hw["load_in_4bit"], "train.method",
         f"is full, but preset `{p.preset}` loads the base in 4 bits (QLoRA), which cannot be trained whole: "
         "set train.method: lora, or a preset that loads 16-bit weights (cpu, a100)")
    need(t.method != "full" or not p.hsdpo_enabled, "train.method",
         "is full, but HS-DPO trains a LoRA adapter on top of R-SFT's: set hsdpo.enabled: false or train.method: lora")
    need(t.lora_r > 0 and t.lora_alpha > 0, "train.lora_r/lora_alpha", "must be > 0")
    need(0 <= t.lora_dropout < 1, "train.lora_dropout", "must be in [0, 1)")
    need(t.lora_layers is None or t.lora_layers > 0, "train.lora_layers", "must be null (every layer) or > 0")
    need(0 <= t.warmup_ratio < 1, "train.warmup_ratio", "must be in [0, 1)")
    need(t.lr_scheduler in ("cosine", "linear", "constant", "constant_with_warmup"),
         "train.lr_scheduler", "must be cosine, linear, constant or constant_with_warmup")
    need(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    need(t.logging_steps > 0 and t.save_steps > 0, "train.logging_steps/save_steps", "must be > 0")
    need(bool(t.target_modules) and all(isinstance(m, str) for m in t.target_modules),
         "train.target_modules", "must be a non-empty list of module names")
    need(t.distributed in ("none", "ddp", "fsdp", "deepspeed_zero3"), "train.distributed",
         f"must be none, ddp, fsdp or deepspeed_zero3 (got {t.distributed!r})")
    need(t.num_processes is None or t.num_processes > 0, "train.num_processes", "must be null (every GPU) or > 0")
    need(isinstance(t.safe_per_item, int) and not isinstance(t.safe_per_item, bool)
         and (t.safe_per_item == -1 or t.safe_per_item >= 1), "train.safe_per_item",
         f"must be -1 (keep every SAFE pair) or >= 1 SAFE pairs per item (0 would leave benign items out; "
         f"got {t.safe_per_item!r})")
    need(isinstance(t.unsafe_share, (int, float)) and not isinstance(t.unsafe_share, bool)
         and 0 <= t.unsafe_share < 1, "train.unsafe_share",
         f"must be in [0, 1) (0: no oversampling; got {t.unsafe_share!r})")
    need(all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in o.base_urls),
         "traces.openai.base_urls", "must be a list of http(s) URLs, e.g. [http://127.0.0.1:8000/v1]")
    h = p.hsdpo
    need(h.k >= 2, "hsdpo.k", "must be >= 2 (hardness needs samples that can disagree)")
    need(0 < h.temperature <= 2, "hsdpo.temperature", "must be in (0, 2] (sampling; 0 would repeat one answer)")
    need(0 < h.top_p <= 1, "hsdpo.top_p", "must be in (0, 1]")
    need(h.max_new_tokens is None or h.max_new_tokens > 0, "hsdpo.max_new_tokens", "must be null or > 0")
    need(h.max_items is None or h.max_items >= 0, "hsdpo.max_items", "must be null (preset), 0 (all) or > 0")
    need(h.weighting in ("hardness", "uniform"), "hsdpo.weighting", "must be hardness or uniform")
    need(h.beta > 0, "hsdpo.beta", "must be > 0")
    need(0 < h.lr < 1, "hsdpo.lr", "must be in (0, 1)")
    need(h.epochs > 0, "hsdpo.epochs", "must be > 0")
    need(h.max_steps is None or h.max_steps == -1 or h.max_steps > 0, "hsdpo.max_steps",
         "must be null (preset), -1 (use epochs) or > 0")
    for k in ("batch_size", "grad_accum"):
        v = getattr(h, k)
        need(v is None or v > 0, f"hsdpo.{k}", "must be null or > 0")
    e = p.evaluate
    need(e.processes is None or e.processes > 0, "evaluate.processes", "must be null (one per GPU) or > 0")
    need(e.max_samples is None or e.max_samples >= 0, "evaluate.max_samples", "must be null, 0 (all) or > 0")
    need(e.batch_size is None or e.batch_size > 0, "evaluate.batch_size", "must be null or > 0")
    need(e.max_new_tokens is None or e.max_new_tokens > 0, "evaluate.max_new_tokens", "must be null or > 0")
    need(e.backend in ("auto", "vllm"), "evaluate.backend",
         f"must be auto (the slot engine on CUDA, transformers on CPU) or vllm (got {e.backend!r})")
    _check_thresholds(p, need)
    _check_benchmarks(p, need)
    from .sources import check_declaration  # here, not at the top: sources imports this module

    check_declaration(p)
    x = p.export
    need(x.adapter in ("auto", "rsft", "hsdpo"), "export.adapter", f"must be auto, rsft or hsdpo, got {x.adapter!r}")
    need(x.adapter != "hsdpo" or p.hsdpo_enabled, "export.adapter",
         f"is hsdpo but hsdpo.enabled is false for preset `{p.preset}`: set hsdpo.enabled: true "
         "or export.adapter: auto")
    need(x.auto_metric in AUTO_METRICS, "export.auto_metric",
         f"must be one of {', '.join(AUTO_METRICS)} (higher is better), got {x.auto_metric!r}")
    need(x.dtype in ("float16", "bfloat16", "float32"), "export.dtype", "must be float16, bfloat16 or float32")
    need(bool(re.fullmatch(r"[a-z0-9][a-z0-9._-]*", x.name)), "export.name",
         f"must be lowercase letters, digits, `.`, `_` or `-` (an Ollama model name), got {x.name!r}")
    bad = [t for t in x.gguf_types if t not in ("F32", "F16", "BF16", "Q8_0")]
    need(not bad and len(set(x.gguf_types)) == len(x.gguf_types), "export.gguf_types",
         f"must list distinct types of F32, F16, BF16, Q8_0 ([] for none), got {x.gguf_types}")
    need(not x.gguf_types or x.modelfile_type in x.gguf_types, "export.modelfile_type",
         f"must be one of export.gguf_types {x.gguf_types}, got {x.modelfile_type!r}")
    need(x.check_prompts >= 0, "export.check_prompts", "must be >= 0 (0: no round-trip check)")
    need(x.check_max_logit_diff > 0, "export.check_max_logit_diff", "must be > 0")
    need(0 <= x.check_min_agreement <= 1, "export.check_min_agreement", "must be in [0, 1]")
    need(not x.push_to_hub or bool(re.fullmatch(r"[\w.-]+/[\w.-]+", x.hub_repo or "")), "export.hub_repo",
         f"must be `owner/name` when export.push_to_hub is true, got {x.hub_repo!r}")
    need(0 <= p.baseline.exact_match <= 1, "baseline.exact_match", "must be in [0, 1]")


THRESHOLD_OBJECTIVES = ("exact_match", "f1")
TRAIN_METHODS = ("lora", "full")


def _check_thresholds(p: Params, need) -> None:
    e = p.evaluate
    t = e.thresholds
    need(e.threshold_objective in THRESHOLD_OBJECTIVES, "evaluate.threshold_objective",
         f"must be exact_match (the flagged set) or f1 (each policy's own), got {e.threshold_objective!r}")
    need(t is None or t == "auto" or isinstance(t, dict), "evaluate.thresholds",
         f"must be null (the verdict as written), auto (tuned on the validation split) or a mapping "
         f"{{policy: threshold}}, got {t!r}")
    if isinstance(t, dict):
        unknown = sorted(set(t) - set(p.policies))
        need(not unknown, "evaluate.thresholds", f"names policies not in `policies`: {unknown}; "
             f"use ids of {', '.join(p.policies)}")
        for q, v in t.items():
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1, f"evaluate.thresholds.{q}",
                 f"must be a number in [0, 1] (P(UNSAFE) at or above it flags), got {v!r}")
    need(t is None or e.backend != "vllm", "evaluate.thresholds",
         "needs verdict scores, which the vllm backend does not give: set evaluate.backend: auto or thresholds: null")
    need(t != "auto" or p.prepare.val_fraction > 0, "evaluate.thresholds",
         "is auto, which tunes on the validation split, but prepare.val_fraction is 0: raise it (e.g. 0.1)")


def _check_benchmarks(p: Params, need) -> None:
    """evaluate.benchmarks / benchmark_sets (paths are checked when evaluate runs: a missing
    dev set must not stop the other stages)."""
    e = p.evaluate
    need(all(isinstance(n, str) for n in e.benchmarks), "evaluate.benchmarks", "must be a list of names")
    for n in e.benchmarks:
        close = difflib.get_close_matches(n, list(e.benchmark_sets), n=1)
        need(n in e.benchmark_sets, "evaluate.benchmarks",
             f"names {n!r}, which is not in evaluate.benchmark_sets"
             + (f" (did you mean {close[0]!r}?)" if close else f"; defined: {', '.join(e.benchmark_sets) or 'none'}"))
    need(len(set(e.benchmarks)) == len(e.benchmarks), "evaluate.benchmarks", "lists a name twice")
    for name, b in e.benchmark_sets.items():
        key = f"evaluate.benchmark_sets.{name}"
        need(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) is not None and name != "test", key,
             "needs a name of letters, digits, `_`, `.`, `-` (it names files and MLflow metrics; `test` is taken)")
        need(b.format in ("notebook", "guardreasoner", "table"), f"{key}.format",
             "must be notebook, guardreasoner or table")
        need(b.max_samples is None or b.max_samples >= 0, f"{key}.max_samples", "must be null, 0 (all) or > 0")
        table_only = ("text_field", "response_field", "id_field", "policy_columns", "harmful_columns", "task")
        if b.format != "table":
            for k in table_only:
                need(getattr(b, k) in (None, {}), f"{key}.{k}", f"applies to format `table` only; remove it "
                     f"(format `{b.format}` carries its own labels)")
            continue
        need(bool(b.text_field), f"{key}.text_field", "must name the column holding the content (format table)")
        need(b.task in (None, "prompt", "response"), f"{key}.task", "must be null, prompt or response")
        need(b.task != "response" or bool(b.response_field), f"{key}.task",
             "is `response` but response_field is not set")
        for pol, cols in b.policy_columns.items():
            # a set not in evaluate.benchmarks may still map another taxonomy's ids (the shipped
            # openai_moderation maps the notebook's six): checked once it is used
            need(pol in p.policies or name not in e.benchmarks, f"{key}.policy_columns.{pol}",
                 f"maps the benchmark's columns onto {pol!r}, which is not in `policies` ({', '.join(p.policies)}); "
                 "map them onto one of those ids, or delete the line (that category then counts only for "
                 "harmful_columns), or drop the benchmark from evaluate.benchmarks")
            need(isinstance(cols, list) and bool(cols) and all(isinstance(c, str) for c in cols),
                 f"{key}.policy_columns.{pol}", "must be a non-empty list of column names, e.g. [H, H2]")
        need(b.harmful_columns is None or (bool(b.harmful_columns) and all(isinstance(c, str) for c in b.harmful_columns)),
             f"{key}.harmful_columns", "must be null (the policy columns) or a non-empty list of column names")
        need(bool(b.policy_columns) or bool(b.harmful_columns), key,
             "gives no gold label: set harmful_columns (e.g. [toxicity]) and/or policy_columns")
        pos = {str(v).strip().lower() for v in b.positive_values}
        neg = {str(v).strip().lower() for v in b.negative_values}
        need(bool(pos) and bool(neg) and not pos & neg, f"{key}.positive_values/negative_values",
             f"must be non-empty and disjoint (both contain {sorted(pos & neg)})" if pos & neg else
             "must be non-empty")


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found. Run from the repository root or pass --params.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    p = _build(Params, raw, "", str(path))
    p.source = str(path)
    p.policies, p.policy_info = normalize_policies(p.policies, p.source)
    _check_ranges(p)
    return p


def check_policy_id(pid, source: str = "params.yaml") -> None:
    """ParamsError unless `pid` follows the id rule (docs/POLICIES.md)."""
    fix = (f"Rename it in {source} (and in your data's labels): lowercase letters and digits in words joined by "
           f"single underscores, starting with a letter, at most {POLICY_ID_MAX} characters, e.g. `pii_leak`")
    if not isinstance(pid, str) or not POLICY_ID_RULE.fullmatch(pid) or len(pid) > POLICY_ID_MAX:
        raise ParamsError(f"{source}: `policies.{pid}`: {pid!r} is not a valid policy id. {fix}.")
    if pid in RESERVED_POLICY_IDS:
        raise ParamsError(f"{source}: `policies.{pid}`: {pid!r} is reserved (it is a line of every answer). {fix}.")


def normalize_policies(raw, source: str = "params.yaml") -> tuple[dict[str, str], dict[str, dict]]:
    """params.yaml `policies` -> (id -> definition, id -> {examples, severity} where given).
    Each entry is a definition text, or a mapping {definition, examples: [texts], severity}."""
    if not isinstance(raw, dict) or not raw:
        raise ParamsError(f"{source}: `policies` must map 1 to {MAX_POLICIES} policy ids to definitions, "
                          f"e.g. `pii_leak: Shares a real person's private data ...`.")
    if len(raw) > MAX_POLICIES:
        raise ParamsError(f"{source}: `policies` has {len(raw)} policies; at most {MAX_POLICIES} are supported "
                          "(each is a verdict line of every answer). Merge related policies or train two guards.")
    definitions, info = {}, {}
    for pid, v in raw.items():
        check_policy_id(pid, source)
        key = f"policies.{pid}"
        if isinstance(v, dict):
            extra = [k for k in v if k not in POLICY_FORM_KEYS]
            if extra:
                close = difflib.get_close_matches(str(extra[0]), POLICY_FORM_KEYS, n=1, cutoff=0.5)
                raise ParamsError(f"{source}: unknown key `{key}.{extra[0]}`"
                                  f"{f' (did you mean `{key}.{close[0]}`?)' if close else ''}; "
                                  f"a policy's keys are {', '.join(POLICY_FORM_KEYS)}. Fix it in {source}.")
            d, ex, sev = v.get("definition"), v.get("examples", []), v.get("severity")
            if ex is None:
                ex = []
            if not isinstance(ex, list) or not all(isinstance(e, str) and e.strip() for e in ex):
                raise ParamsError(f"{source}: `{key}.examples` must be a list of non-empty texts (content this "
                                  f"policy covers), got {ex!r}. Fix it in {source} or remove the key.")
            if sev is not None and sev not in SEVERITIES:
                raise ParamsError(f"{source}: `{key}.severity` must be one of {', '.join(SEVERITIES)} "
                                  f"(or left out), got {sev!r}. Fix it in {source}.")
            meta = {k: val for k, val in (("examples", [" ".join(e.split()) for e in ex]), ("severity", sev)) if val}
            if meta:
                info[pid] = meta
            where = f"{key}.definition"
        else:
            d, where = v, key
        if not isinstance(d, str) or not d.strip():
            raise ParamsError(f"{source}: `{where}` must be a non-empty definition (what the policy covers and "
                              f"what it does not), got {d!r}. Write it in {source}.")
        definitions[pid] = d
    return definitions, info
