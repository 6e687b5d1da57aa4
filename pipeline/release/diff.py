"""What changed between two releases: images added, removed, and whose mask or split changed."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from blurset.model.release_format import DATA_DIR, MANIFEST, ReleaseNotFoundError
from blurset.pipeline.release.errors import ReleaseError


@dataclass(frozen=True)
class ReleaseDiff:
    """Images added in ``b``, removed from ``a``, and whose mask or split changed."""

    a: str
    b: str
    added: list[str]
    removed: list[str]
    mask_changed: list[str]
    split_changed: list[tuple[str, str, str]]  # (id, split in a, split in b)
    unchanged: int

    def counts(self) -> dict[str, int]:
        return {"added": len(self.added), "removed": len(self.removed),
                "mask_changed": len(self.mask_changed), "split_changed": len(self.split_changed),
                "unchanged": self.unchanged}


def release_index(path: Path) -> dict[str, tuple[str, str]]:
    """{id: (split, sha256 of the mask bytes)} of a release's shards; a shard that cannot be read
    is a :class:`ReleaseError` naming it."""
    out: dict[str, tuple[str, str]] = {}
    for shard in sorted((Path(path) / DATA_DIR).glob("*.parquet")):
        try:
            table = pq.read_table(shard, columns=["id", "split", "mask"])
        except (OSError, pa.ArrowException) as e:
            raise ReleaseError(f"shard {shard} cannot be read ({e}); check the release with "
                               f"`blurset release verify {path}`") from e
        masks_ = table.column("mask").combine_chunks().field("bytes").to_pylist()
        for image_id, split, mask in zip(table.column("id").to_pylist(),
                                         table.column("split").to_pylist(), masks_, strict=True):
            out[image_id] = (split, hashlib.sha256(mask or b"").hexdigest())
    return out


def diff_index(a_name: str, b_name: str, a: Mapping[str, tuple[str, str]],
               b: Mapping[str, tuple[str, str]]) -> ReleaseDiff:
    """The diff of two :func:`release_index` results."""
    common = sorted(a.keys() & b.keys())
    mask_changed = [i for i in common if a[i][1] != b[i][1]]
    split_changed = [(i, a[i][0], b[i][0]) for i in common if a[i][0] != b[i][0]]
    changed = set(mask_changed) | {i for i, _, _ in split_changed}
    return ReleaseDiff(a_name, b_name, sorted(b.keys() - a.keys()), sorted(a.keys() - b.keys()),
                       mask_changed, split_changed, len(common) - len(changed))


def _label(path: Path) -> str:
    try:
        m = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
        return f"{m['name']}@{m['version']}"
    except (OSError, ValueError, KeyError):
        return str(path)


def diff_releases(a: str | os.PathLike, b: str | os.PathLike) -> ReleaseDiff:
    """Images added in ``b``, removed from ``a``, and whose mask (by sha256) or split changed.

    A folder without a manifest is no release: :class:`ReleaseNotFoundError`.
    """
    for path in (Path(a), Path(b)):
        if not (path / MANIFEST).is_file():
            raise ReleaseNotFoundError(f"{path} is not a release: it has no {MANIFEST}; give "
                                       "the folder of a release (e.g. releases/NAME/VERSION, see "
                                       "`blurset release list`)")
    return diff_index(_label(Path(a)), _label(Path(b)), release_index(Path(a)),
                      release_index(Path(b)))
