"""Build the real-photo dedup benchmark set from photos on this machine (no download, no commit).

    python benchmarks/realphotos.py DEST [--photos DIR] [--seed S]

Photos: Debian wallpaper photographs unpacked by ``scripts/fetch_photos.sh`` (default
``~/.cache/blurset/photos``; each package keeps its own licence, so the set is built, never
shipped) and scikit-image's photos. Each photo is scaled to a 1,400 px long side and cut into
dataset-sized tiles (256-480 px, overlapping each other by less than a quarter): look-alike
crops of one photo. Written to DEST:

- ``reference/*.jpg``: tiles of three kinds, ``textured`` photos, ``smooth`` low-texture photos
  (sky, bokeh, fog, water: the tiles whose fine band is nearly empty) and ``regional_blur``
  photos (a textured tile with a soft region blurred by a defocus disk or a motion kernel);
- ``candidate/copy/*``: every reference through every edit of :data:`EDITS` (the sample bench's
  :data:`blurset.pipeline.demo.transforms.TRANSFORMS` plus a further Gaussian blur of σ 1-2 px,
  brightness +20 % and a JPEG re-encode);
- ``candidate/lookalike/*.jpg``: the other tiles of the same photos;
- ``candidate/smooth/*.jpg``: distinct smooth images: random 8×8 colour fields upscaled to 96×72,
  low-frequency colour fields with gradients (160-400 px), skies and fog;
- ``truth.json``, read by ``benchmarks/dedup_quality.py --set real``: ``references`` (path,
  photo, kind), ``images`` (path, photo, role), ``planted_pairs`` (candidate, reference,
  transform, kind) and an empty ``candidate_pairs``. Two files with the same ``photo`` show
  the same picture.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from blurset.pipeline.demo.smooth import SMOOTH_MAKERS
from blurset.pipeline.demo.transforms import (
    TRANSFORMS,
    distinct_crops,
    encode_jpeg,
    jpeg_quality,
    photo_pool,
)

# Photographs only (no drawings, logos or abstract art), by package folder.
PHOTO_FILES: dict[str, tuple[str, ...]] = {
    "lomiri-wallpapers-16.04": (
        "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
        "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg",
        "aitzgorri_by_Aitzol_Berasategi.jpg", "analogpattern_by_Peter_Nerlich.jpg",
        "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg",
        "greentock_by_Peter_Nerlich.jpg", "life_by_Aitzol_Berasategi.jpg",
        "picosdeeuropa_by_Aitzol_Berasategi.jpg", "seeding_by_Clements_Engelhardt.jpg",
        "sunset_by_Aitzol_Berasategi.jpg", "umang_by_Abhishek_Mudgal.jpg",
    ),
    "lomiri-wallpapers-20.04": ("Kleiber_by_Lukas_Baubkus.jpg", "Infinite-Sea_by_Aury88.jpg"),
    "mate-backgrounds": (
        "Aqua.jpg", "Blinds.jpg", "Dune.jpg", "FreshFlower.jpg", "Garden.jpg", "GreenMeadow.jpg",
        "LadyBird.jpg", "RainDrops.jpg", "Storm.jpg", "TwoWings.jpg", "Wood.jpg",
        "YellowFlower.jpg",
    ),
}
LONG_SIDE = 1400  # photos are scaled to this long side before they are cut into tiles
REFERENCE_QUALITY = 92
COUNTS = {"textured": 30, "smooth": 25, "regional_blur": 20}  # references of each kind
SMOOTH_DISTRACTORS = {"field8": 600, "lowfreq": 600, "sky": 400, "fog": 400}
SMOOTH_TEXTURE = 0.75  # fine-band std (grey levels, 64² thumb) under which a tile is "smooth"
TEXTURED_TEXTURE = 2.0  # ... and over which it is "textured"


def default_photos_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "blurset" / "photos"


def load_photos(photos_dir: Path) -> list[tuple[str, Image.Image]]:
    """The listed wallpaper photos found under ``photos_dir`` (scaled), then scikit-image's."""
    pool: list[tuple[str, Image.Image]] = []
    for package, files in PHOTO_FILES.items():
        for name in files:
            path = photos_dir / package / name
            if not path.is_file():
                continue
            with Image.open(path) as im:
                im.draft("RGB", (LONG_SIDE, LONG_SIDE))
                im = im.convert("RGB")
                scale = LONG_SIDE / max(im.size)
                im = im.resize((round(im.width * scale), round(im.height * scale)),
                               Image.Resampling.LANCZOS)
            pool.append((name.split("_by_")[0].rsplit(".", 1)[0], im))
    if len(pool) < 10:
        raise FileNotFoundError(
            f"only {len(pool)} of the benchmark's wallpaper photos are under {photos_dir}; "
            f"run scripts/fetch_photos.sh {photos_dir} first (apt-get download, no commit)")
    return pool + photo_pool()


