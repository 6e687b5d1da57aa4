"""Label Studio verbs: ``labelstudio up|down|status`` (a local server in its own virtualenv) and
``labelstudio ml-backend serve|up|down|status`` (live pre-labels from a model while people label).

The ML backend's model is a pre-labeller of ``blurset.pipeline.stages.prelabel`` (a DPN
checkpoint, or ``laplacian``/``lbp``); ``up`` runs ``serve`` in the background (pid and log in
``<workspace>/ml-backend/``) and connects it to a project.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from blurset.pipeline.cli.context import Ctx, pass_ctx

HOST = "127.0.0.1"
DEFAULT_PORT = 9090


def backend_title(model_version: str) -> str:
    """The ML backend's title in Label Studio."""
    return f"blurset {model_version}"


def _print_status(st: dict) -> None:
    for k, v in st.items():
        click.echo(f"{k}: {v}")
    if not st["answering"]:
        sys.exit(1)


@click.group()
def labelstudio() -> None:
    """Run a local Label Studio (own virtualenv, data in the workspace)."""


def _server(c: Ctx):
    from blurset.annotation.server import LocalServer
    return LocalServer.for_workspace(c.ws.root)


@labelstudio.command()
@click.option("--timeout", default=240.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to wait for it to answer.")
@pass_ctx
def up(c: Ctx, timeout: float) -> None:
    """Start Label Studio at $LABEL_STUDIO_URL with $LABEL_STUDIO_API_KEY (harmless if running)."""
    st = _server(c).up(timeout=timeout, log=lambda m: click.echo(m, err=True))
    click.echo(f"Label Studio is up at {st['url']} (data: {st['data_dir']}, log: {st['log']})")


@labelstudio.command()
@pass_ctx
def down(c: Ctx) -> None:
    """Stop the Label Studio this workspace started (nothing else)."""
    stopped = _server(c).down()
    click.echo("Label Studio stopped" if stopped else
               "no Label Studio started by this workspace is running")


@labelstudio.command(name="status")
@pass_ctx
def status(c: Ctx) -> None:
    """Is it running, does it accept the token."""
    _print_status(_server(c).status())


@labelstudio.group(name="ml-backend")
def ml_backend() -> None:
    """Live pre-labels from a model while people label (a Label Studio ML backend)."""


def _backend(c: Ctx, port: int):
    from blurset.annotation.ml_backend import BackendProcess
    return BackendProcess(c.ws.root / "ml-backend", f"http://{HOST}:{port}")


def _model_spec(checkpoint: str) -> str:
    """A handcrafted name as is, a checkpoint file as an absolute path (the background process
    may start elsewhere)."""
    from blurset.pipeline.stages.prelabel import HANDCRAFTED
    named = (*HANDCRAFTED, "pretrained")  # resolved by the loader, not a path here
    return checkpoint if checkpoint in named else str(Path(checkpoint).resolve())


@ml_backend.command()
@click.option("--checkpoint", required=True, help="A DPN checkpoint, pretrained (the shipped DPN), or laplacian / lbp.")
@click.option("--host", default=HOST, show_default=True)
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535))
@click.option("--document-root", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="The folder Label Studio serves local files from (default: the "
                   "workspace, or $BLURSET_LABEL_STUDIO_DOCUMENT_ROOT).")
@click.option("--storage", "storage", multiple=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="A folder connected to the project as local storage: only images under one "
                   "are read (default: the workspace's objects/; none when they are on S3, "
                   "read through the store). Repeatable.")
