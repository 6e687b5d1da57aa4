"""Source adapters: one face, ``scan(root) -> list[SourceItem]``, one adapter per folder layout.

Layouts (DESIGN.md): ``cuhk`` (``image/{motion,out_of_focus}NNNN.jpg|JPG`` with ``gt/<stem>.png``
blur masks, blur type from the name), ``msra10k`` (``MSRA10K_Imgs_GT/Imgs/*.jpg`` with the saliency
mask ``*.png`` of the same stem beside it), ``dut-omron`` (``DUT-OMRON-image/*.jpg``, optional
``pixelwiseGT-new-PNG/*.png`` saliency masks) and ``folder`` (any images, recursive). Saliency masks
are provenance, never blur masks, and never ingested as images.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
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
class Scan:
    items: list[SourceItem]
    orphan_masks: list[OrphanMask]


def _files(folder: Path, exts: Iterable[str] | None = None, recursive: bool = False) -> list[Path]:
    wanted = {e.lower() for e in exts} if exts is not None else IMAGE_EXTENSIONS
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in wanted
                  and not p.name.startswith("."))


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

    def scan(self, root: Path) -> Scan:
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

    def scan(self, root: Path) -> Scan:
        images = _files(self._require(root / "image", root))
        gt = root / "gt"
        masks = {p.stem: p for p in _files(gt, {".png", ".bmp"})} if gt.is_dir() else {}
        return _paired(root, images, masks, "blur", self.blur_type)


class Msra10kAdapter(Adapter):
    kind = "msra10k"
    expected = "MSRA10K_Imgs_GT/Imgs/*.jpg with the saliency mask *.png beside each"

    def scan(self, root: Path) -> Scan:
        folder = root / "MSRA10K_Imgs_GT" / "Imgs"
        if not folder.is_dir() and root.name == "Imgs":  # the user pointed at Imgs itself
            folder = root
        self._require(folder, root)
        # Every .png here is a saliency mask (of the .jpg with its stem), never an image.
        files = _files(folder)
        images = [p for p in files if p.suffix.lower() != ".png"]
        masks = {p.stem: p for p in files if p.suffix.lower() == ".png"}
        return _paired(root, images, masks, "saliency")


class DutOmronAdapter(Adapter):
    kind = "dut-omron"
    expected = "DUT-OMRON-image/*.jpg (optional pixelwiseGT-new-PNG/*.png)"

    def scan(self, root: Path) -> Scan:
        images = _files(self._require(root / "DUT-OMRON-image", root))
        gt = root / "pixelwiseGT-new-PNG"
        masks = {p.stem: p for p in _files(gt, {".png"})} if gt.is_dir() else {}
        return _paired(root, images, masks, "saliency")


class FolderAdapter(Adapter):
    kind = "folder"
    expected = "a folder with images (searched recursively)"

    def scan(self, root: Path) -> Scan:
        self._require(root, root)
        items = [SourceItem(rel_path=_rel(p, root)) for p in _files(root, recursive=True)]
        return Scan(items, [])


ADAPTERS: dict[str, Adapter] = {a.kind: a for a in
                                (CuhkAdapter(), Msra10kAdapter(), DutOmronAdapter(), FolderAdapter())}


def adapter_for(kind: str) -> Adapter:
    try:
        return ADAPTERS[kind]
    except KeyError:
        raise LayoutError(f"unknown source kind {kind!r}; choose one of {', '.join(ADAPTERS)}") from None


def scan_source(kind: str, root: Path) -> Scan:
    """List a source's images and masks; raises LayoutError with the expected layout."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root} is not a folder")
    scan = adapter_for(kind).scan(root)
    if not scan.items:
        raise LayoutError(f"{root}: no images found for kind {kind} (expected {adapter_for(kind).expected})")
    return scan
