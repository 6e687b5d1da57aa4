"""Perceptual hashes of one image, computed from a reduced-size decode (no Prefect, no I/O).

:func:`hash_opened` takes an image straight from ``Image.open`` and decodes only what the hashes
need: for JPEG, ``Image.draft`` asks libjpeg for its YCbCr planes, without colour conversion, at
a DCT scaling of 1/2 … 1/8 (the largest that keeps both sides ≥ 64), so a 400×300 photo is
decoded as 100×75 pixels; other formats are decoded whole (``benchmarks/hashing.py`` times it).
Then:

- EXIF orientation is applied to the small result (a 64×64 thumb is squashed to a square, so
  rotating the thumb equals squashing the rotated image), so a copy rotated by EXIF hashes like
  the upright one;
- any mode becomes 8-bit grey: luma for colour (the ITU-R 601 weights libjpeg uses for Y), alpha
  composited over white, 16-bit and 32-bit integer and float images scaled (not clipped) to 0-255;
- ``thumb``: a 64×64 uint8 grey thumbnail, aspect ratio ignored (area-averaged), kept in the
  catalog for dedup's verification step (``blurset.pipeline.stages.dedup.search``);
- ``chroma``: the colour of a colour image as an 8×8 grid of mean Cb and Cr (uint8, 128 = grey;
  ``None`` for a grey image): the grey thumb cannot tell two smooth images of different hue apart,
  and dedup's verification uses this grid for that;
- ``phash``: the 64-bit DCT perceptual hash (Zauner 2010, as in imagehash/imagededup) of the
  thumb: the 8×8 lowest frequencies of the 32×32 DCT of the thumb reduced 2×2, each bit set when
  its coefficient exceeds their median. Bit 63 (the most significant) is coefficient (0, 0), rows
  first, like imagehash's hex strings.

The catalog stores ``phash`` (16 hex digits), the thumb bytes and the chroma bytes;
:meth:`ImageHashes.from_stored` rebuilds the value from them (a catalog written before the chroma
existed has none: dedup then judges on grey alone).

A JPEG's DCT-scaled decode is a little sharper than area averaging, so one picture saved as JPEG
and as PNG gets thumbs a few grey levels and hashes a few bits apart; dedup's search radius and
verification absorb that.

Decoding errors (truncated or corrupt data) propagate as Pillow raises them (``OSError``,
``SyntaxError``, ``ValueError``): the caller quarantines the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

THUMB_SIDE = 64  # the thumb is THUMB_SIDE × THUMB_SIDE grey pixels, aspect ratio ignored
CHROMA_SIDE = 8  # the chroma grid is CHROMA_SIDE × CHROMA_SIDE × (Cb, Cr)
HASH_SIDE = 8  # phash bits: HASH_SIDE × HASH_SIDE lowest DCT frequencies
DCT_SIDE = 32  # phash's DCT runs over the thumb reduced to DCT_SIDE × DCT_SIDE

_EXIF_ORIENTATION = 0x0112
# EXIF orientation → the transpose that shows the image upright (as ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I;16S"})
_ALPHA = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = 255


@dataclass(frozen=True, eq=False)
class ImageHashes:
    """The hashes of one image: a 64×64 grey ``thumb`` (uint8), the 64-bit ``phash`` and, for a
    colour image, an 8×8 ``chroma`` grid of (Cb, Cr) (uint8, 128 = no colour)."""

    thumb: np.ndarray  # (THUMB_SIDE, THUMB_SIDE) uint8, read-only
    phash: int  # 0 ≤ phash < 2**64
    chroma: np.ndarray | None = None  # (CHROMA_SIDE, CHROMA_SIDE, 2) uint8, or None (grey)

    def __post_init__(self) -> None:
        t = self.thumb
        if t.dtype != np.uint8 or t.ndim != 2 or t.shape[0] != t.shape[1]:
            raise ValueError(f"thumb must be a square 2-D uint8 array, got {t.dtype} {t.shape}")
        if not 0 <= self.phash < 1 << 64:
            raise ValueError(f"phash must be a 64-bit unsigned int, got {self.phash!r}")
        c = self.chroma
        if c is not None and (c.dtype != np.uint8 or c.shape != (CHROMA_SIDE, CHROMA_SIDE, 2)):
            raise ValueError(f"chroma must be a ({CHROMA_SIDE}, {CHROMA_SIDE}, 2) uint8 array, "
                             f"got {c.dtype} {c.shape}")

    def thumb_bytes(self) -> bytes:
        """The thumb as stored in the catalog: side × side bytes, rows first."""
        return self.thumb.tobytes()

    def chroma_bytes(self) -> bytes | None:
        """The chroma grid as stored in the catalog (rows, then columns, then Cb/Cr), or None."""
        return None if self.chroma is None else self.chroma.tobytes()

    @classmethod
    def from_stored(cls, phash: int, thumb: bytes, chroma: bytes | None = None) -> ImageHashes:
        """Rebuild from the catalog's columns (the side is the square root of the length)."""
        side = math.isqrt(len(thumb))
        if side == 0 or side * side != len(thumb):
            raise ValueError(f"stored thumb has {len(thumb)} bytes, not a square number "
                             f"(expected {THUMB_SIDE * THUMB_SIDE} for a {THUMB_SIDE}² thumb)")
        arr = np.frombuffer(thumb, dtype=np.uint8).reshape(side, side)
        grid = None
        if chroma is not None:
            if len(chroma) != CHROMA_SIDE * CHROMA_SIDE * 2:
                raise ValueError(f"stored chroma has {len(chroma)} bytes, expected "
                                 f"{CHROMA_SIDE * CHROMA_SIDE * 2}")
            grid = np.frombuffer(chroma, dtype=np.uint8).reshape(CHROMA_SIDE, CHROMA_SIDE, 2)
        return cls(thumb=arr, phash=int(phash), chroma=grid)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageHashes):
            return NotImplemented
        return (self.phash == other.phash and np.array_equal(self.thumb, other.thumb)
                and self.chroma_bytes() == other.chroma_bytes())

    def __hash__(self) -> int:
        return hash((self.phash, self.thumb_bytes(), self.chroma_bytes()))


