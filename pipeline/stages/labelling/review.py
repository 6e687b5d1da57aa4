"""Disagreement between annotators: every pair of people who labelled one task, compared on the
mask (IoU) and the blur type; the tasks they disagree on, with a contact sheet of their masks
side by side; and ``resolve``, which records the annotation a release takes.

Read from the catalog as of the last pull, and the masks from the object store: nothing here
asks Label Studio.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from blurset.annotation.export import mask_iou
from blurset.errors import InputError, NotFoundError
from blurset.fileio import atomic_write
from blurset.pipeline.catalog import Catalog

ReadObject = Callable[[str], bytes]
DISAGREE_BELOW = 0.8  # a pair whose masks overlap less than this (IoU) disagrees


@dataclass(frozen=True)
class Opinion:
    """One annotator's latest submitted annotation of a task."""

    annotation_id: int
    annotator: str
    blur_type: str | None
    rejected: str | None
    mask_object: str | None


@dataclass(frozen=True)
class PairComparison:
    """Two annotators on one task. ``iou``: of their masks (0 when one rejected the image and the
    other painted it, None when both rejected it or a mask is unusable); ``same_blur_type``: None
    unless both chose one."""

    task_id: int
    image_id: str
    where: str  # source/path
    a: Opinion
    b: Opinion
    iou: float | None
    same_blur_type: bool | None

    def disagrees(self, below: float) -> bool:
        return ((self.iou is not None and self.iou < below) or self.same_blur_type is False
                or (self.a.rejected is None) != (self.b.rejected is None))


@dataclass(frozen=True)
class Agreement:
    """Agreement over several pairs: how many, mean mask IoU, share with the same blur type."""

    pairs: int = 0
    mean_iou: float | None = None
    same_blur_type_share: float | None = None

    @classmethod
    def of(cls, pairs: Iterable[PairComparison]) -> Agreement:
        pairs = list(pairs)
        ious = [p.iou for p in pairs if p.iou is not None]
        types = [p.same_blur_type for p in pairs if p.same_blur_type is not None]
        return cls(len(pairs), round(float(np.mean(ious)), 4) if ious else None,
                   round(float(np.mean(types)), 4) if types else None)


def opinions(catalog: Catalog, server: str, project_id: int) -> dict[int, list[Opinion]]:
    """task id → each annotator's latest submitted annotation, by annotator."""
    latest: dict[tuple[int, str], dict] = {}
    for a in catalog.annotations_of(server, project_id):
        key = (a["task_id"], a["annotator"])
        old = latest.get(key)
        if old is None or (a["updated_at"] or "", a["annotation_id"]) >= (
                old["updated_at"] or "", old["annotation_id"]):
            latest[key] = a
    out: dict[int, list[Opinion]] = {}
    for (task_id, annotator), a in sorted(latest.items()):
        out.setdefault(task_id, []).append(Opinion(a["annotation_id"], annotator, a["blur_type"],
                                                   a["rejected"], a["mask_object"]))
    return out


def compare_pairs(catalog: Catalog, read: ReadObject, server: str,
                  project_id: int) -> list[PairComparison]:
    """Every pair of annotators on every task more than one person labelled."""
    tasks = {t["task_id"]: t for t in catalog.tasks(server, project_id)}
    out = []
    for task_id, ops in opinions(catalog, server, project_id).items():
        t = tasks.get(task_id)
        if t is None or len(ops) < 2:
            continue
        masks = {o.annotation_id: _mask(read, o.mask_object) for o in ops}
        for a, b in combinations(ops, 2):
            out.append(PairComparison(task_id, t["image_id"], f"{t['source']}/{t['rel_path']}",
                                      a, b, _pair_iou(a, b, masks), _same_type(a, b)))
    return out


def by_annotator(pairs: Iterable[PairComparison]) -> dict[str, Agreement]:
    """Each annotator's agreement with everyone they shared a task with."""
    pairs = list(pairs)
    people = sorted({p.a.annotator for p in pairs} | {p.b.annotator for p in pairs})
    return {who: Agreement.of(p for p in pairs if who in (p.a.annotator, p.b.annotator))
            for who in people}


def by_pair(pairs: Iterable[PairComparison]) -> dict[str, Agreement]:
    """Agreement of each pair of annotators (``a@x + b@y``, names sorted)."""
    grouped: dict[str, list[PairComparison]] = {}
    for p in pairs:
        grouped.setdefault(" + ".join(sorted((p.a.annotator, p.b.annotator))), []).append(p)
    return {k: Agreement.of(v) for k, v in sorted(grouped.items())}


@dataclass
class ReviewReport:
    project: str
    below: float
    compared_tasks: int = 0
    disagreements: list[PairComparison] = field(default_factory=list)
    contact_sheet: Path | None = None


