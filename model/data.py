"""Training data straight from a release's Parquet shards (the format: release_format.py).

- :func:`resolve_release`: ``NAME@VERSION[:SPLIT]`` (or a release folder) → :class:`ReleaseRef`
  with the shards' sha256 and a ``fingerprint`` that checkpoints record; every shard is hashed
  once per process and a release whose bytes differ from its manifest is refused.
- :class:`ReleaseDataset`: one split as ``(image (3, S, S), mask (1, S, S), id)`` float32 samples
  in [0, 1] (mask 1 = blurred), read row group by row group; :class:`Augment` expands it with the
  paper's rotated and rescaled copies (``docs/dpn.md``).
- :class:`GroupedSampler`: shuffles row groups, then the samples within each; splits the order
  between torch.distributed ranks.

``model/`` reads releases through their contract only, never through ``pipeline/``.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset, Sampler

from blurset.model.dpn import IMAGENET_MEAN, IMAGENET_STD
from blurset.model.release_format import (
    MANIFEST,
    SPLIT_NAME,
    ReleaseNotFoundError,
    ReleaseSpecError,
    Shard,
    manifest_shards,
    read_manifest,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Augment",
    "GroupedSampler",
    "ReleaseDataset",
    "ReleaseIntegrityError",
    "ReleaseNotFoundError",
    "ReleaseRef",
    "ReleaseSpecError",
    "Shard",
    "Variant",
    "decode_pair",
    "default_releases_root",
    "make_sample",
    "resolve_release",
]

RELEASES_ENV = "BLURSET_RELEASES"
_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)@(?P<version>[0-9A-Za-z.+-]+)"
                   r"(?::(?P<split>[A-Za-z][A-Za-z0-9_]*))?$")
_COLUMNS = ["id", "image", "mask"]


# --------------------------------------------------------------------------------------------
# Releases


@dataclass(frozen=True)
class ReleaseRef:
    """A release (or one split of it) resolved from its manifest.

    ``fingerprint`` is the sha256 of the release's shard list (``"{file}\\t{sha256}\\n"`` per
    shard, sorted by file): equal fingerprints mean byte-identical data. ``split`` is the split
    the spec named (``NAME@VERSION:SPLIT``), or None for "the caller's default".
    """

    name: str
    version: str
    path: Path
    shards: tuple[Shard, ...]
    fingerprint: str
    split: str | None = None
    manifest: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}" + (f":{self.split}" if self.split else "")

    def splits(self) -> dict[str, int]:
        """{split: rows} over the shards, in the order they first appear."""
        out: dict[str, int] = {}
        for s in self.shards:
            out[s.split] = out.get(s.split, 0) + s.rows
        return out

    def shards_of(self, split: str) -> tuple[Shard, ...]:
        found = tuple(s for s in self.shards if s.split == split)
        if not found:
            have = ", ".join(f"{k} ({n} rows)" for k, n in self.splits().items()) or "none"
            raise ReleaseSpecError(f"release {self.name}@{self.version} has no split {split!r}; "
                                   f"its splits: {have} (choose one with "
                                   f"{self.name}@{self.version}:SPLIT)")
        return found

    def with_split(self, split: str) -> ReleaseRef:
        """This release with ``split`` chosen (checked to exist)."""
        self.shards_of(split)
        return ReleaseRef(self.name, self.version, self.path, self.shards, self.fingerprint,
                          split, self.manifest)

    def provenance(self) -> dict[str, Any]:
        """What a checkpoint records about the data it was trained or validated on."""
        used = self.shards_of(self.split) if self.split else self.shards
        return {"name": self.name, "version": self.version, "path": str(self.path),
                "split": self.split, "rows": sum(s.rows for s in used),
                "fingerprint": self.fingerprint,
                "shards": [{"file": s.file, "sha256": s.sha256, "rows": s.rows} for s in used]}


def default_releases_root() -> Path:
    """``$BLURSET_RELEASES``, else ``./releases`` (read when called, not at import)."""
    return Path(os.environ.get(RELEASES_ENV) or "releases")


class ReleaseIntegrityError(ReleaseSpecError):
    """A shard is missing, lies outside its release, or its bytes do not hash to the manifest's
    sha256: the release was changed after it was built."""


_VERIFIED: set[tuple] = set()  # (path, size, mtime_ns, sha256) of shards hashed in this process


def verify_shards(folder: Path, shards: Sequence[Shard], spec: str) -> None:
    """Hash every shard (streaming) and compare it with the manifest; a shard whose file is
    unchanged since it was hashed in this process is not read again. Raises
    :class:`ReleaseIntegrityError` naming the shard."""
    root = folder.resolve()
    hint = f"rebuild or fetch the release again (`blurset release verify {folder}` lists " \
           "every problem)"
    for s in shards:
        path = (folder / s.file).resolve()
        if not path.is_relative_to(root):
            raise ReleaseIntegrityError(f"shard {s.file!r} of {spec} lies outside the release "
                                        f"{folder}: the manifest is refused")
        try:
            st = path.stat()
        except OSError:
            raise ReleaseIntegrityError(f"shard {s.file} of {spec} is missing ({path}); "
                                        f"{hint}") from None
        key = (str(path), st.st_size, st.st_mtime_ns, s.sha256)
        if key in _VERIFIED:
            continue
        h = hashlib.sha256()
        with path.open("rb") as fh:
            while block := fh.read(4 * 2**20):
                h.update(block)
        if h.hexdigest() != s.sha256:
            raise ReleaseIntegrityError(f"shard {s.file} of {spec} hashes to {h.hexdigest()}, "
                                        f"not to the manifest's {s.sha256}: the release was "
                                        f"changed after it was built; {hint}")
        _VERIFIED.add(key)


def _ref_from_folder(folder: Path, split: str | None, verify: bool = True) -> ReleaseRef:
    manifest = read_manifest(folder)
    shards = manifest_shards(manifest, folder / MANIFEST)
    if verify:
        verify_shards(folder, shards, f"{manifest.get('name')}@{manifest.get('version')}")
    h = hashlib.sha256()
    for s in shards:
        h.update(f"{s.file}\t{s.sha256}\n".encode())
    name = str(manifest.get("name") or folder.parent.name)
    version = str(manifest.get("version") or folder.name)
    ref = ReleaseRef(name, version, folder.resolve(), tuple(shards), h.hexdigest(), None, manifest)
    return ref.with_split(split) if split else ref


def resolve_release(spec: str | os.PathLike, releases_root: str | os.PathLike | None = None,
                    *, verify: bool = True) -> ReleaseRef:
    """``NAME@VERSION``, ``NAME@VERSION:SPLIT`` or a release folder's path (optionally
    ``PATH:SPLIT``) → :class:`ReleaseRef`, read from its ``manifest.json``.

    ``releases_root`` (for ``NAME@VERSION``) defaults to :func:`default_releases_root`.
    ``verify``: hash every shard (:func:`verify_shards`), so what a checkpoint records is what
    was read. Raises :class:`ReleaseNotFoundError` (naming the releases or versions that do
    exist), :class:`ReleaseIntegrityError` (a shard missing or changed) or
    :class:`ReleaseSpecError` (bad syntax, unknown split, unreadable manifest).
    """
    text = os.fspath(spec)
    if not isinstance(text, str) or not text.strip():
        raise ReleaseSpecError(f"release spec {spec!r} is empty; write NAME@VERSION (e.g. "
                               "szu-bd@1.0.0), NAME@VERSION:SPLIT or a release folder's path")
    if Path(text).is_dir():
        return _ref_from_folder(Path(text), None, verify)
    head, sep, tail = text.rpartition(":")
    if sep and SPLIT_NAME.match(tail) and Path(head).is_dir():
        return _ref_from_folder(Path(head), tail, verify)
    m = _SPEC.match(text)
    if not m:
        if "/" in text or os.sep in text or text.startswith("."):
            raise ReleaseNotFoundError(f"no release folder at {text}")
        raise ReleaseSpecError(f"release spec {text!r} is not NAME@VERSION[:SPLIT] (e.g. "
                               "szu-bd@1.0.0 or szu-bd@1.0.0:test) nor a release folder's path")
    root = Path(releases_root) if releases_root is not None else default_releases_root()
    name, version, split = m.group("name", "version", "split")
    folder = root / name / version
    if not (folder / MANIFEST).is_file():
        if not (root / name).is_dir():
            names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            raise ReleaseNotFoundError(
                f"no release named {name!r} under {root}; releases there: "
                f"{', '.join(names) or 'none'} (set the root with --releases-root or "
                f"${RELEASES_ENV})")
        versions = sorted(p.name for p in (root / name).iterdir() if (p / MANIFEST).is_file())
        if not folder.is_dir():
            raise ReleaseNotFoundError(f"release {name} has no version {version} under {root}; "
                                       f"versions: {', '.join(versions) or 'none'}")
    return _ref_from_folder(folder, split, verify)


# --------------------------------------------------------------------------------------------
# Augmentation


@dataclass(frozen=True)
class Variant:
    """One copy of an image: ``rotation`` quarter turns counter-clockwise, then (optionally)
    shown at ``scale``×``scale`` pixels (tiled or resized back to the input size)."""

    rotation: int = 0
    scale: int | None = None


@dataclass(frozen=True)
class Augment:
    """The paper's training-set expansion, switchable (the ``augment:`` block of a config)."""

    rotations: bool = True  # + copies rotated by 90°, 180°, 270°
    rescales: tuple[int, ...] = (176, 88)  # + copies at these sizes (pixels, < input_size)
    hflip: bool = False  # random horizontal flip of every sample
    rescale_mode: str = "tile"  # tile | resize (down to the size, then back up)
    crop: float = 0.0  # > 0: a random crop of each sample, each side a [crop, 1] share (not in
    #                    the paper; more variety for small releases)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rescales", tuple(int(s) for s in self.rescales))
        object.__setattr__(self, "crop", float(self.crop))
        if not 0 <= self.crop <= 1:
            raise ValueError(f"augment.crop {self.crop} must lie in [0, 1] (0 = no crop; 0.5 = "
                             "crops of half to all of each side)")
        if self.rescale_mode not in ("tile", "resize"):
            raise ValueError(f"augment.rescale_mode {self.rescale_mode!r} must be 'tile' or "
                             "'resize'")
        if any(s < 8 for s in self.rescales):
            raise ValueError(f"augment.rescales {list(self.rescales)} must be sizes ≥ 8 pixels")

    @classmethod
    def none(cls) -> Augment:
        return cls(rotations=False, rescales=(), hflip=False)

    @property
    def variants(self) -> tuple[Variant, ...]:
        """Every copy each image appears as: itself, its rotations, its rescales."""
        out = [Variant()]
        if self.rotations:
            out += [Variant(rotation=k) for k in (1, 2, 3)]
        out += [Variant(scale=s) for s in self.rescales]
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        return {"rotations": self.rotations, "rescales": list(self.rescales),
                "hflip": self.hflip, "rescale_mode": self.rescale_mode, "crop": self.crop}