# --------------------------------------------------------------------------------------------
# Edits: the sample bench's transforms, and the ones real blur datasets add


def blur_more(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A further Gaussian blur of σ 1-2 px (absolute, whatever the size)."""
    return image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(1.0, 2.0))))


def brighter20(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness +20 % (×1.2, clipping at 255)."""
    del rng
    return ImageEnhance.Brightness(image).enhance(1.2)


def reencode(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Decode and re-encode as JPEG at quality 60-80 (saved at 90 again by the caller)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(60, 81)))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert(image.mode)


EDITS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    **TRANSFORMS, "blur_more": blur_more, "brighter20": brighter20, "reencode": reencode,
}


def edit_quality(edit: str) -> int:
    return jpeg_quality(edit) if edit in TRANSFORMS else 90


# --------------------------------------------------------------------------------------------
# Regional blur: a soft region of a sharp photo blurred, as in CUHK and SZU-BD


def _soft_region(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 in [0, 1]: a smooth random blob covering 30-70 % of the image."""
    w, h = size
    noise = cv2.resize(rng.normal(size=(4, 4)).astype(np.float32), (w, h),
                       interpolation=cv2.INTER_CUBIC)
    level = np.quantile(noise, float(rng.uniform(0.3, 0.7)))
    hard = (noise > level).astype(np.float32)
    return cv2.GaussianBlur(hard, (0, 0), max(2.0, 0.02 * max(w, h)))


def _disk(radius: float) -> np.ndarray:
    half = math.ceil(radius)
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    k = np.clip(radius + 0.5 - np.hypot(xx, yy), 0.0, 1.0)
    return k / k.sum()


def _line(length: int, degrees: float) -> np.ndarray:
    size = length + 2
    k = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    dx = math.cos(math.radians(degrees)) * (length - 1) / 2
    dy = math.sin(math.radians(degrees)) * (length - 1) / 2
    cv2.line(k, (round((c - dx) * 16), round((c - dy) * 16)),
             (round((c + dx) * 16), round((c + dy) * 16)), 1.0, 1, cv2.LINE_AA, 4)
    return k / k.sum()


def regional_blur(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """Blur a soft region with a defocus disk (radius 3-8 px) or a motion line (9-25 px)."""
    if rng.random() < 0.5:
        kernel, kind = _disk(float(rng.uniform(3.0, 8.0))), "defocus"
    else:
        kernel, kind = _line(int(rng.integers(9, 26)), float(rng.uniform(0, 180))), "motion"
    sharp = np.asarray(image, dtype=np.float32)
    blurred = cv2.filter2D(sharp, -1, kernel, borderType=cv2.BORDER_REFLECT)
    alpha = _soft_region(image.size, rng)[..., None]
    out = alpha * blurred + (1 - alpha) * sharp
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB"), kind


# --------------------------------------------------------------------------------------------
# Distinct smooth images


# --------------------------------------------------------------------------------------------
# The set


def fine_texture(image: Image.Image) -> float:
    """Fine-band std of the 64² grey thumb (grey levels), as dedup's verifier measures it."""
    grey = np.asarray(image.convert("L").resize((64, 64), Image.Resampling.BOX), np.float32)
    return float((cv2.GaussianBlur(grey, (0, 0), 0.7) - cv2.GaussianBlur(grey, (0, 0), 2.0)).std())


def _spread(items: Sequence[tuple[str, Image.Image]], n: int,
            rng: np.random.Generator) -> list[tuple[str, Image.Image]]:
    """Up to ``n`` items, at most a few per photo, drawn round-robin over the photos."""
    by_photo: dict[str, list[tuple[str, Image.Image]]] = {}
    for item in items:
        by_photo.setdefault(item[0].split("@")[0], []).append(item)
    queues = [list(v) for v in by_photo.values()]
    for q in queues:
        rng.shuffle(q)  # type: ignore[arg-type]
    rng.shuffle(queues)  # type: ignore[arg-type]
    out: list[tuple[str, Image.Image]] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop())
    return out


