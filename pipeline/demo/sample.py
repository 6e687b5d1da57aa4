"""A small, realistic, deterministic sample of the four source layouts, with its ground truth.

:func:`write_sample` builds it from photos shipped with scikit-image/scikit-learn and the CUHK mask
shapes bundled in ``sample_data/cuhk_masks`` (no download). The folder layout and the keys of
``truth.json`` are described in ``docs/sample.md``.
"""

from __future__ import annotations

import io
import json
import math
import string
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from blurset.errors import ConflictError, InputError, NotFoundError
from blurset.pipeline.demo import transforms as T

SOURCES: dict[str, str] = {  # source name -> adapter kind; each root is dest/<name>
    "cuhk": "cuhk",
    "msra10k": "msra10k",
    "dut-omron": "dut-omron",
    "extra": "folder",
}
MSRA_DIR = "msra10k/MSRA10K_Imgs_GT/Imgs"
DUT_IMAGE_DIR = "dut-omron/DUT-OMRON-image"
DUT_MASK_DIR = "dut-omron/pixelwiseGT-new-PNG"
HIDDEN_MASK_DIR = "hidden_masks"  # beside the source roots, never inside one
TRUTH_VERSION = 2  # 2: hidden_masks
REFERENCE_JPEG_QUALITY = 92
BOMB_SIDE = 20_000  # 400 Mpx: beyond Pillow's decompression-bomb limit


@dataclass(frozen=True)
class SampleSize:
    """How much of each thing a sample holds."""

    references: int | None  # None: as many as the distinct crops allow
    msra_distinct: int
    dut_distinct: int
    flats: int
    candidate_pairs: int
    extra_planted: int  # planted copies beyond one per transform (ignored if every_transform)
    every_transform: bool  # every transform applied to every reference


SIZES: dict[str, SampleSize] = {
    "demo": SampleSize(
        references=20,
        msra_distinct=10,
        dut_distinct=8,
        flats=4,
        candidate_pairs=3,
        extra_planted=5,
        every_transform=False,
    ),
    "bench": SampleSize(
        references=None,
        msra_distinct=6,
        dut_distinct=6,
        flats=8,
        candidate_pairs=4,
        extra_planted=0,
        every_transform=True,
    ),
}


class SampleExistsError(ConflictError, FileExistsError):
    """``write_sample`` was given a folder that is not new or empty: it never overwrites."""


class SampleDataMissingError(NotFoundError, FileNotFoundError):
    """The sample's package data (the bundled CUHK masks) is not installed."""


@dataclass(frozen=True)
class SampleInfo:
    """Where a written sample lives and what it holds."""

    root: Path
    cuhk: Path
    msra10k: Path
    dut_omron: Path
    extra: Path
    truth: Path
    references: int  # CUHK-style reference images
    candidates: int  # image files (valid or not) in msra10k, dut-omron and extra
    planted_pairs: int  # copies of references
    candidate_pairs: int  # dut-omron copies of msra10k images
    must_not_match: int  # look-alike pairs that are different photos
    bad_files: int  # files that must be quarantined
    hidden_masks: int  # candidate images with a true blur mask in dest/hidden_masks


