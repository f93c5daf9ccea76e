import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Triton kernels (guardrsft.decode_attn) run here under Triton's CPU interpreter. The switch is
# read when triton is first imported, so it is set before anything imports it; a GPU machine
# leaves it off (GUARDRSFT_TEST_TRITON=gpu) and the kernel tests skip there.
if os.environ.get("GUARDRSFT_TEST_TRITON") != "gpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
# stages called in-process must not log into the developer's own mlflow.db
_MLRUNS = Path(__import__("tempfile").mkdtemp(prefix="guardrsft-test-mlflow-"))
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_MLRUNS / 'mlflow.db'}"


_T0 = time.time()
_CONFIG = None
# examples each property-based test ran (tests/test_fuzz.py), printed at the end of the run
FUZZ_CASES: Counter = Counter()


def pytest_configure(config):
    global _CONFIG
    _CONFIG = config


def pytest_runtest_logreport(report):
    """CI prints one dot per test: a line per slow phase (setup, call or teardown) gives the
    timeline that tells where a run that ran out of time was."""
    if report.duration >= 20:
        tr = _CONFIG.pluginmanager.get_plugin("terminalreporter") if _CONFIG else None
        if tr is not None:
            tr.write("\n")
            tr.write_line(f"[{time.time() - _T0:5.0f} s] {report.when} {report.duration:4.0f} s  {report.nodeid}")


def pytest_terminal_summary(terminalreporter):
    if FUZZ_CASES:
        per = ", ".join(f"{k} {n}" for k, n in sorted(FUZZ_CASES.items()))
        terminalreporter.write_line(f"fuzz: {sum(FUZZ_CASES.values())} cases ({per})")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A private guardrsft cache for the test session; the converted embedded model is
    reused from the user's cache when present (conversion takes ~1 min)."""
    d = tmp_path_factory.mktemp("guardrsft-cache")
    user = Path.home() / ".cache" / "guardrsft" / "models" / "smollm2-135m-instruct"
    if (user / "config.json").exists():
        (d / "models").mkdir()
        os.symlink(user, d / "models" / "smollm2-135m-instruct")
    os.environ["GUARDRSFT_CACHE"] = str(d)
    return d


@pytest.fixture(scope="session")
def embedded_model(cache_dir):
    from guardrsft.models import resolve_base

    return resolve_base("embedded:smollm2-135m-instruct")


@pytest.fixture
def params():
    from guardrsft.config import load_params

    return load_params(ROOT / "params.yaml")


def write_params(tmp_path, text: str) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


@pytest.fixture
def params_text():
    return (ROOT / "params.yaml").read_text()


# GuardReasoner's one prompt per (content, policy): params.yaml's prompt before the joint default.
# Tests of per-policy behaviour pin it (per_policy_text / the pp_params fixture).
PER_POLICY_PROMPT = """prompt:
  version: 1
  mode: per_policy
  system: >-
    You are a content safety classifier. You check one piece of content against one policy,
    reason step by step, and end with exactly one line `Classification: SAFE` or
    `Classification: UNSAFE`.
  template: |-
    Policy "{policy}": {definition}

    Content: {content}

    Does the content violate this policy? Answer in this format:
    Reasoning:
    Step 1 (intent): ...
    Step 2 (harms): ...
    Step 3 (policy criteria): ...
    Classification: SAFE or UNSAFE
"""


def per_policy_text(text: str) -> str:
    """params.yaml text with its prompt section replaced by PER_POLICY_PROMPT."""
    start = text.index("\nprompt:\n") + 1
    end = text.index("\nprepare:\n", start) + 1
    return text[:start] + PER_POLICY_PROMPT + "\n" + text[end:]


@pytest.fixture
def pp_params(tmp_path, params_text):
    """params.yaml's params with the per_policy prompt."""
    from guardrsft.config import load_params

    d = tmp_path / "per_policy"
    d.mkdir()
    p = load_params(write_params(d, per_policy_text(params_text)))
    assert p.prompt.mode == "per_policy" and "{definition}" in p.prompt.template
    return p


def copy_repo(dst: Path) -> Path:
    """A copy of the tracked files (what a fresh clone has)."""
    import subprocess

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if not src.is_file():
            continue
        out = dst / f
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)
    return dst