def build(dest: Path, photos_dir: Path | None = None, seed: int = 0) -> dict:
    """Write the set to ``dest`` (must be empty or absent); returns the truth it wrote."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty; give a new folder for the benchmark set")
    rng = np.random.default_rng(seed)
    pool = load_photos(photos_dir or default_photos_dir())
    tiles = distinct_crops(pool, np.random.default_rng(seed))
    texture = {name: fine_texture(im) for name, im in tiles}
    smooth = [t for t in tiles if texture[t[0]] < SMOOTH_TEXTURE]
    textured = [t for t in tiles if texture[t[0]] >= TEXTURED_TEXTURE]
    refs: list[tuple[str, Image.Image, str]] = []
    chosen: set[str] = set()
    for name, im in _spread(smooth, COUNTS["smooth"], rng):
        refs.append((name, im, "smooth"))
        chosen.add(name)
    picks = _spread(textured, COUNTS["textured"] + COUNTS["regional_blur"], rng)
    for i, (name, im) in enumerate(picks):
        chosen.add(name)
        if i < COUNTS["textured"]:
            refs.append((name, im, "textured"))
        else:
            blurred, how = regional_blur(im, rng)
            refs.append((f"{name}#{how}", blurred, "regional_blur"))

    truth: dict = {"seed": seed, "references": [], "images": [], "planted_pairs": [],
                   "candidate_pairs": []}

    def write(rel: str, data: bytes) -> str:
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return rel

    def slug(name: str) -> str:
        return "".join(c if c.isalnum() else "_" for c in name)

    for i, (name, im, kind) in enumerate(refs):
        rel = write(f"reference/{i:03d}_{slug(name)}.jpg", encode_jpeg(im, REFERENCE_QUALITY))
        truth["references"].append({"path": rel, "photo": name, "kind": kind})
        with Image.open(dest / rel) as stored:  # edits start from the stored reference
            base = stored.convert("RGB")
        for edit, fn in EDITS.items():
            copy = fn(base, rng)
            crel = write(f"candidate/copy/{i:03d}_{edit}.jpg",
                         encode_jpeg(copy, edit_quality(edit)))
            truth["images"].append({"path": crel, "photo": name, "role": "planted"})
            truth["planted_pairs"].append({"candidate": crel, "reference": rel,
                                           "transform": edit, "kind": kind})
    for name, im in tiles:
        if name not in chosen:
            rel = write(f"candidate/lookalike/{slug(name)}.jpg", encode_jpeg(im, 90))
            truth["images"].append({"path": rel, "photo": name, "role": "lookalike"})
    for kind, n in SMOOTH_DISTRACTORS.items():
        for j in range(n):
            rel = write(f"candidate/smooth/{kind}_{j:04d}.jpg",
                        encode_jpeg(SMOOTH_MAKERS[kind](rng), 90))
            truth["images"].append({"path": rel, "photo": f"{kind}-{j}", "role": "smooth"})
    (dest / "truth.json").write_text(json.dumps(truth, indent=1), encoding="utf-8")
    return truth


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--photos", type=Path, default=None,
                        help="folder written by scripts/fetch_photos.sh (default: the cache)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    truth = build(args.dest, args.photos, args.seed)
    seconds = time.perf_counter() - start
    kinds: dict[str, int] = {}
    for r in truth["references"]:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    print(f"{args.dest}: {len(truth['references'])} references ({kinds}), "
          f"{len(truth['images'])} candidates, {len(truth['planted_pairs'])} planted pairs")
    # The set itself, not a claim: benchmarks/dedup_quality.py --set real scores it against
    # imagededup in one run.
    roles: dict[str, int] = {}
    for im in truth["images"]:
        roles[im["role"]] = roles.get(im["role"], 0) + 1
    print(f"RESULT set=real seed={args.seed} references={len(truth['references'])} "
          f"candidates={len(truth['images'])} planted_pairs={len(truth['planted_pairs'])} "
          f"lookalikes={roles.get('lookalike', 0)} distinct_smooth={roles.get('smooth', 0)} "
          f"seconds={seconds:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
