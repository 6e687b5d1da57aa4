"""Annotation stages: push images that passed dedup to Label Studio, pull the masks people painted.

Plain functions over the catalog and an ``blurset.annotation.client.Client``; ``blurset.pipeline.flows`` wraps
them. The catalog keeps every task id, and a push first reconciles with the project's tasks in
Label Studio, so a repeated push never creates a duplicate task, also after a crash halfway. Every
pull keeps the raw export as a snapshot in the workspace, so annotations survive the loss of
Label Studio's own database.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from blurset.annotation.client import Client, TaskSpec, local_file_url
from blurset.annotation.export import MaskProblem, mean_pairwise_iou, parse_export
from blurset.annotation.server import document_root
from blurset.errors import InputError
from blurset.pipeline.catalog import Catalog, MaskRow
from blurset.pipeline.stages.ingest import encode_png
from blurset.pipeline.stages.prelabel import (
    Prelabeller,
    make_prelabeller,
    prediction_mask,
    prelabel_from_mask,
)
from blurset.pipeline.store import sha256_hex
from blurset.pipeline.workspace import Workspace

Progress = Callable[[int], None]


class NothingToPush(InputError):
    """No dedup run yet, or no source to push from."""


@dataclass
class PushReport:
    project: str
    project_id: int
    url: str
    selected: int = 0
    pushed: int = 0
    with_prelabel: int = 0
    reconciled: int = 0
    duplicate_tasks_in_label_studio: list[int] = field(default_factory=list)
    ranked: bool = False  # candidates ranked by the pre-labeller before pushing (``rank=True``)
    skipped_no_blur: int = 0  # predicted blur degree below ``min_blur``: not pushed
    skipped_all_blurred: int = 0  # above ``max_blur``: not pushed


@dataclass(frozen=True)
class Ranked:
    image_id: str
    blur_degree: float  # share of pixels the pre-label marks blurred
    uncertainty: float  # 1 - the prediction's score (its mean confidence)


def rank_candidates(preds: dict[str, dict], min_blur: float, max_blur: float
                    ) -> tuple[list[Ranked], list[Ranked], list[Ranked]]:
    """Order candidates for annotation by their pre-labels: (to push, most informative first;
    skipped with almost no blur; skipped as blurred all over).

    Blur degree = share of pixels the pre-label marks blurred; uncertainty = 1 - its score. A
    candidate whose degree is below ``min_blur`` (nothing to paint) or above ``max_blur`` (a
    camera-shake frame, one click) is left out; the rest go in order of falling uncertainty
    (the model knows least about them), then of blur degree nearest one half, then id.
    """
    if not 0 <= min_blur < max_blur <= 1:
        raise NothingToPush(f"need 0 ≤ min_blur < max_blur ≤ 1, got {min_blur} and {max_blur}")
    keep, low, high = [], [], []
    for image_id, pred in preds.items():
        mask = prediction_mask(pred)
        degree = float(mask.mean() / 255) if mask is not None else 0.0
        r = Ranked(image_id, round(degree, 4), round(1 - float(pred.get("score", 0.0)), 4))
        (low if degree < min_blur else high if degree > max_blur else keep).append(r)
    keep.sort(key=lambda r: (-r.uncertainty, abs(r.blur_degree - 0.5), r.image_id))
    return keep, low, high


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


@dataclass
class PrelabelReport:
    project: str
    project_id: int
    model_version: str
    tasks: int = 0
    added: int = 0
    skipped_annotated: int = 0
    skipped_same_model: int = 0
    skipped_deleted: int = 0


ACCEPTED_IOU = 0.99  # a final mask this close to its pre-label counts as accepted unchanged


def default_push_sources(catalog: Catalog) -> list[str]:
    """Every source except the reference of the last dedup run (candidates must pass dedup)."""
    run = catalog.last_dedup_run()
    if run is None:
        raise NothingToPush("no dedup run yet: run `blurset dedup --reference NAME` first, so that "
                            "only images that passed dedup go to the annotators")
    return [s["name"] for s in catalog.list_sources() if s["name"] != run["reference"]]


def _object_url(ws: Workspace, object_path: str) -> str:
    """Local-files URL of an object: its path relative to Label Studio's document root."""
    root = document_root(ws.root)
    try:
        rel = (ws.objects.root / object_path).resolve().relative_to(root)
    except ValueError:
        raise NothingToPush(f"the object store {ws.objects.root} is not under Label Studio's "
                            f"local-files document root {root}; set "
                            "BLURSET_LABEL_STUDIO_DOCUMENT_ROOT to a folder above it") from None
    return local_file_url(rel.as_posix())