# --------------------------------------------------------------------------------------------
# Decoding


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit/float grey: scale to 8 bits
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8))
    return im.convert("RGB")


def decode_pair(image: bytes, mask: bytes, size_hint: int | None, row_id: str = "?"
                ) -> tuple[Image.Image, Image.Image]:
    """Image bytes → RGB upright (EXIF orientation applied, as the release's width/height);
    mask bytes → L. JPEGs are decoded at a reduced scale when that still leaves ≥ ``size_hint``
    pixels a side (None: full size). Raises ``ValueError`` when the mask's size is not the
    image's."""
    with Image.open(io.BytesIO(image)) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
        if orientation in (5, 6, 7, 8):
            w, h = h, w
        if im.format == "JPEG" and size_hint:
            im.draft("RGB", (size_hint, size_hint))
        upright = ImageOps.exif_transpose(im)
        rgb = _to_rgb(upright)
    with Image.open(io.BytesIO(mask)) as m:
        grey = m.convert("L")
    if grey.size != (w, h):
        raise ReleaseIntegrityError(f"row {row_id}: mask is {grey.size[0]}×{grey.size[1]} but "
                                    f"the image is {w}×{h} (after EXIF orientation); the release "
                                    "is inconsistent (check it with `blurset release verify`)")
    return rgb, grey


