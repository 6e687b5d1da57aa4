"""Content-addressed object store: ``objects/ab/abcdef….ext``, each object written once, atomically.

An object's name is the sha256 of its bytes; its extension is the format's own (Label Studio serves
local files with a content type guessed from the name). Writing an object that exists is a no-op,
so re-runs and concurrent writers are harmless, and nothing stored is ever rewritten.

Two stores share that face (``put``, ``read``, ``exists``, ``url``): :class:`ObjectStore`, a local
folder (read-only files, written through a temporary file and a rename), and
:class:`RemoteObjectStore`, any fsspec URL that is not a local path (``s3://bucket/prefix``: an
object store's PUT is already all or nothing). :func:`open_store` picks one for a URL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import fsspec

from blurset.errors import InputError, NotFoundError, ServiceError
from blurset.fileio import atomic_write, remove_stale_temps

FORMAT_EXTENSIONS = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "WEBP": ".webp",
    "GIF": ".gif",
    "MPO": ".jpg",
}


FETCH_BATCH = 64  # objects fetched at once into a local cache


def sha256_hex(data: bytes) -> str:
    """The image id: sha256 of the original bytes, hex."""
    return hashlib.sha256(data).hexdigest()


class RemoteStoreUnsupported(InputError):
    """A command needs the objects as local files and the workspace's object store is remote."""


class ObjectStoreError(ServiceError):
    """The object store at a URL cannot be reached or refused a read or a write."""


def is_url(location: str | Path) -> bool:
    """Whether ``location`` is a URL with a scheme other than ``file://`` (``s3://…``, ``gcs://…``);
    a plain path or a ``file://`` URL is local."""
    s = str(location)
    return "://" in s and not s.startswith("file://")


def local_path(location: str | Path) -> Path:
    """A local path or ``file://`` URL as an absolute path."""
    s = str(location)
    return Path(s.removeprefix("file://")).expanduser().resolve()


def extension_for(fmt: str | None) -> str:
    """File extension for a Pillow format name (``.bin`` for anything unknown)."""
    return FORMAT_EXTENSIONS.get((fmt or "").upper(), ".bin")


@dataclass(frozen=True)
class ObjectStore:
    """Objects under ``root``, named by content."""

    root: Path

    def path_for(self, digest: str, ext: str) -> Path:
        return self.root / digest[:2] / f"{digest}{ext}"

    def relpath_for(self, digest: str, ext: str) -> str:
        """Path relative to the store root, as kept in the catalog."""
        return f"{digest[:2]}/{digest}{ext}"

    def put(self, data: bytes, ext: str, digest: str | None = None) -> str:
        """Store ``data`` once, read-only, and return its relative path; an existing object is left
        untouched (a concurrent writer of the same object writes the same bytes)."""
        digest = digest or sha256_hex(data)
        target = self.path_for(digest, ext)
        if not target.exists():
            atomic_write(target, data, mode=0o444)
        return self.relpath_for(digest, ext)

    def read(self, relpath: str) -> bytes:
        return (self.root / relpath).read_bytes()

    def exists(self, relpath: str) -> bool:
        return (self.root / relpath).is_file()

    @property
    def url(self) -> str:
        return str(self.root)

    def remove_stale_temps(self) -> int:
        """Remove a killed run's partial files (see :func:`blurset.fileio.remove_stale_temps`)."""
        return remove_stale_temps(self.root, depth=1)

    def local(self, relpaths: Iterable[str], cache: Path) -> ObjectStore:
        """This store: its objects are local files already."""
        return self


