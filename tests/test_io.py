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
