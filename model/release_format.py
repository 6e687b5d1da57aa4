"""The release format: the contract between the writer (``blurset.pipeline.release``) and every
reader (``blurset.model.data``, ``datasets``, pandas, duckdb). File names, the Arrow schema with its
Hugging Face metadata, and the manifest reader. pyarrow only: no torch, no pipeline import.

The format is described in ``docs/release-format.md``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from blurset.errors import InputError, NotFoundError

__all__ = [
    "BLUR_TYPES",
    "CARD",
    "DATA_DIR",
    "FORMAT",
    "FORMATS",
    "FORMAT_V1",
    "HF_FEATURES",
    "HISTOGRAM",
    "IMAGE",
    "MANIFEST",
    "MANIFEST_SUM",
    "MASK_POLARITY",
    "SCHEMA",
    "SCHEMAS",
    "SHARD_PATH",
    "SPLIT_NAME",
    "ReleaseNotFoundError",
    "ReleaseSpecError",
    "Shard",
    "manifest_schema",
    "manifest_shards",
    "read_manifest",
    "shard_path",
    "shard_split",
    "upright_size",
]

FORMAT = "blurset-release/2"  # /2 added the `orientation` column
FORMAT_V1 = "blurset-release/1"
MANIFEST = "manifest.json"  # every file's sha256 and size, every shard's rows, schema, parent
MANIFEST_SUM = "manifest.json.sha256"  # the manifest's own checksum (``sha256sum -c`` format)
CARD = "README.md"  # the dataset card (Hugging Face YAML front matter)
HISTOGRAM = "blur_degree.png"  # the card's blur degree histogram
DATA_DIR = "data"
BLUR_TYPES = ("defocus", "motion")
MASK_POLARITY = "255 = blurred, 0 = sharp"

SPLIT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # a file name part and a Hugging Face split
SHARD_PATH = re.compile(r"^data/(?P<split>[A-Za-z][A-Za-z0-9_]*)-(?P<index>\d{5})"
                        r"-of-(?P<count>\d{5})\.parquet$")


def shard_path(split: str, index: int, count: int) -> str:
    """The path of shard ``index`` (from 0) of ``count`` of a split, relative to the release."""
    return f"{DATA_DIR}/{split}-{index:05d}-of-{count:05d}.parquet"


def shard_split(path: str) -> str | None:
    """The split a shard path names (``data/test-00000-of-00001.parquet`` → ``test``), or None."""
    m = SHARD_PATH.match(path)
    return m.group("split") if m else None


IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # = datasets.Image()
_FIELDS = pa.schema([
    ("id", pa.string()),  # sha256 of the original image bytes
    ("image", IMAGE),  # the original bytes, unchanged (orientation not applied)
    ("mask", IMAGE),  # 8-bit PNG, 255 = blurred, 0 = sharp
    ("width", pa.int32()),  # as displayed (after EXIF orientation), = the mask's size
    ("height", pa.int32()),
    ("orientation", pa.uint8()),  # EXIF Orientation tag (1-8) of the image bytes, 1 when absent
    ("blur_type", pa.string()),  # motion | defocus
    ("source", pa.string()),
    ("source_path", pa.string()),
    ("split", pa.string()),
    ("phash", pa.string()),
    ("annotators", pa.list_(pa.string())),
    ("annotation_ids", pa.list_(pa.int64())),
    ("blur_degree", pa.float64()),
])


def _hf_feature(t: pa.DataType) -> dict:
    if t == IMAGE:
        return {"_type": "Image"}
    if pa.types.is_list(t):  # "Sequence": read by every `datasets` version (≥ 4 calls it List)
        return {"feature": _hf_feature(t.value_type), "_type": "Sequence"}
    dtype = {pa.string(): "string", pa.uint8(): "uint8", pa.int32(): "int32",
             pa.int64(): "int64", pa.float64(): "float64"}[t]
    return {"dtype": dtype, "_type": "Value"}


def _with_hf_metadata(fields: pa.Schema) -> pa.Schema:
    # The "huggingface" metadata makes `datasets` decode image and mask to PIL images.
    features = {f.name: _hf_feature(f.type) for f in fields}
    return fields.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})


HF_FEATURES = {f.name: _hf_feature(f.type) for f in _FIELDS}
SCHEMA = _with_hf_metadata(_FIELDS)
# Every format this version reads (and `release verify` checks), with its shards' schema:
# blurset-release/1 had no `orientation` column.
SCHEMAS = {FORMAT_V1: _with_hf_metadata(_FIELDS.remove(_FIELDS.get_field_index("orientation"))),
           FORMAT: SCHEMA}
FORMATS = tuple(SCHEMAS)

# EXIF orientations whose upright image is the stored one turned by 90° (width and height swap).
_TRANSPOSED = frozenset({5, 6, 7, 8})


def upright_size(stored: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(width, height) of an image stored as ``stored`` once its EXIF ``orientation`` is applied
    (as ``PIL.ImageOps.exif_transpose`` does): swapped for orientations 5-8."""
    w, h = stored
    return (h, w) if orientation in _TRANSPOSED else (w, h)