def push(catalog: Catalog, client: Client, ws: Workspace, project: str,
         sources: Sequence[str] | None = None, limit: int | None = None, batch_size: int = 100,
         progress: Progress | None = None, prelabel: str | None = None, rank: bool = False,
         min_blur: float = 0.02, max_blur: float = 0.98) -> PushReport:
    """Create the project if needed and import a task for every image not yet in it.

    Pre-labels: a known blur mask (ground truth of the source) always; otherwise, with
    ``prelabel`` set to a handcrafted blur map's name (``laplacian``, ``lbp``) or a DPN
    checkpoint's path, that pre-labeller's prediction (``blurset.pipeline.stages.prelabel``). The pre-labeller
    is made first, once: a bad checkpoint is refused before anything is sent.

    ``rank``: pre-label every candidate first, leave out those with almost no blur or blurred
    all over (:func:`rank_candidates`; they stay candidates for a later push) and push the rest
    most informative first (``limit`` then takes the top of that order).
    """
    if rank and prelabel is None:
        raise NothingToPush("ranking candidates needs a pre-labeller: pass --prelabel "
                            "CHECKPOINT (or laplacian|lbp)")
    labeller = make_prelabeller(prelabel) if prelabel is not None else None
    sources = list(sources) if sources else default_push_sources(catalog)
    project_id = client.project(project)
    assert project_id is not None
    client.ensure_local_storage(project_id, str(ws.objects.root))
    server = client.conn.url
    report = PushReport(project, project_id, f"{server}/projects/{project_id}/data")

    # Reconcile: tasks that exist in Label Studio but not in the catalog (a crash after import).
    in_ls = client.tasks_by_image(project_id)
    known = {t["image_id"] for t in catalog.tasks(server, project_id)}
    lost = [(image_id, ids) for image_id, ids in in_ls.items() if image_id not in known]
    if lost:
        paths = {r["image_id"]: r for r in catalog.push_candidates(
            [s["name"] for s in catalog.list_sources()], server, project_id)}
        rows = [_task_row(server, project, project_id, ids[0], paths[i], None)
                for i, ids in lost if i in paths]
        catalog.record_tasks(rows)
        report.reconciled = len(rows)
    report.duplicate_tasks_in_label_studio = sorted(
        t for ids in in_ls.values() for t in ids[1:])

    todo = catalog.push_candidates(sources, server, project_id)
    guessed_all: dict[str, dict] = {}
    if rank:
        guessed_all = _predict(labeller, ws, [r for r in todo if not r["gt_mask"]])
        keep, low, high = rank_candidates(guessed_all, min_blur, max_blur)
        order = {r.image_id: i for i, r in enumerate(keep)}
        report.ranked = True
        report.skipped_no_blur, report.skipped_all_blurred = len(low), len(high)
        known_mask = [r for r in todo if r["gt_mask"]]  # a known mask needs no model: first
        todo = known_mask + sorted((r for r in todo if r["image_id"] in order),
                                   key=lambda r: order[r["image_id"]])
    if limit is not None:
        todo = todo[:limit]
    report.selected = len(todo)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        specs, prelabels = [], []
        guessed = guessed_all or _predict(labeller, ws, [r for r in batch if not r["gt_mask"]])
        for r in batch:
            pred = None
            if r["gt_mask"]:
                with Image.open(ws.objects.root / r["gt_mask"]) as m:
                    pred = prelabel_from_mask(np.asarray(m.convert("L")),
                                              f"ground-truth:{r['source']}", 1.0)
            else:
                pred = guessed.get(r["image_id"])
            prelabels.append(pred["model_version"] if pred else None)
            specs.append(TaskSpec(r["image_id"], _object_url(ws, r["object_path"]), r["source"],
                                  r["rel_path"], pred))
        ids = client.import_tasks(project_id, specs)
        catalog.record_tasks([_task_row(server, project, project_id, tid, r, p)
                              for tid, r, p in zip(ids, batch, prelabels, strict=True)])
        report.pushed += len(ids)
        report.with_prelabel += sum(p is not None for p in prelabels)
        if progress:
            progress(len(batch))
    return report


