"""Real photos shipped by packages, and the copy transformations used to plant near-duplicates.

Everything here is a pure function of its arguments (and of the photos installed with
scikit-image and scikit-learn): the same ``numpy.random.Generator`` state gives the same pixels.
The only I/O is reading those package-shipped photos; nothing is ever downloaded.

- :func:`photo_pool` lists the real photos, :func:`distinct_crops` cuts them into many genuinely
  different images (crops that overlap each other by less than a quarter of their area), and
  :func:`flat_images` makes low-texture distractors.
- :data:`TRANSFORMS` maps a name to a randomised copy transformation ``(image, rng) -> image``:
  the edits a dataset's near-duplicate check must see through. The caller encodes the result as
  JPEG at :func:`jpeg_quality` of the transform's name.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Transform = Callable[[Image.Image, np.random.Generator], Image.Image]

# (name, package holding the file, file name). Synthetic drawings (chessboard, logo, horse,
# phantom, text pages) are left out: they are not photos.
_PHOTO_FILES: tuple[tuple[str, str, str], ...] = (
    ("astronaut", "skimage.data", "astronaut.png"),
    ("camera", "skimage.data", "camera.png"),
    ("coffee", "skimage.data", "coffee.png"),
    ("chelsea", "skimage.data", "chelsea.png"),
    ("rocket", "skimage.data", "rocket.jpg"),
    ("coins", "skimage.data", "coins.png"),
    ("immunohistochemistry", "skimage.data", "ihc.png"),
    ("hubble_deep_field", "skimage.data", "hubble_deep_field.jpg"),
    ("moon", "skimage.data", "moon.png"),
    ("brick", "skimage.data", "brick.png"),
    ("grass", "skimage.data", "grass.png"),
    ("gravel", "skimage.data", "gravel.png"),
    ("retina", "skimage.data", "retina.jpg"),
    ("cell", "skimage.data", "cell.png"),
    ("clock", "skimage.data", "clock_motion.png"),
    ("motorcycle_left", "skimage.data", "motorcycle_left.png"),
    ("motorcycle_right", "skimage.data", "motorcycle_right.png"),
    ("china", "sklearn.datasets.images", "china.jpg"),
    ("flower", "sklearn.datasets.images", "flower.jpg"),
)

# Photos of one scene (a stereo pair): their crops would be near-duplicates of each other, so
# :func:`distinct_crops` cuts only the first photo of a scene.
_SCENES: dict[str, str] = {"motorcycle_left": "motorcycle", "motorcycle_right": "motorcycle"}

# JPEG quality the caller should encode a transformed copy at (see :func:`jpeg_quality`).
DEFAULT_JPEG_QUALITY = 90
LOW_JPEG_QUALITY = 35


def photo_pool() -> list[tuple[str, Image.Image]]:
    """The real RGB photos shipped with scikit-image and scikit-learn, in a fixed order.

    Files that are missing from the installed packages (or would need a download) are skipped.
    Grayscale photos are converted to RGB.
    """
    pool: list[tuple[str, Image.Image]] = []
    for name, package, filename in _PHOTO_FILES:
        image = _load_package_photo(package, filename)
        if image is not None:
            pool.append((name, image))
    return pool


def _load_package_photo(package: str, filename: str) -> Image.Image | None:
    """One photo file from an installed package's folder as RGB, or None if it is not there."""
    try:
        path = resources.files(package).joinpath(filename)
        with path.open("rb") as handle, Image.open(handle) as image:
            return image.convert("RGB")
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        return None


# --------------------------------------------------------------------------------------------
# Distinct crops


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle of a photo, in pixels."""

    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h

    def intersection(self, other: Box) -> int:
        """Area shared with ``other``."""
        dx = min(self.x + self.w, other.x + other.w) - max(self.x, other.x)
        dy = min(self.y + self.h, other.y + other.h) - max(self.y, other.y)
        return max(dx, 0) * max(dy, 0)

    def overlap(self, other: Box) -> float:
        """Shared area as a fraction of the smaller box (0 = disjoint, 1 = one inside the other)."""
        return self.intersection(other) / min(self.area, other.area)

    def pil(self) -> tuple[int, int, int, int]:
        """The box as PIL's ``(left, upper, right, lower)``."""
        return (self.x, self.y, self.x + self.w, self.y + self.h)


def crop_name(photo: str, box: Box) -> str:
    """The name of a crop: ``retina@x,y,w,h``."""
    return f"{photo}@{box.x},{box.y},{box.w},{box.h}"


