"""The workspace: one folder holding the catalog, the object store and the quarantine store.

A team shares a workspace's state through URLs: the catalog (``catalog_url``: a shared PostgreSQL
database, say) and the objects (``objects_url``: ``s3://bucket/prefix``, or a shared folder). The
workspace remembers both in ``blurset.yaml`` the first time they are given, so a later command
without them opens the same catalog and objects instead of new empty ones; a different URL than the
remembered one is refused (edit the file to change it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from blurset.errors import ConflictError, InputError, NotFoundError
from blurset.fileio import atomic_write
from blurset.pipeline.catalog import Catalog
from blurset.pipeline.store import ObjectStore, RemoteObjectStore, is_url, local_path, open_store

DEFAULT_WORKSPACE = "workspace"
CONFIG_FILE = "blurset.yaml"
REMEMBERED = ("catalog_url", "objects_url")  # the keys of the config file


class WorkspaceError(InputError):
    """The workspace path cannot be used as one."""


class NoWorkspaceError(NotFoundError):
    """A verb that only reads found no workspace where it was pointed (none is created)."""


class WorkspaceUrlConflict(ConflictError):
    """A URL given for the workspace differs from the one it remembers."""


_OPTION = {"catalog_url": "--catalog-url (or $BLURSET_CATALOG_URL)",
           "objects_url": "--objects-url (or $BLURSET_OBJECTS_URL)"}


def read_config(root: Path) -> dict[str, str]:
    """The URLs remembered in ``root/blurset.yaml`` (none if there is no such file)."""
    path = root / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as e:
        raise WorkspaceError(f"cannot read {path}: {e}; fix or delete the file") from e
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(
            k in REMEMBERED and isinstance(v, str) for k, v in data.items()):
        raise WorkspaceError(f"{path} must map {' and/or '.join(REMEMBERED)} to URLs (strings); "
                             f"found {data!r}: fix or delete the file")
    return data


def _write_config(root: Path, config: dict[str, str], *, first: bool) -> None:
    text = ("# URLs this workspace remembers (blurset writes them the first time they are given).\n"
            "# Edit a line to point the workspace elsewhere; delete it to forget it.\n"
            + yaml.safe_dump(config, sort_keys=True))
    # owner-only: a catalog URL may hold a password. ``first``: a concurrent first writer wins
    atomic_write(root / CONFIG_FILE, text.encode(), mode=0o600, exclusive=first)


def _normalise(key: str, url: str) -> str:
    """A local objects path is kept absolute, so the config means the same from any folder."""
    if key == "objects_url" and not is_url(url):
        return str(local_path(url))
    return url


def remember_urls(root: Path, given: dict[str, str | None],
                  remembered: dict[str, str] | None = None) -> dict[str, str]:
    """The URLs to use: each given one (checked against the remembered one, and remembered if
    new), else the remembered one. Raises :class:`WorkspaceUrlConflict` on a different one.
    ``remembered``: what ``root``'s config file held when the caller read it (else read here)."""
    remembered = read_config(root) if remembered is None else remembered
    given = {k: _normalise(k, v) for k, v in given.items() if v}
    for key, url in given.items():
        if key in remembered and remembered[key] != url:
            raise WorkspaceUrlConflict(
                f"workspace {root} remembers {key} {remembered[key]} (in {root / CONFIG_FILE}); "
                f"{_OPTION[key]} gave {url}. Drop the option to use the remembered one, or edit "
                f"that file to point the workspace elsewhere")
    new = {k: v for k, v in given.items() if k not in remembered}
    if new:
        try:
            _write_config(root, {**remembered, **new}, first=not remembered)
        except FileExistsError:  # another process remembered first: check against its URLs
            return remember_urls(root, given)
    return {**remembered, **given}


@dataclass(frozen=True)
class Workspace:
    root: Path
    catalog_url: str
    objects_url: str | None = None  # None: the workspace's own objects/ folder

    @classmethod
    def open(cls, root: str | os.PathLike | None = None, catalog_url: str | None = None, *,
             create: bool = True, objects_url: str | None = None) -> Workspace:
        """Resolve the workspace: argument, else ``BLURSET_WORKSPACE``, else ``./workspace``.

        ``catalog_url`` (else ``BLURSET_CATALOG_URL``) and ``objects_url``: remembered in
        ``blurset.yaml`` the first time they are given, used when not given, refused
        (:class:`WorkspaceUrlConflict`) when they differ from the remembered ones.
        ``create=False`` (verbs that only read): raise :class:`NoWorkspaceError` if there is no
        workspace there (no folder, or no catalog file when the catalog is the workspace's)."""
        root = Path(root or os.environ.get("BLURSET_WORKSPACE") or DEFAULT_WORKSPACE).resolve()
        if root.exists() and not root.is_dir():
            raise WorkspaceError(f"workspace {root} exists and is not a folder; give another "
                                 "--workspace (or $BLURSET_WORKSPACE)")
        given = {"catalog_url": catalog_url or os.environ.get("BLURSET_CATALOG_URL"),
                 "objects_url": objects_url}
        remembered = read_config(root) if root.is_dir() else {}
        external = given["catalog_url"] or remembered.get("catalog_url")
        if not create and not (root.is_dir() and (external or (root / "catalog.sqlite").is_file())):
            raise NoWorkspaceError(f"there is no workspace at {root} (no catalog.sqlite there); "
                                   "check --workspace or $BLURSET_WORKSPACE, or ingest a source "
                                   "to create one")
        root.mkdir(parents=True, exist_ok=True)
        urls = remember_urls(root, given, remembered)
        return cls(root=root,
                   catalog_url=urls.get("catalog_url") or f"sqlite:///{root / 'catalog.sqlite'}",
                   objects_url=urls.get("objects_url"))

    @property
    def objects(self) -> ObjectStore | RemoteObjectStore:
        """The object store: ``objects_url`` if the workspace has one, else ``objects/``."""
        return open_store(self.objects_url) if self.objects_url else ObjectStore(self.root / "objects")

    @property
    def quarantine_store(self) -> ObjectStore:
        """Bytes of quarantined files, kept by content so a bad file found here is never lost."""
        return ObjectStore(self.root / "quarantine")

    def with_local_objects(self, relpaths) -> Workspace:
        """This workspace with ``relpaths`` readable as local files: itself when its objects are
        local, else one whose objects are a local cache (``cache/objects``) holding them."""
        store = self.objects
        if isinstance(store, ObjectStore):
            return self
        cache = store.local(relpaths, self.root / "cache" / "objects")
        return replace(self, objects_url=str(cache.root))

    def local_object_paths(self, relpaths: Sequence[str]) -> list[Path]:
        """Local files holding these objects (for the pre-labellers and the ML backend): the
        store's own files, or for a remote store the local cache (``cache/objects``)."""
        local = self.with_local_objects(relpaths)
        return [local.objects.root / rel for rel in relpaths]

    def catalog(self) -> Catalog:
        return Catalog(self.catalog_url)