def write_sample(dest: Path, *, size: str = "demo", seed: int = 0) -> SampleInfo:
    """Write the sample into ``dest`` (new or empty) and return where everything is.

    Deterministic: the same ``size`` and ``seed`` give byte-identical files.
    """
    if size not in SIZES:
        raise InputError(f"unknown sample size {size!r}; choose one of {', '.join(SIZES)}")
    dest = Path(dest)
    _check_empty(dest)
    sizes = SIZES[size]
    rng = np.random.default_rng(seed)
    crops = T.distinct_crops(T.photo_pool(), rng)
    masks = _load_masks()
    cast = _cast(crops, sizes, len(masks), rng)
    out = _Writer(dest)
    references = _write_cuhk(out, cast.references, masks, rng)
    # The candidates' blur draws from a stream of its own: everything else stays as without it.
    used = {r["mask_shape"] for r in out.truth.references}
    blur = _CandidateBlur(masks, used, np.random.default_rng([seed, 1]))
    copies = _plan_copies(references, sizes, rng)
    names = _Names(rng)
    msra = _write_msra(out, cast, copies, names, blur, rng)
    _write_dut(out, cast, copies, msra, sizes, names, blur, rng)
    _write_extra(out, cast)
    truth_path = dest / "truth.json"
    truth = out.truth.as_json(size=size, seed=seed)
    truth_path.write_text(json.dumps(truth, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return SampleInfo(
        root=dest,
        cuhk=dest / "cuhk",
        msra10k=dest / "msra10k",
        dut_omron=dest / "dut-omron",
        extra=dest / "extra",
        truth=truth_path,
        references=len(out.truth.references),
        candidates=len(out.truth.images),
        planted_pairs=len(out.truth.planted_pairs),
        candidate_pairs=len(out.truth.candidate_pairs),
        must_not_match=len(out.truth.must_not_match),
        bad_files=sum(1 for b in out.truth.bad_files if b["expect"] == "quarantine"),
        hidden_masks=len(out.truth.hidden_masks),
    )


def _check_empty(dest: Path) -> None:
    """Refuse to write anywhere but a new or empty folder."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise SampleExistsError(
            f"{dest} already exists and is not an empty folder; write_sample never overwrites: "
            "pass a new path, or delete this one first"
        )


# --------------------------------------------------------------------------------------------
# Bookkeeping


@dataclass
class _Truth:
    """What ``truth.json`` says; filled in while the files are written."""

    references: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    planted_pairs: list[dict[str, Any]] = field(default_factory=list)
    candidate_pairs: list[dict[str, Any]] = field(default_factory=list)
    exact_duplicates: list[dict[str, Any]] = field(default_factory=list)
    must_not_match: list[dict[str, Any]] = field(default_factory=list)
    bad_files: list[dict[str, Any]] = field(default_factory=list)
    hidden_masks: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self, *, size: str, seed: int) -> dict[str, Any]:
        return {
            "version": TRUTH_VERSION,
            "size": size,
            "seed": seed,
            "sources": {name: {"kind": kind, "root": name} for name, kind in SOURCES.items()},
            "transforms": list(T.TRANSFORMS),
            "references": self.references,
            "images": self.images,
            "planted_pairs": self.planted_pairs,
            "candidate_pairs": self.candidate_pairs,
            "exact_duplicates": self.exact_duplicates,
            "must_not_match": self.must_not_match,
            "bad_files": self.bad_files,
            "hidden_masks": self.hidden_masks,
        }


@dataclass
class _Writer:
    """Writes files under the sample root and records them in the truth."""

    root: Path
    truth: _Truth = field(default_factory=_Truth)

    def write(self, rel: str, data: bytes) -> str:
        """Write ``data`` at ``root/rel`` (a new file) and return ``rel``, the truth path."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("xb") as handle:
            handle.write(data)
        return rel

    def image(self, rel: str, data: bytes, *, photo: str | None, role: str) -> str:
        """Write a candidate image file and list it in ``truth["images"]``."""
        self.write(rel, data)
        self.truth.images.append({"path": rel, "photo": photo, "role": role})
        return rel

    def hidden_mask(self, image: str, blurred: _Blurred) -> None:
        """Write the true blur mask of candidate ``image`` outside the sources; list it."""
        stem, _, _ = image.rpartition(".")
        mask = self.write(f"{HIDDEN_MASK_DIR}/{stem}.png", _png(blurred.mask))
        entry = {"image": image, "mask": mask, "blur_type": blurred.blur_type}
        entry |= {"mask_shape": blurred.mask_shape, "kernel": blurred.kernel}
        self.truth.hidden_masks.append(entry)


@dataclass(frozen=True)
class _Photo:
    """A distinct photo: its name (``retina@x,y,w,h`` or ``flat-sky-00``) and pixels."""

    name: str
    image: Image.Image


@dataclass(frozen=True)
class _Cast:
    """Which distinct photo plays which part."""

    references: list[_Photo]
    msra: list[_Photo]
    dut: list[_Photo]
    crop_pair: tuple[_Photo, _Photo]
    flats: list[_Photo]
    odd: dict[str, _Photo]  # role in the extra/dut odd files -> photo


_ODD_ROLES = ("truncated", "cmyk", "gray16", "palette", "rgba", "gray_jpeg", "exif", "nested")


def _cast(
    crops: list[tuple[str, Image.Image]], sizes: SampleSize, max_refs: int, rng: np.random.Generator
) -> _Cast:
    """Deal the distinct crops out: a non-overlapping pair first, then odd files, then the rest."""
    photos = [_Photo(name, image) for name, image in crops]
    photos = [photos[int(i)] for i in rng.permutation(len(photos))]
    pair = _disjoint_pair(photos)
    rest = [p for p in photos if p not in pair]
    odd = dict(zip(_ODD_ROLES, rest[: len(_ODD_ROLES)], strict=True))
    rest = rest[len(_ODD_ROLES) :]
    msra, rest = rest[: sizes.msra_distinct], rest[sizes.msra_distinct :]
    dut, rest = rest[: sizes.dut_distinct], rest[sizes.dut_distinct :]
    wanted = sizes.references if sizes.references is not None else len(rest)
    references = rest[: min(wanted, max_refs)]
    if len(references) < min(wanted, max_refs):
        raise ValueError(
            f"only {len(references)} distinct photos are left for references, "
            f"{min(wanted, max_refs)} wanted: the installed photo pool is too small"
        )
    flats = [_Photo(n, im) for n, im in T.flat_images(sizes.flats, rng)]
    return _Cast(references, msra, dut, pair, flats, odd)


def _disjoint_pair(photos: list[_Photo]) -> tuple[_Photo, _Photo]:
    """The first two crops of one photo that share no pixel."""
    for i, a in enumerate(photos):
        name_a, box_a = T.parse_crop_name(a.name)
        for b in photos[i + 1 :]:
            name_b, box_b = T.parse_crop_name(b.name)
            if name_a == name_b and box_a.intersection(box_b) == 0:
                return a, b
    raise ValueError("no photo in the pool yields two disjoint crops")


# --------------------------------------------------------------------------------------------
# CUHK references


@dataclass(frozen=True)
class _MaskShape:
    """A real CUHK ground-truth mask from ``sample_data/cuhk_masks``."""

    stem: str  # motion0014
    image: Image.Image  # as stored: L, or RGBA with R = G = B = mask

    @property
    def kind(self) -> str:
        return "motion" if self.stem.startswith("motion") else "out_of_focus"

    @property
    def rgba(self) -> bool:
        return self.image.mode == "RGBA"

    @property
    def aspect(self) -> float:
        return self.image.width / self.image.height


@dataclass(frozen=True)
class _Reference:
    """A written CUHK image: truth path, photo name, and the pixels as decoded from its file."""

    path: str
    photo: str
    image: Image.Image


def _load_masks() -> list[_MaskShape]:
    """The bundled CUHK masks, sorted by name."""
    folder = resources.files("blurset.pipeline.demo").joinpath("sample_data", "cuhk_masks")
    masks = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".png"):
            with Image.open(io.BytesIO(entry.read_bytes())) as image:
                image.load()
                masks.append(_MaskShape(entry.name.removesuffix(".png"), image.copy()))
    if not masks:
        raise SampleDataMissingError(f"no CUHK masks in {folder}: the package data is missing; "
                                     "reinstall blurset")
    return masks


def _pick_masks(masks: list[_MaskShape], n: int, rng: np.random.Generator) -> list[_MaskShape]:
    """``n`` masks: one RGBA of each blur kind first (as in real CUHK), the rest at random."""
    chosen: list[_MaskShape] = []
    for kind in ("motion", "out_of_focus"):
        rgba = [m for m in masks if m.rgba and m.kind == kind]
        if rgba and len(chosen) < n:
            chosen.append(rgba[int(rng.integers(0, len(rgba)))])
    others = [m for m in masks if m not in chosen]
    chosen += [others[int(i)] for i in rng.permutation(len(others))[: n - len(chosen)]]
    return chosen


def _write_cuhk(
    out: _Writer, photos: list[_Photo], masks: list[_MaskShape], rng: np.random.Generator
) -> list[_Reference]:
    """Composite each photo with a real mask shape, write image + gt, return the references."""
    pool = _pick_masks(masks, len(photos), rng)
    references: list[_Reference] = []
    upper_done = False
    for photo in photos:
        aspect = photo.image.width / photo.image.height
        mask = min(pool, key=lambda m: abs(math.log(m.aspect / aspect)))
        pool.remove(mask)
        image, gt, kernel = _composite(photo.image, mask, rng)
        suffix = ".jpg"
        if mask.kind == "out_of_focus" and not upper_done:
            suffix, upper_done = ".JPG", True  # real CUHK has a few upper-case extensions
        data = T.encode_jpeg(image, REFERENCE_JPEG_QUALITY)
        path = out.write(f"cuhk/image/{mask.stem}{suffix}", data)
        mask_path = out.write(f"cuhk/gt/{mask.stem}.png", _png(gt))
        out.truth.references.append(
            {
                "path": path,
                "mask": mask_path,
                "blur_type": "motion" if mask.kind == "motion" else "defocus",
                "photo": photo.name,
                "mask_shape": f"{mask.stem}.png",
                "mask_mode": gt.mode,
                "kernel": kernel,
            }
        )
        references.append(_Reference(path, photo.name, _decode(data)))
    return references


def _composite(
    photo: Image.Image, mask: _MaskShape, rng: np.random.Generator
) -> tuple[Image.Image, Image.Image, dict[str, Any]]:
    """Blur the masked region of ``photo``; return image, gt mask (mask's mode) and kernel."""
    gt = mask.image.resize(photo.size, Image.NEAREST)
    blurred_region = np.asarray(gt.convert("L")) > 127
    if mask.kind == "motion":
        length = int(rng.integers(9, 22))
        angle = float(rng.uniform(0.0, 180.0))
        kernel = _motion_kernel(length, angle)
        info: dict[str, Any] = {"type": "motion", "length": length, "angle": round(angle, 2)}
    else:
        radius = float(rng.uniform(3.0, 7.0))
        kernel = _disk_kernel(radius)
        info = {"type": "disk", "radius": round(radius, 2)}
    sharp = np.asarray(photo.convert("RGB"), dtype=np.float32)
    blurred = cv2.filter2D(sharp, -1, kernel, borderType=cv2.BORDER_REFLECT)
    pixels = np.where(blurred_region[..., None], blurred, sharp)
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    return image, gt, info


def _disk_kernel(radius: float) -> np.ndarray:
    """A normalised defocus (pill-box) kernel, anti-aliased at its rim."""
    half = math.ceil(radius)
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    kernel = np.clip(radius + 0.5 - np.hypot(xx, yy), 0.0, 1.0)
    return kernel / kernel.sum()


def _motion_kernel(length: int, angle_degrees: float) -> np.ndarray:
    """A normalised linear motion kernel of ``length`` px at ``angle_degrees``."""
    size = length + 2
    kernel = np.zeros((size, size), np.float32)
    centre = (size - 1) / 2
    dx = math.cos(math.radians(angle_degrees)) * (length - 1) / 2
    dy = math.sin(math.radians(angle_degrees)) * (length - 1) / 2
    shift = 4  # sub-pixel end points for cv2.line
    p0 = (round((centre - dx) * 2**shift), round((centre - dy) * 2**shift))
    p1 = (round((centre + dx) * 2**shift), round((centre + dy) * 2**shift))
    cv2.line(kernel, p0, p1, 1.0, thickness=1, lineType=cv2.LINE_AA, shift=shift)
    return kernel / kernel.sum()


@dataclass(frozen=True)
class _Blurred:
    """A candidate photo composited like a reference, with its true mask (L, 255 = blurred)."""

    image: Image.Image
    mask: Image.Image
    blur_type: str  # defocus | motion
    mask_shape: str  # out_of_focus0093.png
    kernel: dict[str, Any]


class _CandidateBlur:
    """Composites candidate photos as :func:`_write_cuhk` does its references.

    Mask shapes the references left unused come first (closest aspect ratio, each once); when
    they run out (the bench sample gives every shape to a reference) all shapes are dealt again.
    """

    def __init__(self, masks: list[_MaskShape], used: set[str], rng: np.random.Generator) -> None:
        self._masks = masks
        self._pool = [m for m in masks if f"{m.stem}.png" not in used]
        self._rng = rng

    def __call__(self, photo: _Photo) -> _Blurred:
        if not self._pool:
            self._pool = list(self._masks)
        aspect = photo.image.width / photo.image.height
        shape = min(self._pool, key=lambda m: abs(math.log(m.aspect / aspect)))
        self._pool.remove(shape)
        image, gt, kernel = _composite(photo.image, shape, self._rng)
        binary = np.where(np.asarray(gt.convert("L")) > 127, 255, 0).astype(np.uint8)
        blur_type = "motion" if shape.kind == "motion" else "defocus"
        return _Blurred(image, Image.fromarray(binary, "L"), blur_type, f"{shape.stem}.png", kernel)


# --------------------------------------------------------------------------------------------
# Candidates: MSRA10K and DUT-OMRON


@dataclass(frozen=True)
class _Copy:
    """A planted copy still to be written: which reference, how transformed, where."""

    reference: _Reference
    transform: str
    source: str  # msra10k | dut-omron


def _plan_copies(
    references: list[_Reference], sizes: SampleSize, rng: np.random.Generator
) -> list[_Copy]:
    """Which reference gets which transform, spread over msra10k and dut-omron."""
    names = list(T.TRANSFORMS)
    sources = ("msra10k", "dut-omron")
    if sizes.every_transform:
        return [
            _Copy(ref, name, sources[(i + j) % 2])
            for i, ref in enumerate(references)
            for j, name in enumerate(names)
        ]
    extra = [names[int(i)] for i in rng.choice(len(names), sizes.extra_planted, replace=False)]
    planned = [(names + extra)[int(i)] for i in rng.permutation(len(names) + len(extra))]
    targets = rng.permutation(len(references))
    return [
        _Copy(references[int(targets[k % len(references)])], name, sources[k % 2])
        for k, name in enumerate(planned)
    ]


def _transformed(
    image: Image.Image, transform: str, rng: np.random.Generator
) -> tuple[bytes, list[str]]:
    """Apply ``transform`` and encode as the caller of TRANSFORMS should; return bytes, steps."""
    if transform == "combo":
        steps = list(T.combo_steps(rng))
        copy = T.chain(image, steps, rng)
    else:
        steps = [transform]
        copy = T.TRANSFORMS[transform](image, rng)
    return T.encode_jpeg(copy, T.jpeg_quality(transform)), steps


@dataclass
class _Names:
    """Unique, realistic file stems for MSRA10K (numbers) and DUT-OMRON (im…, sun_…)."""

    rng: np.random.Generator
    used: set[str] = field(default_factory=set)

    def msra(self) -> str:
        return self._unique(lambda: str(int(self.rng.integers(1, 200_000))))

    def dut(self) -> str:
        def draw() -> str:
            if self.rng.random() < 0.5:
                return f"im{int(self.rng.integers(1, 1000)):03d}"
            letters = self.rng.choice(list(string.ascii_lowercase), 16)
            return "sun_" + "".join(letters)

        return self._unique(draw)

    def _unique(self, draw: Callable[[], str]) -> str:
        while True:
            name = draw()
            if name not in self.used:
                self.used.add(name)
                return name


def _write_msra(
    out: _Writer,
    cast: _Cast,
    copies: list[_Copy],
    names: _Names,
    blur: _CandidateBlur,
    rng: np.random.Generator,
) -> list[tuple[str, _Photo]]:
    """MSRA10K folder: distinct photos (blur composites), planted copies, bad files.

    Returns the distinct photos that ingest keeps (path, photo), for dut-omron to copy.
    """
    distinct: list[tuple[str, _Photo]] = []
    for k, photo in enumerate(cast.msra):
        stem = names.msra()
        blurred = blur(photo)
        data = T.encode_jpeg(blurred.image)
        path = out.image(f"{MSRA_DIR}/{stem}.jpg", data, photo=photo.name, role="distinct")
        out.hidden_mask(path, blurred)
        mask_size = photo.image.size
        mask_path = f"{MSRA_DIR}/{stem}.png"
        if k == 0:  # a saliency mask that does not fit its image: the mask is quarantined
            mask_size = (photo.image.width // 2, photo.image.height // 2)
            out.truth.bad_files.append(
                _bad(mask_path, "quarantine", "mask size",
                     f"saliency mask is {mask_size}; its image {path} is ingested")
            )
        distinct.append((path, photo))
        out.write(mask_path, _png(_saliency_mask(mask_size, rng)))
    for copy in copies:
        if copy.source == "msra10k":
            _write_copy(out, copy, f"{MSRA_DIR}/{names.msra()}", rng, saliency=True)
    _write_msra_bad_files(out, cast.odd["truncated"], names, rng)
    return distinct


def _write_copy(
    out: _Writer, copy: _Copy, stem_path: str, rng: np.random.Generator, *, saliency: bool
) -> None:
    """Write one planted copy of a reference (and its saliency mask)."""
    data, steps = _transformed(copy.reference.image, copy.transform, rng)
    path = out.image(f"{stem_path}.jpg", data, photo=copy.reference.photo, role="planted")
    out.truth.planted_pairs.append(
        {
            "candidate": path,
            "reference": copy.reference.path,
            "transform": copy.transform,
            "steps": steps,
        }
    )
    if saliency:
        size = _decode(data).size
        out.write(f"{stem_path}.png", _png(_saliency_mask(size, rng)))


def _write_msra_bad_files(
    out: _Writer, photo: _Photo, names: _Names, rng: np.random.Generator
) -> None:
    """A truncated JPEG, an HTML page named .jpg, and a zero-byte .jpg."""
    whole = T.encode_jpeg(photo.image)
    stem = names.msra()
    path = out.image(f"{MSRA_DIR}/{stem}.jpg", whole[: len(whole) * 3 // 5], photo=None, role="bad")
    out.write(f"{MSRA_DIR}/{stem}.png", _png(_saliency_mask(photo.image.size, rng)))
    out.truth.bad_files.append(_bad(path, "quarantine", "truncated", "first 60 % of a JPEG"))
    stem = names.msra()
    html = (
        b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
        b"<body><h1>Not Found</h1><p>The requested image was not found.</p></body></html>\n"
    )
    path = out.image(f"{MSRA_DIR}/{stem}.jpg", html, photo=None, role="bad")
    out.truth.bad_files.append(_bad(path, "quarantine", "not an image", "an HTML error page"))
    path = out.image(f"{MSRA_DIR}/{names.msra()}.jpg", b"", photo=None, role="bad")
    out.truth.bad_files.append(_bad(path, "quarantine", "empty", "zero bytes"))


def _write_dut(
    out: _Writer,
    cast: _Cast,
    copies: list[_Copy],
    msra: list[tuple[str, _Photo]],
    sizes: SampleSize,
    names: _Names,
    blur: _CandidateBlur,
    rng: np.random.Generator,
) -> None:
    """DUT-OMRON folder: distinct photos (blur composites), copies of references and of MSRA
    images, a byte-exact duplicate, a CMYK JPEG, flat images and two disjoint crops of one photo.

    About half the images get a saliency mask in ``pixelwiseGT-new-PNG``.
    """

    def write(photo: _Photo, data: bytes, role: str, size: tuple[int, int]) -> str:
        stem = names.dut()
        path = out.image(f"{DUT_IMAGE_DIR}/{stem}.jpg", data, photo=photo.name, role=role)
        if rng.random() < 0.5:
            out.write(f"{DUT_MASK_DIR}/{stem}.png", _png(_saliency_mask(size, rng)))
        return path

    first: tuple[str, _Blurred] | None = None
    for photo in cast.dut:
        blurred = blur(photo)
        path = write(photo, T.encode_jpeg(blurred.image), "distinct", photo.image.size)
        out.hidden_mask(path, blurred)
        first = first or (path, blurred)
    if first:
        stem = names.dut()
        dup = out.image(
            f"{DUT_IMAGE_DIR}/{stem}.jpg",
            (out.root / first[0]).read_bytes(),
            photo=cast.dut[0].name,
            role="exact_duplicate",
        )
        out.hidden_mask(dup, first[1])  # the same bytes: whichever path ingest keeps has a mask
        out.truth.exact_duplicates.append({"a": first[0], "b": dup})
    for copy in copies:
        if copy.source == "dut-omron":
            _write_copy(out, copy, f"{DUT_IMAGE_DIR}/{names.dut()}", rng, saliency=False)
    for msra_path, photo in msra[: sizes.candidate_pairs]:
        transform = list(T.TRANSFORMS)[int(rng.integers(0, len(T.TRANSFORMS)))]
        data, steps = _transformed(_decode((out.root / msra_path).read_bytes()), transform, rng)
        path = write(photo, data, "candidate_copy", _decode(data).size)
        out.truth.candidate_pairs.append(
            {"candidate": path, "reference": msra_path, "transform": transform, "steps": steps}
        )
    pair = [write(p, T.encode_jpeg(p.image), "crop_pair", p.image.size) for p in cast.crop_pair]
    out.truth.must_not_match.append(
        {"a": pair[0], "b": pair[1], "why": "crops: two disjoint crops of one photo"}
    )
    flat_paths = [write(p, T.encode_jpeg(p.image), "flat", p.image.size) for p in cast.flats]
    for i, a in enumerate(flat_paths):
        for b in flat_paths[i + 1 :]:
            out.truth.must_not_match.append(
                {"a": a, "b": b, "why": "flats: different plain images"}
            )
    cmyk = cast.odd["cmyk"]
    buffer = io.BytesIO()
    cmyk.image.convert("CMYK").save(buffer, format="JPEG", quality=90)
    path = write(cmyk, buffer.getvalue(), "odd", cmyk.image.size)
    out.truth.bad_files.append(_bad(path, "ingest", "cmyk", "CMYK JPEG", cmyk.image.size))


# --------------------------------------------------------------------------------------------
# Extra: a folder source of odd-but-valid images


def _write_extra(out: _Writer, cast: _Cast) -> None:
    """16-bit, palette, RGBA, grayscale, EXIF-rotated images, a pixel bomb, a nested folder."""
    odd = cast.odd
    grey16 = np.asarray(odd["gray16"].image.convert("L"), dtype=np.uint16) * 257
    palette = odd["palette"].image.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    files = (  # (path, bytes, reason, note, photo)
        ("gray16.png", _png(Image.fromarray(grey16)), "16-bit", "16-bit grayscale PNG", "gray16"),
        ("palette.png", _png(palette), "palette", "palette (mode P) PNG", "palette"),
        ("rgba.png", _png(_with_alpha(odd["rgba"].image)), "alpha", "RGBA PNG", "rgba"),
        (
            "gray.jpg",
            T.encode_jpeg(odd["gray_jpeg"].image.convert("L")),
            "grayscale",
            "single-channel JPEG",
            "gray_jpeg",
        ),
        (
            "IMG_0042.JPG",
            _exif_rotated_jpeg(odd["exif"].image),
            "exif",
            "pixels stored sideways; EXIF orientation 6 turns them upright",
            "exif",
        ),
        (
            "holidays/2019/beach.jpeg",
            T.encode_jpeg(odd["nested"].image),
            "nested",
            "in a nested subfolder",
            "nested",
        ),
    )
    for rel, data, reason, note, role in files:
        photo = odd[role]
        path = out.image(f"extra/{rel}", data, photo=photo.name, role="odd")
        out.truth.bad_files.append(_bad(path, "ingest", reason, note, photo.image.size))
    bomb = out.image("extra/huge.png", _bomb_png(BOMB_SIDE, BOMB_SIDE), photo=None, role="bad")
    note = f"header claims {BOMB_SIDE}x{BOMB_SIDE} px"
    out.truth.bad_files.append(
        _bad(bomb, "quarantine", "pixel limit", note, (BOMB_SIDE, BOMB_SIDE))
    )


def _with_alpha(image: Image.Image) -> Image.Image:
    """RGBA: opaque centre fading to transparent over a border of 10 % of the width."""
    w, h = image.size
    yy, xx = np.mgrid[0:h, 0:w]
    edge = np.minimum(np.minimum(xx, w - 1 - xx), np.minimum(yy, h - 1 - yy))
    alpha = np.clip(edge / (0.1 * w) * 255, 0, 255).astype(np.uint8)
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha, "L"))
    return rgba


def _exif_rotated_jpeg(upright: Image.Image) -> bytes:
    """A JPEG whose pixels are stored turned 90° left, with EXIF orientation 6 to undo it."""
    stored = upright.convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A valid one-colour 1-bit PNG of ``width``×``height``: huge in pixels, tiny in bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    row = bytes(1 + math.ceil(width / 8))  # filter byte 0, then all-black pixels
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------------------------
# Small helpers


def _saliency_mask(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A plausible binary object mask: a tilted ellipse near the centre, 255 = salient."""
    w, h = size
    mask = np.zeros((h, w), np.uint8)
    centre = (round(w * rng.uniform(0.35, 0.65)), round(h * rng.uniform(0.35, 0.65)))
    axes = (max(1, round(w * rng.uniform(0.15, 0.35))), max(1, round(h * rng.uniform(0.15, 0.35))))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(-30, 30)), 0, 360, 255, thickness=-1)
    return Image.fromarray(mask, "L")


def _bad(
    path: str, expect: str, reason: str, note: str, size: tuple[int, int] | None = None
) -> dict[str, Any]:
    """A ``bad_files`` entry; ``size`` is the upright (width, height) where it is known."""
    entry: dict[str, Any] = {"path": path, "expect": expect, "reason": reason, "note": note}
    if size is not None:
        entry["width"], entry["height"] = size
    return entry


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB") if image.mode not in ("RGB", "L") else image.copy()


def iter_truth_paths(truth: dict[str, Any]) -> Iterator[str]:
    """Every file path named in a truth document (images, references and their masks, hidden
    masks)."""
    for ref in truth["references"]:
        yield ref["path"]
        yield ref["mask"]
    for image in truth["images"]:
        yield image["path"]
    for hidden in truth.get("hidden_masks", []):
        yield hidden["mask"]
