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
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from blurset.errors import InputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
MaskKind = Literal["blur", "saliency"]


class LayoutError(InputError):
    """The folder given to ingest does not have the layout its kind expects."""


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

    def scan(self, root: Path, exclude: Iterable[Path] = ()) -> Scan:
        """The images and masks of the layout; ``exclude``: folders never looked into."""
        raise NotImplementedError

    def _require(self, folder: Path, root: Path) -> Path:
        if not folder.is_dir():
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

    def scan(self, root: Path, exclude: Iterable[Path] = ()) -> Scan:
        images = _files(self._require(root / "image", root), root=root)
        gt = root / "gt"
        masks, second = _masks_by_stem(_files(gt, {".png", ".bmp"}, root=root)
                                       if gt.is_dir() else [], root)
        scan = _paired(root, images, masks, "blur", self.blur_type)
        return Scan(scan.items, scan.orphan_masks, second)


class Msra10kAdapter(Adapter):
    kind = "msra10k"
    expected = "MSRA10K_Imgs_GT/Imgs/*.jpg with the saliency mask *.png beside each"

    def scan(self, root: Path, exclude: Iterable[Path] = ()) -> Scan:
        folder = root / "MSRA10K_Imgs_GT" / "Imgs"
        if not folder.is_dir() and root.name == "Imgs":  # the user pointed at Imgs itself
            folder = root
        self._require(folder, root)
        # Every .png here is a saliency mask (of the .jpg with its stem), never an image.
        files = _files(folder, root=root)
        images = [p for p in files if p.suffix.lower() != ".png"]
        masks = {p.stem: p for p in files if p.suffix.lower() == ".png"}
        return _paired(root, images, masks, "saliency")


class DutOmronAdapter(Adapter):
    kind = "dut-omron"
    expected = "DUT-OMRON-image/*.jpg (optional pixelwiseGT-new-PNG/*.png)"

    def scan(self, root: Path, exclude: Iterable[Path] = ()) -> Scan:
        images = _files(self._require(root / "DUT-OMRON-image", root), root=root)
        gt = root / "pixelwiseGT-new-PNG"
        masks, second = _masks_by_stem(_files(gt, {".png"}, root=root) if gt.is_dir() else [],
                                       root)
        scan = _paired(root, images, masks, "saliency")
        return Scan(scan.items, scan.orphan_masks, second)


class FolderAdapter(Adapter):
    kind = "folder"
    expected = "a folder with images (searched recursively)"

    def scan(self, root: Path, exclude: Iterable[Path] = ()) -> Scan:
        self._require(root, root)
        items = [SourceItem(rel_path=_rel(p, root))
                 for p in _files(root, recursive=True, exclude=exclude)]
        return Scan(items, [])


ADAPTERS: dict[str, Adapter] = {a.kind: a for a in
                                (CuhkAdapter(), Msra10kAdapter(), DutOmronAdapter(), FolderAdapter())}


def adapter_for(kind: str) -> Adapter:
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise LayoutError(f"unknown source kind {kind!r}; choose one of {', '.join(ADAPTERS)}") from None


def scan_source(kind: str, root: Path, exclude: Iterable[Path] = ()) -> Scan:
    """List a source's images and masks, and every other entry under ``root`` with the reason it
    is skipped; ``exclude``: folders never looked into (the workspace, if it lies inside).
    Raises LayoutError with the expected layout."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root} is not a folder")
    adapter = adapter_for(kind)
    exclude = [Path(e) for e in exclude]
    scan = adapter.scan(root, exclude)
    if not scan.items:
        raise LayoutError(f"{root}: no images found for kind {kind} (expected {adapter.expected})")
    rest = _unaccounted(root, scan, kind, adapter.expected, exclude)
    return Scan(scan.items, scan.orphan_masks, sorted([*scan.skipped, *rest],
                                                      key=lambda s: s.rel_path))
