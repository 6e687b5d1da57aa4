"""The ``demo`` verb: the whole loop on the bundled sample."""

from __future__ import annotations

from pathlib import Path

import click

from blurset.pipeline.cli.context import Ctx


@click.command()
@click.option("--dir", "demo_dir", default="demo", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the demo's sample and workspace.")
@click.option("--no-annotate", is_flag=True,
              help="Skip Label Studio (dedup, then the CUHK-style release only).")
@click.pass_obj
def demo(c: Ctx, demo_dir: Path, no_annotate: bool) -> None:
    """The pipeline on the bundled sample: sample → ingest → dedup → Label Studio → pull → releases."""
    from blurset.pipeline.demo.run import run_demo
    if c.workspace is None:
        c.workspace = str(demo_dir / "workspace")
    _ = c.flows  # Prefect's settings, and its console quiet about errors reported here
    run_demo(demo_dir, c.ws, annotate=not no_annotate)


def register(cli: click.Group) -> None:
    cli.add_command(demo)
