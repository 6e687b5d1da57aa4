"""Pull: export a project, keep the raw export as a snapshot, decode and store every submitted mask,
and link the current one (the most recent submitted annotation) to its task in the catalog."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from blurset.annotation.client import Client
from blurset.annotation.config import BLUR_TYPE, BLUR_TYPE_HINT
from blurset.annotation.export import (
    ExportedAnnotation,
    ExportedTask,
    MaskProblem,
    choice_of,
    mask_iou,
    mean_pairwise_iou,
    parse_export,
)
from blurset.errors import InputError
from blurset.pipeline.catalog import Catalog, MaskRow
from blurset.pipeline.stages.ingest import encode_png
from blurset.pipeline.stages.labelling.project import ProjectRef, existing_project, write_snapshot
from blurset.pipeline.stages.prelabel import prediction_mask
from blurset.pipeline.store import sha256_hex
from blurset.pipeline.workspace import Workspace

ACCEPTED_IOU = 0.99  # a final mask this close to its pre-label counts as accepted unchanged


@dataclass
class PullReport:
    project: str
    project_id: int
    snapshot: str
    tasks: int = 0
    annotated: int = 0
    rejected: int = 0
    pending: int = 0
    masks_stored: int = 0
    exported: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Export:
    """What one pull read from Label Studio."""

    tasks: dict[int, ExportedTask]
    raw_annotations: dict[int, dict]  # annotation id → its raw JSON (result, parent_prediction)
    predictions: dict[int, list[dict]]  # task id → its predictions
    users: dict[int, str]  # user id → e-mail or name
    snapshot: str  # file name of the export snapshot


@dataclass
class _Rows:
    """What a pull writes to the catalog, in one transaction."""

    task_updates: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)
    masks: list[MaskRow] = field(default_factory=list)
    sources_of: dict[str, tuple[str, str]] = field(default_factory=dict)


def pull(catalog: Catalog, client: Client, ws: Workspace, project: str,
         export_dir: Path | None = None) -> PullReport:
    """Export, snapshot, decode and store every annotation; the most recent submitted one wins."""
    ref = existing_project(client, project)
    export, snapshot = read_export(client, ws, ref)
    report = PullReport(project, ref.id, str(snapshot))
    rows = _Rows()
    outcomes = Counter(_pull_task(catalog, ws, ref, export, t, rows, report.problems)
                       for t in catalog.tasks(ref.server, ref.id))
    catalog.record_pull(ref.server, ref.id, rows.task_updates, rows.annotations, rows.masks,
                        rows.sources_of)
    report.tasks = sum(outcomes.values())
    report.annotated, report.rejected = outcomes["annotated"], outcomes["rejected"]
    report.pending, report.masks_stored = outcomes["pending"], len(rows.masks)
    if export_dir is not None:
        report.exported = export_masks(catalog, ws, ref.server, ref.id, export_dir)
    return report


def read_export(client: Client, ws: Workspace, ref: ProjectRef) -> tuple[_Export, Path]:
    """Export the project and fetch its predictions (the export names them by id only); keep
    both as snapshots in the workspace. Returns the export and its snapshot's path."""
    raw = client.export(ref.id)
    snapshot = write_snapshot(ws, ref.title, raw)
    predictions = client.project_predictions(ref.id)
    write_snapshot(ws, ref.title, json.dumps(predictions, sort_keys=True).encode(), "predictions")
    preds_of: dict[int, list[dict]] = {}
    for pred in predictions:
        preds_of.setdefault(pred["task"], []).append(pred)
    raw_annotations = {a["id"]: a for t in json.loads(raw) for a in t.get("annotations") or []}
    export = _Export({t.id: t for t in parse_export(raw)}, raw_annotations, preds_of,
                     client.users(), snapshot.name)
    return export, snapshot