def parse_crop_name(name: str) -> tuple[str, Box]:
    """Inverse of :func:`crop_name`."""
    photo, _, coords = name.partition("@")
    x, y, w, h = (int(v) for v in coords.split(","))
    return photo, Box(x, y, w, h)


def distinct_crops(
    pool: Sequence[tuple[str, Image.Image]],
    rng: np.random.Generator,
    *,
    size_range: tuple[int, int] = (256, 480),
    max_overlap: float = 0.25,
    attempts: int = 600,
) -> list[tuple[str, Image.Image]]:
    """Cut the pool into many genuinely different photos.

    Per photo, random boxes (sides in ``size_range``, clipped to the photo; aspect ratios from
    1:1.6 to 1.6:1) are accepted greedily when they overlap every box already taken from that
    photo by less than ``max_overlap`` of the smaller one's area, and when they show a photo
    rather than a featureless border (the black surround of ``retina``). Only the first photo
    of a scene (a stereo pair) is cut. Names are ``photo@x,y,w,h``; order is pool order.
    """
    crops: list[tuple[str, Image.Image]] = []
    scenes_done: set[str] = set()
    for name, photo in pool:
        scene = _SCENES.get(name, name)
        if scene in scenes_done:
            continue
        scenes_done.add(scene)
        gray = np.asarray(photo.convert("L").reduce(_CONTENT_STEP), dtype=np.float32)
        for box in _pack_boxes(photo.size, gray, rng, size_range, max_overlap, attempts):
            crops.append((crop_name(name, box), photo.crop(box.pil())))
    return crops


def _pack_boxes(
    size: tuple[int, int],
    gray: np.ndarray,
    rng: np.random.Generator,
    size_range: tuple[int, int],
    max_overlap: float,
    attempts: int,
    restarts: int = 6,
) -> list[Box]:
    """Greedy random packing of boxes overlapping each other by less than ``max_overlap``.

    Sides lean towards the small end and positions often snap to the photo's edges, which packs
    more boxes; the best of a few restarts is kept.
    """
    best: list[Box] = []
    for _ in range(restarts):
        boxes: list[Box] = []
        for _ in range(attempts):
            box = _random_box(size, rng, size_range)
            if box is None or any(box.overlap(other) >= max_overlap for other in boxes):
                continue
            if _has_content(gray, box):
                boxes.append(box)
        if len(boxes) > len(best):
            best = boxes
    return sorted(best, key=lambda b: (b.y, b.x))


def _random_box(
    size: tuple[int, int], rng: np.random.Generator, size_range: tuple[int, int]
) -> Box | None:
    """A random box inside a photo of ``size``, or None if the photo is too small for one."""
    width, height = size
    lo, hi = size_range
    w = int(lo + (hi - lo) * rng.random() ** 2)
    aspect = float(np.exp(rng.uniform(-0.47, 0.47)))  # 1:1.6 … 1.6:1
    h = round(w / aspect)
    w, h = min(w, width), min(max(h, min(lo, height)), height)
    if w < min(lo, width):
        return None
    return Box(_position(width - w, rng), _position(height - h, rng), w, h)


def _position(room: int, rng: np.random.Generator) -> int:
    """An offset in [0, room]: one of the two edges a third of the time each, else uniform."""
    pick = rng.random()
    if pick < 1 / 3:
        return 0
    if pick < 2 / 3:
        return room
    return int(rng.integers(0, room + 1))


_CONTENT_STEP = 4  # the content check looks at the photo reduced 4×


