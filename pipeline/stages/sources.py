"""Source adapters: one face, ``scan(root) -> list[SourceItem]``, one adapter per folder layout.

Layouts (DESIGN.md): ``cuhk`` (``image/{motion,out_of_focus}NNNN.jpg|JPG`` with ``gt/<stem>.png``
blur masks, blur type from the name), ``msra10k`` (``MSRA10K_Imgs_GT/Imgs/*.jpg`` with the saliency
mask ``*.png`` of the same stem beside it), ``dut-omron`` (``DUT-OMRON-image/*.jpg``, optional
``pixelwiseGT-new-PNG/*.png`` saliency masks) and ``folder`` (any images, recursive). Saliency masks
are provenance, never blur masks, and never ingested as images.

Every other entry under the root is listed in ``Scan.skipped`` with the reason (hidden, not a
regular file, a link leaving the root, no image extension, outside the layout, a second mask of
one stem, the workspace itself): nothing is dropped without a word. Links are followed only to
files inside the root.

A source is a local folder or an fsspec URL (``s3://bucket/prefix``): :func:`open_source` gives a
:class:`RemoteSource` for a URL, listed once (with each file's size and ETag or modification
time), and the adapters read its listing through the same two questions they ask a folder
(``is_dir``, ``files``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import ClassVar, Literal

import fsspec

from blurset.errors import InputError, ServiceError
from blurset.pipeline.store import is_url, local_path, url_fs

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
MaskKind = Literal["blur", "saliency"]


class LayoutError(InputError):
    """The folder given to ingest does not have the layout its kind expects."""


class SourceUnreachable(ServiceError):
    """A source URL cannot be listed or read (no such bucket, no credentials, no network)."""


@dataclass(frozen=True)
class RemoteSource:
    """A source under an fsspec URL; its listing is taken once, on first use."""

    url: str
    storage_options: tuple[tuple[str, object], ...] = ()

    def __str__(self) -> str:
        return self.url

    @cached_property
    def _fs_path(self) -> tuple[fsspec.AbstractFileSystem, str]:
        return url_fs(self.url, self.storage_options, SourceUnreachable, "the source")

    @property
    def base(self) -> PurePosixPath:
        """The adapters' root: the URL's path (``bucket/prefix``)."""
        return PurePosixPath(self._fs_path[1])

    @cached_property
    def listing(self) -> dict[str, dict]:
        """{relative path: fsspec info} of every file under the URL."""
        fs, path = self._fs_path
        try:
            found = fs.find(path, detail=True)
        except (OSError, ValueError) as e:
            raise SourceUnreachable(f"cannot list the source {self.url}: {e}") from e
        return {k[len(path) + 1:]: v for k, v in sorted(found.items())
                if k.startswith(path + "/") and v.get("type", "file") == "file"}

    @cached_property
    def dirs(self) -> frozenset[str]:
        """Every folder holding a file (relative; ``.`` is the root)."""
        out = {"."}
        for rel in self.listing:
            out.update(p.as_posix() for p in PurePosixPath(rel).parents)
        return frozenset(out)

    def signature(self, rel: str) -> str:
        """Size and ETag (else modification time): changes whenever the object does."""
        info = self.listing.get(rel)
        if info is None:
            info = self.info(rel)
        tag = info.get("ETag") or info.get("etag") or info.get("LastModified") or \
            info.get("mtime") or info.get("created")
        return f"{info.get('size')}:{str(tag).strip(chr(34))}"

    def info(self, rel: str) -> dict:
        fs, path = self._fs_path
        return fs.info(f"{path}/{rel}")  # FileNotFoundError for a vanished file

    def read(self, rel: str) -> bytes:
        """The bytes of ``rel``; FileNotFoundError if it is gone, SourceUnreachable otherwise."""
        fs, path = self._fs_path
        try:
            return fs.cat_file(f"{path}/{rel}")
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as e:
            raise SourceUnreachable(f"cannot read {rel} from the source {self.url}: {e}") from e


SourceRoot = Path | RemoteSource


def open_source(location: str | os.PathLike | RemoteSource,
                storage_options: dict | None = None) -> SourceRoot:
    """A source location: a resolved local folder, or a :class:`RemoteSource` for a URL."""
    if isinstance(location, RemoteSource):
        return location
    if is_url(location):
        return RemoteSource(str(location).rstrip("/"),
                            tuple(sorted((storage_options or {}).items())))
    return local_path(location)


def read_file(root: SourceRoot, rel: str) -> bytes:
    """The bytes of ``rel`` under a source root (FileNotFoundError if it vanished)."""
    return root.read(rel) if isinstance(root, RemoteSource) else (Path(root) / rel).read_bytes()


def file_signature(root: SourceRoot, rel: str) -> str:
    """Changes whenever the file does: ``size:mtime_ns`` locally, ``size:ETag`` remotely."""
    if isinstance(root, RemoteSource):
        return root.signature(rel)
    st = (Path(root) / rel).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class SourceItem:
    """One image file of a source, with the mask that belongs to it (paths relative to the root)."""

    rel_path: str
    blur_type: str | None = None
    mask_path: str | None = None
    mask_kind: MaskKind | None = None
    mask_inverted: bool = False  # the source marks sharp pixels with 255: invert on ingest


@dataclass(frozen=True)
class OrphanMask:
    """A mask file with no image beside it: reported, never ingested as an image."""

    rel_path: str
    kind: MaskKind


@dataclass(frozen=True)
class Skipped:
    """An entry under the source root that is not ingested, and why."""

    rel_path: str
    reason: str


@dataclass(frozen=True)
class Scan:
    items: list[SourceItem]
    orphan_masks: list[OrphanMask]
    skipped: list[Skipped] = field(default_factory=list)

    def paths(self) -> set[str]:
        """Every path this scan accounts for (images, masks, orphans, skipped)."""
        return ({i.rel_path for i in self.items} | {i.mask_path for i in self.items if i.mask_path}
                | {o.rel_path for o in self.orphan_masks} | {s.rel_path for s in self.skipped})


def entry_problem(path: Path, root: Path) -> str | None:
    """Why the entry at ``path`` is not a file to read, or None: it must be a regular file, or
    a symbolic link to one inside ``root`` (links leaving the root are never followed)."""
    try:
        st = path.lstat()
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    if stat.S_ISLNK(st.st_mode):
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return "broken symbolic link (or a loop of links)"
        if not target.is_relative_to(root.resolve()):
            return f"symbolic link leaving the source folder (to {target}): not followed"
        if target.is_dir():
            return "symbolic link to a folder: not followed"
        st = target.stat()
    if stat.S_ISDIR(st.st_mode):
        return None
    if not stat.S_ISREG(st.st_mode):
        kind = ("FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode)
                else "device")
        return f"not a regular file ({kind})"
    return None


def _files(folder: Path, exts: Iterable[str] | None = None, recursive: bool = False,
           root: Path | None = None, exclude: Iterable[Path] = ()) -> list[Path]:
    """The readable files of ``folder`` with one of ``exts`` (default: the image extensions),
    not hidden; ``recursive`` descends into folders (never through links, hidden folders or
    ``exclude``). Everything left out is reported by :func:`_unaccounted`."""
    wanted = {e.lower() for e in exts} if exts is not None else IMAGE_EXTENSIONS
    root = root or folder
    found = []
    for p in (_walk(folder, exclude) if recursive else folder.iterdir()):
        if (p.name.startswith(".") or p.suffix.lower() not in wanted
                or entry_problem(p, root) is not None or p.is_dir()):
            continue
        found.append(p)
    return sorted(found)


def _walk(folder: Path, exclude: Iterable[Path] = ()) -> list[Path]:
    """Every entry below ``folder`` that is not a folder to descend (links are entries, never
    descended); hidden folders and ``exclude`` are entries too, not descended."""
    skip = {Path(e).resolve() for e in exclude}
    out = []
    for here, dirs, files in os.walk(folder):
        base = Path(here)
        keep = []
        for d in dirs:
            p = base / d
            if d.startswith(".") or p.is_symlink() or p.resolve() in skip:
                out.append(p)
            else:
                keep.append(d)
        dirs[:] = keep
        out.extend(base / f for f in files)
    return out


def _unaccounted(root: Path, scan: Scan, kind: str, expected: str,
                 exclude: Iterable[Path]) -> list[Skipped]:
    """A reason for every entry under ``root`` the scan did not use."""
    used = scan.paths()
    skip = {Path(e).resolve() for e in exclude}
    out = []
    for p in sorted(_walk(root, exclude)):
        rel = _rel(p, root)
        if rel in used:
            continue
        if skip and p.is_dir() and not p.is_symlink() and p.resolve() in skip:
            reason = "the workspace itself (inside its source folder): not ingested"
        elif p.name.startswith("."):
            reason = "hidden " + ("folder" if p.is_dir() and not p.is_symlink() else "file")
        elif (why := entry_problem(p, root)) is not None:
            reason = why
        elif p.suffix.lower() not in IMAGE_EXTENSIONS:
            reason = (f"no image file extension ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
                      "rename it to ingest it")
        else:
            reason = f"outside the {kind} layout (expected {expected})"
        out.append(Skipped(rel, reason))
    return out


class _LocalTree:
    """A local folder, as the adapters see it."""

    def is_dir(self, folder: Path) -> bool:
        return folder.is_dir()

    def files(self, folder: Path, exts: Iterable[str] | None = None, recursive: bool = False,
              root: Path | None = None, exclude: Iterable[Path] = ()) -> list[Path]:
        return _files(folder, exts, recursive, root, exclude)

    def unaccounted(self, root: Path, scan: Scan, kind: str, expected: str,
                    exclude: Iterable[Path]) -> list[Skipped]:
        return _unaccounted(root, scan, kind, expected, exclude)


@dataclass(frozen=True)
class _ListedTree:
    """A remote source's listing, answering the adapters' questions like a folder would: no
    links, devices or empty folders there; a hidden folder's files are left out with it."""

    source: RemoteSource

    def _rel(self, p: PurePosixPath) -> str:
        return p.relative_to(self.source.base).as_posix()

    def is_dir(self, folder: PurePosixPath) -> bool:
        return self._rel(folder) in self.source.dirs

    def files(self, folder: PurePosixPath, exts: Iterable[str] | None = None,
              recursive: bool = False, root: PurePosixPath | None = None,
              exclude: Iterable[Path] = ()) -> list[PurePosixPath]:
        wanted = {e.lower() for e in exts} if exts is not None else IMAGE_EXTENSIONS
        top = self._rel(folder)
        found = []
        for rel in self.source.listing:
            below = PurePosixPath(rel) if top == "." else PurePosixPath(rel).relative_to(top) \
                if rel.startswith(top + "/") else None
            if below is None or (len(below.parts) > 1 and not recursive):
                continue
            if any(part.startswith(".") for part in below.parts) or \
                    below.suffix.lower() not in wanted:
                continue
            found.append(self.source.base / rel)
        return sorted(found)

    def unaccounted(self, root: PurePosixPath, scan: Scan, kind: str, expected: str,
                    exclude: Iterable[Path]) -> list[Skipped]:
        used = scan.paths()
        out: dict[str, Skipped] = {}
        for rel in self.source.listing:
            if rel in used:
                continue
            parts = PurePosixPath(rel).parts
            hidden = next((i for i, part in enumerate(parts) if part.startswith(".")), None)
            if hidden is not None and hidden < len(parts) - 1:
                folder = "/".join(parts[:hidden + 1])
                out.setdefault(folder, Skipped(folder, "hidden folder"))
                continue
            if hidden is not None:
                reason = "hidden file"
            elif PurePosixPath(rel).suffix.lower() not in IMAGE_EXTENSIONS:
                reason = (f"no image file extension ({', '.join(sorted(IMAGE_EXTENSIONS))}): "
                          "rename it to ingest it")
            else:
                reason = f"outside the {kind} layout (expected {expected})"
            out[rel] = Skipped(rel, reason)
        return list(out.values())


