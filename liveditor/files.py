"""Atomic file writes: a file appears at its path only when complete.

It is written under a temporary name `.<name>.<random><suffix>` in the destination folder, fsynced,
then renamed (`os.replace` is atomic on POSIX). A process killed at any instant leaves the old
state or the new one, never a partial file; the temporaries match `.*partial*` for clean-up.

The temporary is created with `os.open(..., 0o666)`, so the finished file has the mode the
process's umask gives (0644 under the usual umask 0022), like a file written with `open()`.
`tempfile.mkstemp` would make every output 0600, unreadable to the rest of a team.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


def _create_temporary(folder: Path, name: str, suffix: str) -> str:
    """Create an empty, new file `.<name>.<random><suffix>` in `folder`, mode 0666 & ~umask; returns its path."""
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file for '{name}' in '{folder}': 100 names were taken")


@contextmanager
def atomic_target(path: PathLike, suffix: str = ".partial") -> Iterator[str]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`,
    on any error removed. The file gets the mode the umask gives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(path.parent, path.name, suffix)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (shard and index checksums)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