def _has_content(gray: np.ndarray, box: Box) -> bool:
    """False for boxes that are mostly a black border or nearly uniform.

    ``gray`` is the photo's luminance reduced by ``_CONTENT_STEP``.
    """
    s = _CONTENT_STEP
    patch = gray[box.y // s : (box.y + box.h) // s, box.x // s : (box.x + box.w) // s]
    return float(np.mean(patch < 8)) < 0.15 and float(patch.std()) > 8.0


# --------------------------------------------------------------------------------------------
# Flat distractors


def flat_images(
    n: int, rng: np.random.Generator, *, size: tuple[int, int] = (400, 300)
) -> list[tuple[str, Image.Image]]:
    """``n`` low-texture images (sky, wall, backdrop, fog), all different from each other.

    Each is a smooth field: a two-colour gradient along its own direction (directions are
    spread over the half circle so no two flats share one) plus a faint low-frequency shading
    and faint sensor noise. Local texture is nearly nil, but the large-scale layout differs.
    """
    kinds = ("sky", "wall", "backdrop", "fog")
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    xx, yy = xx / width - 0.5, yy / height - 0.5
    out: list[tuple[str, Image.Image]] = []
    offset = float(rng.uniform(0, math.pi / max(n, 1)))
    for i in range(n):
        kind = kinds[i % len(kinds)]
        angle = offset + math.pi * i / max(n, 1)
        ramp = xx * math.cos(angle) + yy * math.sin(angle)
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        shade = _low_frequency_field(xx, yy, rng)
        top, bottom = _flat_colours(kind, rng)
        field = top[None, None, :] * (1 - ramp[..., None]) + bottom[None, None, :] * ramp[..., None]
        field = field + 12.0 * shade[..., None] + rng.normal(0, 1.5, size=field.shape)
        pixels = np.clip(np.rint(field), 0, 255).astype(np.uint8)
        out.append((f"flat-{kind}-{i:02d}", Image.fromarray(pixels, "RGB")))
    return out


def _low_frequency_field(xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A smooth random shading in [-1, 1]: a few cosines of one to two cycles per image."""
    field = np.zeros_like(xx)
    for _ in range(3):
        cycles, direction, phase = (
            rng.uniform(0.5, 2.0),
            rng.uniform(0, math.pi),
            rng.uniform(0, 2 * math.pi),
        )
        fx, fy = cycles * math.cos(direction), cycles * math.sin(direction)
        field += np.cos(2 * math.pi * (fx * xx + fy * yy) + phase)
    return field / 3.0


def _flat_colours(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The two gradient colours of a flat image of ``kind``."""
    base = {
        "sky": ((70, 130, 210), (190, 215, 240)),
        "wall": ((215, 205, 185), (180, 170, 150)),
        "backdrop": ((60, 60, 70), (150, 150, 160)),
        "fog": ((200, 205, 210), (150, 160, 170)),
    }[kind]
    jitter = rng.uniform(-15, 15, size=(2, 3))
    return np.asarray(base[0]) + jitter[0], np.asarray(base[1]) + jitter[1]


# --------------------------------------------------------------------------------------------
# Copy transformations


def resize(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Downscale to 40-90 % of the size, same aspect ratio (Lanczos)."""
    scale = float(rng.uniform(0.40, 0.90))
    w, h = image.size
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)


def resize_aspect(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rescale x and y independently by 0.6-1.0, the two factors differing by at least 15 %."""
    while True:
        sx, sy = (float(v) for v in rng.uniform(0.60, 1.00, size=2))
        if abs(sx - sy) / max(sx, sy) >= 0.15:
            break
    w, h = image.size
    return image.resize((max(1, round(w * sx)), max(1, round(h * sy))), Image.LANCZOS)


def jpeg35(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Re-encode as JPEG at quality 35 (the caller encodes it at 35 again: no change then)."""
    del rng  # deterministic
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=LOW_JPEG_QUALITY)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert(image.mode)


def crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Cut 0-10 % off each side, each side independently (at least 2 % off one side)."""
    fractions = rng.uniform(0.0, 0.10, size=4)  # left, top, right, bottom
    if fractions.max() < 0.02:
        fractions[int(rng.integers(0, 4))] = 0.02
    w, h = image.size
    left, top = math.floor(w * fractions[0]), math.floor(h * fractions[1])
    right, bottom = w - math.floor(w * fractions[2]), h - math.floor(h * fractions[3])
    return image.crop((left, top, right, bottom))


def rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate by 1-3 degrees either way, then crop to the largest upright rectangle inside.

    This is what a "straighten" tool in a photo editor produces: no black corners, the same
    aspect ratio, a few per cent of the border lost, the size not restored.
    """
    degrees = float(rng.uniform(1.0, 3.0)) * (1 if rng.random() < 0.5 else -1)
    rotated = image.rotate(degrees, resample=Image.BICUBIC, expand=False)
    w, h = image.size
    inner_w, inner_h = _inscribed_size(w, h, math.radians(abs(degrees)))
    left, top = (w - inner_w) // 2, (h - inner_h) // 2
    return rotated.crop((left, top, left + inner_w, top + inner_h))


def _inscribed_size(w: int, h: int, angle: float) -> tuple[int, int]:
    """Largest w:h rectangle, centred, inside a w×h image rotated by ``angle`` radians."""
    cos, sin = math.cos(angle), math.sin(angle)
    # A centred rectangle scaled by k fits when its rotated corners stay in the frame.
    k = min(w / (w * cos + h * sin), h / (w * sin + h * cos))
    return max(1, math.floor(w * k) - 1), max(1, math.floor(h * k) - 1)


def mirror(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Flip left-right (exact)."""
    del rng  # deterministic
    return ImageOps.mirror(image)


def brighter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness × 1.2-1.5."""
    return ImageEnhance.Brightness(image).enhance(float(rng.uniform(1.2, 1.5)))


def darker(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness × 0.55-0.8."""
    return ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.55, 0.80)))


def contrast_low(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Contrast × 0.5-0.75 (towards the mean grey)."""
    return ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.50, 0.75)))


def contrast_high(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Contrast × 1.3-1.7 (clipping at 0 and 255)."""
    return ImageEnhance.Contrast(image).enhance(float(rng.uniform(1.30, 1.70)))


def gamma(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gamma curve ``out = 255·(in/255)^γ`` with γ in 0.6-1.6, at least 0.15 away from 1."""
    while True:
        g = float(rng.uniform(0.6, 1.6))
        if abs(g - 1.0) >= 0.15:
            break
    table = [min(255, max(0, round(255 * (i / 255) ** g))) for i in range(256)]
    return image.point(table * len(image.getbands()))


def grayscale(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Convert to single-channel grayscale (mode ``L``; saved as a grayscale JPEG)."""
    del rng  # deterministic
    return image.convert("L")


def blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Slight Gaussian blur: sigma 1-2 px at 400 px width, proportional to the width."""
    sigma = float(rng.uniform(1.0, 2.0)) * image.width / 400
    return image.filter(ImageFilter.GaussianBlur(radius=sigma))


def watermark(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A "© blurset" watermark in a random corner covering 3-6 % of the area.

    White text in PIL's default (scalable) font on a half-transparent dark band, the way
    stock-photo and forum watermarks look.
    """
    w, h = image.size
    fraction = float(rng.uniform(0.03, 0.06))
    corner = int(rng.integers(0, 4))
    text = "© blurset"
    band_h = max(8, round(math.sqrt(fraction * w * h / 4.5)))  # band is ~4.5 × as wide as high
    band_w = min(w, round(fraction * w * h / band_h))
    font = ImageFont.load_default(size=max(6, round(band_h * 0.7)))
    left = 0 if corner in (0, 2) else w - band_w
    top = 0 if corner in (0, 1) else h - band_h
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    draw.rectangle((left, top, left + band_w - 1, top + band_h - 1), fill=(0, 0, 0, 110))
    draw.text(
        (left + band_w / 2, top + band_h / 2),
        text,
        font=font,
        fill=(255, 255, 255, 220),
        anchor="mm",
    )
    marked = Image.alpha_composite(image.convert("RGBA"), overlay)
    return marked.convert(image.mode)


# Transforms a combo may chain (never itself).
_CHAINABLE = (
    "resize",
    "resize_aspect",
    "jpeg35",
    "crop",
    "rotate",
    "mirror",
    "brighter",
    "darker",
    "contrast_low",
    "contrast_high",
    "gamma",
    "grayscale",
    "blur",
    "watermark",
)


def combo_steps(rng: np.random.Generator) -> tuple[str, ...]:
    """Draw the 2-3 different transforms a :func:`combo` chains, in order."""
    count = int(rng.integers(2, 4))
    picks = rng.choice(len(_CHAINABLE), size=count, replace=False)
    return tuple(_CHAINABLE[int(i)] for i in picks)


def chain(image: Image.Image, steps: Sequence[str], rng: np.random.Generator) -> Image.Image:
    """Apply the named transforms in order."""
    for step in steps:
        image = TRANSFORMS[step](image, rng)
    return image


def combo(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Chain 2-3 different random transforms (see :func:`combo_steps` to know which)."""
    return chain(image, combo_steps(rng), rng)


TRANSFORMS: dict[str, Transform] = {
    "resize": resize,
    "resize_aspect": resize_aspect,
    "jpeg35": jpeg35,
    "crop": crop,
    "rotate": rotate,
    "mirror": mirror,
    "brighter": brighter,
    "darker": darker,
    "contrast_low": contrast_low,
    "contrast_high": contrast_high,
    "gamma": gamma,
    "grayscale": grayscale,
    "blur": blur,
    "watermark": watermark,
    "combo": combo,
}


def jpeg_quality(transform: str) -> int:
    """The JPEG quality a copy made by ``transform`` is saved at: 35 for ``jpeg35``, else 90."""
    if transform not in TRANSFORMS:
        raise KeyError(f"unknown transform {transform!r}; known: {', '.join(TRANSFORMS)}")
    return LOW_JPEG_QUALITY if transform == "jpeg35" else DEFAULT_JPEG_QUALITY


def encode_jpeg(image: Image.Image, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """Encode as baseline JPEG (RGB or grayscale), deterministically."""
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
