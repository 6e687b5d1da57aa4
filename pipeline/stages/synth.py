"""Synthetic blur composites: sharp photographs blurred inside real blur-mask shapes.

:func:`write_synth` writes a CUHK-layout source (``image/{motion,out_of_focus}NNNN.jpg``,
``gt/<same stem>.png``, 255 = blurred) that goes through ingest, dedup and ``release build
--from-source`` like any other source, plus ``synth.json`` (parameters, photo fingerprint, what
each composite was made of). Each composite takes one mask shape (its blur type from its name,
``motion*`` / ``out_of_focus*``, as CUHK names them) and one crop of a photograph, then:

- defocus: a lens kernel (a disk with an anti-aliased edge and an optional bright rim) applied in
  linear light, its radius growing with the distance from the in-focus region up to a maximum,
  blended into the sharp photo over a soft boundary;
- motion: one linear or curved (smooth random trajectory, uneven speed) kernel of random length
  and direction, applied in linear light inside the mask, soft boundary;
- then what a camera does to the whole frame: slight softness, sensor noise, JPEG re-encoding.

Every random draw comes from one ``numpy`` generator seeded by ``seed``: the same photos, masks,
seed and size give byte-identical output. No click, Prefect or tqdm here (the CLI wraps it).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from blurset.errors import ConflictError, InputError, NotFoundError
from blurset.fileio import atomic_write

__all__ = [
    "PHOTO_SUFFIXES",
    "SynthError",
    "SynthParams",
    "SynthResult",
    "collect_masks",
    "collect_photos",
    "defocus_blur",
    "motion_blur",
    "motion_kernel",
    "photo_fingerprint",
    "synth_one",
    "write_synth",
]

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MASK_TYPES = {"motion": "motion", "out_of_focus": "out_of_focus"}  # name prefix -> file prefix
GAMMA = 2.2
_MAX_PHOTO_SIDE = 1280  # photos are decoded once at most this large (crops are smaller)


class SynthError(InputError):
    """The inputs of ``blurset synth`` cannot make composites; the message says what to give."""


@dataclass(frozen=True)
class SynthParams:
    """Ranges the generator draws from, in pixels of a composite whose long side is 320 (they
    scale with ``size``). Defaults are chosen to look like CUHK's photos (strong, visible blur)."""

    defocus_radius_min: tuple[float, float] = (1.5, 3.5)  # radius at the in-focus boundary
    defocus_radius_max: tuple[float, float] = (4.0, 11.0)  # radius far from it
    defocus_growth: tuple[float, float] = (0.05, 0.4)  # radius gained per pixel of distance
    lens_rim: float = 0.4  # chance of a bright-rimmed (soap-bubble) disk
    motion_length: tuple[float, float] = (6.0, 30.0)  # kernel path length
    motion_curved: float = 0.5  # chance of a curved kernel instead of a line
    boundary_sigma: tuple[float, float] = (0.8, 3.0)  # Gaussian of the soft blend
    crop_fraction: tuple[float, float] = (0.35, 1.0)  # crop side / photo side
    softness: tuple[float, float] = (0.0, 0.7)  # global Gaussian sigma (lens, demosaicing)
    noise: tuple[float, float] = (0.0, 4.0)  # sensor noise sigma, 0-255 scale
    jpeg_quality: tuple[int, int] = (70, 96)


@dataclass(frozen=True)
class SynthResult:
    out_dir: Path
    images: int
    motion: int
    defocus: int
    photos: int
    masks: int
    photo_fingerprint: str
    seed: int
    size: int
    manifest: Path
    items: list[dict] = field(default_factory=list, repr=False)


# --------------------------------------------------------------------------------------------
# Inputs