@dataclass(frozen=True)
class RemoteObjectStore:
    """Objects under an fsspec URL (``s3://bucket/prefix``), named by content as locally.

    Credentials and endpoint come from the file system's own settings (for S3: ``AWS_*``
    variables, ``~/.aws``, ``AWS_ENDPOINT_URL`` for an S3-compatible server); ``storage_options``
    are passed to fsspec as they are."""

    url: str
    storage_options: tuple[tuple[str, object], ...] = ()

    @cached_property
    def _fs_path(self) -> tuple[fsspec.AbstractFileSystem, str]:
        return url_fs(self.url, self.storage_options, ObjectStoreError, "the object store")

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs_path[0]

    def _full(self, relpath: str) -> str:
        return f"{self._fs_path[1]}/{relpath}"

    @property
    def root(self) -> Path:
        raise RemoteStoreUnsupported(
            f"the object store is remote ({self.url}) and this command reads objects as local "
            "files: it does not support a remote store yet (ingest, dedup, annotate push and "
            "prelabel, the ML backend, release build and verify do); run it in a workspace "
            "whose objects are local")

    def relpath_for(self, digest: str, ext: str) -> str:
        return f"{digest[:2]}/{digest}{ext}"

    def put(self, data: bytes, ext: str, digest: str | None = None) -> str:
        """Store ``data`` once and return its relative path; an existing object is left untouched
        (one PUT: the object appears whole or not at all)."""
        digest = digest or sha256_hex(data)
        rel = self.relpath_for(digest, ext)
        try:
            if not self.fs.exists(self._full(rel)):
                self.fs.pipe_file(self._full(rel), data)
        except (OSError, ValueError) as e:
            raise ObjectStoreError(f"cannot write object {rel} to {self.url}: {e}") from e
        return rel

    def read(self, relpath: str) -> bytes:
        try:
            return self.fs.cat_file(self._full(relpath))
        except FileNotFoundError:
            raise NotFoundError(f"object {relpath} is missing from the object store "
                                f"{self.url}") from None
        except (OSError, ValueError) as e:
            raise ObjectStoreError(f"cannot read object {relpath} from {self.url}: {e}") from e

    def exists(self, relpath: str) -> bool:
        try:
            return self.fs.isfile(self._full(relpath))
        except (OSError, ValueError) as e:
            raise ObjectStoreError(f"cannot reach the object store {self.url}: {e}") from e

    def remove_stale_temps(self) -> int:
        """A PUT leaves no partial object: nothing to remove."""
        return 0

    def local(self, relpaths: Iterable[str], cache: Path) -> ObjectStore:
        """A local store at ``cache`` holding ``relpaths`` (fetched once, kept by content: a
        cached object is never stale), for the steps that read objects as files."""
        store = ObjectStore(cache)
        store.remove_stale_temps()
        todo = [rel for rel in dict.fromkeys(relpaths) if not store.exists(rel)]
        for i in range(0, len(todo), FETCH_BATCH):  # fsspec fetches a list's files concurrently
            batch = todo[i:i + FETCH_BATCH]
            try:
                got = self.fs.cat([self._full(rel) for rel in batch], on_error="return")
            except (OSError, ValueError) as e:
                raise ObjectStoreError(f"cannot read objects from {self.url}: {e}") from e
            for rel in batch:
                data = got.get(self._full(rel), FileNotFoundError(rel))
                if isinstance(data, FileNotFoundError):
                    raise NotFoundError(f"object {rel} is missing from the object store "
                                        f"{self.url}")
                if isinstance(data, BaseException):
                    raise ObjectStoreError(f"cannot read object {rel} from {self.url}: "
                                           f"{data}") from data
                atomic_write(store.root / rel, data, mode=0o444)
        return store


def url_fs(url: str, storage_options: tuple[tuple[str, object], ...],
           error: type[Exception], what: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec's file system and path for ``url`` (no trailing slash); a protocol fsspec does
    not know, or whose package is missing, is ``error`` naming ``what`` and the URL."""
    try:
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options))
    except (ImportError, ValueError) as e:
        raise error(f"cannot open {what} {url}: {e}") from e
    return fs, path.rstrip("/")


def open_store(location: str | Path, storage_options: dict | None = None
               ) -> ObjectStore | RemoteObjectStore:
    """The store at ``location``: a local folder (a path or ``file://`` URL), else fsspec."""
    if is_url(location):
        return RemoteObjectStore(str(location).rstrip("/"),
                                 tuple(sorted((storage_options or {}).items())))
    return ObjectStore(local_path(location))
