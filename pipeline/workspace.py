"""The workspace: one folder holding the catalog, the object store and the quarantine store."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from blurset.errors import InputError, NotFoundError
from blurset.pipeline.catalog import Catalog
from blurset.pipeline.store import ObjectStore

DEFAULT_WORKSPACE = "workspace"


class WorkspaceError(InputError):
    """The workspace path cannot be used as one."""


class NoWorkspaceError(NotFoundError):
    """A verb that only reads found no workspace where it was pointed (none is created)."""


@dataclass(frozen=True)
class Workspace:
    root: Path
    catalog_url: str
    objects_url: str | None = None

    @classmethod
    def open(cls, root: str | os.PathLike | None = None, catalog_url: str | None = None, *,
             create: bool = True, objects_url: str | None = None) -> Workspace:
        """Resolve the workspace: argument, else ``BLURSET_WORKSPACE``, else ``./workspace``.

        ``create=False`` (verbs that only read): raise :class:`NoWorkspaceError` if there is no
        workspace there (no folder, or no catalog file when the catalog is the workspace's)."""
        root = Path(root or os.environ.get("BLURSET_WORKSPACE") or DEFAULT_WORKSPACE).resolve()
        if root.exists() and not root.is_dir():
            raise WorkspaceError(f"workspace {root} exists and is not a folder; give another "
                                 "--workspace (or $BLURSET_WORKSPACE)")
        external = catalog_url or os.environ.get("BLURSET_CATALOG_URL")
        url = external or f"sqlite:///{root / 'catalog.sqlite'}"
        if not create and not (root.is_dir() and (external or (root / "catalog.sqlite").is_file())):
            raise NoWorkspaceError(f"there is no workspace at {root} (no catalog.sqlite there); "
                                   "check --workspace or $BLURSET_WORKSPACE, or ingest a source "
                                   "to create one")
        root.mkdir(parents=True, exist_ok=True)
        return cls(root=root, catalog_url=url, objects_url=objects_url)

    @property
    def objects(self) -> ObjectStore:
        return ObjectStore(self.root / "objects")

    @property
    def quarantine_store(self) -> ObjectStore:
        """Bytes of quarantined files, kept by content so a bad file found here is never lost."""
        return ObjectStore(self.root / "quarantine")

    def catalog(self) -> Catalog:
        return Catalog(self.catalog_url)