def manifest_schema() -> dict[str, Any]:
    """The ``schema`` entry of a manifest."""
    return {"columns": [{"name": f.name, "type": str(f.type)} for f in SCHEMA],
            "huggingface": {"info": {"features": HF_FEATURES}},
            "mask_polarity": MASK_POLARITY}


# --------------------------------------------------------------------------------------------
# Reading a manifest


class ReleaseSpecError(InputError):
    """A release spec or manifest cannot be understood; the message says what was expected."""


class ReleaseNotFoundError(NotFoundError, FileNotFoundError):
    """No release at the place a spec names; the message lists what exists there."""


@dataclass(frozen=True)
class Shard:
    """One Parquet file of a release, as its manifest lists it."""

    file: str  # relative to the release folder: data/{split}-{i:05d}-of-{n:05d}.parquet
    split: str
    rows: int
    sha256: str


def read_manifest(folder: Path) -> dict:
    """``folder/manifest.json`` as a dict with a ``shards`` list.

    Raises :class:`ReleaseNotFoundError` (no folder, no manifest: not a release or an incomplete
    one) or :class:`ReleaseSpecError` (not JSON, no shard list).
    """
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ReleaseNotFoundError(f"no release folder at {folder}")
    if not path.is_file():
        raise ReleaseNotFoundError(
            f"{folder} has no {MANIFEST}: it is not a release, or an incomplete one (a release "
            "is complete once its manifest is written; build it again with `blurset release`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ReleaseSpecError(f"{path} is not a release manifest: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise ReleaseSpecError(f"{path} is not a release manifest: it has no 'shards' list")
    return manifest


def _entry_split(entry: dict) -> str:
    split = entry.get("split")
    if isinstance(split, str) and SPLIT_NAME.match(split):
        return split
    found = shard_split(str(entry.get("path", "")))
    if found is None:
        raise ReleaseSpecError(f"shard {entry.get('path')!r} names no split: expected "
                               "data/{split}-{i:05d}-of-{n:05d}.parquet")
    return found


def manifest_shards(manifest: dict, where: Path | str) -> tuple[Shard, ...]:
    """The shards a manifest (from :func:`read_manifest`) lists, sorted by file; ``where`` names
    the manifest in error messages."""
    shards = []
    for entry in manifest["shards"]:
        try:
            shards.append(Shard(str(entry["path"]), _entry_split(entry), int(entry["rows"]),
                                str(entry["sha256"])))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ReleaseSpecError):
                raise
            raise ReleaseSpecError(f"{where}: shard entry {entry!r} lacks path, rows or sha256 "
                                   f"({e})") from None
    return tuple(sorted(shards, key=lambda s: s.file))
