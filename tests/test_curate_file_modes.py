"""Files written atomically get the mode the umask gives (0644 under umask 0022), not mkstemp's 0600."""

import os
import stat

import numpy as np
import pytest

from liveditor.data_pipeline.manifest import atomic_write_text
from liveditor.files import atomic_target
from liveditor.video import write_video


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it after."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_files_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write_text(tmp_path / "a.json", "{}\n")
    write_video(tmp_path / "v.mp4", np.zeros((2, 16, 16, 3), np.uint8), fps=16)
    with atomic_target(tmp_path / "b.bin") as tmp:
        with open(tmp, "wb") as f:
            f.write(b"x")
    for name in ("a.json", "v.mp4", "b.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "v.mp4"]  # no temporaries left


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_target(tmp_path / "c.txt") as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