def _predict(labeller: Prelabeller | None, ws: Workspace, rows: list[dict]) -> dict[str, dict]:
    """image id → the pre-labeller's prediction, one call for the batch."""
    if labeller is None or not rows:
        return {}
    preds = labeller.predict([ws.objects.root / r["object_path"] for r in rows])
    return {r["image_id"]: p for r, p in zip(rows, preds, strict=True)}


def _task_row(server: str, project: str, project_id: int, task_id: int, r: dict,
              prelabel: str | None) -> dict:
    return {"server": server, "project": project, "project_id": project_id, "task_id": task_id,
            "image_id": r["image_id"], "source": r["source"], "rel_path": r["rel_path"],
            "prelabel": prelabel}


def plan_prelabels(catalog: Catalog, client: Client, project: str, model_version: str
                   ) -> tuple[PrelabelReport, list[dict]]:
    """The project's tasks that should get a prediction of ``model_version``: those with no
    submitted annotation and no prediction of that model_version yet (so a re-run adds nothing).

    Tasks unknown to the catalog are left alone (a push reconciles them first).
    """
    project_id = client.project(project, create=False)
    if project_id is None:
        raise NothingToPush(f"no project {project!r} in Label Studio at {client.conn.url}; "
                            "run `blurset annotate push` first")
    server = client.conn.url
    report = PrelabelReport(project, project_id, model_version)
    exported = {t.id: t for t in parse_export(client.export(project_id))}
    versions: dict[int, set[str]] = {}
    for pred in client.project_predictions(project_id):
        versions.setdefault(pred["task"], set()).add(pred.get("model_version") or "")
    todo = []
    for t in catalog.tasks(server, project_id):
        report.tasks += 1
        ex = exported.get(t["task_id"])
        if ex is None or t["status"] == "deleted":
            report.skipped_deleted += 1
        elif ex.submitted():
            report.skipped_annotated += 1
        elif model_version in versions.get(t["task_id"], set()):
            report.skipped_same_model += 1
        else:
            img = catalog.image(t["image_id"])
            todo.append({"task_id": t["task_id"], "object_path": img["object_path"]})
    return report, todo


def prelabel_batch(client: Client, ws: Workspace, labeller: Prelabeller, project_id: int,
                   batch: Sequence[dict]) -> int:
    """Predict a batch of planned tasks and add the predictions in one request."""
    preds = labeller.predict([ws.objects.root / t["object_path"] for t in batch])
    return client.create_predictions(project_id, [(t["task_id"], p)
                                                  for t, p in zip(batch, preds, strict=True)])


def add_prelabels(catalog: Catalog, client: Client, ws: Workspace, project: str, prelabel: str,
                  batch_size: int = 32, progress: Progress | None = None) -> PrelabelReport:
    """Add a prediction of ``prelabel`` (a checkpoint path or a handcrafted map's name) to
    every task of the project that nobody has annotated yet.

    Annotations and earlier predictions are left as they are: Label Studio keeps several
    predictions per task. The pre-labeller is made (the model loaded) once, before anything
    is asked of Label Studio.
    """
    labeller = make_prelabeller(prelabel)
    report, todo = plan_prelabels(catalog, client, project, labeller.model_version)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        report.added += prelabel_batch(client, ws, labeller, report.project_id, batch)
        catalog.set_missing_prelabels(client.conn.url, report.project_id,
                                      [t["task_id"] for t in batch], labeller.model_version)
        if progress:
            progress(len(batch))
    return report


def write_snapshot(ws: Workspace, project: str, raw: bytes, kind: str = "export") -> Path:
    """Keep a raw export forever: ``annotations/<project>/<kind>-<UTC time>-<sha8>.json``."""
    folder = ws.root / "annotations" / _slug(project)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = folder / f"{kind}-{stamp}-{sha256_hex(raw)[:8]}.json"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, 0o444)
    os.replace(tmp, target)
    return target


