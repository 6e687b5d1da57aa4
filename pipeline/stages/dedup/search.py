"""Near-duplicate search over perceptual hashes: hash variants of each image, faiss range search.

Pure functions over 64×64 grey thumbs and their 64-bit DCT ``phash``
(:mod:`blurset.pipeline.stages.hashing`); no catalog. :func:`search_pairs` finds every pair of
images whose hashes (of some window, mirror or band of one) lie within ``threshold`` bits, with
the initial alignments those hashes imply (:func:`starts`) for
:mod:`blurset.pipeline.stages.dedup.verify`.

From each thumb, :func:`variant_hashes` derives 162 phashes: the DCT hash of 81 windows (each side
cut by 0, 5 or 10 %, independently) of the thumb and of its mirror image; window resampling and
the DCT are linear and separable, so all variants of all thumbs come from two small matrix
products. :func:`band_hashes` adds two hashes per image, of the thumb without its top or its
bottom :data:`BAND_CUT` (a corner watermark's band). Lookups are exhaustive range searches in a
faiss ``IndexBinaryFlat`` (SIMD popcount): at radius 12 of 64 bits multi-index hashing and numpy
brute force were slower at every size measured (``benchmarks/dedup_search.py``). What each
variant finds: ``docs/dedup.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import cv2
import faiss
import numpy as np

from blurset.pipeline.stages.hashing import DCT_SIDE, HASH_SIDE, THUMB_SIDE, ImageHashes

# Hamming radius of the search (see docs/dedup.md for how it was chosen).
DEFAULT_THRESHOLD = 12

CROP_STEPS = (0.0, 0.05, 0.10)  # fractions cut from each side for the variant windows
BAND_CUT = 0.16  # band hashes leave out the top or the bottom 16 % (a corner watermark's band)
_QUERY_BLOCK = 1 << 16  # hashes per faiss range search
_MAX_TRIES = 3  # alignments tried per pair


# --------------------------------------------------------------------------------------------
# Hash variants


def _windows() -> list[tuple[float, float]]:
    """The (start, end) fractions of one axis: each side cut by one of CROP_STEPS."""
    return [(a, 1.0 - b) for a in CROP_STEPS for b in CROP_STEPS]


def _area_matrix(start: float, end: float, n: int, m: int) -> np.ndarray:
    """(m, n): area resampling of the span [start·n, end·n) of n samples to m samples."""
    edges = (start + (end - start) * np.arange(m + 1) / m) * n
    pixels = np.arange(n)
    lo = np.maximum(pixels[None, :], edges[:-1, None])
    hi = np.minimum(pixels[None, :] + 1, edges[1:, None])
    return np.clip(hi - lo, 0.0, None) / (edges[1:, None] - edges[:-1, None])


def _dct_rows() -> np.ndarray:
    """(8, 32): the lowest rows of the orthonormal DCT-II of 32 samples."""
    n = DCT_SIDE
    k = np.arange(HASH_SIDE)[:, None]
    x = np.arange(n)[None, :]
    dct = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    dct[0] /= np.sqrt(2.0)
    return dct


@cache
def _projections(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (Kv, 8, side) and columns (2·Kh, 8, side): window resampling to 32, then DCT rows.

    ``rows[v] @ thumb @ cols[h].T`` is the 8×8 low-frequency DCT block of window (v, h) of the
    thumb; the second half of ``cols`` is the same windows on the mirrored thumb.
    """
    dct = _dct_rows()
    proj = np.stack([dct @ _area_matrix(a, b, side, DCT_SIDE) for a, b in _windows()])
    cols = np.concatenate([proj, proj[:, :, ::-1]])
    return proj.astype(np.float32), np.ascontiguousarray(cols, dtype=np.float32)


def _pack_hashes(coeffs: np.ndarray) -> np.ndarray:
    """(..., 64) DCT coefficients → (...) uint64 phashes (bit set where above the median)."""
    part = np.partition(coeffs, (31, 32), axis=-1)
    median = 0.5 * (part[..., 31] + part[..., 32])
    bits = np.packbits(coeffs > median[..., None], axis=-1)  # (..., 8) bytes, first bit = MSB
    return bits.view(">u8")[..., 0].astype(np.uint64)


