"""Annotation verbs: ``annotate push``, ``pull``, ``prelabel``, ``status``, ``review``,
``resolve`` (Label Studio)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from blurset.pipeline.cli.context import Ctx, pass_ctx


def check_label_studio(project: str) -> None:
    """Check the project title, then connect once, so a bad title, an unreachable server or a
    refused token is reported at once, not after Prefect has started and the flow's retries
    have run out."""
    from blurset.annotation.client import connect
    from blurset.names import validate_title
    validate_title(project)
    connect().close()


@click.group()
def annotate() -> None:
    """Send images to Label Studio and bring the painted masks back."""


@annotate.command()
@click.option("--project", required=True, help="Label Studio project title (created if needed).")
@click.option("--source", "sources", multiple=True,
              help="Push only these sources (default: all but the dedup reference).")
@click.option("--limit", type=click.IntRange(min=0), help="Push at most this many new images.")
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(min=1),
              help="Tasks per import request.")
@click.option("--prelabel", metavar="laplacian|lbp|CHECKPOINT",
              help="Pre-label images with no known mask: a handcrafted blur map by name, or a "
                   "DPN checkpoint file (its map thresholded at 0.5, and a guessed blur type).")
@click.option("--rank", is_flag=True,
              help="Pre-label every candidate first; push the most uncertain first and leave out "
                   "images with almost no blur or blurred all over (needs --prelabel).")
@click.option("--min-blur", default=0.02, show_default=True, type=click.FloatRange(0, 1),
              help="With --rank: leave out images whose pre-label marks less than this share.")
@click.option("--max-blur", default=0.98, show_default=True, type=click.FloatRange(0, 1),
              help="With --rank: leave out images whose pre-label marks more than this share.")
@click.option("--overlap", type=click.FloatRange(0, 1), metavar="SHARE",
              help="Have this share of the project's tasks labelled by two different people "
                   "(Label Studio's overlap settings; e.g. 0.2). Default: leave it as it is.")
@pass_ctx
def push(c: Ctx, project: str, sources: tuple[str, ...], limit: int | None, batch_size: int,
         prelabel: str | None, rank: bool, min_blur: float, max_blur: float,
         overlap: float | None) -> None:
    """Create tasks for the images that passed dedup (with pre-labels where a mask is known)."""
    check_label_studio(project)
    r = c.flows.push_flow(c.ws.root, project, sources=list(sources) or None, limit=limit,
                          batch_size=batch_size, prelabel=prelabel, rank=rank,
                          min_blur=min_blur, max_blur=max_blur, catalog_url=c.ws.catalog_url,
                          overlap=overlap)
    click.echo(f"{project}: {r.pushed} tasks pushed now ({r.with_prelabel} with pre-labels), "
               f"{r.selected - r.pushed} left, {r.reconciled} reconciled from an earlier run. "
               f"Open {r.url}")
    if r.overlap is not None:
        click.echo(f"overlap {r.overlap}: Label Studio asks two people for {r.double_tasks} "
                   "tasks of the project")
    if r.ranked:
        click.echo(f"ranked by the pre-labels, most uncertain first; left out: "
                   f"{r.skipped_no_blur} with almost no blur (< {min_blur}), "
                   f"{r.skipped_all_blurred} blurred all over (> {max_blur})")
    if r.duplicate_tasks_in_label_studio:
        click.echo(f"warning: Label Studio holds duplicate tasks "
                   f"{r.duplicate_tasks_in_label_studio} (created outside blurset?); the oldest "
                   "task of each image is used", err=True)


@annotate.command()
@click.option("--project", required=True)
@click.option("--export", "export_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write every current mask as DIR/<source>/<source_path>.png.")
@pass_ctx
def pull(c: Ctx, project: str, export_dir: Path | None) -> None:
    """Export all annotations (snapshot kept), decode the masks, store them in the catalog."""
    check_label_studio(project)
    r = c.flows.pull_flow(c.ws.root, project, export_dir=export_dir,
                          catalog_url=c.ws.catalog_url)
    exported = f"; {r.exported} masks written to {export_dir}" if export_dir else ""
    click.echo(f"{project}: {r.tasks} tasks, {r.annotated} annotated, {r.rejected} rejected, "
               f"{r.pending} pending; {r.masks_stored} current masks stored; "
               f"snapshot {r.snapshot}{exported}")
    for p in r.problems:
        click.echo(f"problem: {p}", err=True)


@annotate.command()
@click.option("--project", required=True)
@click.option("--checkpoint", required=True, metavar="CHECKPOINT|laplacian|lbp",
              help="The (newer) model whose predictions to add.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Images per Prefect task.")
@pass_ctx
def prelabel(c: Ctx, project: str, checkpoint: str, batch_size: int) -> None:
    """Add this model's prediction to every task nobody has annotated yet (re-runs add nothing)."""
    check_label_studio(project)
    r = c.flows.prelabel_flow(c.ws.root, project, checkpoint, batch_size=batch_size,
                              catalog_url=c.ws.catalog_url)
    click.echo(f"{project}: {r.added} predictions of {r.model_version} added; skipped "
               f"{r.skipped_annotated} annotated, {r.skipped_same_model} already holding "
               f"this model_version, {r.skipped_deleted} deleted (of {r.tasks} tasks)")