def hash_opened(im: Image.Image) -> ImageHashes:
    """Hash an image freshly returned by ``Image.open`` (not loaded yet), decoding as little as
    the hashes need. Pillow's decoding errors propagate unchanged."""
    orientation = _orientation(im)
    size = (THUMB_SIDE, THUMB_SIDE)
    if im.format == "JPEG" and im.mode == "RGB":
        # The YCbCr planes, DCT-scaled so that both sides stay ≥ THUMB_SIDE: Y is the luma a
        # grey decode gives, Cb and Cr the colour, and no colour conversion is run.
        im.draft("YCbCr", size)
        ycc = im.convert("YCbCr") if im.mode != "YCbCr" else im
        small = ycc.getchannel(0).resize(size, Image.Resampling.BOX)
        colour: Image.Image | None = ycc.resize((CHROMA_SIDE, CHROMA_SIDE), Image.Resampling.BOX)
    else:
        im.draft("L", size)  # a grey JPEG: luma only; a no-op elsewhere
        small = _grey_thumb_image(im)
        colour = _colour_grid(im)
    transpose = _ORIENTATION_TRANSPOSE.get(orientation)
    if transpose is not None:
        small = small.transpose(transpose)
        colour = colour.transpose(transpose) if colour is not None else None
    thumb = np.frombuffer(small.tobytes(), dtype=np.uint8).reshape(THUMB_SIDE, THUMB_SIDE)
    chroma = None
    if colour is not None:
        ycc_grid = np.asarray(colour, dtype=np.uint8).reshape(CHROMA_SIDE, CHROMA_SIDE, 3)
        chroma = np.ascontiguousarray(ycc_grid[:, :, 1:])
    return ImageHashes(thumb=thumb, phash=phash_of_thumb(thumb), chroma=chroma)


_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"}) | _SIXTEEN_BIT


def _colour_grid(im: Image.Image) -> Image.Image | None:
    """The image as a CHROMA_SIDE² YCbCr grid (alpha over white), or None for a grey mode."""
    mode = im.mode
    if mode in _GREY_MODES or mode == "LAB":  # Pillow has no LAB → RGB conversion
        return None
    if mode in _ALPHA or "transparency" in im.info:
        rgba = im.convert("RGBA")
        back = Image.new("RGBA", rgba.size, (_WHITE, _WHITE, _WHITE, 255))
        rgb = Image.alpha_composite(back, rgba).convert("RGB")
    else:
        rgb = im.convert("RGB")
    return rgb.convert("YCbCr").resize((CHROMA_SIDE, CHROMA_SIDE), Image.Resampling.BOX)


