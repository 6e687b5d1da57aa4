"""Add a (newer) model's predictions to every task of a project that nobody has annotated yet;
annotations and earlier predictions stay as they are (Label Studio keeps several per task)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from blurset.annotation.client import Client
from blurset.annotation.export import parse_export
from blurset.pipeline.catalog import Catalog
from blurset.pipeline.stages.labelling.project import existing_project
from blurset.pipeline.stages.prelabel import Prelabeller, make_prelabeller
from blurset.pipeline.workspace import Workspace

Progress = Callable[[int], None]


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


def add_prelabels(catalog: Catalog, client: Client, ws: Workspace, project: str, prelabel: str,
                  batch_size: int = 32, progress: Progress | None = None) -> PrelabelReport:
    """Add a prediction of ``prelabel`` (a checkpoint path or a handcrafted map's name) to
    every task of the project that nobody has annotated yet.

    The pre-labeller is made (the model loaded) once, before anything is asked of Label Studio.
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


def plan_prelabels(catalog: Catalog, client: Client, project: str, model_version: str
                   ) -> tuple[PrelabelReport, list[dict]]:
    """The project's tasks that should get a prediction of ``model_version``
    (``{"task_id", "object_path"}``): those with no submitted annotation and no prediction of
    that model_version yet (so a re-run adds nothing).

    Tasks unknown to the catalog are left alone (a push reconciles them first).
    """
    ref = existing_project(client, project)
    report = PrelabelReport(project, ref.id, model_version)
    exported = {t.id: t for t in parse_export(client.export(ref.id))}
    versions: dict[int, set[str]] = {}
    for pred in client.project_predictions(ref.id):
        versions.setdefault(pred["task"], set()).add(pred.get("model_version") or "")
    todo = []
    for t in catalog.tasks(ref.server, ref.id):
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
    preds = labeller.predict(ws.local_object_paths([t["object_path"] for t in batch]))
    return client.create_predictions(project_id, [(t["task_id"], p)
                                                  for t, p in zip(batch, preds, strict=True)])
