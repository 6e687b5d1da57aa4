"""What every verb shares: the workspace context, Prefect's settings, and how errors are shown.

The verb modules import this module, never ``main`` (which imports them).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import click

from blurset.errors import BlursetError
from blurset.pipeline.workspace import Workspace

# Defaults for a one-machine CLI; a setting the user made (environment or active profile) wins.
_PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_UI_ENABLED": "false",
}


class PrefectProfileError(BlursetError):
    """The user's Prefect profiles file cannot be read."""


def user_prefect_profile(environ: Mapping[str, str] | None = None) -> tuple[Path, dict[str, str]]:
    """The user's profiles file and the settings of its active profile, as Prefect finds them:
    ``$PREFECT_PROFILES_PATH``, else ``$PREFECT_HOME/profiles.toml``, else
    ``~/.prefect/profiles.toml``; the profile named by ``$PREFECT_PROFILE``, else the file's
    ``active`` one. No file (or no such profile): no settings."""
    env = os.environ if environ is None else environ
    if env.get("PREFECT_PROFILES_PATH"):
        path = Path(env["PREFECT_PROFILES_PATH"]).expanduser()
    elif env.get("PREFECT_HOME"):
        path = Path(env["PREFECT_HOME"]).expanduser() / "profiles.toml"
    else:
        path = Path(env.get("HOME") or Path.home()).expanduser() / ".prefect" / "profiles.toml"
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        return path, {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PrefectProfileError(f"cannot read Prefect's profiles file {path}: {e}; fix it or "
                                  "point $PREFECT_PROFILES_PATH elsewhere") from None
    name = env.get("PREFECT_PROFILE") or doc.get("active")
    settings = doc.get("profiles", {}).get(name, {}) if name else {}
    return path, {str(k): str(v) for k, v in settings.items()}


def prefect_env(ws_root: Path, verbose: bool = False) -> None:
    """Prefect as the user configured it, with one-machine defaults for what they left unset.

    ``PREFECT_HOME``, ``PREFECT_API_URL`` and every other setting in the environment or in the
    user's active profile are kept (so runs reach the team's server). Only when neither names a
    home nor a server does Prefect's home (its local database) go to ``WORKSPACE/.prefect``; the
    user's profiles file is still the one read. Must run before Prefect is imported: its
    settings are read then.
    """
    env = os.environ
    profiles, profile = user_prefect_profile(env)
    configured = {*env, *profile}
    if not configured & {"PREFECT_HOME", "PREFECT_API_URL"}:
        if profiles.is_file():
            env.setdefault("PREFECT_PROFILES_PATH", str(profiles))
        env["PREFECT_HOME"] = str(ws_root / ".prefect")
    defaults = {**_PREFECT_DEFAULTS, "PREFECT_LOGGING_LEVEL": "INFO" if verbose else "WARNING"}
    for key, value in defaults.items():
        if key not in configured:
            env[key] = value


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


_KEPT = contextlib.ExitStack()  # settings entered for the rest of the command


def api_for_dask_workers() -> bool:
    """Without a configured Prefect server, start this command's temporary one now and name it
    in the settings the flow sends to its Dask workers: each worker would otherwise start a
    temporary server of its own (with its own database). The server listens on 127.0.0.1, so
    workers on other machines need a real server (``PREFECT_API_URL``). True if it started
    one (the workers must then deliver their events before the command ends)."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
    if get_current_settings().api.url:
        return False
    server = SubprocessASGIServer()
    server.start()
    # for the rest of this command (it ends with the process, as the server does)
    _KEPT.enter_context(temporary_settings(updates={PREFECT_API_URL: server.api_url}))
    return True


async def _deliver_prefect_events() -> None:
    """On a Dask worker: send the task-run events still queued (the server may go away)."""
    from prefect.events.worker import EventsWorker
    await EventsWorker.drain_all(timeout=60)


def drain_dask_workers(address: str) -> None:
    """Wait until every worker of the scheduler at ``address`` has delivered its Prefect events:
    the command's temporary server ends with it, and events sent later are lost (the workers
    log each failure). Best effort: a scheduler gone by now loses the events, not the run."""
    from distributed import Client
    try:
        with Client(address, timeout=30) as client:
            client.run(_deliver_prefect_events)
    except (OSError, TimeoutError) as e:
        logging.getLogger(__name__).warning("could not wait for the Dask workers' Prefect "
                                            "events (%s): some task runs may be unrecorded", e)


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


class DaskError(BlursetError):
    """``--dask-address`` cannot be used: prefect-dask is missing or the scheduler is
    unreachable."""


def dask_task_runner(address: str, timeout: float = 5.0):
    """A ``prefect_dask.DaskTaskRunner`` on the scheduler at ``address``
    (``tcp://HOST:PORT``), after checking that it answers: one :class:`DaskError` line
    otherwise."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as e:
        raise DaskError(f"--dask-address needs prefect-dask and dask.distributed ({e}); "
                        "install them with: pip install 'blurset[dask]'") from None
    parsed = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        host = port = None
    if parsed.scheme not in ("tcp", "tls") or not host or not port:
        raise DaskError(f"--dask-address {address!r} is not a scheduler address: give "
                        "tcp://HOST:PORT (what `dask scheduler` prints)")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise DaskError(f"cannot reach the Dask scheduler at {address} ({e}); start one with "
                        "`dask scheduler` (and `dask worker ADDRESS`), or fix --dask-address / "
                        "$BLURSET_DASK_ADDRESS") from None
    return DaskTaskRunner(address=f"{parsed.scheme}://{host}:{port}")


class _ConfiguredFlows:
    """``blurset.pipeline.flows`` as this command was configured: :meth:`flow` is a flow on the
    Dask cluster when ``--dask-address`` is given; a flow called as an attribute is also given
    ``--objects-url`` when it takes one (an explicit keyword still wins), and ``after`` runs
    when it returns."""

    def __init__(self, module: ModuleType, task_runner=None, objects_url: str | None = None,
                 after=None):
        self._module, self._runner, self._objects_url = module, task_runner, objects_url
        self._after = after

    def flow(self, name: str):
        value = getattr(self._module, name)
        return value.with_options(task_runner=self._runner) if self._runner else value

    def __getattr__(self, name: str):
        from prefect import Flow
        value = getattr(self._module, name)
        if not isinstance(value, Flow):
            return value
        flow = self.flow(name)
        given = ({"objects_url": self._objects_url} if self._objects_url is not None and
                 "objects_url" in inspect.signature(flow.fn).parameters else {})

        @functools.wraps(flow.fn)
        def run(*args, **kwargs):
            try:
                return flow(*args, **{**given, **kwargs})
            finally:
                if self._after is not None:
                    self._after()
        return run


@dataclass
class Ctx:
    """The root group's options; the workspace is opened (and created) on first use."""

    workspace: str | None = None
    catalog_url: str | None = None
    verbose: bool = False
    dask_address: str | None = None
    objects_url: str | None = None
    _ws: Workspace | None = field(default=None, repr=False)

    def _open(self, create: bool) -> Workspace:
        ws = Workspace.open(self.workspace, self.catalog_url, create=create,
                            objects_url=self.objects_url)
        prefect_env(ws.root, self.verbose)
        return ws

    @property
    def ws(self) -> Workspace:
        if self._ws is None:
            self._ws = self._open(create=True)
        return self._ws

    @property
    def existing_ws(self) -> Workspace:
        """The workspace, for a verb that only reads: none is created, a missing one is one
        ``Error:`` line (a mistyped --workspace would otherwise report zero counts)."""
        if self._ws is None:
            self._ws = self._open(create=False)
        return self._ws

    @property
    def flows(self) -> _ConfiguredFlows:
        """``blurset.pipeline.flows``, imported on first use (Prefect takes seconds to import),
        after Prefect's settings are in place; its flows configured by the global options."""
        _ = self.ws  # sets Prefect's environment before the import
        # A catalog that cannot be opened (server down, driver missing) is one line now, not
        # after Prefect's server has started (tens of seconds) inside the flow.
        self.ws.catalog().close()
        runner = dask_task_runner(self.dask_address) if self.dask_address else None
        from blurset.pipeline import flows
        _EXPECTED_FILTER.install(quiet=not self.verbose)
        migrate_prefect_once()
        server_dies_with_cli()
        after = None
        if runner is not None and api_for_dask_workers():
            after = functools.partial(drain_dask_workers, runner.address)
        return _ConfiguredFlows(flows, runner, self.objects_url, after)

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