def phash_of_thumb(thumb: np.ndarray) -> int:
    """The 64-bit DCT perceptual hash of a square grey thumb (any side divisible by 32)."""
    basis = _phash_basis(thumb.shape[0])  # (8, side)
    coeffs = (basis @ thumb.astype(np.float32) @ basis.T).ravel()  # (64,) lowest frequencies
    ranked = np.sort(coeffs)  # the median of 64 values, without np.median's overhead
    median = 0.5 * (ranked[31] + ranked[32])
    return int.from_bytes(np.packbits(coeffs > median).tobytes(), "big")


def phash_hex(phash: int) -> str:
    """The catalog's spelling of a phash: 16 lower-case hex digits."""
    return f"{phash:016x}"


@cache
def _phash_basis(side: int) -> np.ndarray:
    """(HASH_SIDE, side) float32: the 2×2 … block mean down to DCT_SIDE, then the DCT-II rows.

    ``basis @ X @ basis.T`` is the top-left 8×8 of the orthonormal 32×32 DCT of ``X`` reduced
    to 32×32 by block means (what ``cv2.dct`` of the reduced image gives), in one small product.
    """
    if side % DCT_SIDE:
        raise ValueError(f"thumb side {side} is not a multiple of {DCT_SIDE}")
    n = DCT_SIDE
    k = np.arange(HASH_SIDE)[:, None]
    x = np.arange(n)[None, :]
    dct = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    dct[0] /= np.sqrt(2.0)
    block = side // n
    return (np.repeat(dct, block, axis=1) / block).astype(np.float32)


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent or unreadable)."""
    if im.format != "TIFF" and "exif" not in im.info:
        # No EXIF in the header. (Image.getexif() would load a whole PNG looking for a late eXIf
        # chunk, and a failed load leaves a half-decoded image that no longer raises.)
        return 1
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError):
        return 1
    return value if 1 <= value <= 8 else 1


def _grey_thumb_image(im: Image.Image) -> Image.Image:
    """Decode ``im`` and return its THUMB_SIDE² 8-bit grey thumbnail (mode L)."""
    size = (THUMB_SIDE, THUMB_SIDE)
    mode = im.mode
    if mode == "L":
        return im.resize(size, Image.Resampling.BOX)
    if mode in ("RGB", "1", "P") and not (mode == "P" and "transparency" in im.info):
        return im.convert("L").resize(size, Image.Resampling.BOX)
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        return _numeric_thumb(im)
    if mode in _ALPHA or "transparency" in im.info:
        rgba = (im.convert("LA") if mode == "La" else im).convert("RGBA")
        back = Image.new("RGBA", rgba.size, (_WHITE, _WHITE, _WHITE, 255))
        return Image.alpha_composite(back, rgba).convert("L").resize(size, Image.Resampling.BOX)
    if mode == "LAB":
        return im.getchannel("L").resize(size, Image.Resampling.BOX)
    # CMYK, YCbCr, HSV, …: through RGB, whose luma is what an RGB copy would give.
    return im.convert("RGB").convert("L").resize(size, Image.Resampling.BOX)


def _numeric_thumb(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images: scale to 0-255 in float, then area-resize.

    16-bit data is divided by 257 (65535 → 255, so a 16-bit copy of an 8-bit image hashes like
    it); integer or float data already within 0-255 is kept, float data within 0-1 is multiplied
    by 255, anything else is stretched min-max. Nothing is clipped before the resize.
    """
    arr = np.asarray(im)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    values = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if values.ndim != 2:
        raise ValueError(f"unexpected {im.mode} image data of shape {values.shape}")
    lo, hi = float(values.min()), float(values.max())
    if im.mode in _SIXTEEN_BIT:
        values = values / 257.0
    elif im.mode == "F" and lo >= 0.0 and hi <= 1.0:
        values = values * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif lo >= 0.0 and hi <= 65535.0:
        values = values / 257.0
    else:
        values = (values - lo) * (255.0 / max(hi - lo, 1e-12))
    small = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32)).resize(
        (THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX)
    pixels = np.clip(np.rint(np.asarray(small)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)
