"""A Label Studio ML backend: live pre-labels for the tasks an annotator opens.

The protocol (``/health``, ``/setup``, ``/predict``, ``/webhook``) over the standard library's HTTP
server, serving any predictor with ``model_version`` and ``predict(paths)``; :class:`BackendProcess`
runs it in the background. Protocol details: ``docs/annotation.md``.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from PIL import Image

from blurset.annotation.config import BLUR_TYPE, BLUR_TYPE_HINT, BRUSH, IMAGE
from blurset.annotation.process import alive, health, read_record, stop_recorded
from blurset.errors import InputError, NotFoundError, ServiceError

LOCAL_FILES_PATH = "/data/local-files/"
OBJECT_KEY = re.compile(r"([0-9a-f]{2})/\1[0-9a-f]{62}\.[A-Za-z0-9]+")  # ab/<sha256>.ext
MAX_BODY = 64 * 1024 * 1024  # a predict request carries task JSON, not images


class Predictor(Protocol):
    model_version: str

    def predict(self, paths: Sequence[Path]) -> list[dict]:
        """One Label Studio prediction ``{"result", "score", "model_version"}`` per image."""
        ...


class RequestError(InputError):
    """A request the backend cannot answer; the message says what to fix."""


def remote_image(url: str) -> str | None:
    """The object URL (``s3://…``) behind a task's image URL: the URL itself, or the ``fileuri``
    of Label Studio's resolve/presign URL (``/tasks/ID/resolve/?fileuri=<base64>``); else None."""
    u = urlparse(url)
    if u.scheme in ("s3", "gs", "gcs", "azure-blob", "az"):
        return url
    if re.search(r"/(tasks|projects)/\d+/(resolve|presign)/?$", u.path):
        encoded = parse_qs(u.query).get("fileuri", [""])[0]
        try:
            return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode() or url
        except (ValueError, UnicodeDecodeError):
            return url
    return None


def image_path(url: str, root: Path) -> Path:
    """The file behind a local-files URL (``/data/local-files/?d=rel/path.jpg``, absolute or not).

    Raises RequestError for another kind of URL, a path leaving ``root`` or a missing file.
    """
    u = urlparse(url)
    if remote := remote_image(url):
        raise RequestError(f"image {remote} is on a remote object store and this ML backend "
                           "serves a workspace whose objects are local files; start it in the "
                           "workspace whose objects are there")
    if u.path.rstrip("/") + "/" != LOCAL_FILES_PATH:
        raise RequestError(f"image URL {url!r} is not a Label Studio local-files URL "
                           f"({LOCAL_FILES_PATH}?d=<path>); the backend reads images from its "
                           f"document root {root} only")
    rel = parse_qs(u.query).get("d", [""])[0]
    if not rel:
        raise RequestError(f"image URL {url!r} has no ?d=<path>")
    root = root.resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(root) or Path(rel).is_absolute():
        raise RequestError(f"image URL {url!r} points outside the document root {root}")
    if not path.is_file():
        raise RequestError(f"image {rel!r} of URL {url!r} is not a file under the document root "
                           f"{root}; start the backend with the document root Label Studio serves "
                           "(LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)")
    return path


@dataclass(frozen=True)
class RemoteObjects:
    """The workspace's objects on a remote store: its URL (``s3://bucket/prefix``) and ``fetch``,
    which makes some of them local files (relative paths in, files out, in that order; the
    workspace's cache, ``WORKSPACE/cache/objects``)."""

    url: str
    fetch: Callable[[Sequence[str]], list[Path]]

    def relpath(self, url: str) -> str:
        """The object's path in the store (``ab/<sha256>.ext``) of a task's image URL (``s3://…``
        or Label Studio's resolve URL of one).

        Raises RequestError for an image that is not an object of this store."""
        remote = remote_image(url)
        if remote is None:
            raise RequestError(f"image URL {url!r} is not an object of the workspace's object "
                               f"store {self.url} (nor a local file of the project's storage)")
        rel = remote.removeprefix(self.url.rstrip("/") + "/")
        if rel == remote:
            raise RequestError(f"image {remote} is not in the workspace's object store "
                               f"{self.url}; the backend reads that store's objects only")
        if not OBJECT_KEY.fullmatch(rel):
            raise RequestError(f"image {remote} is not an object of the workspace's object store "
                               f"{self.url} (ab/<sha256>.ext under it)")
        return rel


def check_label_config(config: str | None) -> set[str]:
    """The control names of a labelling config a prediction may fill, after checking it has
    blurset's brush: never ``blur_type``, the annotator's answer (the model's guess goes to
    ``blur_type_hint``).

    Raises RequestError naming the tag to add when the brush on the image is missing.
    """
    if not config:
        return {BRUSH, BLUR_TYPE_HINT}
    try:
        root = ET.fromstring(config)
    except ET.ParseError as e:
        raise RequestError(f"the project's labelling config is not XML ({e})") from None
    names = {el.get("name") for el in root.iter() if el.get("toName")}
    brush = [el for el in root.iter("BrushLabels") if el.get("name") == BRUSH]
    if not brush or brush[0].get("toName") != IMAGE:
        raise RequestError(f'the project\'s labelling config has no <BrushLabels name="{BRUSH}" '
                           f'toName="{IMAGE}">; add it, or create the project with blurset '
                           "(annotation/config.py LABEL_CONFIG)")
    return {n for n in names if n and n != BLUR_TYPE}


class Backend:
    """The protocol, without HTTP: one predictor, one document root, one prediction at a time."""

    def __init__(self, predictor: Predictor, document_root: Path,
                 storage: Sequence[Path] | None = None, remote: RemoteObjects | None = None):
        """``storage``: the folders connected to the project as local storage (the workspace's
        ``objects/``); when given (even empty), a local image outside them is refused even under
        the root. ``remote``: the workspace's objects on a remote store, whose ``s3://`` images
        are fetched through it; without it such an image is refused."""
        self.predictor = predictor
        self.document_root = Path(document_root).resolve()
        self.storage = [Path(s).resolve() for s in storage] if storage is not None else None
        self.remote = remote
        self._lock = threading.Lock()  # one model, predicting one batch at a time

    @property
    def model_version(self) -> str:
        return self.predictor.model_version

    def health(self) -> dict:
        return {"status": "UP", "model_class": type(self.predictor).__name__,
                "model_version": self.model_version}

    def setup(self, body: dict) -> dict:
        check_label_config(body.get("schema"))
        return {"model_version": self.model_version}

    def predict(self, body: dict) -> dict:
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise RequestError('the request has no "tasks" list')
        controls = check_label_config(body.get("label_config"))
        images: list[Path | str] = []  # a local file, or an object of the remote store
        for t in tasks:
            if not isinstance(t, dict) or not isinstance(t.get("data"), dict):
                raise RequestError(f"task {t!r:.80} is not an object with a 'data' object")
            url = t["data"].get(IMAGE)
            if not isinstance(url, str):
                raise RequestError(f"task {t.get('id')} has no data.{IMAGE} URL")
            try:
                images.append(self._image(url))
            except RequestError as e:
                raise RequestError(f"task {t.get('id')}: {e}") from None
        paths = self._local(images)
        with self._lock:
            predictions = self.predictor.predict(paths)
        results = []
        for p in predictions:
            result = [r for r in p["result"] if r.get("from_name") in controls]
            results.append({"result": result, "score": p.get("score"),
                            "model_version": p.get("model_version", self.model_version)})
        return {"results": results, "model_version": self.model_version}

    def _image(self, url: str) -> Path | str:
        """A task's image: a local file of the project's storage, or (``str``) the path of an
        object of the workspace's remote store. Raises RequestError naming what is wrong."""
        if self.remote is not None and remote_image(url) is not None:
            return self.remote.relpath(url)
        path = image_path(url, self.document_root)
        if self.storage is not None and not any(path.is_relative_to(s) for s in self.storage):
            where = (", ".join(map(str, self.storage)) if self.storage else
                     f"none: the workspace's objects are on {self.remote.url}" if self.remote
                     else "none")
            raise RequestError(f"image {path} is not in the project's storage ({where})")
        return path

    def _local(self, images: list[Path | str]) -> list[Path]:
        """The images as local files, the remote store's objects fetched (once, by content)
        into the workspace's cache in one go."""
        rels = [i for i in images if isinstance(i, str)]  # only a remote store gives these
        if not rels or self.remote is None:
            return list(images)  # type: ignore[arg-type]
        try:
            fetched = dict(zip(rels, self.remote.fetch(rels), strict=True))
        except NotFoundError as e:
            raise RequestError(str(e)) from None
        return [fetched[i] if isinstance(i, str) else i for i in images]


class _Handler(BaseHTTPRequestHandler):
    backend: Backend  # set on the subclass made by make_server
    server_version = "blurset-ml-backend"

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        length = self.headers.get("Content-Length") or "0"
        try:
            n = int(length)
        except ValueError:
            n = -1
        if n < 0:
            raise RequestError(f"Content-Length {length!r} is not a number of bytes")
        if n > MAX_BODY:
            raise RequestError(f"request body of {n} bytes is over {MAX_BODY}")
        raw = self.rfile.read(n) if n else b"{}"
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError as e:
            raise RequestError(f"request body is not JSON ({e})") from None
        if not isinstance(body, dict):
            raise RequestError("request body is not a JSON object")
        return body

    def do_GET(self) -> None:
        if urlparse(self.path).path.rstrip("/") in ("", "/health"):
            self._send(HTTPStatus.OK, self.backend.health())
        elif urlparse(self.path).path.rstrip("/") == "/versions":
            self._send(HTTPStatus.OK, {"versions": [self.backend.model_version]})
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: GET {self.path}"})

    def do_POST(self) -> None:
        route = {"/setup": self.backend.setup, "/predict": self.backend.predict,
                 "/webhook": lambda body: {}}.get(urlparse(self.path).path.rstrip("/"))
        if route is None:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: POST {self.path}"})
            return
        try:
            self._send(HTTPStatus.OK, route(self._body()))
        except RequestError as e:
            self._send(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except ServiceError as e:  # the object store could not be read
            self._send(HTTPStatus.BAD_GATEWAY, {"error": str(e)})
        except (InputError, Image.DecompressionBombError) as e:  # the image, not the model
            self._send(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": f"image refused: {e}"})
        except (OSError, ValueError, RuntimeError) as e:  # the model failed on a readable request
            self.log_error("prediction failed: %s: %s", type(e).__name__, e)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR,
                       {"error": f"the model failed: {type(e).__name__}: {e}"})

    def log_message(self, format: str, *args: Any) -> None:  # http.server names it `format`
        if not getattr(self.server, "quiet", False):
            super().log_message(format, *args)


def make_server(backend: Backend, host: str = "127.0.0.1", port: int = 9090,
                quiet: bool = False) -> ThreadingHTTPServer:
    """A server bound to ``host:port`` (port 0: any free one); run it with ``serve_forever()``."""
    handler = type("Handler", (_Handler,), {"backend": backend})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.quiet = quiet  # type: ignore[attr-defined]
    return server


class BackendError(ServiceError, RuntimeError):
    """The background ML backend could not be started, reached or stopped."""


@dataclass(frozen=True)
class BackendProcess:
    """An ML backend running in the background, its pid and log in ``state_dir``."""

    state_dir: Path
    url: str

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "blurset-ml-backend.json"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "ml-backend.log"

    def recorded(self) -> dict | None:
        return read_record(self.pid_file)

    @staticmethod
    def _alive(pid: int) -> bool:
        return alive(pid, b"ml-backend")

    def status(self) -> dict:
        rec = self.recorded() or {}
        pid = rec.get("pid")
        h = health(self.url)
        return {"url": self.url, "answering": h is not None,
                "model_version": (h or {}).get("model_version"),
                "checkpoint": rec.get("checkpoint"),
                "pid": pid if pid and self._alive(pid) else None, "log": str(self.log_file)}

    def up(self, command: list[str], checkpoint: str, timeout: float = 180.0, log=print) -> dict:
        """Start ``command`` (a server for ``checkpoint`` at ``url``), or find it running.

        A running backend for another checkpoint is an error: stop it first (``down``).
        """
        rec = self.recorded()
        if rec and self._alive(rec["pid"]):
            if (rec.get("url"), rec.get("checkpoint")) != (self.url, checkpoint):
                raise BackendError(f"this workspace's ML backend (pid {rec['pid']}) serves "
                                   f"{rec.get('checkpoint')!r} at {rec.get('url')}, not "
                                   f"{checkpoint!r} at {self.url}; stop it with "
                                   "`blurset labelstudio ml-backend down` first")
            if health(self.url) is not None:
                log(f"ML backend already running at {self.url} (pid {rec['pid']})")
                return self.status()
        elif health(self.url) is not None:
            raise BackendError(f"another ML backend, not started by this workspace, answers at "
                               f"{self.url}; pick another --port")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        proc = None
        if not (rec and self._alive(rec["pid"])):
            with open(self.log_file, "ab") as out:
                proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            rec = {"pid": proc.pid, "url": self.url, "checkpoint": checkpoint,
                   "started_at": time.time()}
            self.pid_file.write_text(json.dumps(rec))
            log(f"starting the ML backend at {self.url} (pid {proc.pid}); log: {self.log_file}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # our own child is polled: until it execs, /proc shows our command line, not its own
            if proc.poll() is not None if proc else not self._alive(rec["pid"]):
                self.pid_file.unlink(missing_ok=True)
                raise BackendError(f"the ML backend exited while starting; see {self.log_file}")
            if health(self.url, timeout=1.0) is not None:
                return self.status()
            time.sleep(0.3)
        raise BackendError(f"the ML backend did not answer at {self.url}/health within "
                           f"{timeout:.0f} s; see {self.log_file}")

    def down(self, timeout: float = 15.0) -> bool:
        """Stop the backend started here; False when none was running."""
        return stop_recorded(self.pid_file, b"ml-backend", timeout, 0.2)
