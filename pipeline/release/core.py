"""Release stage: select the images that have a blur mask, split them, write Parquet shards, a
manifest and a dataset card (no Prefect, no click here).

A release is a folder ``<out_root>/<name>/<semver>/`` (DESIGN.md, "Data contracts: Release")::

    data/{split}-{i:05d}-of-{n:05d}.parquet   rows sorted by id; no timestamps: same inputs, same bytes
    README.md, blur_degree.png              the dataset card (Hugging Face YAML front matter)
    manifest.json                           sha256 + size of every file, rows of every shard, schema,
                                            parent version, the selection and queries, counts
    manifest.json.sha256                    the manifest's own checksum (``sha256sum -c`` format)

It is written in a temporary folder beside its final place and renamed into place when complete,
so a crash leaves nothing half-published. A published version is immutable: building it again is
refused, ``verify_release`` finds any changed byte, ``publish_release`` never overwrites.

Selection: the current mask of every task with status ``annotated`` in the chosen Label Studio
projects, then the ground-truth blur masks of the chosen sources (an image found by both keeps
its annotation). An image is left out when none of its paths in its source survived dedup
(``image_paths.excluded``), when people rejected it and no chosen project has it annotated, or
when its blur type is unknown. Splits: a name listed in a split file takes that split; an image of
the parent version keeps its split; the others are dealt out by the ratios, per blur type, in the
order of a hash of their id (stable under re-runs).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image
from sqlalchemy import and_, select

from blurset.errors import BlursetError, InputError
from blurset.pipeline.catalog import (
    Catalog,
    annotation_tasks,
    annotations,
    image_paths,
    images,
    masks,
)
from blurset.pipeline.workspace import Workspace

FORMAT = "blurset-release/1"
DEFAULT_SPLIT = "train=0.8,test=0.2"
DEFAULT_SHARD_BYTES = 256 * 2**20
ROW_GROUP_ROWS = 64  # images per row group, or fewer when they reach ROW_GROUP_BYTES
ROW_GROUP_BYTES = 8 * 2**20
BLUR_TYPES = ("defocus", "motion")
MANIFEST = "manifest.json"
MANIFEST_SUM = "manifest.json.sha256"
CARD = "README.md"
HISTOGRAM = "blur_degree.png"

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SPLIT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_SHARD = re.compile(r"^data/([A-Za-z][A-Za-z0-9_]*)-(\d{5})-of-(\d{5})\.parquet$")

_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema([
    ("id", pa.string()),  # sha256 of the original image bytes
    ("image", _IMAGE),  # the original bytes, unchanged
    ("mask", _IMAGE),  # 8-bit PNG, 255 = blurred, 0 = sharp
    ("width", pa.int32()),  # as displayed (after EXIF orientation), = the mask's size
    ("height", pa.int32()),
    ("blur_type", pa.string()),  # motion | defocus
    ("source", pa.string()),
    ("source_path", pa.string()),
    ("split", pa.string()),
    ("phash", pa.string()),
    ("annotators", pa.list_(pa.string())),
    ("annotation_ids", pa.list_(pa.int64())),
    ("blur_degree", pa.float64()),  # mean of mask / 255
])
_BYTES_COLUMNS = ("image.bytes", "mask.bytes")  # already compressed (JPEG, PNG): stored as is


def _hf_feature(t: pa.DataType) -> dict:
    if t == _IMAGE:
        return {"_type": "Image"}
    if pa.types.is_list(t):  # "Sequence": read by every `datasets` version (≥ 4 calls it List)
        return {"feature": _hf_feature(t.value_type), "_type": "Sequence"}
    dtype = {pa.string(): "string", pa.int32(): "int32", pa.int64(): "int64",
             pa.float64(): "float64"}[t]
    return {"dtype": dtype, "_type": "Value"}


HF_FEATURES = {f.name: _hf_feature(f.type) for f in SCHEMA}
SCHEMA = SCHEMA.with_metadata({"huggingface": json.dumps({"info": {"features": HF_FEATURES}})})


def _leaf_columns(schema: pa.Schema) -> list[str]:
    out = []
    for f in schema:
        if pa.types.is_struct(f.type):
            out += [f"{f.name}.{c.name}" for c in f.type]
        elif pa.types.is_list(f.type):
            out.append(f"{f.name}.list.element")
        else:
            out.append(f.name)
    return out


_LEAVES = _leaf_columns(SCHEMA)
_SMALL = [c for c in _LEAVES if c not in _BYTES_COLUMNS]
_WRITER_OPTIONS: dict[str, Any] = {
    # Images and masks are compressed already (JPEG, PNG), and the other columns are a few dozen
    # bytes a row: no compression (it would cost time and save nothing); bytes columns have no
    # dictionary and no statistics.
    "compression": "NONE",
    "use_dictionary": ["blur_type", "source", "split", "annotators.list.element"],
    "write_statistics": [c for c in _SMALL if not c.endswith(".path")],
    "write_page_index": False,
    "sorting_columns": [pq.SortingColumn(0)],  # rows sorted by id
}


class ReleaseError(InputError):
    """A release cannot be built or published as asked; the message says why and what to do."""


class NothingToRelease(ReleaseError):
    """The selection holds no image with a blur mask."""


class ReleaseVerificationError(BlursetError, RuntimeError):
    """``verify_release`` found problems; ``.report`` lists them file by file."""

    def __init__(self, report: VerifyReport):
        self.report = report
        lines = [f"  {p.file}: {p.message}" for p in report.problems[:20]]
        more = len(report.problems) - len(lines)
        super().__init__(f"release {report.path} failed verification "
                         f"({len(report.problems)} problem(s)):\n" + "\n".join(lines)
                         + (f"\n  … and {more} more" if more > 0 else ""))


# --------------------------------------------------------------------------------------------
# Versions, names, splits


def validate_version(version: str) -> str:
    """A semantic version (``1.0.0``, ``2.1.0-rc.1``); build metadata (``+…``) is refused."""
    if not isinstance(version, str) or not _SEMVER.match(version):
        raise ReleaseError(f"version {version!r} is not a semantic version MAJOR.MINOR.PATCH "
                           "(e.g. 1.0.0, or 1.1.0-rc.1 for a pre-release)")
    return version


def version_key(version: str) -> tuple:
    """Sort key in semver precedence: 1.0.0-rc.1 < 1.0.0 < 1.0.1 < 1.10.0."""
    m = _SEMVER.match(validate_version(version))
    assert m
    core = tuple(int(x) for x in m.group(1, 2, 3))
    pre = m.group(4)
    if pre is None:
        return (*core, 1, ())
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (*core, 0, ids)


def _validate_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ReleaseError(f"release name {name!r} must be a folder name of letters, digits, "
                           "'.', '_' and '-', not starting with '.' (e.g. szu-bd or cuhk)")
    return name


def parse_split(spec: str | Mapping[str, float]) -> dict[str, float]:
    """``"train=0.8,test=0.2"`` (or a mapping) → {split: fraction}; the fractions must sum to 1."""
    if isinstance(spec, str):
        out: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, sep, value = part.partition("=")
            try:
                if not sep:
                    raise ValueError
                out[name.strip()] = float(value)
            except ValueError:
                raise ReleaseError(f"split {spec!r}: {part!r} is not NAME=FRACTION; write e.g. "
                                   f"{DEFAULT_SPLIT!r}") from None
    else:
        out = {str(k): float(v) for k, v in spec.items()}
    if not out:
        raise ReleaseError(f"split {spec!r} names no split; write e.g. {DEFAULT_SPLIT!r}")
    for name, frac in out.items():
        if not _SPLIT_NAME.match(name):
            raise ReleaseError(f"split name {name!r} must be letters, digits and '_' starting "
                               "with a letter (it becomes a file name and a Hugging Face split)")
        if not 0 <= frac <= 1:
            raise ReleaseError(f"split {name}={frac} is not a fraction between 0 and 1")
    if abs(sum(out.values()) - 1) > 1e-6:
        raise ReleaseError(f"split fractions {spec!r} sum to {sum(out.values()):g}, not 1")
    return out


def _entry_name(line: str) -> str | None:
    """A split-file entry → the file name it names, case-folded: ``'motion0001.jpg'`` and
    ``1.bmp--out_of_focus0037.jpg`` (BTBNet's index--name lines) both work."""
    s = line.strip().strip("'\"").strip()
    if not s or s.startswith("#"):
        return None
    s = s.rsplit("--", 1)[-1]
    return s.replace("\\", "/").rsplit("/", 1)[-1].casefold() or None


SplitFile = str | os.PathLike | Mapping[str, str | os.PathLike]


def read_split_file(split_file: SplitFile, splits: Iterable[str]) -> tuple[dict[str, str], dict]:
    """A published split → ({file name (case-folded): split}, provenance of the files read).

    ``split_file`` is a mapping {split: list file}, a path holding ``{split}`` (one list per
    split of the ratios, e.g. ``kim_pg2018_{split}_list.txt``), or one file of ``name split``
    lines. List files hold one file name a line, quoted or not.
    """
    lists: dict[str, Path] = {}
    if isinstance(split_file, Mapping):
        lists = {str(k): Path(v) for k, v in split_file.items()}
    elif "{split}" in str(split_file):
        lists = {s: Path(str(split_file).replace("{split}", s)) for s in splits}
    names: dict[str, str] = {}
    files: dict[str, dict] = {}

    def add(name: str, split: str, where: str) -> None:
        if not _SPLIT_NAME.match(split):
            raise ReleaseError(f"{where}: split {split!r} must be letters, digits and '_'")
        if names.get(name, split) != split:
            raise ReleaseError(f"{where}: {name} is listed in both {names[name]} and {split}")
        names[name] = split

    def text(path: Path) -> str:
        if not path.is_file():
            raise ReleaseError(f"split file {path} does not exist")
        data = path.read_bytes()
        files[str(path)] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        return data.decode("utf-8-sig")

    if lists:
        for split, path in lists.items():
            for line in text(path).splitlines():
                if (name := _entry_name(line)) is not None:
                    add(name, split, str(path))
    else:
        path = Path(split_file)
        for i, line in enumerate(text(path).splitlines(), 1):
            parts = line.replace(",", " ").replace("\t", " ").split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) != 2:
                raise ReleaseError(f"{path}:{i}: expected 'NAME SPLIT', got {line!r}; or pass "
                                   "{split: list file} / a path with '{split}' for name lists")
            if (name := _entry_name(parts[0])) is not None:
                add(name, parts[1], f"{path}:{i}")
    return names, files


