"""Talking to Label Studio through ``label-studio-sdk``: clear errors, retries, batched imports.

Everything here speaks in plain values (image ids, URLs, brush results); the catalog lives in
``pipeline/``. The SDK retries connection errors, 5xx, 408, 409 and 429 with exponential backoff;
timeouts are retried here, except for imports, whose outcome is unknown after a timeout: the
caller reconciles by listing the project's tasks (``tasks_by_image``).
"""

from __future__ import annotations

import functools
import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from blurset.annotation.config import BLUR_TYPE_HINT, BRUSH, LABEL_CONFIG
from blurset.annotation.server import Connection
from blurset.errors import ServiceError

T = TypeVar("T")


class LabelStudioError(ServiceError, RuntimeError):
    """Label Studio answered with an error, or not at all; the message says which and where."""


class Unreachable(LabelStudioError):
    pass


class AuthError(LabelStudioError):
    pass


@dataclass(frozen=True)
class TaskSpec:
    """One task to import: the image URL, its id and provenance, and an optional pre-label."""

    image_id: str
    url: str
    source: str
    source_path: str
    prediction: dict | None = None  # {"model_version", "score", "result": [...]}

    def payload(self) -> dict:
        task: dict[str, Any] = {"data": {"image": self.url, "id": self.image_id,
                                         "source": self.source, "source_path": self.source_path}}
        if self.prediction:
            task["predictions"] = [self.prediction]
        return task


def _translate(conn: Connection, what: str, exc: Exception) -> LabelStudioError:
    if isinstance(exc, ApiError):
        if exc.status_code in (401, 403):
            return AuthError(f"Label Studio at {conn.url} refused the API key "
                             f"(LABEL_STUDIO_API_KEY) while trying to {what}: HTTP {exc.status_code}")
        body = exc.body if isinstance(exc.body, str) else json.dumps(exc.body)[:400]
        return LabelStudioError(f"Label Studio at {conn.url} failed to {what}: "
                                f"HTTP {exc.status_code}: {body}")
    if isinstance(exc, httpx.HTTPStatusError):
        if exc.response.status_code in (401, 403):
            return AuthError(f"Label Studio at {conn.url} refused the API key "
                             f"(LABEL_STUDIO_API_KEY) while trying to {what}")
        return LabelStudioError(f"Label Studio at {conn.url} failed to {what}: "
                                f"HTTP {exc.response.status_code}: {exc.response.text[:400]}")
    return Unreachable(f"cannot reach Label Studio at {conn.url} to {what} "
                       f"({type(exc).__name__}: {exc}); start it with `blurset labelstudio up` "
                       "or set LABEL_STUDIO_URL")


