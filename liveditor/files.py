"""Atomic file writes: a file appears at its path only when complete.

It is written under a temporary name `.<name>.<random><suffix>` in the destination folder, fsynced,
then renamed (`os.replace` is atomic on POSIX). A process killed at any instant leaves the old
state or the new one, never a partial file; the temporaries match `.*partial*` for clean-up.

The temporary is created with `os.open(..., 0o666)`, so the finished file has the mode the
process's umask gives (0644 under the usual umask 0022), like a file written with `open()`.
`tempfile.mkstemp` would make every output 0600, unreadable to the rest of a team; a writer that
replaces the temporary with its own file (safetensors' `save_file` does) gets the mode put back.
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
    mode = os.stat(tmp).st_mode & 0o7777
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if os.stat(tmp).st_mode & 0o7777 != mode:  # a writer that replaced the temporary (safetensors' save_file makes it 0600)
            os.chmod(tmp, mode)
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


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file and a rename."""
    with atomic_target(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj) -> Path:
    """`obj` as indented JSON with sorted keys and a final newline (stable bytes for reruns)."""
    import json

    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_tar(path: PathLike, samples) -> Path:
    """Write WebDataset samples `[(key, {member: bytes})]` to a tar at `path`, atomically and byte for
    byte deterministically: members `<key>.<member>` in the given order, USTAR headers with mtime 0,
    mode 0644, uid/gid 0 and no owner names."""
    import io
    import tarfile

    with atomic_target(path) as tmp, tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for member, data in members.items():
                info = tarfile.TarInfo(f"{key}.{member}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return Path(path)


def atomic_copy(src: PathLike, dst: PathLike) -> Path:
    """Copy file `src` to `dst`, which appears only complete (a killed copy leaves no half file)."""
    import shutil

    dst = Path(dst)
    with atomic_target(dst, suffix=".partial" + dst.suffix) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def atomic_dir(path: PathLike, make) -> Path:
    """Build folder `path` with `make(tmp)` under a temporary name beside it and rename it into place (a
    killed run leaves no half folder; a leftover temporary one is removed first, and so is the temporary
    one of a `make` that raises). An existing non-empty `path` is kept; an empty one is replaced."""
    import shutil

    path = Path(path)
    if path.exists():
        if not path.is_dir() or any(path.iterdir()):
            return path
        path.rmdir()
    tmp = path.with_name(f".{path.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        make(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(path)
    return path
