"""The workspace: one folder holding the catalog, the object store and the quarantine store."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from blurset.errors import InputError
from blurset.pipeline.catalog import Catalog
from blurset.pipeline.store import ObjectStore

DEFAULT_WORKSPACE = "workspace"


class WorkspaceError(InputError):
    """The workspace path cannot be used as one."""


@dataclass(frozen=True)
class Workspace:
    root: Path
    catalog_url: str

    @classmethod
    def open(cls, root: str | os.PathLike | None = None, catalog_url: str | None = None) -> Workspace:
        """Resolve the workspace: argument, else ``BLURSET_WORKSPACE``, else ``./workspace``."""
        root = Path(root or os.environ.get("BLURSET_WORKSPACE") or DEFAULT_WORKSPACE).resolve()
        if root.exists() and not root.is_dir():
            raise WorkspaceError(f"workspace {root} exists and is not a folder; give another "
                                 "--workspace (or $BLURSET_WORKSPACE)")
        root.mkdir(parents=True, exist_ok=True)
        url = catalog_url or os.environ.get("BLURSET_CATALOG_URL") or f"sqlite:///{root / 'catalog.sqlite'}"
        return cls(root=root, catalog_url=url)

    @property
    def objects(self) -> ObjectStore:
        return ObjectStore(self.root / "objects")

    @property
    def quarantine_store(self) -> ObjectStore:
        """Bytes of quarantined files, kept by content so a bad file found here is never lost."""
        return ObjectStore(self.root / "quarantine")

    def catalog(self) -> Catalog:
        return Catalog(self.catalog_url)
