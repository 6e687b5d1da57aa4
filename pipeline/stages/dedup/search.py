"""Near-duplicate search over perceptual hashes, then verification of every pair found.

Pure functions over :class:`blurset.pipeline.stages.hashing.ImageHashes` (a 64-bit DCT ``phash`` and a 64×64 grey
``thumb``, aspect ratio ignored); no catalog, no Prefect. :func:`find_duplicates` checks every
candidate against every reference and against every other candidate, in two stages.

**1. Search: hash variants of each image against the hashes of all images.** From each stored
thumb, :func:`variant_hashes` derives 162 phashes: the DCT hash of 81 windows (each side cut by
0, 5 or 10 %, independently) of the thumb and of its mirror image. Window resampling and the DCT
are linear and separable, so all variants of all thumbs come from two small matrix products.
Each variant is looked up among the stored phashes within ``threshold`` bits (default
:data:`DEFAULT_THRESHOLD`). :func:`band_hashes` adds two hashes per image, of the thumb without
its top or its bottom :data:`BAND_CUT`, each looked up among the same band hash of the others.
The lookups are exhaustive range searches in a faiss ``IndexBinaryFlat`` (SIMD popcount): at
radius 12 of 64 bits, multi-index hashing and numpy brute force were slower at every size from
10^3 to 10^6 hashes (``benchmarks/dedup_search.py``). The search is quadratic: 164 lookups per
image among N hashes, ~15 s for 10^4 images and ~16 min for 10^5 on one thread.

What finds what:

- resize (also to another aspect ratio: the thumb is squashed to a square anyway), JPEG
  re-encoding, brightness, contrast, gamma, grayscale, slight blur: the plain phash stays within a
  few bits (a small grey thumb; the hash compares DCT coefficients with their median, so affine
  intensity changes cancel);
- crop of up to 10 % per side: the window of the larger image that shows the smaller one;
- left-right mirror: the mirrored variants;
- rotation by up to 3° (a photo editor's straighten: rotate, then crop the corners away): the
  nearest centred window, a few bits further;
- a small corner watermark: a band hash (both images without the band holding the watermark),
  or a window that cuts most of it away.

**2. Verification: align the thumbs, then compare their fine structure.** Each pair is tried
from up to three initial affine alignments: the window and mirror state of the
nearest hash variant, the whole thumb in that mirror state (a window that cut a watermark away
misplaces the alignment), and the nearest hit of another kind. If none passes as it stands, the
most promising one is refined by ``cv2.findTransformECC`` (enhanced correlation coefficient,
affine, invariant to brightness and contrast) and judged again. A pair is a duplicate only if:

- the warp is one those edits make: each axis scaled by 0.7-1.4 (:data:`SCALE_RANGE`), shear or
  rotation terms at most :data:`MAX_SHEAR` (3° on a thumb squashed from 1.6:1 stays below 0.09),
  and one image covering at least :data:`MIN_COVERAGE` of the other, which rejects different
  (overlapping) crops of one photo;
- one of the two has fine texture (standard deviation of a σ 0.7/2 difference of Gaussians ≥
  :data:`MIN_TEXTURE` grey levels): flat, low-texture images (sky, wall, fog) give nothing to
  verify and are rejected outright (method ``…+flat``);
- the score, the median over 4×4 cells of the zero-mean normalised correlation of the aligned,
  band-passed (σ 1/4) thumbs, is ≥ :data:`MIN_SCORE`. The median shrugs off the few cells a
  watermark spoils, yet needs the fine structure to agree across the picture, which look-alike
  photos (one scene, one texture, one layout) do not.

Pairs found by the search that fail verification are returned too, ``verdict="rejected"``, for a
person to review. Measured on four bench samples (``benchmarks/dedup_quality.py``) with every
initial alignment refined: planted pairs reach a score ≥ 0.80, look-alikes of other photos with
a plausible warp ≤ 0.62.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import cv2
import faiss
import numpy as np

from blurset.pipeline.stages.hashing import DCT_SIDE, HASH_SIDE, THUMB_SIDE, ImageHashes

# Hamming radius of the search. 12 found ≥ 99.5 % of the planted copies on four bench samples;
# 14 found the last few (copies of one photo whose hash is unstable) for ~1.7× the pairs to verify.
DEFAULT_THRESHOLD = 12
MIN_SCORE = 0.7  # median cell correlation of the aligned, band-passed thumbs
MIN_TEXTURE = 0.75  # fine-band standard deviation (grey levels) one of the two thumbs must have
MIN_COVERAGE = 0.8  # one image must cover this fraction of the other
SCALE_RANGE = (0.7, 1.4)  # per-axis scale of the warp between the thumbs
MAX_SHEAR = 0.15  # off-diagonal terms of the warp's linear part

CROP_STEPS = (0.0, 0.05, 0.10)  # fractions cut from each side for the variant windows
BAND_CUT = 0.16  # band hashes leave out the top or the bottom 16 % (a corner watermark's band)
_ECC_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 15, 1e-2)
_ECC_GAUSS = 5
_BAND = (1.0, 4.0)  # DoG sigmas of the verification band-pass, in thumb pixels
_FINE_BAND = (0.7, 2.0)  # DoG sigmas of the texture measure
_CELLS = 4  # the score's grid is _CELLS × _CELLS
_QUERY_BLOCK = 1 << 16  # hashes per faiss range search
_MAX_TRIES = 3  # alignments tried per pair


@dataclass(frozen=True)
class HashRecord:
    """One image to deduplicate: an opaque ``key`` and its hashes."""

    key: str
    hashes: ImageHashes


@dataclass(frozen=True)
class Match:
    """A pair found by the search: ``candidate`` (later in input order) and ``reference``.

    ``distance`` is the Hamming distance of the best hash variant, ``method`` says which variant
    kind matched and how it was verified, ``score`` is the verification score (median cell
    correlation, -1…1) and ``verdict`` is ``"duplicate"`` or ``"rejected"`` (a look-alike).
    """

    candidate: str
    reference: str
    distance: int
    method: str
    score: float
    verdict: str


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
    t = thumbs.astype(np.float32)
    a = np.einsum("vkx,nxy->nvky", rows, t)  # (N, Kv, 8, side)
    c = np.einsum("nvky,hly->nvhkl", a, cols)  # (N, Kv, 2Kh, 8, 8)
    return _pack_hashes(c.reshape(c.shape[:3] + (HASH_SIDE * HASH_SIDE,)))


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
# Verification


@dataclass(frozen=True)
class _Verdict:
    duplicate: bool
    score: float


def _initial_warp(variant: int) -> np.ndarray:
    """(2, 3) affine from template (the whole target thumb) to the query thumb's window."""
    wins = _windows()
    kh = 2 * len(wins)
    v, h = divmod(variant, kh)
    (ay, by), (ax, bx) = wins[v], wins[h % len(wins)]
    sx, sy = bx - ax, by - ay
    s = THUMB_SIDE
    return np.array([[sx, 0.0, ax * s + 0.5 * sx - 0.5],
                     [0.0, sy, ay * s + 0.5 * sy - 0.5]], dtype=np.float32)


