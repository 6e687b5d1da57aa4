"""What every verb shares: the workspace context, Prefect's settings, and how errors are shown.

The verb modules import this module, never ``main`` (which imports them).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import click

from blurset.errors import BlursetError
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


def migrate_prefect_once() -> None:
    """Create or upgrade Prefect's own database under a file lock, once per Prefect version: two
    commands started at once on a new workspace would otherwise both migrate it when their
    ephemeral servers start (and one fails). Nothing to do with a Prefect server configured."""
    import asyncio
    import fcntl

    import prefect
    from prefect.settings import get_current_settings
    settings = get_current_settings()
    if settings.api.url:
        return
    home = Path(settings.home)
    marker = home / f".blurset-migrated-{prefect.__version__}"
    if marker.exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".blurset-migrate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (or the process dies)
        if marker.exists():  # the other command migrated it while this one waited
            return
        asyncio.run(_create_prefect_db())
        marker.touch()


async def _create_prefect_db() -> None:
    """Migrate Prefect's database and register its block types once: two ephemeral servers
    starting at once otherwise both insert the same block schemas (UNIQUE constraint errors)."""
    from prefect.server.database import provide_database_interface
    from prefect.server.models.block_registration import run_block_auto_registration
    db = provide_database_interface()
    await db.create_db()
    session = await db.session()
    async with session:  # as Prefect's server does it: the registration commits itself
        await run_block_auto_registration(session=session)


class _PopenDyingWithParent:
    """``subprocess`` as Prefect's server module sees it: its ``Popen`` asks Linux to send the
    child SIGTERM when the thread that started it (here: the main thread, so the CLI process)
    dies, even by SIGKILL (``prctl(PR_SET_PDEATHSIG)``)."""

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args, **kwargs):
        # Only from the main thread: another thread may end long before the process does.
        if threading.current_thread() is threading.main_thread():
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            kwargs.setdefault("preexec_fn",
                              lambda: libc.prctl(pr_set_pdeathsig, signal.SIGTERM))
        return subprocess.Popen(*args, **kwargs)


def server_dies_with_cli() -> None:
    """Make the ephemeral Prefect server that a command starts die with it: killed outright, the
    command otherwise left the server running (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    from prefect.server.api import server as prefect_server
    if not isinstance(prefect_server.subprocess, _PopenDyingWithParent):
        prefect_server.subprocess = _PopenDyingWithParent()


@dataclass
class Ctx:
    """The root group's options; the workspace is opened (and created) on first use."""

    workspace: str | None = None
    catalog_url: str | None = None
    verbose: bool = False
    _ws: Workspace | None = field(default=None, repr=False)

    @property
    def ws(self) -> Workspace:
        if self._ws is None:
            self._ws = Workspace.open(self.workspace, self.catalog_url)
            prefect_env(self._ws.root, self.verbose)
        return self._ws

    @property
    def existing_ws(self) -> Workspace:
        """The workspace, for a verb that only reads: none is created, a missing one is one
        ``Error:`` line (a mistyped --workspace would otherwise report zero counts)."""
        if self._ws is None:
            self._ws = Workspace.open(self.workspace, self.catalog_url, create=False)
            prefect_env(self._ws.root, self.verbose)
        return self._ws

    @property
    def flows(self) -> ModuleType:
        """``blurset.pipeline.flows``, imported on first use (Prefect takes seconds to import),
        after Prefect's settings are in place."""
        _ = self.ws  # sets Prefect's environment before the import
        from blurset.pipeline import flows
        _EXPECTED_FILTER.install(quiet=not self.verbose)
        migrate_prefect_once()
        server_dies_with_cli()
        return flows

    def releases_root(self, root: str | os.PathLike | None) -> Path:
        """``--releases-root``/``--out``/``--root`` if given, else WORKSPACE/releases."""
        return Path(root) if root else self.ws.root / "releases"


pass_ctx = click.make_pass_decorator(Ctx)


def _subclass_names(root: type[BaseException]) -> set[str]:
    names: set[str] = set()
    todo = [root]
    while todo:
        t = todo.pop()
        names.add(t.__name__)
        todo.extend(t.__subclasses__())
    return names


class _ExpectedErrorFilter(logging.Filter):
    """Drops Prefect's console records about an error the CLI reports itself in one line: the
    flow's and task's tracebacks of a :class:`BlursetError` and the task's closing "Finished in
    state Failed(…)" line about it. Everything else, and everything with ``-v``, reaches the
    console as before."""

    def __init__(self) -> None:
        super().__init__("blurset-expected-errors")
        self.quiet = True

    def install(self, quiet: bool) -> None:
        self.quiet = quiet
        for handler in logging.getLogger().handlers:  # Prefect's console handler sits on root
            if self not in handler.filters:
                handler.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.quiet or not record.name.startswith("prefect."):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            return not isinstance(exc, BlursetError)
        message = record.getMessage()
        return not (message.startswith("Finished in state Failed") and any(
            f"exception {name}:" in message for name in _subclass_names(BlursetError)))


_EXPECTED_FILTER = _ExpectedErrorFilter()