def variant_hashes(thumbs: np.ndarray) -> np.ndarray:
    """(N, side, side) uint8 thumbs → (N, 9, 18) uint64 phashes of every window and mirror.

    Index ``[:, v, h]``: vertical window ``v`` and horizontal window ``h % 9`` of
    :func:`_windows`, on the mirrored thumb when ``h >= 9``. The full window without mirror is the
    stored phash (up to rounding at the median).
    """
    rows, cols = _projections(thumbs.shape[-1])
    kv, k, side = rows.shape
    n, kh = len(thumbs), cols.shape[0]
    t = thumbs.astype(np.float32)
    # Two matrix products (BLAS; einsum does not use it here and was 3× slower):
    a = np.matmul(rows.reshape(kv * k, side), t)  # (N, Kv·8, side)
    c = np.matmul(a, cols.reshape(kh * k, side).T)  # (N, Kv·8, 2Kh·8)
    c = c.reshape(n, kv, k, kh, k).transpose(0, 1, 3, 2, 4)  # (N, Kv, 2Kh, 8, 8)
    return _pack_hashes(np.ascontiguousarray(c).reshape(n, kv, kh, k * k))


def band_hashes(thumbs: np.ndarray) -> np.ndarray:
    """(N, side, side) uint8 thumbs → (N, 2) uint64 phashes of the thumb without its top band
    and without its bottom band (:data:`BAND_CUT` of the height; whole width)."""
    rows, _ = _band_projections(thumbs.shape[-1])
    _, cols = _projections(thumbs.shape[-1])
    t = thumbs.astype(np.float32)
    c = np.einsum("bkx,nxy,ly->nbkl", rows, t, cols[0])  # cols[0]: whole width, not mirrored
    return _pack_hashes(c.reshape(c.shape[:2] + (HASH_SIDE * HASH_SIDE,)))


@cache
def _band_projections(side: int) -> tuple[np.ndarray, None]:
    windows = [(0.0, 1.0 - BAND_CUT), (BAND_CUT, 1.0)]
    return np.stack([_dct_rows() @ _area_matrix(a, b, side, DCT_SIDE)
                     for a, b in windows]).astype(np.float32), None


# --------------------------------------------------------------------------------------------
# Search


@dataclass(frozen=True)
class _Hit:
    """Image ``query``'s hash ``variant`` is ``distance`` bits from image ``target``'s hash.

    ``variant`` is a flat index into the (9, 18) layout of :func:`variant_hashes` (for a band
    hit: 0, the whole thumb, which is how the two thumbs are then aligned first).
    """

    distance: int
    query: int
    variant: int
    target: int
    band: bool = False

    @property
    def mirrored(self) -> bool:
        return _is_mirrored(self.variant)


def _is_mirrored(variant: int | np.ndarray) -> bool | np.ndarray:
    per_axis = len(CROP_STEPS) ** 2
    return (variant % (2 * per_axis)) >= per_axis