def pull(catalog: Catalog, client: Client, ws: Workspace, project: str,
         export_dir: Path | None = None) -> PullReport:
    """Export, snapshot, decode and store every annotation; the most recent submitted one wins."""
    project_id = client.project(project, create=False)
    if project_id is None:
        raise NothingToPush(f"no project {project!r} in Label Studio at {client.conn.url}; "
                            "run `blurset annotate push` first")
    server = client.conn.url
    raw = client.export(project_id)
    snapshot = write_snapshot(ws, project, raw)
    # the export names predictions by id only: fetch them, and keep them beside the export
    predictions = client.project_predictions(project_id)
    write_snapshot(ws, project, json.dumps(predictions, sort_keys=True).encode(), "predictions")
    preds_of: dict[int, list[dict]] = {}
    for pred in predictions:
        preds_of.setdefault(pred["task"], []).append(pred)
    report = PullReport(project, project_id, str(snapshot))
    users = client.users()
    exported = {t.id: t for t in parse_export(raw)}
    raw_annotations = {a["id"]: a for t in json.loads(raw) for a in t.get("annotations") or []}
    known = {t["task_id"]: t for t in catalog.tasks(server, project_id)}
    report.tasks = len(known)

    task_updates, ann_rows, mask_rows = [], [], []
    sources_of: dict[str, tuple[str, str]] = {}
    for task_id, t in known.items():
        sources_of[t["image_id"]] = (t["source"], t["rel_path"])
        ex = exported.get(task_id)
        if ex is None:
            if t["status"] != "deleted":
                report.problems.append(f"task {task_id} ({t['source']}/{t['rel_path']}) was deleted "
                                       "in Label Studio; its earlier annotations stay in the catalog")
                task_updates.append({"task_id": task_id, "status": "deleted"})
            continue
        img = catalog.image(t["image_id"])
        subs = ex.submitted()
        if not subs:
            report.pending += 1
            continue
        latest_by_user: dict[str, np.ndarray] = {}
        current = None
        for a in subs:
            annotator = users.get(a.completed_by, str(a.completed_by))
            row = {"annotation_id": a.id, "task_id": task_id, "image_id": t["image_id"],
                   "annotator": annotator, "created_at": a.created_at, "updated_at": a.updated_at,
                   "lead_time": a.lead_time, "blur_type": a.blur_type, "rejected": a.reject,
                   "mask_object": None, "blur_degree": None, "problem": None,
                   "snapshot": snapshot.name}
            mask = None
            if a.reject is None:
                try:
                    mask = a.mask(img["height"], img["width"])
                except MaskProblem as e:
                    row["problem"] = str(e)
                    report.problems.append(f"task {task_id} ({t['source']}/{t['rel_path']}), "
                                           f"annotation {a.id} by {annotator}: {e}")
            if mask is not None:
                png = encode_png(mask)
                row["mask_object"] = ws.objects.put(png, ".png")
                row["blur_degree"] = float(mask.mean() / 255.0)
                latest_by_user[annotator] = mask
            ann_rows.append(row)
            current = (a, row, mask)
        a, row, mask = current  # the most recent submitted annotation wins
        annotators = sorted({r["annotator"] for r in ann_rows if r["task_id"] == task_id})
        update = {"task_id": task_id, "current_annotation_id": a.id, "blur_type": a.blur_type,
                  "annotators": json.dumps(annotators),
                  "agreement_iou": mean_pairwise_iou(list(latest_by_user.values()))}
        if a.reject is not None:
            update["status"] = "rejected"
            report.rejected += 1
        elif mask is not None:
            update.update(compare_with_prelabel(
                mask, raw_annotations.get(a.id, {}), preds_of.get(task_id, [])))
            update["status"] = "annotated"
            report.annotated += 1
            mask_rows.append(MaskRow(
                image_id=t["image_id"], rel_path=t["rel_path"], kind="blur",
                origin=f"annotation:{project}#{a.id}", object_path=row["mask_object"],
                original_id=sha256_hex(ws.objects.read(row["mask_object"])), inverted=False,
                blur_degree=row["blur_degree"]))
        else:
            update["status"] = "pushed"  # the latest annotation is unusable: still to do
            report.pending += 1
        task_updates.append(update)
    catalog.record_pull(server, project_id, task_updates, ann_rows, mask_rows, sources_of)
    report.masks_stored = len(mask_rows)
    if export_dir is not None:
        report.exported = export_masks(catalog, ws, server, project_id, export_dir)
    return report


