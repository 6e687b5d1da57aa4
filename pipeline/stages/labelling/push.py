"""Push: import a Label Studio task, with a pre-label where one is known or predicted, for every
image that passed dedup and is not in the project yet. Re-running a push (also after a crash
between import and catalog write) never creates a duplicate task."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from blurset.annotation.client import Client, S3Storage, TaskSpec, local_file_url
from blurset.annotation.server import document_root
from blurset.names import validate_title
from blurset.pipeline.catalog import Catalog
from blurset.pipeline.stages.labelling.errors import (
    DocumentRootError,
    NothingToPush,
    PushOptionError,
)
from blurset.pipeline.stages.labelling.project import ProjectRef
from blurset.pipeline.stages.prelabel import (
    Prelabeller,
    make_prelabeller,
    prediction_mask,
    prelabel_from_mask,
)
from blurset.pipeline.store import RemoteObjectStore, RemoteStoreUnsupported
from blurset.pipeline.workspace import Workspace

Progress = Callable[[int], None]


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
    overlap: float | None = None  # share of tasks to be labelled by two people (None: untouched)
    double_tasks: int = 0  # tasks Label Studio asks two people for, after this push


@dataclass(frozen=True)
class Ranked:
    image_id: str
    blur_degree: float  # share of pixels the pre-label marks blurred
    uncertainty: float  # 1 - the prediction's score (its mean confidence)


def push(catalog: Catalog, client: Client, ws: Workspace, project: str,
         sources: Sequence[str] | None = None, limit: int | None = None, batch_size: int = 100,
         progress: Progress | None = None, prelabel: str | None = None, rank: bool = False,
         min_blur: float = 0.02, max_blur: float = 0.98,
         overlap: float | None = None) -> PushReport:
    """Create the project if needed and import a task for every image not yet in it.

    Pre-labels: a known blur mask (ground truth of the source) always; otherwise, with
    ``prelabel`` set to a handcrafted blur map's name (``laplacian``, ``lbp``) or a DPN
    checkpoint's path, that pre-labeller's prediction. The pre-labeller is made first, once: a bad
    checkpoint is refused before anything is sent.

    ``rank``: pre-label every candidate first, leave out those with almost no blur or blurred
    all over (:func:`rank_candidates`; they stay candidates for a later push) and push the rest
    most informative first (``limit`` then takes the top of that order).

    ``overlap``: the share of the project's tasks two different people label (Label Studio's
    overlap settings, applied before the import so the cohort is drawn over every task); None
    leaves the project's setting as it is.
    """
    validate_title(project)
    if overlap is not None and not 0 <= overlap <= 1:
        raise PushOptionError(f"--overlap {overlap}: the share of tasks labelled twice lies in "
                              "[0, 1] (0.2: one task in five)")
    if rank:
        if prelabel is None:
            raise PushOptionError("ranking candidates needs a pre-labeller: pass --prelabel "
                                  "CHECKPOINT (or laplacian|lbp)")
        _check_blur_range(min_blur, max_blur)
    labeller = make_prelabeller(prelabel) if prelabel is not None else None
    sources = list(sources) if sources else default_push_sources(catalog)
    s3 = s3_storage(ws)  # an object store Label Studio cannot read is refused before any request
    project_id = client.project(project)
    if overlap is not None:
        client.set_overlap(project_id, overlap)
    if s3 is not None:
        client.ensure_s3_storage(project_id, s3)
    else:
        client.ensure_local_storage(project_id, str(ws.objects.root))
    ref = ProjectRef(client.conn.url, project, project_id)
    report = PushReport(project, project_id, f"{ref.server}/projects/{project_id}/data")
    report.reconciled, report.duplicate_tasks_in_label_studio = reconcile(catalog, client, ref)

    todo = catalog.push_candidates(sources, ref.server, project_id)
    ranked_preds: dict[str, dict] | None = None
    if rank:
        ranked_preds = _predict(labeller, ws, [r for r in todo if not r["gt_mask"]])
        todo, low, high = _in_ranked_order(todo, ranked_preds, min_blur, max_blur)
        report.ranked, report.skipped_no_blur, report.skipped_all_blurred = True, low, high
    todo = todo[:limit] if limit is not None else todo
    report.selected = len(todo)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        preds = ranked_preds if ranked_preds is not None else _predict(
            labeller, ws, [r for r in batch if not r["gt_mask"]])
        prelabels = push_batch(catalog, client, ws, ref, batch, preds)
        report.pushed += len(prelabels)
        report.with_prelabel += sum(p is not None for p in prelabels)
        if progress:
            progress(len(batch))
    if overlap is not None:
        report.overlap = overlap
        report.double_tasks = sum(n >= 2 for n in client.overlaps(project_id).values())
    return report


def default_push_sources(catalog: Catalog) -> list[str]:
    """Every source except the reference of the last dedup run (candidates must pass dedup)."""
    run = catalog.last_dedup_run()
    if run is None:
        raise NothingToPush("no dedup run yet: run `blurset dedup --reference NAME` first, so that "
                            "only images that passed dedup go to the annotators")
    return [s["name"] for s in catalog.list_sources() if s["name"] != run["reference"]]


def reconcile(catalog: Catalog, client: Client, ref: ProjectRef) -> tuple[int, list[int]]:
    """Record the tasks Label Studio holds but the catalog does not (a crash after an import).

    Returns how many were recorded, and the ids of extra tasks holding an image a second time.
    """
    in_ls = client.tasks_by_image(ref.id)
    known = {t["image_id"] for t in catalog.tasks(ref.server, ref.id)}
    lost = [(image_id, ids) for image_id, ids in in_ls.items() if image_id not in known]
    recorded = 0
    if lost:
        rows = {r["image_id"]: r for r in catalog.push_candidates(
            [s["name"] for s in catalog.list_sources()], ref.server, ref.id)}
        found = [_task_row(ref, ids[0], rows[i], None) for i, ids in lost if i in rows]
        catalog.record_tasks(found)
        recorded = len(found)
    return recorded, sorted(t for ids in in_ls.values() for t in ids[1:])


def push_batch(catalog: Catalog, client: Client, ws: Workspace, ref: ProjectRef,
               batch: Sequence[dict], preds: dict[str, dict]) -> list[str | None]:
    """Import one batch of candidates in one request and record their tasks.

    ``preds``: image id → the pre-labeller's prediction (a known mask is used instead). Returns
    each task's pre-label model_version, None where it has none.
    """
    specs, prelabels = [], []
    for r in batch:
        pred = _known_mask_prelabel(ws, r) if r["gt_mask"] else preds.get(r["image_id"])
        prelabels.append(pred["model_version"] if pred else None)
        specs.append(TaskSpec(r["image_id"], _object_url(ws, r["object_path"]), r["source"],
                              r["rel_path"], pred))
    ids = client.import_tasks(ref.id, specs)
    catalog.record_tasks([_task_row(ref, task_id, r, p)
                          for task_id, r, p in zip(ids, batch, prelabels, strict=True)])
    return prelabels


def rank_candidates(preds: dict[str, dict], min_blur: float, max_blur: float
                    ) -> tuple[list[Ranked], list[Ranked], list[Ranked]]:
    """Order candidates for annotation by their pre-labels: (to push, most informative first;
    skipped with almost no blur; skipped as blurred all over).

    Blur degree = share of pixels the pre-label marks blurred; uncertainty = 1 - its score. A
    candidate whose degree is below ``min_blur`` (nothing to paint) or above ``max_blur`` (a
    camera-shake frame, one click) is left out; the rest go in order of falling uncertainty
    (the model knows least about them), then of blur degree nearest one half, then id.
    """
    _check_blur_range(min_blur, max_blur)
    keep, low, high = [], [], []
    for image_id, pred in preds.items():
        mask = prediction_mask(pred)
        degree = float(mask.mean() / 255) if mask is not None else 0.0
        r = Ranked(image_id, round(degree, 4), round(1 - float(pred.get("score", 0.0)), 4))
        (low if degree < min_blur else high if degree > max_blur else keep).append(r)
    keep.sort(key=lambda r: (-r.uncertainty, abs(r.blur_degree - 0.5), r.image_id))
    return keep, low, high


def _check_blur_range(min_blur: float, max_blur: float) -> None:
    if not 0 <= min_blur < max_blur <= 1:
        raise PushOptionError(f"need 0 ≤ min_blur < max_blur ≤ 1, got {min_blur} and {max_blur}")


def _in_ranked_order(todo: list[dict], preds: dict[str, dict], min_blur: float, max_blur: float
                     ) -> tuple[list[dict], int, int]:
    """Candidates with a known mask first (they need no model), then the ranked ones; and how
    many were left out with no blur and blurred all over."""
    keep, low, high = rank_candidates(preds, min_blur, max_blur)
    order = {r.image_id: i for i, r in enumerate(keep)}
    known_mask = [r for r in todo if r["gt_mask"]]
    ranked = sorted((r for r in todo if r["image_id"] in order), key=lambda r: order[r["image_id"]])
    return known_mask + ranked, len(low), len(high)


def s3_storage(ws: Workspace) -> S3Storage | None:
    """Label Studio's S3 storage for a workspace whose objects are on S3 (None when they are
    local files); another remote store is refused in one line."""
    store = ws.objects
    if not isinstance(store, RemoteObjectStore):
        return None
    if not store.url.startswith("s3://"):
        raise RemoteStoreUnsupported(
            f"the object store is remote ({store.url}) and annotate push connects Label Studio "
            "to local files or to S3 only: other remote stores are not supported yet")
    return S3Storage.of(store.url, store.fs)


def _predict(labeller: Prelabeller | None, ws: Workspace, rows: list[dict]) -> dict[str, dict]:
    """image id → the pre-labeller's prediction, one call for the batch."""
    if labeller is None or not rows:
        return {}
    preds = labeller.predict(ws.local_object_paths([r["object_path"] for r in rows]))
    return {r["image_id"]: p for r, p in zip(rows, preds, strict=True)}


