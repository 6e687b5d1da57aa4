"""Hashing throughput on one core: ``Image.open`` + ``blurset.pipeline.stages.hashing.hash_opened`` against
imagededup's PHash, imagehash's phash, and the limit of decoding alone.

    python benchmarks/hashing.py [--images DIR] [--limit N] [--repeats R]

Every method reads the same JPEG files from disk (page-cached after a warm-up pass), one image
at a time, on one core: the process is pinned to CPU 0 and BLAS/OpenMP/OpenCV/torch threads are
set to 1 before those libraries load. "decode-only" is ``Image.open`` + the same ``draft`` request
``hash_opened`` makes + ``load()``: the cost of decoding what the hash needs and nothing else.
Each method runs ``--repeats`` times, interleaved; its best pass is reported.

Without ``--images``, ~300 JPEGs of ~400×300 are cut from ``blurset.pipeline.demo.transforms.photo_pool()``
into a temporary folder. The last line is machine-readable:
``RESULT ours_img_s=… imagededup_img_s=… imagehash_img_s=… decode_only_img_s=… vs_imagededup=…
vs_decode=…`` (``vs_decode`` = decode-only throughput / ours, so ≤ 1.5 is the target).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def single_core() -> None:
    """Pin to one CPU and one thread per library (call before numpy, cv2 or torch load)."""
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def make_jpegs(dest: Path, count: int = 300, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of about 400×300 (quality 90) cut from the package-shipped photos."""
    import numpy as np
    from PIL import Image

    from blurset.pipeline.demo.transforms import photo_pool

    rng = np.random.default_rng(seed)
    pool = photo_pool()
    paths = []
    for i in range(count):
        name, photo = pool[i % len(pool)]
        w, h = photo.size
        cw = min(w, h * 4 // 3, int(rng.integers(300, 640)))  # a 4:3 window, resized
        ch = cw * 3 // 4
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        tile = photo.crop((x, y, x + cw, y + ch)).resize((400, 300), Image.Resampling.LANCZOS)
        path = dest / f"{i:04d}-{name}.jpg"
        tile.save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def methods() -> dict[str, Callable[[Path], object]]:
    """Name → one-image function, all on a path."""
    import imagehash
    from imagededup.methods import PHash
    from PIL import Image

    from blurset.pipeline.stages.hashing import THUMB_SIDE, hash_opened

    dedup_phash = PHash(verbose=False)

    def ours(path: Path) -> object:
        with Image.open(path) as im:
            return hash_opened(im)

    def decode_only(path: Path) -> object:
        with Image.open(path) as im:
            im.draft("L", (THUMB_SIDE, THUMB_SIDE))
            im.load()
            return im.size

    def imagededup(path: Path) -> object:
        return dedup_phash.encode_image(image_file=path)

    def imagehash_phash(path: Path) -> object:
        with Image.open(path) as im:
            return imagehash.phash(im)

    return {"ours": ours, "imagededup": imagededup, "imagehash": imagehash_phash,
            "decode_only": decode_only}


def time_pass(fn: Callable[[Path], object], paths: Sequence[Path]) -> float:
    start = time.perf_counter()
    for p in paths:
        fn(p)
    return time.perf_counter() - start


def run(paths: Sequence[Path], repeats: int) -> dict[str, float]:
    """Images per second of each method (best of ``repeats`` interleaved passes)."""
    import cv2

    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    fns = methods()
    for fn in fns.values():  # warm-up: page cache, lazy imports, first-call costs
        time_pass(fn, paths[: min(20, len(paths))])
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], time_pass(fn, paths))
    return {name: len(paths) / t for name, t in best.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, help="folder of JPEGs (default: generate ~300)")
    parser.add_argument("--limit", type=int, default=None, help="use at most N images")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per method")
    args = parser.parse_args(argv)
    single_core()
    with tempfile.TemporaryDirectory(prefix="blurset-hashbench-") as tmp:
        if args.images is None:
            paths = make_jpegs(Path(tmp))
            origin = "generated JPEGs"
        else:
            paths = sorted(p for p in args.images.rglob("*")
                           if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file())
            if not paths:
                parser.error(f"no .jpg/.jpeg files under {args.images}")
            origin = f"JPEGs from {args.images}"
        paths = paths[: args.limit] if args.limit else paths
        from PIL import Image

        sizes = [Image.open(p).size for p in paths[:50]]
        mean_w = sum(s[0] for s in sizes) / len(sizes)
        mean_h = sum(s[1] for s in sizes) / len(sizes)
        rates = run(paths, args.repeats)

    print(f"{len(paths)} {origin}, mean size ≈ {mean_w:.0f}×{mean_h:.0f}, one core, "
          f"best of {args.repeats} passes")
    print(f"{'method':<14}{'img/s':>10}{'ms/img':>10}{'ours is ×':>12}")
    for name, rate in rates.items():
        print(f"{name:<14}{rate:>10.0f}{1000 / rate:>10.3f}{rates['ours'] / rate:>12.2f}")
    vs_dedup = rates["ours"] / rates["imagededup"]
    vs_decode = rates["decode_only"] / rates["ours"]
    print(f"ours vs imagededup PHash: {vs_dedup:.2f}× (target ≥ 3); "
          f"decode-only vs ours: {vs_decode:.2f}× (target ≤ 1.5)")
    print(f"RESULT ours_img_s={rates['ours']:.0f} imagededup_img_s={rates['imagededup']:.0f} "
          f"imagehash_img_s={rates['imagehash']:.0f} decode_only_img_s={rates['decode_only']:.0f} "
          f"vs_imagededup={vs_dedup:.2f} vs_decode={vs_decode:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