LOCAL = _LocalTree()


def _masks_by_stem(files: list[Path], root: Path) -> tuple[dict[str, Path], list[Skipped]]:
    """{stem: mask}; a second mask of one stem (``x.bmp`` beside ``x.png``: the PNG is used) is
    skipped, named."""
    masks: dict[str, Path] = {}
    second = []
    for p in sorted(files, key=lambda f: (f.stem, f.suffix.lower() != ".png", f.name)):
        if p.stem in masks:
            second.append(Skipped(_rel(p, root), f"a second mask for stem {p.stem!r}: "
                                                 f"{_rel(masks[p.stem], root)} is used"))
        else:
            masks[p.stem] = p
    return masks, second


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _paired(root: Path, images: list[Path], masks: dict[str, Path], kind: MaskKind,
            blur_type=lambda stem: None) -> Scan:
    items = []
    used: set[str] = set()
    for img in images:
        mask = masks.get(img.stem)
        if mask is not None:
            used.add(img.stem)
        items.append(SourceItem(
            rel_path=_rel(img, root),
            blur_type=blur_type(img.stem),
            mask_path=_rel(mask, root) if mask is not None else None,
            mask_kind=kind if mask is not None else None,
        ))
    orphans = [OrphanMask(_rel(m, root), kind) for stem, m in sorted(masks.items())
               if stem not in used]
    return Scan(items, orphans)


