"""io's atomic writes: modes as the umask says."""
import os
import stat

import pytest

from guardrsft.io import atomic_dir, write_json


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_writes_honour_the_umask(tmp_path, umask):
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_dir(tmp_path / "merged") as d:
        (d / "config.json").write_text("{}")
    # a server or teammate on the box can read what we wrote (mkstemp alone gives 0600/0700)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "merged").stat().st_mode) == 0o755
    os.umask(0o077)
    write_json(tmp_path / "b.json", {"x": 1})
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600


WRITER = """
import sys
from guardrsft.io import append_cache
name, path, n, max_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for i in range(n):  # three ~4 KB rows per call: more than one write() each, were it not for the lock
    append_cache(path, [{"key": f"{name}-{i}-{j}", "w": name, "i": i, "raw": name * 4000} for j in range(3)],
                 max_bytes=max_bytes)
"""


def two_writers(tmp_path, n, max_bytes):
    import subprocess
    import sys

    from conftest import ROOT

    path = tmp_path / "predictions.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, w, str(path), str(n), str(max_bytes)], env=env)
             for w in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    return path


def test_two_writers_at_once_lose_and_corrupt_nothing(tmp_path):
    from guardrsft.io import read_jsonl

    rows = read_jsonl(two_writers(tmp_path, 150, 0))  # strict: a torn or interleaved line raises
    for w in "ab":
        assert sorted(r["key"] for r in rows if r["w"] == w) == sorted(f"{w}-{i}-{j}" for i in range(150)
                                                                       for j in range(3))
        assert all(r["raw"] == w * 4000 for r in rows if r["w"] == w)


def test_shared_cache_stays_bounded_with_two_writers(tmp_path):
    from guardrsft.io import read_jsonl

    bound = 200_000  # ~16 calls' worth: compacted many times while both write
    path = two_writers(tmp_path, 150, bound)
    assert path.stat().st_size <= bound
    rows = read_jsonl(path)
    assert len(rows) == len({r["key"] for r in rows})
    order = [(i, j) for i in range(150) for j in range(3)]
    kept = {w: sorted((r["i"], int(r["key"].rsplit("-", 1)[1])) for r in rows if r["w"] == w) for w in "ab"}
    for w in "ab":  # what is kept is each writer's newest rows, without a gap (the OS may run one
        # writer far ahead of the other, so the slower one's rows can all be compacted away)
        assert not kept[w] or kept[w] == order[order.index(kept[w][0]):]
    assert rows[-1]["i"] == 149 and order[-1] in kept[rows[-1]["w"]]  # the last call written survives