def _tile(im: Image.Image, scale: int, size: int) -> Image.Image:
    small = im.resize((scale, scale), Image.Resampling.BILINEAR)
    reps = math.ceil(size / scale)
    arr = np.tile(np.asarray(small), (reps, reps) + (1,) * (np.asarray(small).ndim - 2))
    return Image.fromarray(np.ascontiguousarray(arr[:size, :size]))


def _random_crop(image: Image.Image, mask: Image.Image, least: float
                 ) -> tuple[Image.Image, Image.Image]:
    """The same random box of image and mask, each side a share in [least, 1] of the original."""
    w, h = image.size
    u = torch.rand(4).tolist()
    cw = max(1, round(w * (least + (1 - least) * u[0])))
    ch = max(1, round(h * (least + (1 - least) * u[1])))
    x0, y0 = int((w - cw) * u[2]), int((h - ch) * u[3])
    box = (x0, y0, x0 + cw, y0 + ch)
    return image.crop(box), mask.crop(box)


def make_sample(image: Image.Image, mask: Image.Image, size: int, variant: Variant = Variant(),
                *, rescale_mode: str = "tile", flip: bool = False, normalize: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(RGB image, L mask) → (image (3, S, S) in [0, 1], or ImageNet-normalised with
    ``normalize``; mask (1, S, S) in [0, 1]).

    Both are resized with bilinear filtering (antialiased when shrinking), so the mask's edges
    become fractions (a soft target); then the variant's rescale, rotation and the flip apply.
    """
    if variant.scale is not None and variant.scale < size:
        if rescale_mode == "tile":
            image, mask = _tile(image, variant.scale, size), _tile(mask, variant.scale, size)
        else:  # resize: down to the scale, back up (blurs everything; see the module's doc)
            small = image.resize((variant.scale, variant.scale), Image.Resampling.BILINEAR)
            image = small.resize((size, size), Image.Resampling.BILINEAR)
            mask = mask.resize((size, size), Image.Resampling.BILINEAR)
    else:
        image = image.resize((size, size), Image.Resampling.BILINEAR)
        mask = mask.resize((size, size), Image.Resampling.BILINEAR)
    img = np.asarray(image, dtype=np.float32) / 255.0  # (S, S, 3)
    msk = np.asarray(mask, dtype=np.float32) / 255.0  # (S, S)
    if variant.rotation:
        img, msk = np.rot90(img, variant.rotation), np.rot90(msk, variant.rotation)
    if flip:
        img, msk = img[:, ::-1], msk[:, ::-1]
    if normalize:
        img = (img - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))  # (3, S, S)
    y = torch.from_numpy(np.ascontiguousarray(msk))[None]  # (1, S, S)
    return x, y


# --------------------------------------------------------------------------------------------
# Dataset


class ReleaseDataset(Dataset):
    """One split of a release as ``(image, mask, id)`` samples; see the module's doc.

    Args:
        release: from :func:`resolve_release`.
        split: the split to read; defaults to ``release.split``.
        input_size: side S of the square samples.
        augment: expansion and flip; None = every image once, as it is (validation).
        cache_row_groups: decoded row groups kept per process (each DataLoader worker has its
            own); a row group holds up to 64 images / 8 MB in releases written by blurset.
        normalize: ImageNet mean/std-normalise the images (not for the DPN, which does it).

    ``len`` = rows × ``len(augment.variants)``; index ``i`` is row ``i // V``, variant ``i % V``.
    """

    def __init__(self, release: ReleaseRef, split: str | None = None, *, input_size: int = 352,
                 augment: Augment | None = None, cache_row_groups: int = 4,
                 normalize: bool = False):
        split = split or release.split
        if not split:
            raise ReleaseSpecError(f"choose a split of {release.name}@{release.version}: "
                                   f"{', '.join(release.splits())}")
        if input_size < 16:
            raise ValueError(f"input_size {input_size} is too small (≥ 16 pixels)")
        self.release = release
        self.split = split
        self.input_size = int(input_size)
        self.augment = augment or Augment.none()
        if bad := [s for s in self.augment.rescales if s >= self.input_size]:
            raise ValueError(f"augment.rescales {bad} must be smaller than input_size "
                             f"{self.input_size} (the paper: 176 and 88 for 352)")
        self.variants = self.augment.variants
        self.cache_row_groups = max(1, int(cache_row_groups))
        self.normalize = bool(normalize)
        self.files: list[Path] = []
        index: list[tuple[int, int, int]] = []  # (file, row group, row within it) per row
        self.row_groups: list[tuple[int, int]] = []  # (file, row group) per row group
        for shard in release.shards_of(split):
            path = release.path / shard.file
            if not path.is_file():
                raise ReleaseNotFoundError(f"shard {shard.file} of {release.spec} is missing "
                                           f"({path})")
            meta = pq.read_metadata(path)
            if meta.num_rows != shard.rows:
                raise ReleaseSpecError(f"{path}: {meta.num_rows} rows, the manifest says "
                                       f"{shard.rows}: the release was changed after publishing")
            f = len(self.files)
            self.files.append(path)
            for g in range(meta.num_row_groups):
                self.row_groups.append((f, g))
                index += [(f, g, r) for r in range(meta.row_group(g).num_rows)]
        self._index = index
        self._open: dict[int, pq.ParquetFile] = {}
        self._cache: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()

    @property
    def rows(self) -> int:
        return len(self._index)

    def __len__(self) -> int:
        return len(self._index) * len(self.variants)

    @property
    def groups(self) -> list[range]:
        """The dataset indices of each row group (consecutive), for :class:`GroupedSampler`."""
        counts: dict[tuple[int, int], int] = {}
        for f, g, _ in self._index:  # a row group's rows are consecutive in the index
            counts[(f, g)] = counts.get((f, g), 0) + 1
        out, start, v = [], 0, len(self.variants)
        for key in self.row_groups:
            n = counts.get(key, 0) * v
            out.append(range(start, start + n))
            start += n
        return out

    def __getstate__(self) -> dict:  # open files and decoded groups stay in their process
        state = self.__dict__.copy()
        state["_open"], state["_cache"] = {}, OrderedDict()
        return state

    def _row_group(self, f: int, g: int) -> pa.Table:
        key = (f, g)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if f not in self._open:
            self._open[f] = pq.ParquetFile(self.files[f])
        table = self._open[f].read_row_group(g, columns=_COLUMNS)
        self._cache[key] = table
        while len(self._cache) > self.cache_row_groups:
            self._cache.popitem(last=False)
        return table

    def load(self, row: int) -> tuple[Image.Image, Image.Image, str]:
        """Row ``row`` of the split, decoded: (RGB image, L mask, id) at the original size."""
        f, g, r = self._index[row]
        table = self._row_group(f, g)
        row_id = table.column("id")[r].as_py()
        image = table.column("image")[r].as_py()
        mask = table.column("mask")[r].as_py()
        if not image or not image.get("bytes") or not mask or not mask.get("bytes"):
            raise ReleaseIntegrityError(f"row {row_id} of {self.files[f]} has no image or mask "
                                        "bytes; check the release with `blurset release verify`")
        im, m = decode_pair(image["bytes"], mask["bytes"], self.input_size, row_id)
        return im, m, row_id

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        row, v = divmod(index, len(self.variants))
        image, mask, row_id = self.load(row)
        flip = bool(self.augment.hflip and torch.rand(()).item() < 0.5)
        if 0 < self.augment.crop < 1:  # torch's RNG: seeded per epoch and worker by the trainer
            image, mask = _random_crop(image, mask, self.augment.crop)
        x, y = make_sample(image, mask, self.input_size, self.variants[v],
                           rescale_mode=self.augment.rescale_mode, flip=flip,
                           normalize=self.normalize)
        return x, y, row_id


class GroupedSampler(Sampler[int]):
    """Shuffles row groups, then the samples within each, with a seed per epoch
    (``set_epoch``); with ``num_replicas`` > 1 pads the order to a multiple of it (repeating
    its start) and gives rank ``r`` every ``num_replicas``-th index from ``r``, so every rank
    gets the same number of samples, as ``DistributedSampler``. ``shuffle=False`` keeps the
    dataset's order."""

    def __init__(self, groups: Sequence[range], *, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} not in [0, {num_replicas})")
        self.groups = list(groups)
        self.shuffle, self.seed = shuffle, int(seed)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        total = sum(len(g) for g in self.groups)
        self.num_samples = math.ceil(total / self.num_replicas) if total else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> list[int]:
        """The whole order (all ranks, padded), for this epoch."""
        if not self.shuffle:
            order = [i for g in self.groups for i in g]
        else:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = []
            for k in torch.randperm(len(self.groups), generator=gen).tolist():
                g = self.groups[k]
                order += [g[j] for j in torch.randperm(len(g), generator=gen).tolist()]
        total = self.num_samples * self.num_replicas
        while order and len(order) < total:
            order += order[: total - len(order)]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.order()[self.rank::self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples
