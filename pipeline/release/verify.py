"""Checking a release: every checksum recomputed, every row re-read."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from blurset.model.release_format import (
    BLUR_TYPES,
    FORMATS,
    MANIFEST,
    MANIFEST_SUM,
    SCHEMA,
    SCHEMAS,
    shard_split,
    upright_size,
)
from blurset.pipeline.release.errors import ReleaseError, ReleaseVerificationError
from blurset.pipeline.release.shards import image_header, sha256_file
from blurset.pipeline.release.versions import validate_name, validate_version
from blurset.pipeline.stages.ingest import DECODE_ERRORS


@dataclass(frozen=True)
class Problem:
    file: str
    message: str


@dataclass
class VerifyReport:
    """What :func:`verify_release` checked and found wrong."""

    path: Path
    files: int = 0
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, file: str, message: str) -> None:
        self.problems.append(Problem(file, message))

    def raise_for_problems(self) -> VerifyReport:
        if self.problems:
            raise ReleaseVerificationError(self)
        return self


def verify_release(path: str | os.PathLike) -> VerifyReport:
    """Recompute every checksum and re-read every row; never raises for a damaged release.

    Checks: the manifest against ``manifest.json.sha256``; every listed file's size and sha256;
    no unlisted file; every shard read in full with the schema of the manifest's format, its row
    count and split; every image's sha256 equal to its id; every mask a PNG of the image's size;
    where the format has an ``orientation`` column (``blurset-release/2``), that it is the image's
    EXIF orientation and that the image, once turned upright by it, is ``width``×``height``.
    """
    path = Path(path)
    report = VerifyReport(path)
    if links := [n for n in (MANIFEST, MANIFEST_SUM) if (path / n).is_symlink()]:
        for n in links:
            report.add(n, "a symbolic link: a release holds only regular files (not read)")
        return report
    try:
        raw = (path / MANIFEST).read_bytes()
    except OSError as e:
        report.add(MANIFEST, f"cannot be read: {e.strerror or e}")
        return report
    report.files += 1
    try:
        expected = (path / MANIFEST_SUM).read_text(encoding="utf-8").split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        report.add(MANIFEST_SUM, "missing or unreadable: the manifest cannot be checked")
        expected = None
    if expected is not None and expected != hashlib.sha256(raw).hexdigest():
        report.add(MANIFEST, f"sha256 {hashlib.sha256(raw).hexdigest()} differs from "
                             f"{expected} in {MANIFEST_SUM}")
    try:
        manifest = json.loads(raw)
        listed = [*manifest["shards"], *manifest["files"]]
    except (ValueError, KeyError, TypeError) as e:
        report.add(MANIFEST, f"not a release manifest: {e}")
        return report
    if unsafe := manifest_problems(path, manifest):
        for file, message in unsafe:  # an untrusted manifest: nothing it names is read
            report.add(file, message)
        return report

    names = {MANIFEST, MANIFEST_SUM}
    for entry in listed:
        rel = entry["path"]
        names.add(rel)
        f = path / rel
        if not f.is_file():
            report.add(rel, "missing")
            continue
        report.files += 1
        size = f.stat().st_size
        if size != entry["bytes"]:
            report.add(rel, f"{size} bytes, the manifest says {entry['bytes']}")
        if (digest := sha256_file(f)) != entry["sha256"]:
            report.add(rel, f"sha256 {digest} differs from the manifest's {entry['sha256']}")
    for rel, is_link in _tree(path):
        if is_link:
            report.add(rel, "a symbolic link: a release holds only regular files")
        elif rel not in names:
            report.add(rel, "not listed in the manifest")

    schema = SCHEMAS.get(manifest.get("format"))
    if schema is None:
        report.add(MANIFEST, f"format {manifest.get('format')!r} is not one this blurset reads "
                             f"({', '.join(FORMATS)}); shards checked against the newest")
        schema = SCHEMA
    all_ids: list[str] = []
    for shard in manifest["shards"]:
        rel = shard["path"]
        if (path / rel).is_file():
            all_ids += _verify_shard(path / rel, shard, schema, report)
    if len(set(all_ids)) != len(all_ids):
        dup = sorted(i for i, n in Counter(all_ids).items() if n > 1)
        report.add("data/", f"{len(dup)} id(s) in more than one row, e.g. {dup[0]}")
    if manifest.get("rows") != len(all_ids) and report.ok:
        report.add(MANIFEST, f"rows {manifest.get('rows')} but the shards hold {len(all_ids)}")
    return report


def _tree(root: Path) -> list[tuple[str, bool]]:
    """Every file and symbolic link under ``root`` (links not followed): (relative path, is a
    link), sorted."""
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        for d in list(dirs):
            if (here / d).is_symlink():
                dirs.remove(d)
                files.append(d)
        for f in files:
            found.append(((here / f).relative_to(root).as_posix(), (here / f).is_symlink()))
    return sorted(found)


def unsafe_path(root: Path, rel: object) -> str | None:
    """Why a path listed in a manifest may not be used, or None: it must be a normalised
    relative POSIX path inside ``root`` (no ``..``, ``.``, empty or absolute part, no backslash)
    whose every existing part is a real folder or file, not a symbolic link."""
    if not isinstance(rel, str) or not rel:
        return "is not a file path"
    if rel.startswith("/") or "\\" in rel or "\0" in rel or ":" in rel.split("/")[0]:
        return "is not a relative path inside the release"
    parts = PurePosixPath(rel).parts
    if any(p in ("", ".", "..") for p in rel.split("/")) or "/".join(parts) != rel:
        return "is not a normalised path inside the release (no '..', '.' or empty part)"
    here = root
    for part in parts:
        here = here / part
        try:
            mode = here.lstat().st_mode
        except OSError:
            return None  # missing: reported as missing by the caller
        if stat.S_ISLNK(mode):
            return "goes through a symbolic link: a release holds only regular files"
    return None


def manifest_problems(root: Path, manifest: object) -> list[tuple[str, str]]:
    """What makes an untrusted manifest unusable before any file it names is opened: a name or
    version that ``release build`` would refuse, an entry that is not path + bytes + sha256, a
    path leaving the release. (file, message) pairs."""
    if not isinstance(manifest, dict):
        return [(MANIFEST, "not a release manifest: not a JSON object")]
    problems: list[tuple[str, str]] = []
    for check, key in ((validate_name, "name"), (validate_version, "version")):
        try:
            check(manifest.get(key))
        except ReleaseError as e:
            problems.append((MANIFEST, f"{key}: {e}"))
    for group in ("shards", "files"):
        entries = manifest.get(group)
        if not isinstance(entries, list):
            problems.append((MANIFEST, f"'{group}' is not a list"))
            continue
        for entry in entries:
            if not isinstance(entry, dict):
                problems.append((MANIFEST, f"{group} entry {entry!r} is not an object"))
                continue
            rel = entry.get("path")
            if (why := unsafe_path(root, rel)) is not None:
                problems.append((MANIFEST, f"{group} entry path {rel!r} {why}"))
            elif rel in (MANIFEST, MANIFEST_SUM):
                problems.append((MANIFEST, f"{group} entry path {rel!r} names the manifest"))
            elif not (isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)
                      and (group == "files" or isinstance(entry.get("rows"), int))):
                problems.append((MANIFEST, f"{group} entry {rel!r} lacks an integer 'bytes', "
                                           "a 'sha256' string" + (" or an integer 'rows'"
                                                                  if group == "shards" else "")))
    return problems


def _verify_shard(file: Path, entry: Mapping, schema: pa.Schema,
                  report: VerifyReport) -> list[str]:
    rel = entry["path"]
    split = shard_split(rel)
    ids: list[str] = []
    try:
        pf = pq.ParquetFile(file)
        if not pf.schema_arrow.equals(schema, check_metadata=False):
            report.add(rel, f"schema differs from the release schema: {pf.schema_arrow}")
            return ids
        if (pf.schema_arrow.metadata or {}).get(b"huggingface") != schema.metadata[b"huggingface"]:
            report.add(rel, "huggingface schema metadata differs from the release's")
        for g in range(pf.num_row_groups):
            table = pf.read_row_group(g)
            for row in table.to_pylist():
                ids.append(row["id"])
                _verify_row(rel, row, split, report)
    except (pa.ArrowException, OSError, ValueError) as e:
        report.add(rel, f"cannot be read in full: {e}")
        return ids
    if len(ids) != entry["rows"]:
        report.add(rel, f"{len(ids)} rows, the manifest says {entry['rows']}")
    if ids != sorted(ids):
        report.add(rel, "rows are not sorted by id")
    report.rows += len(ids)
    return ids


def _verify_row(rel: str, row: dict, split: str | None, report: VerifyReport) -> None:
    where = f"row {row['id']}"
    image = (row["image"] or {}).get("bytes")
    mask = (row["mask"] or {}).get("bytes")
    if not image:
        report.add(rel, f"{where}: empty image bytes")
    elif hashlib.sha256(image).hexdigest() != row["id"]:
        report.add(rel, f"{where}: image bytes do not hash to the id")
    if not mask:
        report.add(rel, f"{where}: empty mask bytes")
    else:
        try:
            with Image.open(io.BytesIO(mask)) as im:
                im.load()
                if im.format != "PNG" or im.size != (row["width"], row["height"]):
                    report.add(rel, f"{where}: mask is {im.format} {im.size[0]}×{im.size[1]}, "
                                    f"expected PNG {row['width']}×{row['height']}")
        except (OSError, SyntaxError, ValueError) as e:
            report.add(rel, f"{where}: mask does not decode as PNG: {e}")
    if image and "orientation" in row:
        _verify_orientation(rel, where, image, row, report)
    if split is not None and row["split"] != split:
        report.add(rel, f"{where}: split {row['split']!r} in a {split} shard")
    if row["blur_type"] not in BLUR_TYPES:
        report.add(rel, f"{where}: blur type {row['blur_type']!r}")


def _verify_orientation(rel: str, where: str, image: bytes, row: dict,
                        report: VerifyReport) -> None:
    """The ``orientation`` column is the image's EXIF orientation, and the image turned upright
    by it is ``width``×``height`` (the mask's size, checked above)."""
    try:
        orientation, stored = image_header(image)
    except DECODE_ERRORS as e:
        report.add(rel, f"{where}: image header cannot be read: {e}")
        return
    if row["orientation"] != orientation:
        report.add(rel, f"{where}: orientation {row['orientation']}, the image's EXIF "
                        f"orientation is {orientation}")
    upright = upright_size(stored, row["orientation"])
    if upright != (row["width"], row["height"]):
        report.add(rel, f"{where}: image is {upright[0]}×{upright[1]} once turned upright by "
                        f"orientation {row['orientation']}, expected {row['width']}×"
                        f"{row['height']}")
