"""bench/ scripts as modules for tests (bench/ is not a package)."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench_module(script: str):
    """Yield bench/<script>.py loaded as module `bench_<script>`; removed from sys.modules after."""
    name = f"bench_{script}"
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{script}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(name, None)
