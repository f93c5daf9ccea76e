"""Atomic file writes: a reader never sees a half-written output."""
from __future__ import annotations

import json
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    with _UMASK_LOCK:  # os.umask can only be read by setting it: set it straight back
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def honour_umask(path: Path, mode: int) -> None:
    """mkstemp/mkdtemp create 0600/0700 whatever the umask; give the file the mode a plain
    open()/mkdir() would have, so a vLLM server or a teammate on a shared box can read it."""
    os.chmod(path, mode & ~_umask())


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to `path`; rename it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    honour_umask(Path(tmp), 0o666)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# Figures that differ between two runs of the same computation (wall time, speed, memory). A
# stage output that git or dvc.lock tracks must not hold them, or a rerun of unchanged work
# would look changed: write_metrics moves them to <dir>/timings/<name> (git-ignored, not a DVC
# output; MLflow still receives every figure).
VOLATILE = frozenset({
    "seconds", "latency_s", "train_seconds", "samples_per_second", "tokens_per_second", "mfu", "peak_memory_gb",
    "wall_seconds", "wall_seconds_with_load", "generate_seconds", "new_tokens_per_second", "items_per_second",
    "tokens_per_second_running", "merge_seconds", "elapsed_s", "wall_s", "latency_per_item_s",
    # what a run found in the answer caches, whether it resumed: the same work, another history
    "speed", "resumed", "resumed_from_step"})


def split_volatile(obj):
    """(obj without VOLATILE keys at any depth, the VOLATILE figures in the same nesting)."""
    if isinstance(obj, dict):
        kept, gone = {}, {}
        for k, v in obj.items():
            if k in VOLATILE:
                gone[k] = v
                continue
            kept[k], g = split_volatile(v)
            if g not in (None, {}, []):
                gone[k] = g
        return kept, gone
    if isinstance(obj, list):
        pairs = [split_volatile(v) for v in obj]
        gone = [g for _, g in pairs]
        return [k for k, _ in pairs], (gone if any(g not in (None, {}) for g in gone) else None)
    return obj, None


def timings_path(path) -> Path:
    return Path(path).parent / "timings" / Path(path).name


def write_metrics(path, obj) -> None:
    """write_json of the reproducible part of `obj`; its volatile figures go to timings_path(path)."""
    kept, gone = split_volatile(obj)
    write_json(path, kept)
    write_json(timings_path(path), gone or {})


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl(path, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def jsonl_rows(text: str, where, error: type[Exception] = ValueError) -> Iterator[tuple[int, object]]:
    """(line number, parsed row) for each non-blank line of JSONL text; a bad line raises
    `error` naming where:line. Split on "\n" only: str.splitlines() would also split at
    U+2028/U+2029, which JSON strings may hold raw."""
    for i, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{where}:{i}: not a JSON line ({e.msg}); fix or remove that line") from None
            except RecursionError:
                raise error(f"{where}:{i}: not a JSON line (nested too deeply); fix or remove that line") from None


def read_jsonl(path) -> list[dict]:
    return [r for _, r in jsonl_rows(Path(path).read_text(encoding="utf-8"), path)]


def append_jsonl(path, rows: Iterable[dict]) -> None:
    """Append and flush+fsync: a cache that survives kill -9 line by line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torn = False
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"  # a writer killed mid-line: end that line, keep the next
    with open(path, "a", encoding="utf-8") as f:
        if torn:
            f.write("\n")
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


# Answer caches (~/.cache/guardrsft: the guard's predictions and samples, the teacher's traces)
# are shared by every run on the box, queued `dvc exp` runs and shard workers included.
def cache_max_bytes() -> int:
    """The bound of one answer cache file: GUARDRSFT_CACHE_MAX_MB (default 1024 MB)."""
    return int(float(os.environ.get("GUARDRSFT_CACHE_MAX_MB", "1024")) * 2**20)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    with open(path.with_name(f".{path.name}.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def append_cache(path, rows: list[dict], max_bytes: int | None = None) -> None:
    """append_jsonl for a file several processes append to: under an exclusive lock, so rows
    bigger than one write() never interleave. Past `max_bytes` (0: unbounded) the file is
    compacted, under the same lock, to its newest rows (one per `key`) within half the bound:
    the oldest answers go first and must be regenerated if asked for again."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    limit = cache_max_bytes() if max_bytes is None else max_bytes
    with _locked(path):
        append_jsonl(path, rows)
        if limit and path.stat().st_size > limit:
            latest = {}
            for r in read_jsonl_tolerant(path):
                latest.pop(r.get("key"), None)  # re-inserted: dict order is then age order
                latest[r.get("key")] = r
            keep, size = [], 0
            for r in reversed(list(latest.values())):
                n = len(json.dumps(r, ensure_ascii=False).encode()) + 1
                if size + n > limit // 2:
                    break
                keep.append(r)
                size += n
            # atomic: a reader (which takes no lock) sees the old file or the new one
            write_jsonl(path, reversed(keep))


def read_jsonl_tolerant(path) -> list[dict]:
    """Read an append-only cache; a torn last line (killed writer) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    # "\n" only: str.splitlines() would also split at U+2028/U+2029, which JSON text may hold raw
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp folder next to `path`; it replaces `path` only on success."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    honour_umask(tmp, 0o777)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
