"""What every `blurset` verb shares: the workspace context and Prefect's settings.

A module of its own so that the verbs in other modules (cli_model, cli_ml) can import it without
importing ``blurset.pipeline.cli.main`` (which imports them).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from blurset.pipeline.workspace import Workspace


def prefect_env(ws_root: Path, verbose: bool = False) -> None:
    """Prefect settings that fit a one-machine CLI, unless the user set them already.

    Must run before Prefect is imported: its settings are read then.
    """
    os.environ.setdefault("PREFECT_HOME", str(ws_root / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("PREFECT_UI_ENABLED", "false")


class Ctx:
    def __init__(self, workspace: str | None, catalog_url: str | None, verbose: bool):
        self._workspace_arg = workspace
        self._catalog_url = catalog_url
        self.verbose = verbose
        self._ws: Workspace | None = None

    @property
    def ws(self) -> Workspace:
        if self._ws is None:
            self._ws = Workspace.open(self._workspace_arg, self._catalog_url)
            if self._catalog_url:
                os.environ["BLURSET_CATALOG_URL"] = self._catalog_url
            prefect_env(self._ws.root, self.verbose)
        return self._ws


pass_ctx = click.make_pass_decorator(Ctx)


def releases_root(c: Ctx, root: str | None) -> Path:
    """``--releases-root``/``--out``/``--root`` if given, else WORKSPACE/releases."""
    return Path(root) if root else c.ws.root / "releases"