def _known_mask_prelabel(ws: Workspace, row: dict) -> dict:
    """The source's own blur mask as the pre-label (full confidence)."""
    with Image.open(io.BytesIO(ws.objects.read(row["gt_mask"]))) as m:
        return prelabel_from_mask(np.asarray(m.convert("L")), f"ground-truth:{row['source']}", 1.0)


def _object_url(ws: Workspace, object_path: str) -> str:
    """The object's ``s3://`` URL when the objects are on S3 (Label Studio's S3 storage resolves
    it), else its local-files URL: its path relative to Label Studio's document root."""
    if isinstance(store := ws.objects, RemoteObjectStore):
        return f"{store.url}/{object_path}"
    root = document_root(ws.root)
    try:
        rel = (ws.objects.root / object_path).resolve().relative_to(root)
    except ValueError:
        raise DocumentRootError(f"the object store {ws.objects.root} is not under Label Studio's "
                                f"local-files document root {root}; set "
                                "BLURSET_LABEL_STUDIO_DOCUMENT_ROOT to a folder above it") from None
    return local_file_url(rel.as_posix())


def _task_row(ref: ProjectRef, task_id: int, r: dict, prelabel: str | None) -> dict:
    return {"server": ref.server, "project": ref.title, "project_id": ref.id, "task_id": task_id,
            "image_id": r["image_id"], "source": r["source"], "rel_path": r["rel_path"],
            "prelabel": prelabel}
