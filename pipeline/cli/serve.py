"""``serve``: the flows as deployments of the user's Prefect server, run by this process."""

from __future__ import annotations

import click

from blurset.errors import BlursetError
from blurset.pipeline.cli.context import Ctx, pass_ctx

# The flows a team triggers from its Prefect server (the annotate flows need Label Studio's
# token in this process's environment, as they do on the command line).
SERVED = ("ingest_flow", "dedup_flow", "push_flow", "pull_flow", "release_flow")


class NoPrefectServerError(BlursetError):
    """``serve`` needs a Prefect server to take its deployments."""


@click.command()
@click.option("--deployment", "deployment_name", default="blurset", show_default=True,
              help="Name of each deployment (the server shows FLOW/NAME, e.g. dedup/blurset).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Flow runs at most at once (default: Prefect's).")
@pass_ctx
def serve(c: Ctx, deployment_name: str, limit: int | None) -> None:
    """Serve the ingest, dedup, annotate push/pull and release build flows as deployments of
    your Prefect server ($PREFECT_API_URL or your profile's), with this workspace, catalog and
    object store as their defaults; runs triggered there (UI, `prefect deployment run`,
    `run_deployment`) run here until Ctrl-C."""
    from prefect import serve as prefect_serve
    from prefect.settings import get_current_settings
    from prefect.types.entrypoint import EntrypointType
    flows = c.flows
    api = get_current_settings().api.url
    if not api:
        raise NoPrefectServerError(
            "blurset serve needs a Prefect server to register its deployments: start one with "
            "`prefect server start`, then `prefect config set PREFECT_API_URL="
            "http://127.0.0.1:4200/api` (or export PREFECT_API_URL)")
    defaults = {"workspace": str(c.ws.root), "catalog_url": c.ws.catalog_url,
                "objects_url": c.ws.objects_url}
    deployments = []
    for attr in SERVED:
        flow = flows.flow(attr)
        deployments.append(flow.to_deployment(
            name=deployment_name, parameters=defaults, tags=["blurset"],
            description=f"blurset {flow.name} on workspace {c.ws.root}",
            entrypoint_type=EntrypointType.MODULE_PATH))
    click.echo(f"serving {len(deployments)} deployments on {api}: "
               + ", ".join(f"{d.flow_name}/{d.name}" for d in deployments), err=True)
    prefect_serve(*deployments, limit=limit, print_starting_message=False)


def register(cli: click.Group) -> None:
    cli.add_command(serve)
