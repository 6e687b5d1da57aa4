"""Brush RLE speed: ``blurset.annotation.rle`` against Label Studio SDK's ``converter.brush``.

    python benchmarks/rle.py [--mask PNG] [--repeats R]

One 640×480-ish blur mask, both directions, measured separately:

- encode: 0/255 mask → ``value.rle``: ours ``rle.encode`` vs the SDK's ``mask2rle``;
- decode: ``value.rle`` → mask: ours ``rle.decode`` vs the SDK's ``decode_rle`` + channel 3, as
  its export converter does (``decode_from_annotation``); also flat RGBA bytes both ways
  (``rle.decode_rgba`` vs ``decode_rle``), for information.

The mask is ``--mask`` (any PNG, read as grey, > 127 = blurred), else the bundled CUHK mask
``pipeline/sample_data/cuhk_masks/out_of_focus0218.png`` (640×480), else a synthetic one (a sharp
subject on a blurred background, seeded). Outputs are checked equal before timing. Each method
runs ``--repeats`` interleaved rounds of enough calls for ~50 ms; its best round gives ms/call.
The last line is machine-readable: ``RESULT ours_encode_ms=… sdk_encode_ms=… encode_speedup=…
ours_decode_ms=… sdk_decode_ms=… decode_speedup=…`` (target: both speedups ≥ 10).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

BUNDLED_MASK = "out_of_focus0218.png"


def synthetic_mask(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A CUHK-like defocus mask: blurred background (255) around a few sharp elliptic blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    sharp = np.zeros((height, width), dtype=bool)
    for _ in range(4):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        ry, rx = rng.uniform(0.1, 0.3) * height, rng.uniform(0.05, 0.2) * width
        sharp |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return np.where(sharp, 0, 255).astype(np.uint8)


def load_mask(path: Path | None) -> tuple[np.ndarray, str]:
    """The benchmark mask (uint8 0/255) and where it came from."""
    if path is None:
        bundled = resources.files("blurset.pipeline.demo").joinpath("sample_data", "cuhk_masks", BUNDLED_MASK)
        if not bundled.is_file():
            return synthetic_mask(), "synthetic (bundled CUHK mask not found)"
        source, label = bundled.open("rb"), f"bundled CUHK {BUNDLED_MASK}"
    else:
        source, label = path.open("rb"), str(path)
    with source, Image.open(source) as im:
        grey = np.asarray(im.convert("L"))
    return np.where(grey > 127, 255, 0).astype(np.uint8), label


def best_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best-round milliseconds per call of each function (rounds interleaved)."""
    calls = {}
    for name, fn in fns.items():  # warm-up and calibration: ~50 ms per round
        start = time.perf_counter()
        fn()
        calls[name] = max(1, int(0.05 / max(time.perf_counter() - start, 1e-6)))
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / calls[name] * 1e3)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mask", type=Path, help="mask PNG (default: bundled CUHK mask)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per method")
    args = parser.parse_args(argv)

    from label_studio_sdk.converter import brush

    from blurset.annotation import rle

    mask, origin = load_mask(args.mask)
    h, w = mask.shape
    ours_code, sdk_code = rle.encode(mask), brush.mask2rle(mask)
    identical = ours_code == sdk_code

    def sdk_decode() -> np.ndarray:
        return brush.decode_rle(sdk_code).reshape(h, w, 4)[:, :, 3]

    if not np.array_equal(rle.decode(sdk_code, h, w), mask) or not np.array_equal(
            sdk_decode(), mask):
        raise SystemExit("decoded masks differ: fix annotation/rle.py before timing it")
    if not np.array_equal(rle.decode_rgba(ours_code), brush.decode_rle(sdk_code)):
        raise SystemExit("decoded RGBA bytes differ: fix annotation/rle.py before timing it")

    ms = best_ms({
        "ours_encode": lambda: rle.encode(mask),
        "sdk_encode": lambda: brush.mask2rle(mask),
        "ours_decode": lambda: rle.decode(sdk_code, h, w),
        "sdk_decode": sdk_decode,
        "ours_rgba": lambda: rle.decode_rgba(sdk_code),
        "sdk_rgba": lambda: brush.decode_rle(sdk_code),
    }, args.repeats)

    runs = int(np.count_nonzero(mask.ravel()[1:] != mask.ravel()[:-1])) + 1
    print(f"mask: {origin}, {w}×{h}, {np.mean(mask > 0):.1%} blurred, {runs} runs; "
          f"RLE {len(sdk_code)} bytes; ours == SDK byte for byte: {identical}")
    print(f"best of {args.repeats} rounds, ms per call")
    print(f"{'direction':<34}{'ours':>9}{'SDK':>10}{'speedup':>10}")
    rows = [("encode  mask → rle", "encode"), ("decode  rle → mask (alpha)", "decode"),
            ("decode  rle → RGBA bytes", "rgba")]
    for label, key in rows:
        ours, sdk = ms[f"ours_{key}"], ms[f"sdk_{key}"]
        print(f"{label:<34}{ours:>9.3f}{sdk:>10.3f}{sdk / ours:>9.1f}×")
    enc, dec = ms["sdk_encode"] / ms["ours_encode"], ms["sdk_decode"] / ms["ours_decode"]
    print(f"RESULT ours_encode_ms={ms['ours_encode']:.3f} sdk_encode_ms={ms['sdk_encode']:.3f} "
          f"encode_speedup={enc:.1f} ours_decode_ms={ms['ours_decode']:.3f} "
          f"sdk_decode_ms={ms['sdk_decode']:.3f} decode_speedup={dec:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
