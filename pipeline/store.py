"""Content-addressed object store: ``objects/ab/abcdef….ext``, each object written once, atomically.

An object's name is the sha256 of its bytes; its extension is the format's own (Label Studio serves
local files with a content type guessed from the name). Writing an object that exists is a no-op,
so re-runs and concurrent writers are harmless, and nothing stored is ever rewritten.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from blurset.fileio import atomic_write

FORMAT_EXTENSIONS = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "WEBP": ".webp",
    "GIF": ".gif",
    "MPO": ".jpg",
}


def sha256_hex(data: bytes) -> str:
    """The image id: sha256 of the original bytes, hex."""
    return hashlib.sha256(data).hexdigest()


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