def _range_search(queries: np.ndarray, database: np.ndarray, threshold: int,
                  allowed: Callable[[np.ndarray, np.ndarray], np.ndarray],
                  progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, ...]:
    """All (distance, query image, variant, target) with ``queries[i, k]`` within ``threshold``
    bits of ``database[j]`` and ``allowed(i, j)``. ``queries`` (N, K), ``database`` (M,) uint64.

    faiss ``IndexBinaryFlat``: exhaustive, SIMD popcount; see benchmarks/dedup_search.py.
    """
    index = faiss.IndexBinaryFlat(64)
    index.add(_as_codes(database))
    n, k = queries.shape
    block = max(1, _QUERY_BLOCK // k)
    parts: list[tuple[np.ndarray, ...]] = []
    for start in range(0, n, block):
        q = queries[start:start + block]
        lims, dist, ids = index.range_search(_as_codes(q.reshape(-1)), threshold + 1)
        rows = np.repeat(np.arange(q.size), np.diff(lims.astype(np.int64)))
        qi, var, tj = rows // k + start, rows % k, ids.astype(np.int64)
        keep = allowed(qi, tj)
        parts.append((dist[keep].astype(np.int64), qi[keep], var[keep], tj[keep]))
        if progress is not None:
            progress(min(n, start + block))
    if not parts:
        return tuple(np.zeros(0, np.int64) for _ in range(4))
    return tuple(np.concatenate(col) for col in zip(*parts, strict=True))


def _as_codes(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes → (N, 8) uint8 codes for faiss (big-endian bytes)."""
    return np.ascontiguousarray(hashes.astype(">u8")).view(np.uint8).reshape(-1, 8)


def _nearest_hits(dist: np.ndarray, query: np.ndarray, variant: np.ndarray, target: np.ndarray,
                  band: np.ndarray) -> dict[tuple[int, int], list[_Hit]]:
    """Per unordered pair (lo, hi): the nearest hit of each (mirror state, band) kind, nearest
    first (ties broken by query, variant: deterministic)."""
    lo, hi = np.minimum(query, target), np.maximum(query, target)
    kind = _is_mirrored(variant).astype(np.int64) * 2 + band.astype(np.int64)
    order = np.lexsort((variant, query, dist, kind, hi, lo))
    lo, hi, kind = lo[order], hi[order], kind[order]
    first = np.ones(len(order), bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1]) | (kind[1:] != kind[:-1])
    pairs: dict[tuple[int, int], list[_Hit]] = {}
    for i in np.flatnonzero(first):
        j = order[i]
        hit = _Hit(int(dist[j]), int(query[j]), int(variant[j]), int(target[j]), bool(band[j]))
        pairs.setdefault((int(lo[i]), int(hi[i])), []).append(hit)
    for hits in pairs.values():
        hits.sort(key=lambda h: (h.distance, h.band, h.mirrored, h.query, h.variant))
    return pairs


# --------------------------------------------------------------------------------------------
# Pairs and their initial alignments


def search_pairs(thumbs: np.ndarray, stored: np.ndarray, n_ref: int, threshold: int,
                 progress: Callable[[int], None] | None = None) -> dict[tuple[int, int],
                                                                      list[_Hit]]:
    """Every pair (earlier, later) of images whose hashes lie within ``threshold`` bits, with
    its hits nearest first. ``thumbs`` (N, S, S) uint8, ``stored`` (N,) uint64 phashes; the
    first ``n_ref`` images are references, never paired with each other. ``progress(done)``
    counts images searched."""
    n = len(thumbs)

    def allowed(qi: np.ndarray, tj: np.ndarray) -> np.ndarray:
        return (qi != tj) & ((qi >= n_ref) | (tj >= n_ref))

    found = [_range_search(variant_hashes(thumbs).reshape(n, -1), stored, threshold, allowed,
                           progress)]
    bands = band_hashes(thumbs)
    for b in range(bands.shape[1]):
        d, q, _, t = _range_search(bands[:, b:b + 1], bands[:, b], threshold, allowed)
        found.append((d, q, np.zeros_like(q), t))
    columns = [np.concatenate(col) for col in zip(*found, strict=True)]
    band = np.concatenate([np.full(len(f[0]), i > 0) for i, f in enumerate(found)])
    return _nearest_hits(*columns, band)


def initial_warp(variant: int) -> np.ndarray:
    """(2, 3) affine from template (the whole target thumb) to the query thumb's window."""
    wins = _windows()
    kh = 2 * len(wins)
    v, h = divmod(variant, kh)
    (ay, by), (ax, bx) = wins[v], wins[h % len(wins)]
    sx, sy = bx - ax, by - ay
    s = THUMB_SIDE
    return np.array([[sx, 0.0, ax * s + 0.5 * sx - 0.5],
                     [0.0, sy, ay * s + 0.5 * sy - 0.5]], dtype=np.float32)


def method(hit: _Hit) -> str:
    """``phash[-crop|-band][-mirror]``: which kind of hash matched."""
    if hit.band:
        return "phash-band"
    per_axis = len(CROP_STEPS) ** 2
    v, h = divmod(hit.variant, 2 * per_axis)
    cropped = v != 0 or h % per_axis != 0  # window 0 is the whole axis
    return "phash" + ("-crop" if cropped else "") + ("-mirror" if hit.mirrored else "")


def initialisations(hits: list[_Hit]) -> list[_Hit]:
    """Hits to start the alignment from, best first, at most :data:`_MAX_TRIES`: the nearest
    hit, the whole thumb in its mirror state (the nearest window may have cut a watermark away),
    then the nearest hits of the other kinds."""
    best = hits[0]
    whole = _Hit(best.distance, best.query, _whole_variant(best.mirrored), best.target)
    inits: list[_Hit] = []
    seen: set[tuple[int, int, int]] = set()
    for hit in [best, whole, *hits[1:]]:
        key = (hit.query, hit.target, hit.variant)
        if key not in seen:
            seen.add(key)
            inits.append(hit)
    return inits[:_MAX_TRIES]


def _whole_variant(mirrored: bool) -> int:
    """Flat variant index of the whole thumb (window 0 on both axes), mirrored or not."""
    return len(CROP_STEPS) ** 2 if mirrored else 0


def thumb64(hashes: ImageHashes) -> np.ndarray:
    """The thumb at THUMB_SIDE² (a thumb stored at another size is area-resampled)."""
    t = hashes.thumb
    if t.shape == (THUMB_SIDE, THUMB_SIDE):
        return t
    return cv2.resize(t, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