class Adapter:
    """A source layout. Subclasses set ``kind`` and implement ``scan``."""

    kind: ClassVar[str]
    expected: ClassVar[str]

    def scan(self, root: Path, exclude: Iterable[Path] = (), tree=LOCAL) -> Scan:
        """The images and masks of the layout; ``exclude``: folders never looked into;
        ``tree``: how to look (a local folder, or a remote source's listing)."""
        raise NotImplementedError

    def _require(self, folder: Path, root: Path, tree=LOCAL) -> Path:
        if not tree.is_dir(folder):
            raise LayoutError(
                f"{root} does not look like a {self.kind} source: expected {self.expected} "
                f"(missing folder {folder}). Pick the right --kind, or use --kind folder.")
        return folder


class CuhkAdapter(Adapter):
    kind = "cuhk"
    expected = "image/{motion,out_of_focus}NNNN.jpg with gt/<stem>.png"

    @staticmethod
    def blur_type(stem: str) -> str | None:
        s = stem.lower()
        if s.startswith("motion"):
            return "motion"
        if s.startswith(("out_of_focus", "defocus")):
            return "defocus"
        return None

    def scan(self, root: Path, exclude: Iterable[Path] = (), tree=LOCAL) -> Scan:
        images = tree.files(self._require(root / "image", root, tree), root=root)
        gt = root / "gt"
        masks, second = _masks_by_stem(tree.files(gt, {".png", ".bmp"}, root=root)
                                       if tree.is_dir(gt) else [], root)
        scan = _paired(root, images, masks, "blur", self.blur_type)
        return Scan(scan.items, scan.orphan_masks, second)