def compare_with_prelabel(mask: np.ndarray, annotation: dict, predictions: list[dict]) -> dict:
    """How far the final mask moved from the pre-label the annotator started from.

    That pre-label is the prediction the annotation names as its ``parent_prediction`` (Label
    Studio sets it when a person starts from a prediction); otherwise the most recent prediction
    created before the annotation; with none, the task had no pre-label to start from. Masks are
    decoded from the predictions themselves (fetched from Label Studio at pull time and kept in a
    ``predictions-*.json`` snapshot), not re-derived: the model that made them may be gone.
    Accepted unchanged: IoU ≥ ``ACCEPTED_IOU``, or the very same RLE.
    """
    from blurset.annotation.export import iou
    chosen = None
    parent = annotation.get("parent_prediction")
    if parent is not None:
        chosen = next((p for p in predictions if p.get("id") == parent), None)
    if chosen is None:
        created = annotation.get("created_at") or ""
        before = [p for p in predictions if (p.get("created_at") or "") <= created]
        chosen = max(before, key=lambda p: (p.get("created_at") or "", p.get("id") or 0),
                     default=None)
    none = {"prelabel_version": None, "prelabel_iou": None, "prelabel_accepted": None}
    if chosen is None:
        return none
    try:
        pre = prediction_mask(chosen)
    except (KeyError, TypeError, ValueError):
        return none  # an undecodable prediction says nothing about work saved
    if pre is None:
        return none
    if pre.shape != mask.shape:
        value = 0.0
    else:
        value = iou(pre, mask)
    same_rle = _brush_rles(chosen.get("result")) == _brush_rles(annotation.get("result"))
    return {"prelabel_version": chosen.get("model_version"), "prelabel_iou": value,
            "prelabel_accepted": bool(same_rle or value >= ACCEPTED_IOU)}


def _brush_rles(result: list[dict] | None) -> list[list[int]]:
    return [r["value"]["rle"] for r in result or [] if r.get("type") == "brushlabels"
            and isinstance(r.get("value"), dict) and "rle" in r["value"]]


def export_masks(catalog: Catalog, ws: Workspace, server: str, project_id: int, out: Path) -> int:
    """Every current mask as ``out/<source>/<source_path with .png>``, 8-bit, 255 = blurred."""
    anns = {a["annotation_id"]: a for a in catalog.annotations_of(server, project_id)}
    n = 0
    for t in catalog.tasks(server, project_id):
        a = anns.get(t["current_annotation_id"])
        if t["status"] != "annotated" or not a or not a["mask_object"]:
            continue
        target = out / t["source"] / Path(t["rel_path"]).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        data = ws.objects.read(a["mask_object"])
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)
        n += 1
    return n


def status(catalog: Catalog, server: str, project_id: int) -> dict:
    tasks = catalog.tasks(server, project_id)
    counts = {"pushed": len(tasks), "annotated": 0, "rejected": 0, "pending": 0, "deleted": 0,
              "with_prelabel": sum(1 for t in tasks if t["prelabel"])}
    for t in tasks:
        key = t["status"] if t["status"] in ("annotated", "rejected", "deleted") else "pending"
        counts[key] += 1
    agreements = [t["agreement_iou"] for t in tasks if t["agreement_iou"] is not None]
    counts["multi_annotated"] = len(agreements)
    counts["mean_agreement_iou"] = round(float(np.mean(agreements)), 4) if agreements else None
    compared = [t for t in tasks if t.get("prelabel_iou") is not None]
    counts.update(_prelabel_stats(compared))
    by_version: dict[str, list[dict]] = {}
    for t in compared:
        by_version.setdefault(t["prelabel_version"] or "unknown", []).append(t)
    counts["prelabel_by_model_version"] = {v: _prelabel_stats(ts) for v, ts in
                                           sorted(by_version.items())}
    return counts


def _prelabel_stats(compared: list[dict]) -> dict:
    """Work saved by pre-labels, over annotated tasks whose annotation had a pre-label."""
    if not compared:
        return {"prelabelled_annotated": 0, "mean_prelabel_iou": None,
                "prelabel_accepted_share": None}
    return {"prelabelled_annotated": len(compared),
            "mean_prelabel_iou": round(float(np.mean([t["prelabel_iou"] for t in compared])), 4),
            "prelabel_accepted_share": round(
                float(np.mean([bool(t["prelabel_accepted"]) for t in compared])), 4)}


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"))


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-") or "project"
