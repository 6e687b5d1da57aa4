"""The root ``blurset`` group: global options, ``--version``, error display, and the verb groups."""

from __future__ import annotations

import traceback

import click

from blurset.errors import BlursetError
from blurset.pipeline.cli import annotate, data, demo, labelstudio, model, release, serve
from blurset.pipeline.cli.context import Ctx


class BlursetGroup(click.Group):
    """A :class:`BlursetError` raised below (also inside a Prefect flow) becomes one
    ``Error: <message>`` line on stderr and exit code 1; ``-v`` prints its traceback first.
    Anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BlursetError as e:
            if isinstance(ctx.obj, Ctx) and ctx.obj.verbose:
                click.echo("".join(traceback.format_exception(e)), err=True, nl=False)
            raise click.ClickException(str(e)) from e


@click.group(cls=BlursetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="blurset", prog_name="blurset")
@click.option("--workspace", "-w", type=click.Path(file_okay=False),
              help="Workspace folder (catalog, objects, quarantine). "
                   "Default: $BLURSET_WORKSPACE or ./workspace")
@click.option("--catalog-url",
              help="SQLAlchemy URL of the catalog (postgresql://… for a team's). Default: "
                   "$BLURSET_CATALOG_URL, else the one the workspace remembers, else SQLite in "
                   "the workspace.")
@click.option("--objects-url", envvar="BLURSET_OBJECTS_URL",
              help="Where the object store lives (e.g. s3://bucket/prefix). Default: "
                   "$BLURSET_OBJECTS_URL, else the one the workspace remembers, else "
                   "WORKSPACE/objects.")
@click.option("--dask-address", envvar="BLURSET_DASK_ADDRESS", metavar="tcp://HOST:PORT",
              help="Run the flows' tasks (ingest batches, dedup verification, release build) "
                   "on this Dask scheduler. Default: $BLURSET_DASK_ADDRESS, else this machine.")
@click.option("--verbose", "-v", is_flag=True,
              help="Show Prefect's run logs, and the traceback of an error.")
@click.pass_context
def cli(ctx: click.Context, workspace: str | None, catalog_url: str | None,
        objects_url: str | None, dask_address: str | None, verbose: bool) -> None:
    """blurset: build blur-detection datasets (ingest → dedup → annotate → release → train)."""
    ctx.obj = Ctx(workspace, catalog_url, verbose, dask_address=dask_address or None,
                  objects_url=objects_url or None)


for _module in (data, annotate, labelstudio, release, model, demo, serve):
    _module.register(cli)


def main() -> None:
    cli(prog_name="blurset")


if __name__ == "__main__":
    main()