def _bandpass(x: np.ndarray, sigmas: tuple[float, float] = _BAND) -> np.ndarray:
    """Difference of Gaussians of a float32 thumb."""
    return cv2.GaussianBlur(x, (0, 0), sigmas[0]) - cv2.GaussianBlur(x, (0, 0), sigmas[1])


def _texture(thumb: np.ndarray) -> float:
    """Fine detail of a float32 thumb: standard deviation of its fine band-pass, grey levels.
    Flat images (sky, wall, fog, a plain backdrop) stay well below :data:`MIN_TEXTURE`."""
    return float(_bandpass(thumb, _FINE_BAND).std())


def _cell_median_correlation(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> float:
    """Median over the grid cells (at least half valid) of the correlation of a and b there."""
    c = THUMB_SIDE // _CELLS
    shape = (_CELLS, c, _CELLS, c)
    m = valid.reshape(shape).astype(np.float32)
    u, w = (a * valid).reshape(shape), (b * valid).reshape(shape)
    count = m.sum(axis=(1, 3))
    safe = np.maximum(count, 1.0)
    su, sw = u.sum(axis=(1, 3)), w.sum(axis=(1, 3))
    cov = (u * w).sum(axis=(1, 3)) - su * sw / safe
    var_u = (u * u).sum(axis=(1, 3)) - su * su / safe
    var_w = (w * w).sum(axis=(1, 3)) - sw * sw / safe
    norm = np.sqrt(np.maximum(var_u, 0.0) * np.maximum(var_w, 0.0))
    corr = np.where(norm > 1e-9, cov / np.maximum(norm, 1e-9), 0.0)
    used = count >= 0.5 * c * c
    return float(np.median(corr[used])) if used.any() else 0.0


def _judge(template: np.ndarray, band_template: np.ndarray, query: np.ndarray,
           warp: np.ndarray) -> _Verdict:
    """Judge the pair with ``query`` warped onto ``template`` by ``warp`` (see module doc)."""
    s = THUMB_SIDE
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    aligned = cv2.warpAffine(query, warp, (s, s), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    inside = cv2.warpAffine(np.ones((s, s), np.float32), warp, (s, s), flags=flags,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0.0) > 0.99
    if inside.sum() < s * s // 4:
        return _Verdict(False, 0.0)
    band_query = _bandpass(aligned)
    score = _cell_median_correlation(band_template, band_query, inside)
    linear = warp[:, :2]
    covered = float(inside.mean())  # of the template, by the query
    coverage = max(covered, min(1.0, covered * abs(float(np.linalg.det(linear)))))
    duplicate = (
        SCALE_RANGE[0] <= min(linear[0, 0], linear[1, 1])
        and max(linear[0, 0], linear[1, 1]) <= SCALE_RANGE[1]
        and max(abs(linear[0, 1]), abs(linear[1, 0])) <= MAX_SHEAR
        and coverage >= MIN_COVERAGE
        and score >= MIN_SCORE
    )
    return _Verdict(bool(duplicate), score)


def _verify_pair(floats: np.ndarray, bandpassed: dict[int, np.ndarray],
                 hits: list[_Hit]) -> tuple[_Hit, _Verdict]:
    """Judge the pair at each initial alignment; if none passes, refine the most promising one
    (highest score, if above zero) with ECC and judge again. Returns the deciding hit."""
    tried: list[tuple[_Verdict, _Hit, np.ndarray, np.ndarray]] = []
    for hit in _initialisations(hits):
        query = floats[hit.query][:, ::-1].copy() if hit.mirrored else floats[hit.query]
        warp = _initial_warp(hit.variant)
        verdict = _judge(floats[hit.target], bandpassed[hit.target], query, warp)
        if verdict.duplicate:
            return hit, verdict
        tried.append((verdict, hit, query, warp))
    verdict, hit, query, warp = max(tried, key=lambda t: t[0].score)
    if verdict.score <= 0.0:  # no agreement at all: not worth an ECC run
        return hits[0], verdict
    try:
        _, refined = cv2.findTransformECC(floats[hit.target], query, warp.copy(),
                                          cv2.MOTION_AFFINE, _ECC_CRITERIA, None, _ECC_GAUSS)
    except cv2.error:  # no convergence: the images do not correlate
        return hits[0], verdict
    second = _judge(floats[hit.target], bandpassed[hit.target], query, refined)
    if second.duplicate:
        return hit, second
    return hits[0], second if second.score > verdict.score else verdict


def _method(hit: _Hit) -> str:
    """``phash[-crop|-band][-mirror]+ecc``: which kind of hash matched, verified by ECC."""
    if hit.band:
        return "phash-band+ecc"
    per_axis = len(CROP_STEPS) ** 2
    v, h = divmod(hit.variant, 2 * per_axis)
    cropped = v != 0 or h % per_axis != 0  # window 0 is the whole axis
    return "phash" + ("-crop" if cropped else "") + ("-mirror" if hit.mirrored else "") + "+ecc"


# --------------------------------------------------------------------------------------------
# Entry point


def find_duplicates(
    references: Sequence[HashRecord],
    candidates: Sequence[HashRecord],
    *,
    threshold: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Match]:
    """Every candidate against every reference and every other candidate (see module doc).

    Returns one :class:`Match` per pair found by the search, verified: ``candidate`` is the
    candidate (the later one of two candidates in input order), ``reference`` the reference or
    the earlier candidate. Sorted by candidate then reference in input order; deterministic.
    ``progress(done, total)`` is called as images are searched and pairs verified.
    """
    threshold = DEFAULT_THRESHOLD if threshold is None else int(threshold)
    if not 0 <= threshold <= 32:
        raise ValueError(f"threshold must be a Hamming distance in 0…32, got {threshold}")
    records = [*references, *candidates]
    n_ref, n = len(references), len(references) + len(candidates)
    if not candidates or n < 2:
        return []
    keys = [r.key for r in records]
    if len(set(keys)) != n:
        raise ValueError("record keys must be unique across references and candidates")
    thumbs = np.stack([_thumb64(r.hashes) for r in records])
    stored = np.array([r.hashes.phash for r in records], dtype=np.uint64)

    def allowed(qi: np.ndarray, tj: np.ndarray) -> np.ndarray:
        return (qi != tj) & ((qi >= n_ref) | (tj >= n_ref))

    def searched(done: int) -> None:
        if progress is not None:
            progress(done, n)

    found = [_range_search(variant_hashes(thumbs).reshape(n, -1), stored, threshold, allowed,
                           searched)]
    bands = band_hashes(thumbs)
    for b in range(bands.shape[1]):
        d, q, _, t = _range_search(bands[:, b:b + 1], bands[:, b], threshold, allowed)
        found.append((d, q, np.zeros_like(q), t))
    columns = [np.concatenate(col) for col in zip(*found, strict=True)]
    band = np.concatenate([np.full(len(f[0]), i > 0) for i, f in enumerate(found)])
    pairs = _nearest_hits(*columns, band)

    floats = thumbs.astype(np.float32)
    involved = sorted({i for pair in pairs for i in pair})
    bandpassed = {i: _bandpass(floats[i]) for i in involved}
    texture = {i: _texture(floats[i]) for i in involved}
    matches: list[Match] = []
    ordered = sorted(pairs.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    for done, ((earlier, later), hits) in enumerate(ordered):
        flat = max(texture[earlier], texture[later]) < MIN_TEXTURE
        if flat:  # nothing to align: a look-alike by construction
            best, verdict = hits[0], _Verdict(False, 0.0)
        else:
            best, verdict = _verify_pair(floats, bandpassed, hits)
        method = _method(best).replace("+ecc", "+flat") if flat else _method(best)
        matches.append(Match(candidate=keys[later], reference=keys[earlier], distance=best.distance,
                             method=method, score=round(verdict.score, 4),
                             verdict="duplicate" if verdict.duplicate else "rejected"))
        if progress is not None:
            progress(n + done + 1, n + len(pairs))
    return matches


def _initialisations(hits: list[_Hit]) -> list[_Hit]:
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


def _thumb64(hashes: ImageHashes) -> np.ndarray:
    """The thumb at THUMB_SIDE² (a thumb stored at another size is area-resampled)."""
    t = hashes.thumb
    if t.shape == (THUMB_SIDE, THUMB_SIDE):
        return t
    return cv2.resize(t, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