class Msra10kAdapter(Adapter):
    kind = "msra10k"
    expected = "MSRA10K_Imgs_GT/Imgs/*.jpg with the saliency mask *.png beside each"

    def scan(self, root: Path, exclude: Iterable[Path] = (), tree=LOCAL) -> Scan:
        folder = root / "MSRA10K_Imgs_GT" / "Imgs"
        if not tree.is_dir(folder) and root.name == "Imgs":  # the user pointed at Imgs itself
            folder = root
        self._require(folder, root, tree)
        # Every .png here is a saliency mask (of the .jpg with its stem), never an image.
        files = tree.files(folder, root=root)
        images = [p for p in files if p.suffix.lower() != ".png"]
        masks = {p.stem: p for p in files if p.suffix.lower() == ".png"}
        return _paired(root, images, masks, "saliency")


class DutOmronAdapter(Adapter):
    kind = "dut-omron"
    expected = "DUT-OMRON-image/*.jpg (optional pixelwiseGT-new-PNG/*.png)"

    def scan(self, root: Path, exclude: Iterable[Path] = (), tree=LOCAL) -> Scan:
        images = tree.files(self._require(root / "DUT-OMRON-image", root, tree), root=root)
        gt = root / "pixelwiseGT-new-PNG"
        masks, second = _masks_by_stem(tree.files(gt, {".png"}, root=root)
                                       if tree.is_dir(gt) else [], root)
        scan = _paired(root, images, masks, "saliency")
        return Scan(scan.items, scan.orphan_masks, second)


class FolderAdapter(Adapter):
    kind = "folder"
    expected = "a folder with images (searched recursively)"

    def scan(self, root: Path, exclude: Iterable[Path] = (), tree=LOCAL) -> Scan:
        self._require(root, root, tree)
        items = [SourceItem(rel_path=_rel(p, root))
                 for p in tree.files(root, recursive=True, root=root, exclude=exclude)]
        return Scan(items, [])


ADAPTERS: dict[str, Adapter] = {a.kind: a for a in
                                (CuhkAdapter(), Msra10kAdapter(), DutOmronAdapter(), FolderAdapter())}


def adapter_for(kind: str) -> Adapter:
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise LayoutError(f"unknown source kind {kind!r}; choose one of {', '.join(ADAPTERS)}") from None


def scan_source(kind: str, root: str | os.PathLike | RemoteSource,
                exclude: Iterable[Path] = ()) -> Scan:
    """List a source's images and masks, and every other entry under ``root`` (a folder or an
    fsspec URL, see :func:`open_source`) with the reason it is skipped; ``exclude``: folders
    never looked into (the workspace, if it lies inside). Raises LayoutError with the expected
    layout."""
    source = root if isinstance(root, RemoteSource) else \
        open_source(root) if is_url(root) else Path(root)
    adapter = adapter_for(kind)
    exclude = [Path(e) for e in exclude]
    if isinstance(source, RemoteSource):
        tree, root = _ListedTree(source), source.base
        if not source.listing:
            raise LayoutError(f"{source} holds no files (check the bucket and prefix)")
    else:
        tree, root = LOCAL, source
        if not root.is_dir():
            raise LayoutError(f"{root} is not a folder")
    try:
        scan = adapter.scan(root, exclude, tree)
    except LayoutError as e:
        if isinstance(source, RemoteSource):  # name the URL the user gave, not its path
            raise LayoutError(str(e).replace(str(root), source.url)) from None
        raise
    if not scan.items:
        raise LayoutError(f"{source}: no images found for kind {kind} "
                          f"(expected {adapter.expected})")
    rest = tree.unaccounted(root, scan, kind, adapter.expected, exclude)
    return Scan(scan.items, scan.orphan_masks, sorted([*scan.skipped, *rest],
                                                      key=lambda s: s.rel_path))
