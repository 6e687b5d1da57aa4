"""Which images a release holds, with which mask.

The current mask of every task with status ``annotated`` in the chosen Label Studio projects,
then the ground-truth blur masks of the chosen sources; the first mask found for an image is its
mask. An image is left out when none of its paths in its source survived dedup, when people
rejected it and no chosen project has it annotated, or when its blur type is unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from blurset.model.release_format import BLUR_TYPES
from blurset.pipeline.catalog import AnnotatedMask, Catalog, GroundTruthMask, SourcePath
from blurset.pipeline.release.errors import ReleaseError


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


@dataclass(frozen=True)
class Dropped:
    """An image with a mask in the selection that the release leaves out, and why."""

    image_id: str
    source: str
    path: str | None
    why: str  # duplicate | no path | rejected | no blur type
    reason: str


@dataclass
class Selection:
    """The images a release holds, what it leaves out, and how they were chosen."""

    rows: list[Candidate]  # by image id
    candidates: int  # images with a blur mask in the chosen sources/projects
    dropped: list[Dropped]  # by source and path
    sources: list[str]
    projects: list[str]
    queries: dict[str, str]  # the catalog queries, as SQL


def _resolve(catalog: Catalog, from_sources: Sequence[str] | None,
             projects: Sequence[str] | None) -> tuple[list[str], list[str]]:
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
    return srcs, projs


def _candidate(offer: AnnotatedMask | GroundTruthMask, p: SourcePath,
               blur_type: str) -> Candidate:
    if isinstance(offer, GroundTruthMask):
        return Candidate(offer.image_id, offer.source, p.rel_path, offer.object_path,
                         "ground-truth", blur_type, offer.blur_degree, (), (), p.width, p.height,
                         p.phash, p.object_path)
    return Candidate(
        offer.image_id, offer.source, p.rel_path, offer.mask_object,
        f"annotation:{offer.project}#{offer.current_annotation_id}", blur_type,
        offer.blur_degree, tuple(sorted(offer.annotators or (offer.annotator,))),
        offer.annotation_ids, p.width, p.height, p.phash, p.object_path, offer.agreement_iou,
        offer.prelabel)


def select_images(catalog: Catalog, from_sources: Sequence[str] | None = None,
                  projects: Sequence[str] | None = None) -> Selection:
    """The images a release of these sources' ground truth and projects' annotations holds.

    With neither given: every source's ground truth and every project. With one given, only it.
    """
    srcs, projs = _resolve(catalog, from_sources, projects)
    found = catalog.release_candidates(srcs, projs)

    # Annotations first (project order, newest task first), then ground truth (source order,
    # newest mask first): the first mask found for an image is its mask.
    proj_rank = {p: i for i, p in enumerate(projs)}
    src_rank = {s: i for i, s in enumerate(srcs)}
    offers: list[AnnotatedMask | GroundTruthMask] = [
        *sorted(found.annotated, key=lambda r: proj_rank[r.project]),
        *sorted(found.ground_truth, key=lambda r: (src_rank[r.source], -r.id))]

    chosen: dict[str, Candidate] = {}
    annotated_ids = {r.image_id for r in found.annotated}
    dropped: dict[str, Dropped] = {}
    seen: set[str] = set()
    for r in offers:
        image_id = r.image_id
        if image_id in chosen:
            continue
        seen.add(image_id)
        annotation = r if isinstance(r, AnnotatedMask) else None
        task_path = annotation.rel_path if annotation else None
        here = found.paths.get((r.source, image_id), [])
        kept = [p for p in here if p.excluded is None]
        if annotation is not None:
            kept.sort(key=lambda p: p.rel_path != task_path)  # the task's own path first
        if not kept:
            where = next((p for p in here if p.rel_path == task_path), here[0] if here else None)
            why = "duplicate" if where and where.excluded else "no path"
            reason = where.excluded if where else "no path of this image left in its source"
            dropped.setdefault(image_id, Dropped(image_id, r.source,
                                                 where.rel_path if where else None, why, reason))
            continue
        p = kept[0]
        if annotation is None and image_id in found.rejected and image_id not in annotated_ids:
            dropped.setdefault(image_id, Dropped(image_id, r.source, p.rel_path, "rejected",
                                                 "rejected by an annotator"))
            continue
        if annotation is not None:
            blur_type = annotation.annotation_blur_type or annotation.blur_type or p.blur_type
        else:
            blur_type = p.blur_type
        if blur_type not in BLUR_TYPES:
            dropped.setdefault(image_id, Dropped(
                image_id, r.source, p.rel_path, "no blur type",
                f"blur type {blur_type!r} is not one of {', '.join(BLUR_TYPES)}"))
            continue
        dropped.pop(image_id, None)
        chosen[image_id] = _candidate(r, p, blur_type)
    return Selection(rows=sorted(chosen.values(), key=lambda c: c.image_id), candidates=len(seen),
                     dropped=sorted(dropped.values(), key=lambda d: (d.source, d.path or "")),
                     sources=srcs, projects=projs, queries=found.queries)
