"""`blurset labelstudio ml-backend`: live pre-labels from a model, through Label Studio's ML backend.

``serve`` runs the backend in the foreground; ``up`` runs ``serve`` in the background (pid and log
in ``<workspace>/ml-backend/``) and connects it to a project; ``down`` stops it. The model is the
pre-labeller of ``pipeline/prelabel.py`` (a DPN checkpoint, or ``laplacian``/``lbp``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from blurset.pipeline.cli.context import Ctx, pass_ctx

HOST = "127.0.0.1"
DEFAULT_PORT = 9090


def _spec(checkpoint: str) -> str:
    """A handcrafted name as is, a checkpoint as an absolute path (refused if missing)."""
    from blurset.pipeline.stages.prelabel import HANDCRAFTED
    if checkpoint in HANDCRAFTED:
        return checkpoint
    path = Path(checkpoint)
    if not path.is_file():
        raise click.ClickException(f"pre-labeller {checkpoint!r} is neither one of "
                                   f"{', '.join(HANDCRAFTED)} nor an existing DPN checkpoint file")
    return str(path.resolve())


def _process(c: Ctx, port: int):
    from blurset.annotation.ml_backend import BackendProcess
    return BackendProcess(c.ws.root / "ml-backend", f"http://{HOST}:{port}")


def backend_title(model_version: str) -> str:
    return f"blurset {model_version}"


def register(labelstudio: click.Group) -> None:
    @labelstudio.group(name="ml-backend")
    def ml_backend() -> None:
        """Live pre-labels from a model while people label (a Label Studio ML backend)."""

    @ml_backend.command()
    @click.option("--checkpoint", required=True, help="A DPN checkpoint, or laplacian / lbp.")
    @click.option("--host", default=HOST, show_default=True)
    @click.option("--port", default=DEFAULT_PORT, show_default=True, type=int)
    @click.option("--document-root", type=click.Path(file_okay=False, exists=True),
                  help="The folder Label Studio serves local files from (default: the "
                       "workspace, or $BLURSET_LABEL_STUDIO_DOCUMENT_ROOT).")
    @pass_ctx
    def serve(c: Ctx, checkpoint: str, host: str, port: int, document_root: str | None) -> None:
        """Run the ML backend in the foreground (what `up` starts in the background)."""
        from blurset.annotation.ml_backend import Backend, make_server
        from blurset.annotation.server import document_root as default_root
        from blurset.pipeline.stages.prelabel import PrelabelError, make_prelabeller
        try:
            predictor = make_prelabeller(_spec(checkpoint))
        except PrelabelError as e:
            raise click.ClickException(str(e)) from None
        root = Path(document_root) if document_root else default_root(c.ws.root)
        server = make_server(Backend(predictor, root), host, port)
        click.echo(f"ML backend for {predictor.model_version} at http://{host}:{port} "
                   f"(images under {root})", err=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()

    @ml_backend.command()
    @click.option("--checkpoint", required=True, help="A DPN checkpoint, or laplacian / lbp.")
    @click.option("--port", default=DEFAULT_PORT, show_default=True, type=int)
    @click.option("--project", help="Connect it to this Label Studio project (title).")
    @click.option("--retrieve-automatically/--no-retrieve-automatically", default=True,
                  show_default=True,
                  help="Also predict the tasks the Data Manager lists without a prediction.")
    @click.option("--timeout", default=180.0, show_default=True,
                  help="Seconds to wait for the model to load.")
    @pass_ctx
    def up(c: Ctx, checkpoint: str, port: int, project: str | None,
           retrieve_automatically: bool, timeout: float) -> None:
        """Start the ML backend in the background (or find it running) and connect it to a
        project: Label Studio then asks it for a pre-label when an annotator opens a task."""
        from blurset.annotation.client import LabelStudioError
        from blurset.annotation.ml_backend import BackendError
        from blurset.annotation.server import document_root
        spec = _spec(checkpoint)
        proc = _process(c, port)
        command = [sys.executable, "-c", "from blurset.pipeline.cli.main import main; main()", "-w", str(c.ws.root), "labelstudio",
                   "ml-backend", "serve", "--checkpoint", spec, "--host", HOST, "--port", str(port),
                   "--document-root", str(document_root(c.ws.root))]
        try:
            st = proc.up(command, spec, timeout=timeout, log=lambda m: click.echo(m, err=True))
        except BackendError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"ML backend for {st['model_version']} is up at {st['url']} (log: {st['log']})")
        if not project:
            return
        title = backend_title(st["model_version"])
        client = _connect()
        try:
            project_id = client.project(project)
            ml_id = client.connect_ml_backend(project_id, st["url"], title)
            client.use_ml_backend_predictions(project_id, title, retrieve_automatically)
        except LabelStudioError as e:
            raise click.ClickException(str(e)) from None
        finally:
            client.close()
        click.echo(f"project {project!r} (id {project_id}) uses ML backend {ml_id} ({title!r}) "
                   "for its predictions")

    @ml_backend.command()
    @pass_ctx
    def down(c: Ctx) -> None:
        """Stop the ML backend this workspace started (the project keeps its connection)."""
        stopped = _process(c, DEFAULT_PORT).down()
        click.echo("ML backend stopped" if stopped else
                   "no ML backend started by this workspace is running")

    @ml_backend.command(name="status")
    @pass_ctx
    def ml_status(c: Ctx) -> None:
        """Is it running, which model does it serve."""
        proc = _process(c, DEFAULT_PORT)
        rec = proc.recorded()
        st = (_process(c, int(rec["url"].rsplit(":", 1)[1])) if rec else proc).status()
        for k, v in st.items():
            click.echo(f"{k}: {v}")
        if not st["answering"]:
            sys.exit(1)


def _connect():
    from blurset.pipeline.cli.main import _connect as connect
    return connect()
