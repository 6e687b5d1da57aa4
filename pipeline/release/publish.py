"""Copying a verified release to any fsspec URL (a folder, ``s3://…``), never over a published
version."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from blurset.fileio import fsync_dir, make_read_only, remove_stale_temps, tmp_prefix
from blurset.model.release_format import DATA_DIR, MANIFEST, MANIFEST_SUM
from blurset.pipeline.release.errors import ReleaseError, ReleaseExistsError
from blurset.pipeline.release.verify import manifest_problems, verify_release


def publish_release(path: str | os.PathLike, url: str, *,
                    storage_options: Mapping[str, Any] | None = None) -> str:
    """Verify the release, then copy it to ``<url>/<name>/<version>/`` on any fsspec filesystem.

    Never overwrites a published version. On a local filesystem the copy goes to a temporary
    folder renamed into place; elsewhere (S3…) ``manifest.json`` is written last, so a copy
    without a manifest is an incomplete one (it is completed by the next publish).
    Returns the destination URL.
    """
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    path = Path(path)
    _refuse_unsafe(path)
    verify_release(path).raise_for_problems()
    manifest = json.loads((path / MANIFEST).read_bytes())
    if problems := manifest_problems(path, manifest):  # changed since it was verified
        raise ReleaseError(f"{path / MANIFEST}: {problems[0][1]}; nothing was published")
    name, version = manifest["name"], manifest["version"]
    try:
        fs, base = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except (ValueError, ImportError) as e:
        raise ReleaseError(f"cannot publish to {url!r}: {e}; give a folder or a URL such as "
                           "s3://bucket/prefix") from None
    base = base.rstrip("/")
    dest = f"{base}/{name}/{version}"
    shown = f"{url.rstrip('/')}/{name}/{version}"
    if fs.exists(f"{dest}/{MANIFEST}"):
        raise ReleaseExistsError(f"{name} {version} is already published at {shown}; a "
                                 "published version is never overwritten: publish a new version")
    files = [e["path"] for e in (*manifest["shards"], *manifest["files"])]
    files += [MANIFEST_SUM, MANIFEST]  # the manifest last: it marks a complete copy

    if isinstance(fs, LocalFileSystem):
        _copy_local(path, Path(dest), files)
        return shown

    for rel in files[:-1]:
        fs.put_file(str(path / rel), f"{dest}/{rel}")
    for rel in files[:-1]:
        remote = fs.info(f"{dest}/{rel}")["size"]
        if remote != (local := (path / rel).stat().st_size):
            raise ReleaseError(f"{shown}/{rel} holds {remote} bytes after the copy, not {local}; "
                               "publish again to complete it")
    fs.put_file(str(path / MANIFEST), f"{dest}/{MANIFEST}")
    return shown


def _refuse_unsafe(path: Path) -> None:
    """One line naming the first manifest entry that would read or write outside the release."""
    if (path / MANIFEST).is_symlink():
        return  # never read: verify_release reports it
    try:
        manifest = json.loads((path / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return  # verify_release reports it
    if problems := manifest_problems(path, manifest):
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise ReleaseError(f"{path / MANIFEST}: {problems[0][1]}{more}; the release is refused "
                           "and nothing was read or published")


def _copy_local(path: Path, final: Path, files: list[str]) -> None:
    """Copy ``files`` of ``path`` to a temporary folder beside ``final``, renamed into place."""
    if final.exists():
        raise ReleaseExistsError(f"{final} exists (without a manifest); remove it or publish "
                                 "elsewhere: nothing was copied")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final.parent)  # what a killed publish left
    tmp = final.parent / f"{tmp_prefix()}{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        for rel in files:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path / rel, target)
            with target.open("rb+") as fh:
                os.fsync(fh.fileno())
        make_read_only(tmp)
        fsync_dir(tmp / DATA_DIR)
        fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError as e:
            raise ReleaseExistsError(f"{final} appeared while publishing ({e.strerror}); "
                                     "nothing was replaced: publish a new version") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