def collect_photos(folders: Sequence[str | Path]) -> list[Path]:
    """Every photo file under ``folders`` (recursive), sorted, so the order is stable."""
    photos: list[Path] = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise NotFoundError(f"photo folder {folder} does not exist; give a folder of sharp "
                                "photographs (e.g. ~/.cache/blurset/photos/mate-backgrounds, "
                                "fetched by scripts/fetch_photos.sh)")
        photos += sorted(p for p in folder.rglob("*")
                         if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
    if not photos:
        raise SynthError(f"no photos ({', '.join(PHOTO_SUFFIXES)}) under "
                         f"{', '.join(map(str, folders))}")
    return photos


def collect_masks(folder: str | Path) -> list[tuple[Path, str]]:
    """``(path, blur type)`` of the CUHK-named masks in ``folder`` (``motion*.png`` → motion,
    ``out_of_focus*.png`` → out_of_focus), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"mask folder {folder} does not exist; give a folder of CUHK-style "
                            "masks (motionNNNN.png, out_of_focusNNNN.png, 255 = blurred)")
    masks = [(p, kind) for p in sorted(folder.glob("*.png"))
             for kind in MASK_TYPES if p.stem.startswith(kind)]
    if not masks:
        raise SynthError(f"no masks named motion*.png or out_of_focus*.png in {folder}")
    return masks


def photo_fingerprint(photos: Sequence[Path]) -> str:
    """sha256 over the sorted ``name<TAB>sha256(bytes)`` lines of the photos: equal fingerprints
    mean the same collection."""
    lines = sorted(f"{p.parent.name}/{p.name}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
                   for p in photos)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _load_photo(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.draft("RGB", (_MAX_PHOTO_SIDE, _MAX_PHOTO_SIDE))
        im = im.convert("RGB")
        im.thumbnail((_MAX_PHOTO_SIDE, _MAX_PHOTO_SIDE), Image.Resampling.LANCZOS)
        return np.asarray(im)  # (H, W, 3) uint8


def _load_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return (np.asarray(im.convert("L")) > 127).astype(np.uint8)  # (H, W) 1 = blurred


# --------------------------------------------------------------------------------------------
# Kernels and blur (images are float32 linear light, (H, W, 3))


def _to_linear(rgb: np.ndarray) -> np.ndarray:
    return (rgb.astype(np.float32) / 255.0) ** GAMMA


def _to_srgb(lin: np.ndarray) -> np.ndarray:
    return np.clip(lin, 0.0, 1.0) ** (1.0 / GAMMA) * 255.0


def disk_kernel(radius: float, rim: float = 0.0) -> np.ndarray:
    """A lens (circle of confusion) kernel: a disk with an anti-aliased edge; ``rim`` > 0
    brightens its edge (the rings of bubble-like bokeh). Sums to 1."""
    if radius < 0.5:
        return np.ones((1, 1), np.float32)
    r = math.ceil(radius)
    y, x = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
    d = np.hypot(x, y)
    k = np.clip(radius + 0.5 - d, 0.0, 1.0)
    if rim > 0:
        k *= 1.0 + rim * np.clip(d / radius, 0.0, 1.0) ** 4
    return (k / k.sum()).astype(np.float32)


def motion_kernel(length: float, angle: float, curve: float = 0.0,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """A motion-blur kernel: the path of a point moving ``length`` pixels at ``angle`` (radians),
    bent sideways by up to ``curve`` × length (a smooth random trajectory drawn from ``rng``)
    and travelled at uneven speed when ``rng`` is given. Sums to 1."""
    n = max(int(length * 4), 2)
    t = np.linspace(-0.5, 0.5, n)
    along = t * length
    side = np.zeros_like(t)
    weights = np.ones_like(t)
    if rng is not None and curve > 0:
        # smooth bend: a random combination of two low-frequency shapes
        a, b = rng.uniform(-1, 1, 2)
        side = curve * length * (a * (4 * t * t - 1) / 2 + b * np.sin(2 * math.pi * t) / 2)
    if rng is not None:
        weights = 1.0 + 0.5 * np.sin(2 * math.pi * (t * rng.uniform(0.5, 1.5)
                                                    + rng.uniform(0, 1)))
    c, s = math.cos(angle), math.sin(angle)
    xs, ys = along * c - side * s, along * s + side * c
    r = math.ceil(max(np.abs(xs).max(), np.abs(ys).max())) + 1
    k = np.zeros((2 * r + 1, 2 * r + 1), np.float64)
    fx, fy = xs + r, ys + r
    x0, y0 = np.floor(fx).astype(int), np.floor(fy).astype(int)
    dx, dy = fx - x0, fy - y0
    for ox, oy, w in ((0, 0, (1 - dx) * (1 - dy)), (1, 0, dx * (1 - dy)),
                      (0, 1, (1 - dx) * dy), (1, 1, dx * dy)):
        np.add.at(k, (y0 + oy, x0 + ox), w * weights)  # bilinear splat of the path
    return (k / k.sum()).astype(np.float32)


def _filter(lin: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.filter2D(lin, -1, kernel, borderType=cv2.BORDER_REFLECT)


def defocus_blur(lin: np.ndarray, mask: np.ndarray, r_min: float, r_max: float, growth: float,
                 rim: float = 0.0) -> np.ndarray:
    """Depth-varying defocus of ``lin`` inside ``mask``: the radius is ``r_min`` at the edge of
    the in-focus region and grows by ``growth`` per pixel of distance from it, up to ``r_max``.
    A stack of disk blurs at a few radii is interpolated per pixel."""
    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)  # 0 in the sharp region
    if not (mask == 0).any():  # all blurred: distances from the frame's edge
        dist = np.full(mask.shape, r_max / max(growth, 1e-6), np.float32)
    radius = np.clip(r_min + growth * dist, 0.0, r_max).astype(np.float32)
    levels = np.unique(np.round(np.linspace(r_min, r_max, 5), 2)).astype(np.float32)
    if len(levels) == 1:
        return _filter(lin, disk_kernel(float(levels[0]), rim))
    out = np.zeros_like(lin)
    for i, r in enumerate(levels):  # hat-function weights over the radius levels
        lo = levels[i - 1] if i > 0 else r
        hi = levels[i + 1] if i + 1 < len(levels) else r
        w = np.zeros_like(radius)
        if i > 0:
            up = (radius >= lo) & (radius <= r)
            w[up] = (radius[up] - lo) / (r - lo)
        if i + 1 < len(levels):
            down = (radius >= r) & (radius <= hi)
            w[down] = (hi - radius[down]) / (hi - r)
        w[radius == r] = 1.0
        if i == 0:
            w[radius < r] = 1.0
        if i + 1 == len(levels):
            w[radius > r] = 1.0
        if w.any():
            out += w[..., None] * _filter(lin, disk_kernel(float(r), rim))
    return out


def motion_blur(lin: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return _filter(lin, kernel)


# --------------------------------------------------------------------------------------------
# One composite


def _crop(photo: np.ndarray, aspect: float, size_hw: tuple[int, int], frac: float,
          rng: np.random.Generator) -> np.ndarray:
    ph, pw = photo.shape[:2]
    ch = min(ph, pw / aspect) * frac  # crop height at the mask's aspect (w / h)
    ch, cw = max(int(ch), 8), max(int(ch * aspect), 8)
    cw, ch = min(cw, pw), min(ch, ph)
    y = int(rng.integers(0, ph - ch + 1))
    x = int(rng.integers(0, pw - cw + 1))
    crop = photo[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    h, w = size_hw
    interp = cv2.INTER_AREA if ch > h else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=interp)


def synth_one(photo: np.ndarray, mask: np.ndarray, kind: str, size: int,
              rng: np.random.Generator, params: SynthParams = SynthParams()
              ) -> tuple[np.ndarray, np.ndarray, dict]:
    """One composite → (RGB uint8 (h, w, 3) before JPEG, mask uint8 (h, w) 0/255, what was
    drawn). ``kind`` is ``motion`` or ``out_of_focus``; the long side becomes ``size``."""
    mh, mw = mask.shape
    scale = size / max(mh, mw)
    h, w = max(16, round(mh * scale)), max(16, round(mw * scale))
    m = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    k = size / 320.0  # parameters are given at a 320-pixel long side
    u = rng.uniform
    sharp = _crop(photo, w / h, (h, w), u(*params.crop_fraction), rng)
    lin = _to_linear(sharp)
    info: dict = {"kind": kind}
    if kind == "out_of_focus":
        r_min, r_max = u(*params.defocus_radius_min) * k, u(*params.defocus_radius_max) * k
        r_max = max(r_max, r_min)
        growth = u(*params.defocus_growth)
        rim = float(u(0.3, 1.0)) if rng.random() < params.lens_rim else 0.0
        blurred = defocus_blur(lin, m, r_min, r_max, growth, rim)
        info |= {"radius_min": round(r_min, 2), "radius_max": round(r_max, 2),
                 "growth": round(growth, 3), "rim": round(rim, 2)}
    else:
        length = u(*params.motion_length) * k
        angle = u(0, math.pi)
        curve = u(0.1, 0.35) if rng.random() < params.motion_curved else 0.0
        kernel = motion_kernel(length, angle, curve, rng)
        blurred = motion_blur(lin, kernel)
        info |= {"length": round(length, 2), "angle": round(angle, 3), "curve": round(curve, 3)}
    sigma = u(*params.boundary_sigma) * k
    alpha = cv2.GaussianBlur(m.astype(np.float32), (0, 0), sigma)[..., None]  # soft boundary
    out = alpha * blurred + (1 - alpha) * lin
    rgb = _to_srgb(out)
    soft = u(*params.softness) * k
    if soft > 0.15:
        rgb = cv2.GaussianBlur(rgb, (0, 0), soft)
    noise = u(*params.noise)
    if noise > 0:
        luma = rng.standard_normal(rgb.shape[:2], dtype=np.float32)[..., None] * noise
        chroma = rng.standard_normal(rgb.shape, dtype=np.float32) * noise * 0.4
        rgb = rgb + luma + chroma
    info |= {"boundary_sigma": round(sigma, 2), "softness": round(soft, 2),
             "noise": round(noise, 2)}
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), (m * 255).astype(np.uint8), info


# --------------------------------------------------------------------------------------------
# A source folder


def write_synth(photos: Sequence[str | Path], masks: str | Path, out_dir: str | Path, *,
                n: int = 1000, seed: int = 0, size: int = 320,
                params: SynthParams = SynthParams(),
                progress: Callable[[int, int], None] | None = None) -> SynthResult:
    """Write ``n`` composites into ``out_dir`` (CUHK layout) from the photos under the folders
    ``photos`` and the masks in ``masks``. Refuses (:class:`ConflictError`) an ``out_dir`` that
    already holds images. ``progress(done, n)`` is called after each composite."""
    if n < 1:
        raise SynthError(f"n must be at least 1, got {n}")
    if size < 32:
        raise SynthError(f"size must be at least 32 pixels, got {size}")
    out_dir = Path(out_dir)
    if (out_dir / "image").is_dir() and any((out_dir / "image").iterdir()):
        raise ConflictError(f"{out_dir} already holds composites; nothing was overwritten: "
                            "choose another --out folder or delete this one")
    photo_paths = collect_photos(photos)
    mask_list = collect_masks(masks)
    fingerprint = photo_fingerprint(photo_paths)
    rng = np.random.default_rng(seed)
    cache: dict[int, np.ndarray] = {}
    (out_dir / "image").mkdir(parents=True, exist_ok=True)
    (out_dir / "gt").mkdir(parents=True, exist_ok=True)
    counts = {"motion": 0, "out_of_focus": 0}
    items = []
    mask_order = rng.permutation(len(mask_list))
    for i in range(n):
        mask_path, kind = mask_list[int(mask_order[i % len(mask_list)])]
        pi = int(rng.integers(len(photo_paths)))
        if pi not in cache:
            cache[pi] = _load_photo(photo_paths[pi])
        rgb, mask, info = synth_one(cache[pi], _load_mask(mask_path), kind, size, rng, params)
        counts[kind] += 1
        stem = f"{kind}{counts[kind]:04d}"
        quality = int(rng.integers(params.jpeg_quality[0], params.jpeg_quality[1] + 1))
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, quality])
        ok2, png = cv2.imencode(".png", mask)
        if not (ok and ok2):
            raise SynthError(f"OpenCV could not encode composite {stem}")
        atomic_write(out_dir / "image" / f"{stem}.jpg", jpg.tobytes())
        atomic_write(out_dir / "gt" / f"{stem}.png", png.tobytes())
        items.append({"image": f"image/{stem}.jpg", "mask_shape": mask_path.name,
                      "photo": f"{photo_paths[pi].parent.name}/{photo_paths[pi].name}",
                      "jpeg_quality": quality, **info})
        if progress is not None:
            progress(i + 1, n)
    manifest = out_dir / "synth.json"
    atomic_write(manifest, json.dumps({
        "generator": "blurset synth", "seed": seed, "size": size, "n": n,
        "photo_fingerprint": fingerprint, "photos": len(photo_paths),
        "photo_folders": sorted({p.parent.name for p in photo_paths}),
        "masks": len(mask_list), "params": asdict(params), "items": items,
    }, indent=1).encode())
    return SynthResult(out_dir, n, counts["motion"], counts["out_of_focus"], len(photo_paths),
                       len(mask_list), fingerprint, seed, size, manifest, items)
