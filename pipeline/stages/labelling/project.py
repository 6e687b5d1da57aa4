"""The Label Studio project a stage works on, and the raw snapshots a pull keeps of it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from blurset.annotation.client import Client
from blurset.fileio import atomic_write
from blurset.names import slug
from blurset.pipeline.stages.labelling.errors import UnknownProject
from blurset.pipeline.store import sha256_hex
from blurset.pipeline.workspace import Workspace


@dataclass(frozen=True)
class ProjectRef:
    """A project on one Label Studio server: the catalog keys its tasks by (server, id)."""

    server: str
    title: str
    id: int


def existing_project(client: Client, title: str) -> ProjectRef:
    """The project titled ``title``; :class:`UnknownProject` when Label Studio has none."""
    project_id = client.find_project(title)
    if project_id is None:
        raise UnknownProject(f"no project {title!r} in Label Studio at {client.conn.url}; "
                             "run `blurset annotate push` first")
    return ProjectRef(client.conn.url, title, project_id)


def write_snapshot(ws: Workspace, project: str, raw: bytes, kind: str = "export") -> Path:
    """Keep a raw export forever, read-only:
    ``annotations/<slug of project>/<kind>-<UTC time>-<sha8>.json``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = ws.root / "annotations" / slug(project) / f"{kind}-{stamp}-{sha256_hex(raw)[:8]}.json"
    return atomic_write(target, raw, mode=0o444)