def _largest_remainder(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` into integers proportional to ``weights`` (ties go to the earlier key)."""
    wsum = sum(weights.values())
    if total <= 0 or wsum <= 0:
        return dict.fromkeys(weights, 0)
    exact = {k: total * w / wsum for k, w in weights.items()}
    out = {k: int(v) for k, v in exact.items()}
    order = sorted(weights, key=lambda k: (-(exact[k] - out[k]), list(weights).index(k)))
    for k in order[:total - sum(out.values())]:
        out[k] += 1
    return out


def split_order(image_id: str) -> str:
    """The order images are dealt out to splits: a hash of the id alone, so it is the same in
    every release and on every run."""
    return hashlib.sha256(f"blurset-split\0{image_id}".encode()).hexdigest()


def assign_splits(rows: Sequence[tuple[str, str]], ratios: Mapping[str, float],
                  fixed: Mapping[str, str] | None = None,
                  inherited: Mapping[str, str] | None = None) -> dict[str, str]:
    """(image id, blur type) → {image id: split}.

    ``fixed`` splits (from a split file) are kept and left out of the ratios. ``inherited``
    splits (from the parent version) are kept and count towards the ratios. The rest are dealt
    out per blur type so that every blur type's counts come as close to the ratios as the kept
    ones allow, in ``split_order``.
    """
    fixed, inherited = fixed or {}, inherited or {}
    out = {i: fixed[i] for i, _ in rows if i in fixed}
    strata: dict[str, list[str]] = defaultdict(list)
    for image_id, blur_type in rows:
        if image_id not in out:
            strata[blur_type].append(image_id)
    for ids in strata.values():
        kept = Counter(inherited[i] for i in ids if inherited.get(i) in ratios)
        new = sorted((i for i in ids if inherited.get(i) not in ratios), key=split_order)
        target = _largest_remainder(len(ids), ratios)
        need = {s: max(0, target[s] - kept[s]) for s in ratios}
        counts = need if sum(need.values()) == len(new) else _largest_remainder(len(new), need)
        for i in ids:
            if inherited.get(i) in ratios:
                out[i] = inherited[i]
        start = 0
        for s in ratios:
            for i in new[start:start + counts[s]]:
                out[i] = s
            start += counts[s]
    return out


# --------------------------------------------------------------------------------------------
# Selection


@dataclass(frozen=True)
class Candidate:
    """One image chosen for the release, with its mask and provenance."""

    image_id: str
    source: str
    source_path: str
    mask_object: str
    mask_origin: str  # ground-truth | annotation:<project>#<id>
    blur_type: str
    blur_degree: float | None
    annotators: tuple[str, ...]
    annotation_ids: tuple[int, ...]
    width: int
    height: int
    phash: str
    object_path: str
    agreement_iou: float | None = None
    prelabel: str | None = None


@dataclass
class Selection:
    rows: list[Candidate]
    candidates: int  # images with a blur mask in the chosen sources/projects
    dropped: list[dict]  # {image_id, source, path, why, reason}
    sources: list[str]
    projects: list[str]
    queries: dict[str, str]


def _sql(catalog: Catalog, q: Any) -> str:
    return str(q.compile(catalog.engine, compile_kwargs={"literal_binds": True}))


def select_images(catalog: Catalog, from_sources: Sequence[str] | None = None,
                  projects: Sequence[str] | None = None) -> Selection:
    """The images a release of these sources' ground truth and projects' annotations holds.

    With neither given: every source's ground truth and every project. With one given, only it.
    """
    known_sources = [s["name"] for s in catalog.list_sources()]
    known_projects = sorted({t["project"] for t in catalog.task_projects()})
    if from_sources is None and projects is None:
        srcs, projs = known_sources, known_projects
    else:
        srcs, projs = list(from_sources or []), list(projects or [])
    if unknown := [s for s in srcs if s not in known_sources]:
        raise ReleaseError(f"source(s) {', '.join(unknown)} not in the catalog; ingested: "
                           f"{', '.join(known_sources) or 'none'}")
    if unknown := [p for p in projs if p not in known_projects]:
        raise ReleaseError(f"project(s) {', '.join(unknown)} have no task in the catalog; known: "
                           f"{', '.join(known_projects) or 'none'} (run `blurset annotate push`)")

    t, a = annotation_tasks, annotations
    ann_q = (select(t.c.server, t.c.project, t.c.project_id, t.c.task_id, t.c.image_id,
                    t.c.source, t.c.rel_path, t.c.prelabel, t.c.current_annotation_id,
                    t.c.blur_type, t.c.annotators, t.c.agreement_iou, t.c.updated_at,
                    a.c.mask_object, a.c.blur_degree, a.c.blur_type.label("annotation_blur_type"),
                    a.c.annotator)
             .join(a, and_(a.c.server == t.c.server, a.c.project_id == t.c.project_id,
                           a.c.annotation_id == t.c.current_annotation_id))
             .where(t.c.status == "annotated", a.c.mask_object.is_not(None),
                    t.c.project.in_(projs))
             .order_by(t.c.project, t.c.updated_at.desc(), t.c.task_id))
    ids_q = (select(a.c.server, a.c.project_id, a.c.task_id, a.c.annotation_id)
             .join(t, and_(a.c.server == t.c.server, a.c.project_id == t.c.project_id,
                           a.c.task_id == t.c.task_id))
             .where(t.c.project.in_(projs)).order_by(a.c.annotation_id))
    gt_q = (select(masks.c.id, masks.c.image_id, masks.c.source, masks.c.object_path,
                   masks.c.blur_degree)
            .where(masks.c.kind == "blur", masks.c.origin == "ground-truth",
                   masks.c.source.in_(srcs))
            .order_by(masks.c.id))
    rejected_q = select(t.c.image_id).where(t.c.status == "rejected").distinct()
    paths_q = (select(image_paths.c.source, image_paths.c.rel_path, image_paths.c.image_id,
                      image_paths.c.blur_type, image_paths.c.excluded, images.c.width,
                      images.c.height, images.c.phash, images.c.object_path)
               .join(images, images.c.id == image_paths.c.image_id)
               .order_by(image_paths.c.source, image_paths.c.rel_path))
    with catalog.engine.connect() as c:
        ann_rows = [dict(r) for r in c.execute(ann_q).mappings()]
        ids_of: dict[tuple, list[int]] = defaultdict(list)
        for r in c.execute(ids_q).mappings():
            ids_of[(r["server"], r["project_id"], r["task_id"])].append(r["annotation_id"])
        gt_rows = [dict(r) for r in c.execute(gt_q).mappings()]
        rejected = {r[0] for r in c.execute(rejected_q)}
        paths: dict[tuple[str, str], list[dict]] = defaultdict(list)  # (source, id) → paths
        for r in c.execute(paths_q).mappings():
            paths[(r["source"], r["image_id"])].append(dict(r))

    # Annotations first (project order, newest task first), then ground truth (source order,
    # newest mask first): the first mask found for an image is its mask.
    proj_rank = {p: i for i, p in enumerate(projs)}
    ann_rows.sort(key=lambda r: proj_rank[r["project"]])
    src_rank = {s: i for i, s in enumerate(srcs)}
    gt_rows.sort(key=lambda r: (src_rank[r["source"]], -r["id"]))
    offers: list[tuple[str, dict]] = [("annotation", r) for r in ann_rows]
    offers += [("ground-truth", r) for r in gt_rows]

    chosen: dict[str, Candidate] = {}
    annotated_ids = {r["image_id"] for r in ann_rows}
    dropped: dict[str, dict] = {}
    seen: set[str] = set()
    for kind, r in offers:
        image_id = r["image_id"]
        if image_id in chosen:
            continue
        seen.add(image_id)
        here = paths.get((r["source"], image_id), [])
        kept = [p for p in here if p["excluded"] is None]
        if kind == "annotation":
            kept.sort(key=lambda p: p["rel_path"] != r["rel_path"])  # the task's own path first
        if not kept:
            where = next((p for p in here if p["rel_path"] == r.get("rel_path")),
                         here[0] if here else None)
            why = "duplicate" if where and where["excluded"] else "no path"
            reason = where["excluded"] if where else "no path of this image left in its source"
            dropped.setdefault(image_id, {"image_id": image_id, "source": r["source"],
                                          "path": where["rel_path"] if where else None,
                                          "why": why, "reason": reason})
            continue
        p = kept[0]
        if kind == "ground-truth" and image_id in rejected and image_id not in annotated_ids:
            dropped.setdefault(image_id, {"image_id": image_id, "source": r["source"],
                                          "path": p["rel_path"], "why": "rejected",
                                          "reason": "rejected by an annotator"})
            continue
        if kind == "annotation":
            blur_type = r["annotation_blur_type"] or r["blur_type"] or p["blur_type"]
        else:
            blur_type = p["blur_type"]
        if blur_type not in BLUR_TYPES:
            dropped.setdefault(image_id, {
                "image_id": image_id, "source": r["source"], "path": p["rel_path"],
                "why": "no blur type",
                "reason": f"blur type {blur_type!r} is not one of {', '.join(BLUR_TYPES)}"})
            continue
        dropped.pop(image_id, None)
        if kind == "annotation":
            annotators = tuple(json.loads(r["annotators"] or "[]")) or (r["annotator"],)
            cand = Candidate(
                image_id, r["source"], p["rel_path"], r["mask_object"],
                f"annotation:{r['project']}#{r['current_annotation_id']}", blur_type,
                r["blur_degree"], tuple(sorted(annotators)),
                tuple(ids_of[(r["server"], r["project_id"], r["task_id"])]),
                p["width"], p["height"], p["phash"], p["object_path"], r["agreement_iou"],
                r["prelabel"])
        else:
            cand = Candidate(image_id, r["source"], p["rel_path"], r["object_path"],
                             "ground-truth", blur_type, r["blur_degree"], (), (), p["width"],
                             p["height"], p["phash"], p["object_path"])
        chosen[image_id] = cand
    queries = {"annotated": _sql(catalog, ann_q), "annotation_ids": _sql(catalog, ids_q),
               "ground_truth": _sql(catalog, gt_q), "rejected": _sql(catalog, rejected_q),
               "paths": _sql(catalog, paths_q)}
    return Selection(rows=sorted(chosen.values(), key=lambda c: c.image_id), candidates=len(seen),
                     dropped=sorted(dropped.values(), key=lambda d: (d["source"], d["path"] or "")),
                     sources=srcs, projects=projs, queries=queries)


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the release folder
    split: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ReleaseInfo:
    name: str
    version: str
    path: Path
    parent: str | None
    rows: int
    splits: dict[str, int]
    shards: list[ShardInfo]
    dropped: dict[str, int]
    manifest_sha256: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step (not stored)


@dataclass(frozen=True)
class ReleaseSummary:
    name: str
    version: str
    path: Path
    parent: str | None
    rows: int
    splits: dict[str, int]
    created_at: str | None


@dataclass(frozen=True)
class Problem:
    file: str
    message: str


@dataclass
class VerifyReport:
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


@dataclass(frozen=True)
class ReleaseDiff:
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


# --------------------------------------------------------------------------------------------
# Writing


def _sha256_file(path: Path, chunk: int = 4 * 2**20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _plan_shards(rows: Sequence[tuple[Candidate, int]], shard_bytes: int) -> list[list[Candidate]]:
    shards: list[list[Candidate]] = [[]]
    size = 0
    for cand, nbytes in rows:
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(cand)
        size += nbytes
    return shards


def _row_groups(rows: Sequence[Candidate], sizes: Mapping[str, int],
                max_rows: int) -> Iterator[list[Candidate]]:
    group: list[Candidate] = []
    size = 0
    for cand in rows:
        if group and (len(group) >= max_rows or size + sizes[cand.image_id] > ROW_GROUP_BYTES):
            yield group
            group, size = [], 0
        group.append(cand)
        size += sizes[cand.image_id]
    if group:
        yield group


def _blur_degree(cand: Candidate, mask: bytes | memoryview) -> float:
    if cand.blur_degree is not None:
        return float(cand.blur_degree)
    with Image.open(io.BytesIO(mask)) as im:
        return float(np.asarray(im.convert("L"), dtype=np.float64).mean() / 255.0)


class _GroupReader:
    """Reads a row group's image and mask objects straight into an Arrow buffer.

    Two buffers take turns (one being filled for the next row group while the other is encoded)
    and are reused: a row group is written out in full before its buffer is filled again, and
    not copying or page-faulting a fresh buffer per group is most of the speed of a shard.
    """

    def __init__(self, root: str):
        self.root = root
        self._buffers = [np.empty(0, np.uint8), np.empty(0, np.uint8)]

    def read(self, slot: int, group: Sequence[Candidate]
             ) -> tuple[pa.BinaryArray, pa.BinaryArray, list[memoryview]]:
        rels = [c.object_path for c in group] + [c.mask_object for c in group]
        buf = self._buffers[slot]
        offsets = np.zeros(len(rels) + 1, np.int64)
        pos = 0
        for i, rel in enumerate(rels):
            with open(os.path.join(self.root, rel), "rb", buffering=0) as fh:
                size = os.fstat(fh.fileno()).st_size
                if pos + size > len(buf):
                    grown = np.empty(max(pos + size, 2 * len(buf), 2**20), np.uint8)
                    grown[:pos] = buf[:pos]
                    buf = self._buffers[slot] = grown
                view = memoryview(buf)
                end = pos + size
                while pos < end and (n := fh.readinto(view[pos:end])):
                    pos += n
                if pos != end:
                    raise ReleaseError(f"object {rel} ended after {pos - int(offsets[i])} of "
                                       f"its {size} bytes while being read")
            offsets[i + 1] = pos
        n, split_at = len(group), int(offsets[len(group)])
        if pos >= 2**31:
            raise ReleaseError(f"a row group of {pos} bytes: lower row_group_rows")

        def binary(lo: int, hi: int, off: np.ndarray) -> pa.BinaryArray:
            return pa.Array.from_buffers(pa.binary(), len(off) - 1, [
                None, pa.py_buffer((off - lo).astype(np.int32)), pa.py_buffer(buf[lo:hi])])
        view = memoryview(buf)
        mask_views = [view[int(offsets[n + i]):int(offsets[n + i + 1])] for i in range(n)]
        return binary(0, split_at, offsets[:n + 1]), binary(split_at, pos, offsets[n:]), mask_views


def _group_table(group: Sequence[Candidate], images_: pa.BinaryArray, masks_: pa.BinaryArray,
                 degrees: list[float], split: str) -> pa.Table:
    n = len(group)
    names = [posixpath.basename(c.source_path) for c in group]

    def struct(data: pa.BinaryArray, paths: list[str]) -> pa.StructArray:
        return pa.StructArray.from_arrays([data, pa.array(paths, pa.string())],
                                          fields=list(_IMAGE))
    return pa.Table.from_arrays([
        pa.array([c.image_id for c in group], pa.string()),
        struct(images_, names),
        struct(masks_, [posixpath.splitext(name)[0] + ".png" for name in names]),
        pa.array([c.width for c in group], pa.int32()),
        pa.array([c.height for c in group], pa.int32()),
        pa.array([c.blur_type for c in group], pa.string()),
        pa.array([c.source for c in group], pa.string()),
        pa.array([c.source_path for c in group], pa.string()),
        pa.array([split] * n, pa.string()),
        pa.array([c.phash for c in group], pa.string()),
        pa.array([list(c.annotators) for c in group], pa.list_(pa.string())),
        pa.array([list(c.annotation_ids) for c in group], pa.list_(pa.int64())),
        pa.array(degrees, pa.float64()),
    ], schema=SCHEMA)


_FADVISE = hasattr(os, "posix_fadvise") and sys.platform.startswith("linux")


class _FileHasher:
    """sha256 of a file that is being appended to, hashed range by range in a thread of its own
    as the ranges are complete (hashlib and pread release the GIL), so a shard is hashed while
    the next row group is encoded instead of being read back at the end."""

    def __init__(self, path: Path, pool: ThreadPoolExecutor):
        self._fd = os.open(path, os.O_RDONLY)
        self._pool = pool
        self._sha = hashlib.sha256()
        self._pos = 0
        self._buffer = bytearray(2**20)  # reused: no fresh memory to fault in per range
        self._jobs: list[Future] = []

    def upto(self, end: int) -> None:
        """Hash the bytes up to ``end`` (already written) after those asked for before."""
        self._jobs.append(self._pool.submit(self._hash, end))

    def _hash(self, end: int) -> None:
        view = memoryview(self._buffer)
        start = self._pos
        while self._pos < end:
            n = os.preadv(self._fd, [view[:min(end - self._pos, len(view))]], self._pos)
            if not n:
                raise ReleaseError(f"shard ended at {self._pos} bytes, expected {end}")
            self._sha.update(view[:n])
            self._pos += n
        if _FADVISE and end > start:
            # Linux starts writing the hashed range back now (without waiting for it), so the
            # fsync that closes the shard has little left to do.
            os.posix_fadvise(self._fd, start, end - start, os.POSIX_FADV_DONTNEED)

    def hexdigest(self) -> str:
        try:
            for job in self._jobs:
                job.result()
        finally:
            os.close(self._fd)
        return self._sha.hexdigest()


def write_shard(path: Path, rows: Sequence[Candidate], split: str, ws: Workspace,
                sizes: Mapping[str, int], row_group_rows: int = ROW_GROUP_ROWS, *,
                fsync: bool = True) -> tuple[str, dict]:
    """Write one shard (a new file); returns its sha256 and {id: (mask sha256, blur degree)}.

    Three things run at once: a thread reads the next row group's objects, this one encodes the
    current group into the file (natively, without the GIL), another hashes what is written.
    ``fsync=False`` leaves the fsync to the caller (who may overlap it with the next shard).
    """
    seen: dict[str, tuple[str, float]] = {}
    objects = _GroupReader(str(ws.objects.root))
    groups = list(_row_groups(rows, sizes, row_group_rows))
    path.open("xb").close()  # a new file, never an existing one; then written natively
    with ThreadPoolExecutor(1, thread_name_prefix="release-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="release-hash") as hashing:
        hasher = _FileHasher(path, hashing)
        try:
            with pa.OSFile(str(path), mode="w") as sink, \
                    pq.ParquetWriter(sink, SCHEMA, **_WRITER_OPTIONS) as writer:
                pending = reader.submit(objects.read, 0, groups[0]) if groups else None
                for k, group in enumerate(groups):
                    assert pending is not None
                    images_, masks_, mask_bytes = pending.result()
                    if k + 1 < len(groups):  # the other buffer: its group is written out
                        pending = reader.submit(objects.read, (k + 1) % 2, groups[k + 1])
                    degrees = [_blur_degree(c, m) for c, m in zip(group, mask_bytes, strict=True)]
                    for c, m, d in zip(group, mask_bytes, degrees, strict=True):
                        seen[c.image_id] = (hashlib.sha256(m).hexdigest(), d)
                    writer.write_table(_group_table(group, images_, masks_, degrees, split),
                                       row_group_size=len(group))
                    hasher.upto(sink.tell())
            synced = reader.submit(_fsync_file, path) if fsync else None
            hasher.upto(path.stat().st_size)
        finally:
            digest = hasher.hexdigest()
        if synced is not None:
            synced.result()
    return digest, seen


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _existing_versions(out_root: Path, name: str) -> list[str]:
    folder = out_root / name
    if not folder.is_dir():
        return []
    return sorted((p.name for p in folder.iterdir()
                   if _SEMVER.match(p.name) and (p / MANIFEST).is_file()), key=version_key)


def _release_index(path: Path) -> dict[str, tuple[str, str]]:
    """{id: (split, sha256 of the mask bytes)} of a release's shards."""
    out: dict[str, tuple[str, str]] = {}
    for shard in sorted((Path(path) / "data").glob("*.parquet")):
        table = pq.read_table(shard, columns=["id", "split", "mask"])
        masks_ = table.column("mask").combine_chunks().field("bytes").to_pylist()
        for image_id, split, mask in zip(table.column("id").to_pylist(),
                                         table.column("split").to_pylist(), masks_, strict=True):
            out[image_id] = (split, hashlib.sha256(mask or b"").hexdigest())
    return out


def _diff(a_name: str, b_name: str, a: Mapping[str, tuple[str, str]],
          b: Mapping[str, tuple[str, str]]) -> ReleaseDiff:
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
    """Images added in ``b``, removed from ``a``, and whose mask (by sha256) or split changed."""
    return _diff(_label(Path(a)), _label(Path(b)), _release_index(Path(a)),
                 _release_index(Path(b)))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> dict:
    with path.open("xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return {"path": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def build_release(ws: Workspace, catalog: Catalog, name: str, version: str, *,
                  from_sources: Sequence[str] | None = None,
                  projects: Sequence[str] | None = None,
                  split: str | Mapping[str, float] = DEFAULT_SPLIT,
                  split_file: SplitFile | None = None,
                  inherit_splits: bool = True,
                  shard_bytes: int = DEFAULT_SHARD_BYTES,
                  row_group_rows: int = ROW_GROUP_ROWS,
                  license: str = "other",
                  out_root: str | os.PathLike | None = None,
                  template: str | os.PathLike | None = None,
                  progress: Callable[[int], None] | None = None) -> ReleaseInfo:
    """Build ``<out_root>/<name>/<version>/`` (see the module docstring); refuse if it exists.

    ``inherit_splits``: images of the parent version keep their split. ``progress`` is called
    with the number of rows after each shard.
    """
    _validate_name(name)
    validate_version(version)
    ratios = parse_split(split)
    if not isinstance(shard_bytes, int) or shard_bytes <= 0:
        raise ReleaseError(f"shard_bytes={shard_bytes!r} must be a positive number of bytes")
    if not isinstance(row_group_rows, int) or row_group_rows <= 0:
        raise ReleaseError(f"row_group_rows={row_group_rows!r} must be a positive integer")
    out_root = Path(out_root) if out_root is not None else ws.root / "releases"
    final = out_root / name / version
    if final.exists():
        raise FileExistsError(f"release {name} {version} already exists at {final}; a published "
                              "version is immutable: build a new version instead")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    sel = select_images(catalog, from_sources, projects)
    if not sel.rows:
        raise NothingToRelease(
            f"no image with a blur mask in sources {sel.sources or '[]'} and projects "
            f"{sel.projects or '[]'} ({sel.candidates} candidate(s), {len(sel.dropped)} dropped); "
            "ingest a source with ground truth or pull annotations first")
    listed: dict[str, str] = {}
    split_files: dict = {}
    if split_file is not None:
        listed, split_files = read_split_file(split_file, ratios)
    fixed = {c.image_id: listed[Path(c.source_path).name.casefold()]
             for c in sel.rows if Path(c.source_path).name.casefold() in listed}
    matched = {Path(c.source_path).name.casefold() for c in sel.rows} & listed.keys()
    parent = next((v for v in reversed(_existing_versions(out_root, name))
                   if version_key(v) < version_key(version)), None)
    parent_index = _release_index(out_root / name / parent) if parent else {}
    inherited = {i: s for i, (s, _) in parent_index.items()} if inherit_splits else {}
    splits = assign_splits([(c.image_id, c.blur_type) for c in sel.rows], ratios, fixed, inherited)
    split_names = list(ratios) + sorted({s for s in splits.values()} - ratios.keys())
    timings["select"] = time.perf_counter() - t0

    sizes = {}
    for c in sel.rows:
        try:
            sizes[c.image_id] = ((ws.objects.root / c.object_path).stat().st_size
                                 + (ws.objects.root / c.mask_object).stat().st_size)
        except FileNotFoundError as e:
            raise ReleaseError(f"object {e.filename} of image {c.source}/{c.source_path} is "
                               f"missing from the object store {ws.objects.root}; re-ingest "
                               "the source to restore it") from None

    (out_root / name).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=out_root / name))
    try:
        t1 = time.perf_counter()
        (tmp / "data").mkdir()
        shards: list[ShardInfo] = []
        index: dict[str, tuple[str, str]] = {}
        degrees: dict[str, float] = {}
        with ThreadPoolExecutor(1, thread_name_prefix="release-fsync") as syncing:
            synced = []  # each shard is fsync'd while the next one is written
            for s in split_names:
                rows = [c for c in sel.rows if splits[c.image_id] == s]
                if not rows:
                    continue
                planned = _plan_shards([(c, sizes[c.image_id]) for c in rows], shard_bytes)
                for i, shard_rows in enumerate(planned):
                    rel = f"data/{s}-{i:05d}-of-{len(planned):05d}.parquet"
                    sha, seen = write_shard(tmp / rel, shard_rows, s, ws, sizes, row_group_rows,
                                            fsync=False)
                    synced.append(syncing.submit(_fsync_file, tmp / rel))
                    shards.append(ShardInfo(rel, s, len(shard_rows), (tmp / rel).stat().st_size,
                                            sha))
                    for image_id, (mask_sha, degree) in seen.items():
                        index[image_id] = (s, mask_sha)
                        degrees[image_id] = degree
                    if progress:
                        progress(len(shard_rows))
            for done in synced:
                done.result()
        _fsync_dir(tmp / "data")
        timings["shards"] = time.perf_counter() - t1
        data_bytes = sum(sizes.values())

        t2 = time.perf_counter()
        changelog = None
        if parent:
            d = _diff(f"{name}@{parent}", f"{name}@{version}", parent_index, index)
            changelog = {"parent": parent, **d.counts(),
                         "moves": dict(Counter(f"{a}→{b}" for _, a, b in d.split_changed))}
        context = _card_context(catalog, ws, name, version, license, parent, sel, splits,
                                split_names, shards, degrees, changelog, ratios, split_files,
                                fixed, inherited)
        hist = _histogram_png(sel.rows, degrees)
        card = _render_card(Path(template) if template else default_template(), context)
        files = [_write_file(tmp / CARD, card.encode("utf-8")),
                 _write_file(tmp / HISTOGRAM, hist)]
        manifest = {
            "format": FORMAT,
            "name": name,
            "version": version,
            "parent": parent,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "rows": len(sel.rows),
            "image_mask_bytes": data_bytes,
            "schema": {"columns": [{"name": f.name, "type": str(f.type)} for f in SCHEMA],
                       "huggingface": {"info": {"features": HF_FEATURES}},
                       "mask_polarity": "255 = blurred, 0 = sharp"},
            "shards": [vars(s) for s in shards],
            "files": files,
            "selection": {
                "catalog": catalog.engine.url.render_as_string(hide_password=True),
                "from_sources": sel.sources, "projects": sel.projects,
                "split": ratios, "split_files": split_files, "inherit_splits": inherit_splits,
                "split_file_entries": len(listed), "split_file_matched": len(matched),
                "split_file_unmatched_examples": sorted(listed.keys() - matched)[:10],
                "queries": sel.queries,
            },
            "counts": {
                "candidates": sel.candidates,
                "rows": len(sel.rows),
                "by_split": {s: sum(1 for v in splits.values() if v == s) for s in split_names},
                "by_split_blur_type_source": _counts_table(sel.rows, splits),
                "dropped": dict(Counter(d["why"] for d in sel.dropped)),
                "split_assigned_by": {
                    "split_file": len(fixed),
                    "parent": sum(1 for c in sel.rows
                                  if c.image_id not in fixed and c.image_id in inherited),
                    "ratios": sum(1 for c in sel.rows
                                  if c.image_id not in fixed and c.image_id not in inherited)},
            },
            "dropped": sel.dropped,
            "changelog": changelog,
        }
        raw = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        _write_file(tmp / MANIFEST, raw)
        manifest_sha = hashlib.sha256(raw).hexdigest()
        _write_file(tmp / MANIFEST_SUM, f"{manifest_sha}  {MANIFEST}\n".encode())
        _fsync_dir(tmp)
        timings["card_manifest"] = time.perf_counter() - t2
        try:
            os.rename(tmp, final)
        except OSError as e:  # another build of this version finished first
            raise FileExistsError(f"release {name} {version} appeared at {final} while it was "
                                  f"being built ({e.strerror}); nothing was replaced") from None
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    catalog.record_release(name, version, str(final), parent, manifest_sha, len(sel.rows),
                           manifest["created_at"])
    timings["total"] = time.perf_counter() - t0
    by_split = manifest["counts"]["by_split"]
    return ReleaseInfo(name, version, final, parent, len(sel.rows),
                       {s: n for s, n in by_split.items() if n}, shards,
                       manifest["counts"]["dropped"], manifest_sha, timings)


def _counts_table(rows: Sequence[Candidate], splits: Mapping[str, str]) -> list[dict]:
    counts = Counter((splits[c.image_id], c.blur_type, c.source) for c in rows)
    return [{"split": s, "blur_type": b, "source": src, "rows": n}
            for (s, b, src), n in sorted(counts.items())]


# --------------------------------------------------------------------------------------------
# The dataset card


def _size_category(n: int) -> str:
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
              (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]
    return next((label for bound, label in bounds if n < bound), "n>100M")


def _yaml_feature(name: str, t: pa.DataType) -> dict:
    if t == _IMAGE:
        return {"name": name, "dtype": "image"}
    if pa.types.is_list(t):
        return {"name": name, "sequence": HF_FEATURES[name]["feature"]["dtype"]}
    return {"name": name, "dtype": HF_FEATURES[name]["dtype"]}


def _stats(values: Sequence[float], digits: int = 3) -> dict | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    q = np.quantile(arr, [0, 0.25, 0.5, 0.75, 1])

    def fmt(v: float) -> float | int:
        return round(float(v), digits) if digits else round(float(v))
    return {"n": len(arr), "mean": round(float(arr.mean()), max(digits, 1)),
            **{k: fmt(v) for k, v in zip(("min", "p25", "median", "p75", "max"), q, strict=True)}}


def _mask_iou(a: bytes, b: bytes) -> float | None:
    with Image.open(io.BytesIO(a)) as ia, Image.open(io.BytesIO(b)) as ib:
        x, y = np.asarray(ia.convert("L")) > 127, np.asarray(ib.convert("L")) > 127
    if x.shape != y.shape:
        return None
    union = np.logical_or(x, y).sum()
    return 1.0 if union == 0 else float(np.logical_and(x, y).sum() / union)


def _annotation_stats(catalog: Catalog, ws: Workspace, rows: Sequence[Candidate]) -> dict:
    ann = [c for c in rows if c.mask_origin.startswith("annotation:")]
    per_annotator = Counter(a for c in ann for a in c.annotators)
    agreements = [c.agreement_iou for c in ann if c.agreement_iou is not None]
    prelabelled = [c for c in ann if c.prelabel]
    gt_pre = [c for c in prelabelled if c.prelabel.startswith("ground-truth:")]
    accepted = 0
    for c in gt_pre:
        gt = [m for m in catalog.blur_masks(c.image_id) if m["origin"] == "ground-truth"]
        if gt:
            iou = _mask_iou(ws.objects.read(c.mask_object), ws.objects.read(gt[-1]["object_path"]))
            accepted += iou is not None and iou >= 0.99
    by_model = Counter(c.prelabel for c in prelabelled)
    # model pre-labels: the IoU and acceptance that `annotate pull` measured for each task
    measured: dict[str, tuple[float, bool]] = {}
    other_ids = [c.image_id for c in prelabelled if not c.prelabel.startswith("ground-truth:")]
    if other_ids:
        q = (select(annotation_tasks.c.image_id, annotation_tasks.c.prelabel_iou,
                    annotation_tasks.c.prelabel_accepted)
             .where(annotation_tasks.c.image_id.in_(other_ids),
                    annotation_tasks.c.prelabel_iou.is_not(None))
             .order_by(annotation_tasks.c.image_id))
        with catalog.engine.connect() as conn:
            for image_id, iou, ok in conn.execute(q):
                measured.setdefault(image_id, (float(iou), bool(ok)))
    return {
        "annotated": len(ann),
        "ground_truth": len(rows) - len(ann),
        "annotators": sorted(per_annotator.items(), key=lambda kv: (-kv[1], kv[0])),
        "multi_annotated": len(agreements),
        "mean_agreement_iou": round(float(np.mean(agreements)), 4) if agreements else None,
        "prelabelled": len(prelabelled),
        "prelabel_models": sorted(by_model.items()),
        "gt_prelabelled": len(gt_pre),
        "gt_prelabel_accepted": accepted,
        "other_prelabelled": len(prelabelled) - len(gt_pre),
        "model_prelabel_measured": len(measured),
        "model_prelabel_accepted": sum(ok for _, ok in measured.values()),
        "model_prelabel_mean_iou": (round(float(np.mean([i for i, _ in measured.values()])), 4)
                                    if measured else None),
    }


def _provenance(catalog: Catalog, rows: Sequence[Candidate], dropped: Sequence[dict]) -> dict:
    in_release = Counter(c.source for c in rows)
    sources = []
    for s in catalog.list_sources():
        if s["name"] not in in_release and not any(d["source"] == s["name"] for d in dropped):
            continue
        paths = catalog.paths_of(s["name"])
        h = hashlib.sha256()
        for p in sorted(paths, key=lambda p: p["rel_path"]):
            h.update(f"{p['rel_path']}\t{p['image_id']}\n".encode())
        sources.append({"name": s["name"], "kind": s["kind"], "root": s["root"],
                        "paths": len(paths), "rows": in_release.get(s["name"], 0),
                        "fingerprint": h.hexdigest()})
    run = catalog.last_dedup_run()
    findings: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for f in catalog.findings("duplicate"):
        findings[(f["candidate_source"], f["candidate_path"])].append(f)
    by_ref: Counter = Counter()
    for d in dropped:
        if d["why"] != "duplicate":
            continue
        fs = findings.get((d["source"], d["path"]), [])
        f = next((f for f in fs if run and f["reference_source"] == run["reference"]),
                 fs[0] if fs else None)
        key = (f["reference_source"], f["method"]) if f else ("(unknown)", d["reason"])
        by_ref[key] += 1
    dedup = None
    if run is not None:
        dedup = {"run": run["id"], "reference": run["reference"], "created_at": run["created_at"],
                 "threshold": run["threshold"], "params": run["params"],
                 "dropped": [{"reference": r, "method": m, "count": n}
                             for (r, m), n in sorted(by_ref.items())],
                 "total": sum(by_ref.values())}
    return {"sources": sources, "dedup": dedup}


def _card_context(catalog: Catalog, ws: Workspace, name: str, version: str, license: str,
                  parent: str | None, sel: Selection, splits: Mapping[str, str],
                  split_names: Sequence[str], shards: Sequence[ShardInfo],
                  degrees: Mapping[str, float], changelog: dict | None,
                  ratios: Mapping[str, float], split_files: Mapping[str, dict],
                  fixed: Mapping[str, str], inherited: Mapping[str, str]) -> dict:
    rows = sel.rows
    present = [s for s in split_names if any(sh.split == s for sh in shards)]
    split_info = [{"name": s, "rows": sum(sh.rows for sh in shards if sh.split == s),
                   "bytes": sum(sh.bytes for sh in shards if sh.split == s),
                   "shards": sum(1 for sh in shards if sh.split == s)} for s in present]
    total_bytes = sum(sh.bytes for sh in shards)
    front = {
        "license": license,
        "pretty_name": f"{name} {version}",
        "task_categories": ["image-segmentation"],
        "size_categories": [_size_category(len(rows))],
        "tags": ["blur-detection", "defocus-blur", "motion-blur"],
        "configs": [{"config_name": "default", "default": True,
                     "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in present]}],
        "dataset_info": {
            "features": [_yaml_feature(f.name, f.type) for f in SCHEMA],
            "splits": [{"name": s["name"], "num_bytes": s["bytes"], "num_examples": s["rows"]}
                       for s in split_info],
            "download_size": total_bytes,
            "dataset_size": total_bytes,
        },
    }
    sizes = Counter(f"{c.width}×{c.height}" for c in rows)
    by_type = {b: _stats([degrees[c.image_id] for c in rows if c.blur_type == b])
               for b in BLUR_TYPES}
    table = _counts_table(rows, splits)
    return {
        "front_matter": yaml.safe_dump(front, sort_keys=False, allow_unicode=True),
        "name": name, "version": version, "parent": parent, "license": license,
        "rows": len(rows), "splits": split_info, "ratios": ratios,
        "counts": table,
        "totals_by_split": {s["name"]: s["rows"] for s in split_info},
        "columns": [(f.name, str(f.type)) for f in SCHEMA],
        "width": _stats([c.width for c in rows], 0), "height": _stats([c.height for c in rows], 0),
        "common_sizes": sizes.most_common(5),
        "blur_degree": _stats([degrees[c.image_id] for c in rows]),
        "blur_degree_by_type": {b: s for b, s in by_type.items() if s},
        "histogram": HISTOGRAM,
        "provenance": _provenance(catalog, rows, sel.dropped),
        "dropped": dict(Counter(d["why"] for d in sel.dropped)),
        "candidates": sel.candidates,
        "annotation": _annotation_stats(catalog, ws, rows),
        "changelog": changelog,
        "selection": {"sources": sel.sources, "projects": sel.projects,
                      "split_files": split_files, "fixed": len(fixed),
                      "inherited": sum(1 for c in rows
                                       if c.image_id not in fixed and c.image_id in inherited)},
        "shards": shards,
    }


def default_template() -> Path:
    """The dataset card template shipped with blurset (package data)."""
    return Path(str(resources.files("blurset.dataset_cards").joinpath("template.md")))


def _render_card(template: Path, context: dict) -> str:
    if not template.is_file():
        raise ReleaseError(f"dataset card template {template} not found; pass template=PATH")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(template.parent),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True, autoescape=False)
    return env.get_template(template.name).render(**context)


def _histogram_png(rows: Sequence[Candidate], degrees: Mapping[str, float]) -> bytes:
    """Blur degree histogram, one colour per blur type (matplotlib's Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    data = [[degrees[c.image_id] for c in rows if c.blur_type == b] for b in BLUR_TYPES]
    ax.hist(data, bins=np.linspace(0, 1, 21), stacked=True, label=list(BLUR_TYPES))
    ax.set_xlabel("blur degree (share of blurred pixels)")
    ax.set_ylabel("images")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# Listing, verifying, publishing


def list_releases(out_root: str | os.PathLike) -> list[ReleaseSummary]:
    """Every complete release under ``out_root`` (one with a manifest), by name then version."""
    out_root = Path(out_root)
    found = []
    if not out_root.is_dir():
        return found
    for folder in sorted(p for p in out_root.iterdir() if p.is_dir() and _NAME.match(p.name)):
        for version in _existing_versions(out_root, folder.name):
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


def verify_release(path: str | os.PathLike) -> VerifyReport:
    """Recompute every checksum and re-read every row; never raises for a damaged release.

    Checks: the manifest against ``manifest.json.sha256``; every listed file's size and sha256;
    no unlisted file; every shard read in full with the release schema, its row count and split;
    every image's sha256 equal to its id; every mask a PNG of the image's size.
    """
    path = Path(path)
    report = VerifyReport(path)
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
        if (digest := _sha256_file(f)) != entry["sha256"]:
            report.add(rel, f"sha256 {digest} differs from the manifest's {entry['sha256']}")
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if rel not in names:
            report.add(rel, "not listed in the manifest")

    all_ids: list[str] = []
    for shard in manifest["shards"]:
        rel = shard["path"]
        if (path / rel).is_file():
            all_ids += _verify_shard(path / rel, shard, report)
    if len(set(all_ids)) != len(all_ids):
        dup = sorted(i for i, n in Counter(all_ids).items() if n > 1)
        report.add("data/", f"{len(dup)} id(s) in more than one row, e.g. {dup[0]}")
    if manifest.get("rows") != len(all_ids) and report.ok:
        report.add(MANIFEST, f"rows {manifest.get('rows')} but the shards hold {len(all_ids)}")
    return report


def _verify_shard(file: Path, entry: Mapping, report: VerifyReport) -> list[str]:
    rel = entry["path"]
    m = _SHARD.match(rel)
    split = m.group(1) if m else None
    ids: list[str] = []
    try:
        pf = pq.ParquetFile(file)
        if not pf.schema_arrow.equals(SCHEMA, check_metadata=False):
            report.add(rel, f"schema differs from the release schema: {pf.schema_arrow}")
            return ids
        if (pf.schema_arrow.metadata or {}).get(b"huggingface") != SCHEMA.metadata[b"huggingface"]:
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
    if split is not None and row["split"] != split:
        report.add(rel, f"{where}: split {row['split']!r} in a {split} shard")
    if row["blur_type"] not in BLUR_TYPES:
        report.add(rel, f"{where}: blur type {row['blur_type']!r}")


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
    verify_release(path).raise_for_problems()
    manifest = json.loads((path / MANIFEST).read_bytes())
    name, version = manifest["name"], manifest["version"]
    fs, base = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    base = base.rstrip("/")
    dest = f"{base}/{name}/{version}"
    shown = f"{url.rstrip('/')}/{name}/{version}"
    if fs.exists(f"{dest}/{MANIFEST}"):
        raise FileExistsError(f"{name} {version} is already published at {shown}; a published "
                              "version is never overwritten: publish a new version")
    files = [e["path"] for e in (*manifest["shards"], *manifest["files"])]
    files += [MANIFEST_SUM, MANIFEST]  # the manifest last: it marks a complete copy

    if isinstance(fs, LocalFileSystem):
        final = Path(dest)
        if final.exists():
            raise FileExistsError(f"{final} exists (without a manifest); remove it or publish "
                                  "elsewhere: nothing was copied")
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
        try:
            for rel in files:
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path / rel, target)
                with target.open("rb+") as fh:
                    os.fsync(fh.fileno())
            _fsync_dir(tmp / "data")
            _fsync_dir(tmp)
            try:
                os.rename(tmp, final)
            except OSError as e:
                raise FileExistsError(f"{final} appeared while publishing ({e.strerror}); "
                                      "nothing was replaced") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
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