def _pull_task(catalog: Catalog, ws: Workspace, ref: ProjectRef, export: _Export, t: dict,
               rows: _Rows, problems: list[str]) -> str:
    """Add one catalog task's rows; returns what it is now: ``annotated``, ``rejected``,
    ``pending`` or ``deleted``.

    The current annotation is the one ``annotate resolve`` chose, else the most recent
    submitted one. It makes the task annotated only if a person chose its blur type (or
    rejected the image): a submission without a choice is recorded, and the task stays to do.
    """
    task_id, where = t["task_id"], f"task {t['task_id']} ({t['source']}/{t['rel_path']})"
    rows.sources_of[t["image_id"]] = (t["source"], t["rel_path"])
    ex = export.tasks.get(task_id)
    if ex is None:
        if t["status"] != "deleted":
            problems.append(f"{where} was deleted in Label Studio; its earlier annotations stay "
                            "in the catalog")
            rows.task_updates.append({"task_id": task_id, "status": "deleted"})
        return "deleted"
    predictions = export.predictions.get(task_id, [])
    # a pre-label from any source (push, `annotate prelabel`, the ML backend) counts alike
    seen = _latest_prediction_version(predictions) if t["prelabel"] is None else None
    subs = ex.submitted()
    if not subs:
        if seen is not None:
            rows.task_updates.append({"task_id": task_id, "prelabel": seen})
        return "pending"
    img = catalog.image(t["image_id"])
    decoded = [_annotation_row(ws, export, t, a, img["height"], img["width"], problems, where)
               for a in subs]
    rows.annotations.extend(row for row, _ in decoded)
    chosen = [i for i, a in enumerate(subs) if a.id == t.get("resolved_annotation_id")]
    if t.get("resolved_annotation_id") is not None and not chosen:
        problems.append(f"{where}: the annotation {t['resolved_annotation_id']} chosen by "
                        "`annotate resolve` is gone from Label Studio; the most recent one is used")
    at = chosen[0] if chosen else len(subs) - 1  # else the most recent submitted one wins
    current, (row, mask) = subs[at], decoded[at]
    update = {"task_id": task_id, "current_annotation_id": current.id,
              "blur_type": row["blur_type"], "blur_type_hint": row["blur_type_hint"],
              "hint_version": row["hint_version"],
              "annotators": json.dumps(sorted({r["annotator"] for r, _ in decoded})),
              "agreement_iou": mean_pairwise_iou(list(
                  {r["annotator"]: m for r, m in decoded if m is not None}.values())),
              "prelabel_version": None, "prelabel_iou": None, "prelabel_accepted": None}
    if seen is not None:
        update["prelabel"] = seen
    if current.reject is not None:
        update["status"] = "rejected"
    elif mask is not None and row["blur_type"] is None:
        problems.append(f"{where}, annotation {current.id} by {row['annotator']}: submitted with "
                        "no blur type chosen (an untouched pre-label?): recorded, still to do")
        update["status"] = "pushed"
    elif mask is not None:
        update |= compare_with_prelabel(mask, export.raw_annotations.get(current.id, {}),
                                        predictions)
        update["status"] = "annotated"
        rows.masks.append(MaskRow(
            image_id=t["image_id"], rel_path=t["rel_path"], kind="blur",
            origin=f"annotation:{ref.title}#{current.id}", object_path=row["mask_object"],
            original_id=sha256_hex(ws.objects.read(row["mask_object"])), inverted=False,
            blur_degree=row["blur_degree"]))
    else:
        update["status"] = "pushed"  # the latest annotation is unusable: still to do
    rows.task_updates.append(update)
    return "pending" if update["status"] == "pushed" else update["status"]


def _latest_prediction_version(predictions: list[dict]) -> str | None:
    if not predictions:
        return None
    latest = max(predictions, key=lambda p: (p.get("created_at") or "", p.get("id") or 0))
    return latest.get("model_version") or "unknown"


def _annotation_row(ws: Workspace, export: _Export, t: dict, a: ExportedAnnotation, height: int,
                    width: int, problems: list[str], where: str) -> tuple[dict, np.ndarray | None]:
    """The catalog row of one submitted annotation, its mask stored as an object; and the mask
    (None for a rejection or an unusable mask, whose problem is noted).

    ``blur_type`` is what the annotator chose, never the model's guess: the hint (and the
    model_version that made it) is kept apart as ``blur_type_hint``/``hint_version``.
    """
    annotator = export.users.get(a.completed_by, str(a.completed_by))
    raw = export.raw_annotations.get(a.id, {})
    start = starting_prediction(raw, export.predictions.get(t["task_id"], []))
    hint, legacy = hint_of(start)
    blur_type = a.blur_type if a.reject is None else None  # a rejected image has no blur type
    if legacy is not None and blur_type == legacy:
        blur_type = None  # an older project's prediction pre-ticked the answer: not a choice
    row = {"annotation_id": a.id, "task_id": t["task_id"], "image_id": t["image_id"],
           "annotator": annotator, "created_at": a.created_at, "updated_at": a.updated_at,
           "lead_time": a.lead_time, "blur_type": blur_type, "rejected": a.reject,
           "blur_type_hint": hint,  # from the prediction only: a click on the hint is no hint
           "hint_version": start.get("model_version") if start and hint else None,
           "mask_object": None, "blur_degree": None, "problem": None, "snapshot": export.snapshot}
    if a.reject is not None:
        return row, None
    try:
        mask = a.mask(height, width)
    except MaskProblem as e:
        row["problem"] = str(e)
        problems.append(f"{where}, annotation {a.id} by {annotator}: {e}")
        return row, None
    row["mask_object"] = ws.objects.put(encode_png(mask), ".png")
    row["blur_degree"] = float(mask.mean() / 255.0)
    return row, mask


