"""Status: how far a project's annotation is, how much work the pre-labels saved, how often people
agreed with the model's blur-type hint and with each other (as of the last pull: the catalog, and
the pulled masks in the object store for the agreement of pairs)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from blurset.pipeline.catalog import Catalog
from blurset.pipeline.stages.labelling.review import (
    Agreement,
    ReadObject,
    by_annotator,
    by_pair,
    compare_pairs,
)


@dataclass(frozen=True)
class PrelabelStats:
    """Work saved by pre-labels, over annotated tasks whose annotation had a pre-label (a task is
    annotated only when a person chose its blur type: an untouched copy does not count)."""

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
    submitted_without_choice: int = 0  # current annotation has a mask but no blur type: to do
    hint_compared: int = 0  # annotated tasks whose pre-label guessed a blur type
    hint_agreement_share: float | None = None  # ... where the person chose the same
    agreement_by_annotator: dict[str, Agreement] = field(default_factory=dict)
    agreement_by_pair: dict[str, Agreement] = field(default_factory=dict)


def status(catalog: Catalog, server: str, project_id: int,
           read: ReadObject | None = None) -> ProjectStatus:
    """Counts of the project's tasks by status, annotator agreement, pre-label work saved and
    agreement with the hint. With ``read`` (the object store's reader) also the agreement of
    each annotator and each pair of annotators, from their pulled masks."""
    tasks = catalog.tasks(server, project_id)
    anns = {a["annotation_id"]: a for a in catalog.annotations_of(server, project_id)}
    counts = {"annotated": 0, "rejected": 0, "pending": 0, "deleted": 0}
    for t in tasks:
        counts[t["status"] if t["status"] in ("annotated", "rejected", "deleted") else "pending"] += 1
    agreements = [t["agreement_iou"] for t in tasks if t["agreement_iou"] is not None]
    compared = [t for t in tasks if t.get("prelabel_iou") is not None]
    by_version: dict[str, list[dict]] = {}
    for t in compared:
        by_version.setdefault(t["prelabel_version"] or "unknown", []).append(t)
    overall = PrelabelStats.of(compared)
    hinted = [t for t in tasks if t["status"] == "annotated" and t["blur_type"]
              and t.get("blur_type_hint")]
    unchosen = sum(1 for t in tasks if t["status"] == "pushed" and _unchosen(
        anns.get(t["current_annotation_id"])))
    pairs = compare_pairs(catalog, read, server, project_id) if read is not None else []
    return ProjectStatus(
        pushed=len(tasks), **counts, with_prelabel=sum(1 for t in tasks if t["prelabel"]),
        multi_annotated=len(agreements),
        mean_agreement_iou=round(float(np.mean(agreements)), 4) if agreements else None,
        prelabelled_annotated=overall.prelabelled_annotated,
        mean_prelabel_iou=overall.mean_prelabel_iou,
        prelabel_accepted_share=overall.prelabel_accepted_share,
        prelabel_by_model_version={v: PrelabelStats.of(ts) for v, ts in sorted(by_version.items())},
        submitted_without_choice=unchosen, hint_compared=len(hinted),
        hint_agreement_share=(round(float(np.mean([t["blur_type"] == t["blur_type_hint"]
                                                   for t in hinted])), 4) if hinted else None),
        agreement_by_annotator=by_annotator(pairs), agreement_by_pair=by_pair(pairs))


def _unchosen(a: dict | None) -> bool:
    """A submitted annotation with a usable mask but neither a blur type nor a rejection."""
    return bool(a) and a["mask_object"] is not None and a["blur_type"] is None \
        and a["rejected"] is None