def _guarded(what: str, retry_timeouts: bool = True):
    """Turn transport and API errors into LabelStudioError; retry timeouts with backoff."""
    def wrap(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def inner(self: Client, *args: Any, **kwargs: Any) -> T:
            attempts = self.retries + 1 if retry_timeouts else 1
            for attempt in range(attempts):
                try:
                    return fn(self, *args, **kwargs)
                except httpx.TimeoutException as e:
                    if attempt + 1 >= attempts:
                        raise _translate(self.conn, what, e) from e
                    time.sleep(min(8.0, 0.5 * 2 ** attempt))
                except (ApiError, httpx.HTTPError, OSError) as e:
                    raise _translate(self.conn, what, e) from e
            raise AssertionError("unreachable")
        return inner
    return wrap


@dataclass(frozen=True)
class S3Storage:
    """Where Label Studio finds the objects on S3, and how it connects (endpoint, credentials and
    region: the object store's own, as its file system resolved them)."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None  # None: AWS itself
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, url: str, fs: Any) -> S3Storage:
        """The storage of the objects at ``url`` (``s3://bucket/prefix``) read through ``fs``
        (s3fs's file system): its endpoint, region and the credentials it signs with."""
        bucket, _, prefix = url.removeprefix("s3://").strip("/").partition("/")
        endpoint = region = None
        creds = None
        try:
            from fsspec.asyn import sync
            client = sync(fs.loop, fs.set_session)
            endpoint, region = client.meta.endpoint_url, client.meta.region_name
            got = client._get_credentials()  # aiobotocore's resolved credentials (None: anonymous)
            creds = sync(fs.loop, got.get_frozen_credentials) if got is not None else None
        except (AttributeError, OSError, ValueError):
            pass  # Label Studio falls back to its own environment
        if endpoint and endpoint.rstrip("/").endswith(".amazonaws.com"):
            endpoint = None  # AWS itself: Label Studio finds the regional endpoint
        return cls(bucket, prefix.strip("/"), endpoint, region,
                   creds.access_key if creds else None, creds.secret_key if creds else None,
                   creds.token if creds else None)


class Client:
    """A Label Studio server, reached with the SDK."""

    def __init__(self, conn: Connection, timeout: float = 60.0, retries: int = 3):
        self.conn = conn
        self.retries = retries
        self._sdk_http = httpx.Client(timeout=timeout, follow_redirects=True)
        self.sdk = LabelStudio(base_url=conn.url, api_key=conn.api_key, timeout=timeout,
                               httpx_client=self._sdk_http)
        self._http = httpx.Client(base_url=conn.url, timeout=timeout,
                                  headers={"Authorization": f"Token {conn.api_key}"})

    def _opts(self) -> dict:
        return {"max_retries": self.retries}

    @_guarded("check the connection")
    def whoami(self) -> str:
        return self.sdk.users.whoami(request_options=self._opts()).email

    @_guarded("find the project")
    def find_project(self, title: str) -> int | None:
        """The id of the project titled ``title``, or None when there is none."""
        for p in self.sdk.projects.list(title=title, request_options=self._opts()):
            if p.title == title:
                return p.id
        return None

    @_guarded("find or create the project")
    def project(self, title: str) -> int:
        """The id of the project titled ``title``, created with blurset's labelling config if new.

        A project made by an older blurset (its brush, but no hint control: predictions ticked
        the annotator's answer) is brought to the current config, which keeps every control
        and label it had, so its annotations stay valid.
        """
        found = self.find_project.__wrapped__(self, title)
        if found is not None:
            config = self.sdk.projects.get(id=found, request_options=self._opts()).label_config
            if (config and f'name="{BRUSH}"' in config and BLUR_TYPE_HINT not in config
                    and config != LABEL_CONFIG):
                self.sdk.projects.update(id=found, label_config=LABEL_CONFIG,
                                         request_options=self._opts())
            return found
        return self.sdk.projects.create(title=title, label_config=LABEL_CONFIG,
                                        description="blurset: paint the blurred regions",
                                        request_options=self._opts()).id

    @_guarded("set the project's overlap")
    def set_overlap(self, project_id: int, share: float) -> None:
        """Have ``share`` of the project's tasks labelled by two different people (Label
        Studio's own overlap: ``maximum_annotations`` 2 on a cohort of
        ``overlap_cohort_percentage`` of the tasks, re-drawn by Label Studio on every import);
        0 gives every task one annotator."""
        percent = round(share * 100)
        self.sdk.projects.update(id=project_id, maximum_annotations=2 if percent else 1,
                                 overlap_cohort_percentage=percent or 100,
                                 request_options=self._opts())

    @_guarded("read the tasks' overlap")
    def overlaps(self, project_id: int) -> dict[int, int]:
        """task id → how many annotators Label Studio asks for it."""
        found: dict[int, int] = {}
        page = 1
        while True:
            r = self._http.get("/api/tasks", params={"project": project_id, "page": page,
                                                     "page_size": 1000, "fields": "all"})
            if r.status_code == 404:
                break
            r.raise_for_status()
            body = r.json()
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            found.update({t["id"]: int(t.get("overlap") or 1) for t in tasks})
            if len(tasks) < 1000:
                break
            page += 1
        return found

    @_guarded("connect the project to local files")
    def ensure_local_storage(self, project_id: int, path: str) -> int:
        """A local-files storage whose path is a prefix of every image's folder (needed to serve)."""
        for s in self.sdk.import_storage.local.list(project=project_id, request_options=self._opts()):
            if s.path == path:
                return s.id
        return self.sdk.import_storage.local.create(
            project=project_id, path=path, use_blob_urls=False, title="blurset objects",
            request_options=self._opts()).id

    @_guarded("connect the project to the objects on S3")
    def ensure_s3_storage(self, project_id: int, s3: S3Storage) -> int:
        """An S3 import storage on the objects' bucket and prefix, through which Label Studio
        resolves the tasks' ``s3://`` URLs (presigned, so browsers fetch images from S3 itself).

        One per project: an existing one on the same bucket and prefix is reused, its endpoint,
        region and credentials brought up to date (keys rotate). Never synced: blurset imports
        the tasks itself. Label Studio checks the connection when it saves the storage.
        """
        kw: dict[str, Any] = {"s3endpoint": s3.endpoint, "region_name": s3.region,
                              "aws_access_key_id": s3.access_key_id,
                              "aws_secret_access_key": s3.secret_access_key,
                              "aws_session_token": s3.session_token}
        kw = {k: v for k, v in kw.items() if v is not None}
        for st in self.sdk.import_storage.s3.list(project=project_id, request_options=self._opts()):
            if st.bucket == s3.bucket and (st.prefix or "") == s3.prefix:
                if ((st.s3endpoint, st.region_name, st.aws_access_key_id)
                        != (s3.endpoint, s3.region, s3.access_key_id)):
                    self.sdk.import_storage.s3.update(id=st.id, **kw, request_options=self._opts())
                return st.id
        return self.sdk.import_storage.s3.create(
            project=project_id, bucket=s3.bucket, prefix=s3.prefix, presign=True,
            use_blob_urls=False, title="blurset objects", **kw,
            request_options=self._opts()).id

    @_guarded("list the project's tasks")
    def tasks_by_image(self, project_id: int) -> dict[str, list[int]]:
        """image id (task data ``id``) → the ids of the tasks that hold it, oldest first."""
        found: dict[str, list[int]] = defaultdict(list)
        page = 1
        while True:
            r = self._http.get("/api/tasks", params={"project": project_id, "page": page,
                                                     "page_size": 1000, "fields": "all"})
            if r.status_code == 404:  # past the last page
                break
            r.raise_for_status()
            body = r.json()
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            for t in tasks:
                image_id = (t.get("data") or {}).get("id")
                if image_id:
                    found[image_id].append(t["id"])
            if len(tasks) < 1000:
                break
            page += 1
        return {k: sorted(v) for k, v in found.items()}

    @_guarded("list annotated tasks")
    def tasks_with_annotations(self, project_id: int) -> list[int]:
        done = []
        for t in json.loads(self.export.__wrapped__(self, project_id)):
            if t["annotations"]:
                done.append(t["id"])
        return done

    @_guarded("import tasks", retry_timeouts=False)
    def import_tasks(self, project_id: int, specs: Sequence[TaskSpec]) -> list[int]:
        """One request for the whole batch; returns the new task ids in the order given."""
        r = self.sdk.projects.import_tasks(id=project_id, request=[s.payload() for s in specs],
                                           return_task_ids=True, request_options=self._opts())
        ids = list(r.task_ids or [])
        if len(ids) != len(specs):
            raise LabelStudioError(f"Label Studio at {self.conn.url} created {len(ids)} tasks for "
                                   f"{len(specs)} sent; run the push again to reconcile")
        return ids

    @_guarded("import one task", retry_timeouts=False)
    def import_one(self, project_id: int, spec: TaskSpec) -> int:
        """One request per task (the slow way, kept for the push benchmark)."""
        return self.import_tasks.__wrapped__(self, project_id, [spec])[0]

    @_guarded("export the annotations")
    def export(self, project_id: int) -> bytes:
        """The raw JSON export of every task, annotated or not (Label Studio's own format)."""
        r = self._http.get(f"/api/projects/{project_id}/export",
                           params={"exportType": "JSON", "download_all_tasks": "true"})
        r.raise_for_status()
        json.loads(r.content)  # a truncated answer must not become a snapshot
        return r.content

    @_guarded("list users")
    def users(self) -> dict[int, str]:
        return {u.id: u.email or u.username for u in self.sdk.users.list(request_options=self._opts())}

    @_guarded("create a user")
    def ensure_user(self, email: str, first_name: str = "", last_name: str = "") -> int:
        for uid, mail in self.users.__wrapped__(self).items():
            if mail == email:
                return uid
        return self.sdk.users.create(username=email.split("@")[0], email=email,
                                     first_name=first_name, last_name=last_name,
                                     request_options=self._opts()).id

    @_guarded("submit an annotation")
    def annotate(self, task_id: int, result: list[dict], completed_by: int,
                 lead_time: float | None = None) -> int:
        kw: dict[str, Any] = {"result": result, "completed_by": completed_by}
        if lead_time is not None:
            kw["lead_time"] = lead_time
        return self.sdk.annotations.create(id=task_id, request_options=self._opts(), **kw).id

    @_guarded("delete a task")
    def delete_task(self, task_id: int) -> None:
        self.sdk.tasks.delete(id=task_id, request_options=self._opts())

    @_guarded("count the project's tasks")
    def project_counts(self, project_id: int) -> dict:
        p = self.sdk.projects.get(id=project_id, request_options=self._opts())
        return {"tasks": p.task_number, "annotated": p.num_tasks_with_annotations,
                "annotations": p.total_annotations_number}

    @_guarded("list a task's predictions")
    def predictions(self, task_id: int) -> list[dict]:
        return [p.model_dump() for p in self.sdk.predictions.list(task=task_id,
                                                                   request_options=self._opts())]

    @_guarded("list the project's predictions")
    def project_predictions(self, project_id: int) -> list[dict]:
        """Every prediction of the project's tasks, with its ``task``, ``result``,
        ``model_version``, ``score`` and ``created_at`` (the raw export holds only their ids)."""
        return [p.model_dump(mode="json") for p in self.sdk.predictions.list(
            project=project_id, request_options=self._opts())]

    @_guarded("add predictions", retry_timeouts=False)
    def create_predictions(self, project_id: int, predictions: Sequence[tuple[int, dict]]) -> int:
        """Add ``(task id, {"model_version", "score", "result"})`` predictions in one request.

        Label Studio keeps every prediction of a task, so this never touches the annotations
        or the earlier predictions. Returns how many Label Studio created.
        """
        if not predictions:
            return 0
        request = [dict(p, task=task_id) for task_id, p in predictions]
        r = self.sdk.projects.import_predictions(id=project_id, request=request,
                                                 request_options=self._opts())
        created = getattr(r, "created", None)
        return int(created) if created is not None else len(request)

    @_guarded("list the project's ML backends")
    def ml_backends(self, project_id: int) -> list[dict]:
        return [m.model_dump(mode="json") for m in self.sdk.ml.list(
            project=project_id, request_options=self._opts())]

    @_guarded("connect the ML backend")
    def connect_ml_backend(self, project_id: int, url: str, title: str,
                           owner_prefix: str = "blurset ") -> int:
        """Connect the ML backend at ``url`` to the project for interactive pre-labels.

        Reuses the connection that points at ``url``, else one whose title starts with
        ``owner_prefix`` (ours, from an earlier port or model: Label Studio asks only a
        project's first backend, so a second one would never be used); its title and URL are
        brought up to date. Label Studio calls the backend's /health and /setup before
        answering, so it must be running.
        """
        existing = self.ml_backends.__wrapped__(self, project_id)
        same_url = [m for m in existing if (m.get("url") or "").rstrip("/") == url.rstrip("/")]
        ours = [m for m in existing if (m.get("title") or "").startswith(owner_prefix)]
        for m in same_url or ours:
            if (m.get("url"), m.get("title"), m.get("is_interactive")) != (url, title, True):
                self.sdk.ml.update(id=m["id"], url=url, project=project_id, title=title,
                                   is_interactive=True, request_options=self._opts())
            return m["id"]
        try:
            return self.sdk.ml.create(project=project_id, url=url, title=title,
                                      is_interactive=True, request_options=self._opts()).id
        except ApiError as e:
            if "reserved network address" not in str(e.body):
                raise
            raise LabelStudioError(
                f"Label Studio at {self.conn.url} refuses to call the ML backend at {url} (its SSRF "
                f"protection bans the address: {e.body}); a Label Studio started by `blurset "
                "labelstudio up` allows loopback addresses (restart an older one: `blurset "
                "labelstudio down`, then `up`); for another, set USE_DEFAULT_BANNED_SUBNETS=false "
                "and USER_ADDITIONAL_BANNED_SUBNETS to every range but yours on its server") from None

    @_guarded("show the ML backend's predictions to annotators")
    def use_ml_backend_predictions(self, project_id: int, title: str,
                                   retrieve_automatically: bool = True) -> None:
        """Show predictions to annotators, live from the ML backend titled ``title`` (Label
        Studio asks it when a task without its prediction is opened); with
        ``retrieve_automatically`` also when the Data Manager lists such tasks."""
        self.sdk.projects.update(id=project_id, show_collab_predictions=True, model_version=title,
                                 evaluate_predictions_automatically=retrieve_automatically,
                                 request_options=self._opts())

    @_guarded("retrieve predictions from the ML backend")
    def retrieve_predictions(self, project_id: int, task_ids: Sequence[int]) -> None:
        """Ask the project's ML backend for predictions of these tasks (Label Studio skips the
        ones already holding a prediction of the backend's model_version) and store them."""
        self.sdk.actions.create(id="retrieve_tasks_predictions", project=project_id,
                                selected_items={"all": False, "included": list(task_ids)},
                                request_options=self._opts())

    def close(self) -> None:
        self._http.close()
        self._sdk_http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(conn: Connection | None = None, **kw: Any) -> Client:
    """A client whose connection and token were checked; raises Unreachable or AuthError."""
    client = Client(conn or Connection.from_env(), **kw)
    try:
        client.whoami()
    except LabelStudioError:
        client.close()
        raise
    return client


def local_file_url(document_root_relpath: str) -> str:
    """The URL Label Studio serves a file under its LOCAL_FILES_DOCUMENT_ROOT at."""
    return f"/data/local-files/?d={document_root_relpath}"
