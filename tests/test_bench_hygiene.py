"""bench/ keeps speed benchmarks and analysis of recorded outputs: it uses guardrsft's public
names only and never edits sys.path (the package is installed; a figure a user must reproduce
comes from a stage or a public function)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = "guardrsft"


def _private(name: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in name.split("."))


def problems(source: str, where: str = "<src>") -> list[str]:
    """One line per sys.path edit or use of a private guardrsft name in `source`."""
    tree = ast.parse(source, where)
    out, modules = [], set()  # names bound to guardrsft modules (`from guardrsft import pipeline`)
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                if a.name.split(".")[0] == PKG:
                    if _private(a.name):
                        out.append(f"{where}:{n.lineno}: imports private module {a.name}")
                    modules.add(a.asname or a.name.split(".")[0])
        elif isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == PKG:
            for a in n.names:
                if _private(n.module) or _private(a.name):
                    out.append(f"{where}:{n.lineno}: imports private name {n.module}.{a.name}")
                modules.add(a.asname or a.name)
    for n in ast.walk(tree):
        target = None
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
            target = n.func.value  # sys.path.insert(...), sys.path.append(...)
            if isinstance(n.func.value, ast.Name) and n.func.value.id == "site" and n.func.attr == "addsitedir":
                out.append(f"{where}:{n.lineno}: site.addsitedir edits sys.path")
        elif isinstance(n, (ast.Assign, ast.AugAssign)):
            for t in getattr(n, "targets", None) or [n.target]:
                target = t.value if isinstance(t, ast.Subscript) else t
                if _is_sys_path(target):
                    break
        if target is not None and _is_sys_path(target):
            out.append(f"{where}:{n.lineno}: edits sys.path")
        if isinstance(n, ast.Attribute) and _private(n.attr) and _root_name(n.value) in modules:
            out.append(f"{where}:{n.lineno}: uses private name {_root_name(n.value)}...{n.attr}")
    return out


def _is_sys_path(node) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
        and node.value.id == "sys"


def _root_name(node):
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


@pytest.mark.parametrize("script", sorted((ROOT / "bench").glob("*.py")), ids=lambda p: p.name)
def test_bench_script_uses_public_names_and_leaves_sys_path_alone(script):
    assert problems(script.read_text(), f"bench/{script.name}") == []


@pytest.mark.parametrize("bad", [
    "import sys\nsys.path.insert(0, 'src')\n",
    "import sys\nsys.path.append('bench')\n",
    "import sys\nsys.path[:0] = ['src']\n",
    "import sys\nsys.path += ['src']\n",
    "from guardrsft.pipeline import _generate_traces, _prepare\n",
    "from guardrsft import pipeline\npipeline._prepare(1, 2, 3, 4)\n",
    "import guardrsft.pipeline\nguardrsft.pipeline._prepare(1)\n",
    "import guardrsft._private\n",
])
def test_the_check_finds_what_the_old_bench_scripts_did(bad):
    assert problems(bad) != []


def test_the_check_allows_public_names_and_dunders():
    ok = ("import sys\nprint(sys.path)\nfrom guardrsft.metrics import bootstrap_ci\nfrom guardrsft import __version__\n"
          "import guardrsft.guard\nguardrsft.guard.load_guard\nx = {}\nx._private = 1\n")
    assert problems(ok) == []
