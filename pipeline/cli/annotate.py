"""Annotation verbs: ``annotate push``, ``pull``, ``prelabel``, ``status`` (Label Studio)."""

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
@pass_ctx
def push(c: Ctx, project: str, sources: tuple[str, ...], limit: int | None, batch_size: int,
         prelabel: str | None, rank: bool, min_blur: float, max_blur: float) -> None:
    """Create tasks for the images that passed dedup (with pre-labels where a mask is known)."""
    check_label_studio(project)
    r = c.flows.push_flow(c.ws.root, project, sources=list(sources) or None, limit=limit,
                          batch_size=batch_size, prelabel=prelabel, rank=rank,
                          min_blur=min_blur, max_blur=max_blur, catalog_url=c.ws.catalog_url)
    click.echo(f"{project}: {r.pushed} tasks pushed now ({r.with_prelabel} with pre-labels), "
               f"{r.selected - r.pushed} left, {r.reconciled} reconciled from an earlier run. "
               f"Open {r.url}")
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


@annotate.command(name="status")
@click.option("--project", required=True)
@pass_ctx
def status(c: Ctx, project: str) -> None:
    """Counts of pushed, annotated, rejected and pending tasks (as of the last pull)."""
    from blurset.annotation.server import Connection
    from blurset.errors import NotFoundError
    from blurset.pipeline.stages.labelling import status as project_status
    catalog = c.existing_ws.catalog()
    server = Connection.from_env().url
    ids = [t["project_id"] for t in catalog.task_projects()
           if t["project"] == project and t["server"] == server]
    if not ids:
        raise NotFoundError(f"no tasks of project {project!r} at {server} in the catalog; "
                            "run `blurset annotate push` first")
    st = project_status(catalog, server, ids[0])
    for k, v in (asdict(st) if not isinstance(st, dict) else st).items():
        if isinstance(v, dict):  # work saved, per model_version of the pre-label
            for version, stats in v.items():
                click.echo(f"  {version}: " + ", ".join(f"{sk} {sv}" for sk, sv in stats.items()))
        else:
            click.echo(f"{k}: {v}")


def register(cli: click.Group) -> None:
    cli.add_command(annotate)
