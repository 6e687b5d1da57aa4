"""Writing files so that a crash leaves either the old state or the new one, never half a file."""

from __future__ import annotations

import os
import tempfile
from functools import cache
from pathlib import Path


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@cache
def _default_mode() -> int:
    """What ``open()`` would give a new file: 0o666 less the process umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, data: bytes, *, mode: int | None = None,
                 exclusive: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync it and rename
    it into place. ``mode`` sets the permission bits (e.g. ``0o444``; default: as ``open()`` would,
    not ``mkstemp``'s owner-only 0o600); ``exclusive`` refuses to
    replace an existing file (:class:`FileExistsError`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _default_mode() if mode is None else mode)
        if exclusive:
            os.link(tmp, path)  # fails with FileExistsError instead of replacing
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