@pass_ctx
def serve(c: Ctx, checkpoint: str, host: str, port: int, document_root: Path | None,
          storage: tuple[Path, ...]) -> None:
    """Run the ML backend in the foreground (what `up` starts in the background)."""
    from blurset.annotation.ml_backend import Backend, RemoteObjects, make_server
    from blurset.annotation.server import document_root as default_root
    from blurset.pipeline.stages.prelabel import make_prelabeller
    from blurset.pipeline.store import RemoteObjectStore
    predictor = make_prelabeller(_model_spec(checkpoint))
    root = document_root or default_root(c.ws.root)
    ws, store = c.ws, c.ws.objects
    remote = None
    if isinstance(store, RemoteObjectStore):
        # the project's storage is the store itself (annotate push connects it): its objects
        # are fetched through the store into the cache push uses; local files only from --storage
        remote = RemoteObjects(store.url, ws.local_object_paths)
        folders = list(storage)
        where = f"objects of {store.url}, cached in {ws.root / 'cache' / 'objects'}"
    else:
        # only the project's connected storage (the workspace's objects/) is read
        folders = list(storage) or [store.root]
        where = f"images under {root}"
    server = make_server(Backend(predictor, root, storage=folders, remote=remote), host, port)
    click.echo(f"ML backend for {predictor.model_version} at http://{host}:{port} ({where})",
               err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@ml_backend.command(name="up")
@click.option("--checkpoint", required=True, help="A DPN checkpoint, pretrained (the shipped DPN), or laplacian / lbp.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(1, 65535))
@click.option("--project", help="Connect it to this Label Studio project (title); it must "
                                "exist unless --create-project.")
@click.option("--create-project", is_flag=True,
              help="Create the --project if Label Studio has none of that title.")
@click.option("--retrieve-automatically/--no-retrieve-automatically", default=True,
              show_default=True,
              help="Also predict the tasks the Data Manager lists without a prediction.")
@click.option("--timeout", default=180.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to wait for the model to load.")
@click.option("--storage", "storage", multiple=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="A folder connected to the project as local storage: only images under one "
                   "are read (default: the workspace's objects/; none when they are on S3, "
                   "read through the store). Repeatable.")
@pass_ctx
def backend_up(c: Ctx, checkpoint: str, port: int, project: str | None, create_project: bool,
               retrieve_automatically: bool, timeout: float, storage: tuple[Path, ...]) -> None:
    """Start the ML backend in the background (or find it running) and connect it to a
    project: Label Studio then asks it for a pre-label when an annotator opens a task."""
    from blurset.annotation.server import document_root
    from blurset.pipeline.stages.prelabel import make_prelabeller
    spec = _model_spec(checkpoint)
    make_prelabeller(spec)  # a bad model is refused here, before anything starts
    if project and not create_project:
        _existing_project(project)  # a mistyped title is refused before anything starts
    # the workspace (its objects_url too: the backend reads objects on a remote store through it)
    objects = ["--objects-url", c.ws.objects_url] if c.ws.objects_url else []
    command = [sys.executable, "-P", "-m", "blurset", "-w", str(c.ws.root), *objects, "labelstudio",
               "ml-backend", "serve", "--checkpoint", spec, "--host", HOST, "--port", str(port),
               "--document-root", str(document_root(c.ws.root)),
               *[a for f in storage for a in ("--storage", str(f.resolve()))]]
    st = _backend(c, port).up(command, spec, timeout=timeout,
                              log=lambda m: click.echo(m, err=True))
    click.echo(f"ML backend for {st['model_version']} is up at {st['url']} (log: {st['log']})")
    if project:
        _connect_backend(project, st["url"], backend_title(st["model_version"]),
                         retrieve_automatically, create_project)


def _existing_project(project: str) -> int:
    """The id of the project titled ``project``; UnknownProject (one line) when there is none."""
    from blurset.annotation.client import connect
    from blurset.names import validate_title
    from blurset.pipeline.stages.labelling.project import existing_project
    validate_title(project)
    with connect() as client:
        return existing_project(client, project).id


def _connect_backend(project: str, url: str, title: str, retrieve_automatically: bool,
                     create: bool = False) -> None:
    from blurset.annotation.client import connect
    with connect() as client:
        project_id = client.project(project) if create else _existing_project(project)
        ml_id = client.connect_ml_backend(project_id, url, title)
        client.use_ml_backend_predictions(project_id, title, retrieve_automatically)
    click.echo(f"project {project!r} (id {project_id}) uses ML backend {ml_id} ({title!r}) "
               "for its predictions")


@ml_backend.command(name="down")
@pass_ctx
def backend_down(c: Ctx) -> None:
    """Stop the ML backend this workspace started (the project keeps its connection)."""
    stopped = _backend(c, DEFAULT_PORT).down()
    click.echo("ML backend stopped" if stopped else
               "no ML backend started by this workspace is running")


@ml_backend.command(name="status")
@pass_ctx
def backend_status(c: Ctx) -> None:
    """Is it running, which model does it serve."""
    rec = _backend(c, DEFAULT_PORT).recorded()
    port = int(rec["url"].rsplit(":", 1)[1]) if rec else DEFAULT_PORT
    _print_status(_backend(c, port).status())


def register(cli: click.Group) -> None:
    cli.add_command(labelstudio)
