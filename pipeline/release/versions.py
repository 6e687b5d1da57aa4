"""Release names and semantic versions: validation, precedence, the versions under a releases
folder, and the list of complete releases."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from blurset import names
from blurset.errors import InputError
from blurset.model.release_format import MANIFEST
from blurset.pipeline.release.errors import ReleaseError

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _semver(version: str) -> re.Match[str]:
    m = _SEMVER.match(version) if isinstance(version, str) else None
    if m is None:
        raise ReleaseError(f"version {version!r} is not a semantic version MAJOR.MINOR.PATCH "
                           "(e.g. 1.0.0, or 1.1.0-rc.1 for a pre-release)")
    return m


def validate_version(version: str) -> str:
    """A semantic version (``1.0.0``, ``2.1.0-rc.1``); build metadata (``+…``) is refused."""
    _semver(version)
    return version


def version_key(version: str) -> tuple:
    """Sort key in semver precedence: 1.0.0-rc.1 < 1.0.0 < 1.0.1 < 1.10.0."""
    m = _semver(version)
    core = tuple(int(x) for x in m.group(1, 2, 3))
    pre = m.group(4)
    if pre is None:
        return (*core, 1, ())
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (*core, 0, ids)


def validate_name(name: str) -> str:
    """A release name: :func:`blurset.names.validate_name` (one folder name)."""
    try:
        return names.validate_name(name, "release name")
    except InputError as e:
        raise ReleaseError(str(e)) from None


def existing_versions(out_root: Path, name: str) -> list[str]:
    """The complete versions (with a manifest) of release ``name``, in semver order."""
    folder = out_root / name
    if not folder.is_dir():
        return []
    return sorted((p.name for p in folder.iterdir()
                   if _SEMVER.match(p.name) and (p / MANIFEST).is_file()), key=version_key)


@dataclass(frozen=True)
class ReleaseSummary:
    """A complete release found by :func:`list_releases` (from its manifest)."""

    name: str
    version: str
    path: Path
    parent: str | None
    rows: int
    splits: dict[str, int]
    created_at: str | None


def list_releases(out_root: str | os.PathLike) -> list[ReleaseSummary]:
    """Every complete release under ``out_root`` (one with a manifest), by name then version."""
    out_root = Path(out_root)
    found: list[ReleaseSummary] = []
    if not out_root.is_dir():
        return found
    for folder in sorted(p for p in out_root.iterdir() if p.is_dir() and _NAME.match(p.name)):
        for version in existing_versions(out_root, folder.name):
            path = folder / version
            try:
                m = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                m = {}
            found.append(ReleaseSummary(folder.name, version, path, m.get("parent"),
                                        int(m.get("rows", 0)),
                                        dict(m.get("counts", {}).get("by_split", {})),
                                        m.get("created_at")))
    return found