def hint_of(prediction: dict | None) -> tuple[str | None, str | None]:
    """The blur type a prediction guesses, and the same when it sits in the annotator's own
    ``blur_type`` control (predictions made before the hint had a control of its own, which
    pre-ticked the answer): ``(hint, legacy)``."""
    if not prediction:
        return None, None
    result = prediction.get("result") or []
    legacy = choice_of(result, BLUR_TYPE)
    return choice_of(result, BLUR_TYPE_HINT) or legacy, legacy


def compare_with_prelabel(mask: np.ndarray, annotation: dict, predictions: list[dict]) -> dict:
    """How far the final mask moved from the pre-label the annotator started from.

    That pre-label is the prediction the annotation names as its ``parent_prediction`` (Label
    Studio sets it when a person starts from a prediction); otherwise the most recent prediction
    created before the annotation; with none, the task had no pre-label to start from. Masks are
    decoded from the predictions themselves (fetched at pull time and kept in a
    ``predictions-*.json`` snapshot), not re-derived: the model that made them may be gone.
    Accepted unchanged: IoU ≥ ``ACCEPTED_IOU``, or the very same RLE.
    """
    none = {"prelabel_version": None, "prelabel_iou": None, "prelabel_accepted": None}
    chosen = starting_prediction(annotation, predictions)
    if chosen is None:
        return none
    try:
        pre = prediction_mask(chosen)
    except (KeyError, TypeError, ValueError):
        return none  # an undecodable prediction says nothing about work saved
    if pre is None:
        return none
    value = mask_iou(pre, mask) if pre.shape == mask.shape else 0.0
    same_rle = _brush_rles(chosen.get("result")) == _brush_rles(annotation.get("result"))
    return {"prelabel_version": chosen.get("model_version"), "prelabel_iou": value,
            "prelabel_accepted": bool(same_rle or value >= ACCEPTED_IOU)}


def starting_prediction(annotation: dict, predictions: list[dict]) -> dict | None:
    """The prediction a person started from: the annotation's ``parent_prediction``, else the
    most recent one created before it (None when the task had none)."""
    parent = annotation.get("parent_prediction")
    if parent is not None:
        chosen = next((p for p in predictions if p.get("id") == parent), None)
        if chosen is not None:
            return chosen
    created = annotation.get("created_at") or ""
    before = [p for p in predictions if (p.get("created_at") or "") <= created]
    return max(before, key=lambda p: (p.get("created_at") or "", p.get("id") or 0), default=None)


def _brush_rles(result: list[dict] | None) -> list[list[int]]:
    return [r["value"]["rle"] for r in result or [] if r.get("type") == "brushlabels"
            and isinstance(r.get("value"), dict) and "rle" in r["value"]]


def export_masks(catalog: Catalog, ws: Workspace, server: str, project_id: int, out: Path) -> int:
    """Every current mask as ``out/<source>/<source_path with .png>``, 8-bit, 255 = blurred.
    Every target is checked to stay under ``out`` before the first is written."""
    anns = {a["annotation_id"]: a for a in catalog.annotations_of(server, project_id)}
    root = Path(out).resolve()
    todo = []
    for t in catalog.tasks(server, project_id):
        a = anns.get(t["current_annotation_id"])
        if t["status"] != "annotated" or not a or not a["mask_object"]:
            continue
        todo.append((_export_target(root, t["source"], t["rel_path"]), a["mask_object"]))
    for target, mask_object in todo:
        target.parent.mkdir(parents=True, exist_ok=True)
        data = ws.objects.read(mask_object)
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)
    return len(todo)


def _export_target(root: Path, source: str, rel_path: str) -> Path:
    """``root/<source>/<rel_path with .png>``, refused unless it stays under ``root`` (a source
    name or path from an older catalog may hold ``..`` or be absolute)."""
    target = (root / source / Path(rel_path).with_suffix(".png")).resolve()
    if not target.is_relative_to(root) or target == root:
        raise InputError(f"the mask of {source}/{rel_path} would be exported to {target}, "
                         f"outside --export {root}; rename the source (a folder name) and "
                         "ingest it again: nothing was written there")
    return target
