"""Writing files so that a crash leaves either the old state or the new one, never half a file."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from functools import cache
from pathlib import Path

_TMP = re.compile(r"^\.tmp-(?P<pid>\d+)-")
LEGACY_TMP_AGE = 3600.0  # seconds: a temporary entry without a process id is stale after this


def tmp_prefix() -> str:
    """The prefix of every temporary file or folder blurset makes beside its final place:
    ``.tmp-<pid>-``, so the next run can tell the litter of a killed process
    (:func:`remove_stale_temps`) from the work of a live one."""
    return f".tmp-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, *, depth: int = 0) -> int:
    """Remove the temporary files and folders (``.tmp-*``) that a killed process left in
    ``folder`` (and its sub-folders down to ``depth``): those whose process is gone, and those
    without a process id older than an hour. Returns how many were removed."""
    folder = Path(folder)
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for e in entries:
        if e.name.startswith(".tmp-"):
            m = _TMP.match(e.name)
            try:
                stale = (not _alive(int(m.group("pid")))) if m else \
                    time.time() - e.stat(follow_symlinks=False).st_mtime > LEGACY_TMP_AGE
            except OSError:
                continue
            if stale:
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    Path(e.path).unlink(missing_ok=True)
                removed += 1
        elif depth > 0 and e.is_dir(follow_symlinks=False):
            removed += remove_stale_temps(e.path, depth=depth - 1)
    return removed


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@cache
def _umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _default_mode() -> int:
    """What ``open()`` would give a new file: 0o666 less the process umask."""
    return 0o666 & ~_umask()


def make_read_only(root: str | os.PathLike) -> None:
    """Give a finished tree (a release) read-only files and folders others may read, as far as
    the umask allows: files ``0o444``, folders ``0o755`` (a temporary folder starts ``0o700``)."""
    umask = _umask()
    for here, dirs, files in os.walk(root):
        for f in files:
            os.chmod(os.path.join(here, f), 0o444 & ~umask)
        os.chmod(here, 0o755 & ~umask)


def atomic_write(path: str | os.PathLike, data: bytes, *, mode: int | None = None,
                 exclusive: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync it and rename
    it into place. ``mode`` sets the permission bits (e.g. ``0o444``; default: as ``open()`` would,
    not ``mkstemp``'s owner-only 0o600); ``exclusive`` refuses to
    replace an existing file (:class:`FileExistsError`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=tmp_prefix(), suffix=path.suffix)
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
