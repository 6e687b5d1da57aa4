"""Status: how far a project's annotation is, and how much work the pre-labels saved (as of the
last pull, from the catalog alone)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from blurset.pipeline.catalog import Catalog


@dataclass(frozen=True)
class PrelabelStats:
    """Work saved by pre-labels, over annotated tasks whose annotation had a pre-label."""

    prelabelled_annotated: int = 0
    mean_prelabel_iou: float | None = None  # pre-label → final mask
    prelabel_accepted_share: float | None = None  # accepted unchanged (see pull.ACCEPTED_IOU)

    @classmethod
    def of(cls, compared: list[dict]) -> PrelabelStats:
        if not compared:
            return cls()
        return cls(len(compared),
                   round(float(np.mean([t["prelabel_iou"] for t in compared])), 4),
                   round(float(np.mean([bool(t["prelabel_accepted"]) for t in compared])), 4))


@dataclass(frozen=True)
class ProjectStatus:
    pushed: int
    annotated: int = 0
    rejected: int = 0
    pending: int = 0
    deleted: int = 0
    with_prelabel: int = 0
    multi_annotated: int = 0
    mean_agreement_iou: float | None = None
    prelabelled_annotated: int = 0
    mean_prelabel_iou: float | None = None
    prelabel_accepted_share: float | None = None
    prelabel_by_model_version: dict[str, PrelabelStats] = field(default_factory=dict)


def status(catalog: Catalog, server: str, project_id: int) -> ProjectStatus:
    """Counts of the project's tasks by status, annotator agreement and pre-label work saved."""
    tasks = catalog.tasks(server, project_id)
    counts = {"annotated": 0, "rejected": 0, "pending": 0, "deleted": 0}
    for t in tasks:
        counts[t["status"] if t["status"] in ("annotated", "rejected", "deleted") else "pending"] += 1
    agreements = [t["agreement_iou"] for t in tasks if t["agreement_iou"] is not None]
    compared = [t for t in tasks if t.get("prelabel_iou") is not None]
    by_version: dict[str, list[dict]] = {}
    for t in compared:
        by_version.setdefault(t["prelabel_version"] or "unknown", []).append(t)
    overall = PrelabelStats.of(compared)
    return ProjectStatus(
        pushed=len(tasks), **counts, with_prelabel=sum(1 for t in tasks if t["prelabel"]),
        multi_annotated=len(agreements),
        mean_agreement_iou=round(float(np.mean(agreements)), 4) if agreements else None,
        prelabelled_annotated=overall.prelabelled_annotated,
        mean_prelabel_iou=overall.mean_prelabel_iou,
        prelabel_accepted_share=overall.prelabel_accepted_share,
        prelabel_by_model_version={v: PrelabelStats.of(ts) for v, ts in sorted(by_version.items())})