def review(catalog: Catalog, read: ReadObject, server: str, project_id: int, project: str,
           below: float = DISAGREE_BELOW, sheet: Path | None = None) -> ReviewReport:
    """The tasks whose annotators disagree (mask IoU below ``below``, another blur type, or one
    rejected what the other painted), and with ``sheet`` a contact sheet of their masks side by
    side, one row per disagreeing pair."""
    if not 0 < below <= 1:
        raise InputError(f"--below {below}: a mask IoU threshold lies in (0, 1]")
    pairs = compare_pairs(catalog, read, server, project_id)
    report = ReviewReport(project, below, compared_tasks=len({p.task_id for p in pairs}))
    report.disagreements = sorted((p for p in pairs if p.disagrees(below)),
                                  key=lambda p: (p.iou if p.iou is not None else -1, p.task_id))
    if sheet is not None and report.disagreements:
        report.contact_sheet = contact_sheet(catalog, read, report.disagreements, sheet)
    return report


def resolve(catalog: Catalog, server: str, project_id: int, task_id: int,
            annotation_id: int) -> dict:
    """Record that the release takes ``annotation_id`` for ``task_id`` (one of its pulled
    annotations); the next pull makes it the task's current annotation. Returns the task."""
    task = next((t for t in catalog.tasks(server, project_id) if t["task_id"] == task_id), None)
    if task is None:
        raise NotFoundError(f"no task {task_id} in project {project_id} at {server} in the "
                            "catalog; see `blurset annotate review` for the tasks to resolve")
    ids = [a["annotation_id"] for a in catalog.annotations_of(server, project_id)
           if a["task_id"] == task_id]
    if annotation_id not in ids:
        raise NotFoundError(f"task {task_id} has no pulled annotation {annotation_id} (it has "
                            f"{', '.join(map(str, ids)) or 'none'}); run `blurset annotate pull` "
                            "first if it is new")
    catalog.resolve_task(server, project_id, task_id, annotation_id)
    return task


def contact_sheet(catalog: Catalog, read: ReadObject, pairs: list[PairComparison], out: Path,
                  height: int = 200) -> Path:
    """One row per pair, titled with task, image and IoU: the image, then each annotator's mask
    over it (translucent red), captioned with annotation id, annotator and blur type."""
    rows = []
    for p in pairs:
        with Image.open(io.BytesIO(read(catalog.image(p.image_id)["object_path"]))) as im:
            image = im.convert("RGB")
        size = (max(1, round(image.width * height / image.height)), height)
        base = image.resize(size, Image.Resampling.BILINEAR)
        tiles = [(base, "image")]
        for o in (p.a, p.b):
            label = (f"#{o.annotation_id} {o.annotator.split('@')[0]}: "
                     f"{o.rejected and 'rejected ' + o.rejected or o.blur_type or 'no blur type'}")
            tiles.append((_overlay(base, _mask(read, o.mask_object), size), label))
        iou = "n/a" if p.iou is None else f"{p.iou:.3f}"
        rows.append((f"task {p.task_id}  {p.where}  IoU {iou}", tiles))
    pad, line = 6, 14
    width = max(sum(t.width + pad for t, _ in tiles) + pad for _, tiles in rows)
    sheet = Image.new("RGB", (width, len(rows) * (height + 2 * line + 2 * pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    y = pad
    for title, tiles in rows:
        draw.text((pad, y), title, fill="black")
        x = pad
        for tile, label in tiles:
            while label and draw.textlength(label) > tile.width:
                label = label[:-1]  # cut to the tile's width, not over the next caption
            draw.text((x, y + line), label, fill="dimgray")
            sheet.paste(tile, (x, y + 2 * line + pad))
            x += tile.width + pad
        y += height + 2 * line + 2 * pad
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return atomic_write(Path(out), buf.getvalue())


def _overlay(base: Image.Image, mask: np.ndarray | None, size: tuple[int, int]) -> Image.Image:
    if mask is None:
        return Image.new("RGB", size, (200, 200, 200))
    m = Image.fromarray(mask).resize(size, Image.Resampling.NEAREST)
    red = Image.new("RGB", size, (255, 59, 48))
    return Image.composite(red, base, m.point(lambda v: 115 if v > 127 else 0))


def _mask(read: ReadObject, mask_object: str | None) -> np.ndarray | None:
    if mask_object is None:
        return None
    with Image.open(io.BytesIO(read(mask_object))) as m:
        return np.asarray(m.convert("L"))


def _pair_iou(a: Opinion, b: Opinion, masks: dict[int, np.ndarray | None]) -> float | None:
    if a.rejected is not None and b.rejected is not None:
        return None
    if (a.rejected is None) != (b.rejected is None):
        return 0.0  # one painted what the other rejected
    ma, mb = masks[a.annotation_id], masks[b.annotation_id]
    if ma is None or mb is None or ma.shape != mb.shape:
        return None
    return mask_iou(ma, mb)


def _same_type(a: Opinion, b: Opinion) -> bool | None:
    if a.blur_type is None or b.blur_type is None:
        return None
    return a.blur_type == b.blur_type
