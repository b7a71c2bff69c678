"""Atomic file writes: a file appears at its path only when complete.

It is written under a temporary name `.<name>.<random><suffix>` in the destination folder, fsynced,
then renamed (`os.replace` is atomic on POSIX). A process killed at any instant leaves the old
state or the new one, never a partial file; the temporaries match `.*partial*` for clean-up.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


@contextmanager
def atomic_target(path: PathLike, suffix: str = ".partial") -> Iterator[str]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`,
    on any error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