def _project_id(c: Ctx, project: str) -> tuple[str, int]:
    """The (server, project id) the catalog knows ``project`` by on $LABEL_STUDIO_URL."""
    from blurset.annotation.server import Connection
    from blurset.errors import NotFoundError
    server = Connection.from_env().url
    ids = [t["project_id"] for t in c.existing_ws.catalog().task_projects()
           if t["project"] == project and t["server"] == server]
    if not ids:
        raise NotFoundError(f"no tasks of project {project!r} at {server} in the catalog; "
                            "run `blurset annotate push` first")
    return server, ids[0]


@annotate.command(name="status")
@click.option("--project", required=True)
@pass_ctx
def status(c: Ctx, project: str) -> None:
    """Counts of pushed, annotated, rejected and pending tasks, work saved by the pre-labels,
    agreement with the hint, per annotator and per pair (as of the last pull)."""
    from blurset.pipeline.stages.labelling import status as project_status
    server, project_id = _project_id(c, project)
    st = project_status(c.existing_ws.catalog(), server, project_id, c.existing_ws.objects.read)
    for k, v in asdict(st).items():
        if isinstance(v, dict):  # per model_version of the pre-label, per annotator, per pair
            click.echo(f"{k}:")
            for key, stats in v.items():
                click.echo(f"  {key}: " + ", ".join(f"{sk} {sv}" for sk, sv in stats.items()))
        else:
            click.echo(f"{k}: {v}")


@annotate.command()
@click.option("--project", required=True)
@click.option("--below", default=0.8, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="A pair of annotators disagrees when their masks' IoU is below this (or "
                   "their blur types differ, or one rejected what the other painted).")
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path),
              help="Contact sheet of the disagreeing masks, side by side (default: "
                   "WORKSPACE/annotations/<project>/review-<time>.png).")
@pass_ctx
def review(c: Ctx, project: str, below: float, sheet: Path | None) -> None:
    """List the tasks whose annotators disagree (as of the last pull), with a contact sheet."""
    from datetime import UTC, datetime

    from blurset.names import slug
    from blurset.pipeline.stages.labelling.review import review as review_tasks
    server, project_id = _project_id(c, project)
    ws = c.existing_ws
    if sheet is None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        sheet = ws.root / "annotations" / slug(project) / f"review-{stamp}.png"
    r = review_tasks(ws.catalog(), ws.objects.read, server, project_id, project, below, sheet)
    click.echo(f"{project}: {len(r.disagreements)} disagreeing pairs on "
               f"{len({p.task_id for p in r.disagreements})} of {r.compared_tasks} tasks "
               f"labelled by more than one person (IoU below {below}, another blur type, or a "
               "rejection against a mask)")
    for p in r.disagreements:
        iou = "n/a" if p.iou is None else f"{p.iou:.3f}"
        what = [o.rejected and f"rejected: {o.rejected}" or o.blur_type or "no blur type"
                for o in (p.a, p.b)]
        click.echo(f"  task {p.task_id} ({p.where}): #{p.a.annotation_id} {p.a.annotator} "
                   f"({what[0]}) vs #{p.b.annotation_id} {p.b.annotator} ({what[1]}): IoU {iou}")
    if r.contact_sheet:
        click.echo(f"contact sheet: {r.contact_sheet}")
        click.echo("choose the annotation a release takes: "
                   "blurset annotate resolve TASK --use ANNOTATION_ID, then pull")


@annotate.command()
@click.argument("task_id", metavar="TASK", type=int)
@click.option("--use", "annotation_id", required=True, type=int, metavar="ANNOTATION_ID",
              help="The annotation of TASK the release takes (see `annotate review`).")
@click.option("--project", help="The project (default: the one holding TASK on "
                                "$LABEL_STUDIO_URL).")
@pass_ctx
def resolve(c: Ctx, task_id: int, annotation_id: int, project: str | None) -> None:
    """Record which annotation of a task the release takes; the next pull applies it."""
    from blurset.annotation.server import Connection
    from blurset.errors import NotFoundError
    from blurset.pipeline.stages.labelling.review import resolve as resolve_task
    catalog = c.existing_ws.catalog()
    server = Connection.from_env().url
    projects = [(p["project"], p["project_id"]) for p in catalog.task_projects()
                if p["server"] == server and (project is None or p["project"] == project)]
    holding = [(title, pid) for title, pid in projects
               if any(t["task_id"] == task_id for t in catalog.tasks(server, pid))]
    if not holding:
        raise NotFoundError(f"no task {task_id} at {server} in the catalog"
                            + (f" (project {project!r})" if project else "")
                            + "; see `blurset annotate review --project P`")
    title, pid = holding[0]
    resolve_task(catalog, server, pid, task_id, annotation_id)
    click.echo(f"{title}: task {task_id} takes annotation {annotation_id}; run `blurset "
               f"annotate pull --project {title!r}` to apply it")


def register(cli: click.Group) -> None:
    cli.add_command(annotate)
