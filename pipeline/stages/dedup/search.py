"""Near-duplicate search over perceptual hashes: hash variants of each image, range search.

Pure functions over 64×64 grey thumbs and their 64-bit DCT ``phash``
(:mod:`blurset.pipeline.stages.hashing`); no catalog. :func:`search_pairs` finds every pair of
images whose hashes (of some window, mirror or band of one) lie within ``threshold`` bits, with
the initial alignments those hashes imply (:func:`starts`) for
:mod:`blurset.pipeline.stages.dedup.verify`.

From each thumb, :func:`variant_hashes` derives 162 phashes: the DCT hash of 81 windows (each side
cut by 0, 5 or 10 %, independently) of the thumb and of its mirror image; window resampling and
the DCT are linear and separable, so all variants of all thumbs come from two small matrix
products. :func:`band_hashes` adds two hashes per image, of the thumb without its top or its
bottom :data:`BAND_CUT` (a corner watermark's band).

Two indexes answer the lookups. ``flat``: exhaustive range searches in a faiss
``IndexBinaryFlat`` (SIMD popcount), exact, quadratic: 164·N² comparisons. ``blocks``
(:class:`BlockIndex`): multi-index hashing in numpy, exact up to :data:`BLOCK_EXACT_RADIUS`
bits and approximate beyond (at radius 12 it finds about a third of the flat search's pairs,
most of those lost being chance coincidences at 10-12 bits), about 100× faster at 10^6
images and still quadratic beyond (N/10^4 candidates per lookup). ``auto`` (the default)
takes ``blocks`` where it is exact (``threshold`` ≤ :data:`BLOCK_EXACT_RADIUS`) and otherwise
``flat`` up to :data:`FLAT_MAX_IMAGES` images, ``blocks`` above. Measured:
``docs/scale-search.md``; what each variant finds: ``docs/dedup.md``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
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

# The block index (docs/scale-search.md): 3 substrings of 21-22 bits, each filed with every
# 1-bit neighbour, in 3 rotations of the hash. Exact up to 3·(1 + 1) − 1 = 5 bits.
BLOCKS = 3
BLOCK_FLIPS = 1
BLOCK_ROTATIONS = (0, 7, 14)
BLOCK_EXACT_RADIUS = BLOCKS * (BLOCK_FLIPS + 1) - 1
# Above this many images ``auto`` leaves the exhaustive search (about 16 minutes on one core
# at 10^5 images) for the block index, which is approximate beyond BLOCK_EXACT_RADIUS bits.
FLAT_MAX_IMAGES = 100_000
INDEXES = ("auto", "flat", "blocks")
_BLOCK_QUERIES = 1 << 20  # query hashes per block-index lookup (bounds the candidate arrays)
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


_HASH_CHUNK = 256  # thumbs per matrix product (keeps the coefficients in cache)


def variant_hashes(thumbs: np.ndarray) -> np.ndarray:
    """(N, side, side) uint8 thumbs → (N, 9, 18) uint64 phashes of every window and mirror.

    Index ``[:, v, h]``: vertical window ``v`` and horizontal window ``h % 9`` of
    :func:`_windows`, on the mirrored thumb when ``h >= 9``. The full window without mirror is the
    stored phash (up to rounding at the median).
    """
    rows, cols = _projections(thumbs.shape[-1])
    kv, k, side = rows.shape
    kh = cols.shape[0]
    rows2, cols2 = rows.reshape(kv * k, side), np.ascontiguousarray(cols.reshape(kh * k, side).T)
    out = np.empty((len(thumbs), kv, kh), np.uint64)
    for start in range(0, len(thumbs), _HASH_CHUNK):
        t = thumbs[start:start + _HASH_CHUNK].astype(np.float32)
        n = len(t)
        # Two matrix products (BLAS; einsum does not use it here and was 3× slower):
        c = np.matmul(np.matmul(rows2, t), cols2)  # (n, Kv·8, 2Kh·8)
        c = c.reshape(n, kv, k, kh, k).transpose(0, 1, 3, 2, 4)  # (n, Kv, 2Kh, 8, 8)
        out[start:start + n] = _pack_hashes(c.reshape(n, kv, kh, k * k))
    return out


def band_hashes(thumbs: np.ndarray) -> np.ndarray:
    """(N, side, side) uint8 thumbs → (N, 2) uint64 phashes of the thumb without its top band
    and without its bottom band (:data:`BAND_CUT` of the height; whole width)."""
    rows, _ = _band_projections(thumbs.shape[-1])
    _, cols = _projections(thumbs.shape[-1])
    b, k, side = rows.shape
    rows2, col0 = rows.reshape(b * k, side), np.ascontiguousarray(cols[0].T)  # whole, unmirrored
    out = np.empty((len(thumbs), b), np.uint64)
    for start in range(0, len(thumbs), _HASH_CHUNK):
        t = thumbs[start:start + _HASH_CHUNK].astype(np.float32)
        c = np.matmul(np.matmul(rows2, t), col0)  # (n, B·8, 8)
        out[start:start + len(t)] = _pack_hashes(c.reshape(len(t), b, k * k))
    return out


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
                  progress: Callable[[int], None] | None = None, *,
                  nearest: bool = False) -> tuple[np.ndarray, ...]:
    """All (distance, query image, variant, target) with ``queries[i, k]`` within ``threshold``
    bits of ``database[j]`` and ``allowed(i, j)``. ``queries`` (N, K), ``database`` (M,) uint64.
    ``nearest``: only the nearest of each (query image, target, mirror state) (:func:`_nearest`).

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
        part = dist[keep].astype(np.int64), qi[keep], var[keep], tj[keep]
        parts.append(_nearest(*part) if nearest else part)
        if progress is not None:
            progress(min(n, start + block))
    if not parts:
        return tuple(np.zeros(0, np.int64) for _ in range(4))
    return tuple(np.concatenate(col) for col in zip(*parts, strict=True))


def _nearest(dist: np.ndarray, query: np.ndarray, variant: np.ndarray,
             target: np.ndarray) -> tuple[np.ndarray, ...]:
    """Of hits (distance, query, variant, target), the nearest of each (query, target, mirror
    state), the lowest variant on a tie: all :class:`PairHits` keeps of them, found while the
    hits of one block of queries are still small (a pool of similar images has tens of hits
    per pair)."""
    if len(dist) == 0:
        return dist, query, variant, target
    group = (query * (int(target.max()) + 1) + target) * 2 + _is_mirrored(variant)
    order = np.argsort((group * 64 + dist) * 256 + variant)  # distance < 64, variant < 256
    group = group[order]
    first = np.ones(len(order), bool)
    first[1:] = group[1:] != group[:-1]
    keep = order[first]
    return dist[keep], query[keep], variant[keep], target[keep]


def _as_codes(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes → (N, 8) uint8 codes for faiss (big-endian bytes)."""
    return np.ascontiguousarray(hashes.astype(">u8")).view(np.uint8).reshape(-1, 8)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing of substrings wider than a table


class BlockIndex:
    """Multi-index hashing (Norouzi, Punjani & Fleet, CVPR 2012) over uint64 hashes, in numpy.

    For each rotation of the 64 bits, the hash is cut into ``blocks`` substrings of 21-22 bits;
    every database hash is filed in one table per substring under its substring and each
    substring up to ``flips`` bits from it (``rows`` hashes × (1 + 21 + …) entries). A query
    looks up its own substrings only, and every candidate is checked by popcount: nothing
    farther than the threshold is returned, and the distance returned is exact.

    Two hashes within ``blocks·(flips + 1) − 1`` bits (:attr:`exact_radius`) agree to ``flips``
    bits on at least one substring (pigeonhole), so every such pair is found. A pair farther
    apart is found only if one substring of one rotation happens to differ by ``flips`` bits or
    fewer: that is the approximation.
    """

    def __init__(self, database: np.ndarray, blocks: int = BLOCKS, flips: int = BLOCK_FLIPS,
                 rotations: tuple[int, ...] = BLOCK_ROTATIONS, max_table_bits: int = 26):
        if not 1 <= blocks <= 8 or not 0 <= flips <= 2 or not rotations:
            raise ValueError(f"blocks must be 1…8, flips 0…2 and rotations not empty, got "
                             f"blocks={blocks}, flips={flips}, rotations={rotations}")
        self.database = np.ascontiguousarray(database, dtype=np.uint64)
        self.exact_radius = blocks * (flips + 1) - 1
        rows = len(self.database)
        widths = [64 // blocks + (i < 64 % blocks) for i in range(blocks)]
        # (rotation, shift, width, table bits, ids (entries,) int32, offsets (2^bits + 1,))
        self._tables: list[tuple[int, int, int, int, np.ndarray, np.ndarray]] = []
        for rot in rotations:
            rotated = _rotate(self.database, rot)
            for shift, width in zip(np.cumsum([0, *widths[:-1]]).tolist(), widths, strict=True):
                masks = _flip_masks(width, flips)
                entries = rows * len(masks)
                bits = min(width, max_table_bits, max(8, int(np.ceil(np.log2(max(entries, 2))))))
                keys = (rotated >> np.uint64(shift)) & np.uint64((1 << width) - 1)
                buckets = _bucket((keys[:, None] ^ masks[None, :]).ravel(), width, bits)
                order = np.argsort(buckets, kind="stable")
                ids = (order // len(masks)).astype(np.int32)
                offsets = np.zeros((1 << bits) + 1, np.int64)
                np.cumsum(np.bincount(buckets, minlength=1 << bits), out=offsets[1:])
                self._tables.append((rot, shift, width, bits, ids, offsets))

    def search(self, queries: np.ndarray, threshold: int) -> tuple[np.ndarray, ...]:
        """(query row, database row, distance) int64 of every pair the index finds within
        ``threshold`` bits, each once, sorted by query row then database row."""
        q = np.ascontiguousarray(queries, dtype=np.uint64)
        found: list[tuple[np.ndarray, np.ndarray]] = []
        for rot, shift, width, bits, ids, offsets in self._tables:
            keys = (_rotate(q, rot) >> np.uint64(shift)) & np.uint64((1 << width) - 1)
            bucket = _bucket(keys, width, bits)
            start, stop = offsets[bucket], offsets[bucket + 1]
            hit = np.flatnonzero(stop > start)
            start, count = start[hit], stop[hit] - start[hit]
            rows = np.repeat(hit, count)
            # position of every candidate: its bucket's start + its rank within the bucket
            pos = np.arange(len(rows)) + np.repeat(start - (np.cumsum(count) - count), count)
            target = ids[pos]
            near = np.bitwise_count(q[rows] ^ self.database[target]) <= threshold
            found.append((rows[near], target[near].astype(np.int64)))
        rows, target = (np.concatenate(col) for col in zip(*found, strict=True))
        pair = np.unique(rows * np.int64(len(self.database)) + target)
        rows, target = np.divmod(pair, np.int64(max(1, len(self.database))))
        dist = np.bitwise_count(q[rows] ^ self.database[target]).astype(np.int64)
        return rows, target, dist


def _rotate(hashes: np.ndarray, bits: int) -> np.ndarray:
    if bits % 64 == 0:
        return hashes
    return (hashes >> np.uint64(bits)) | (hashes << np.uint64(64 - bits))


@cache
def _flip_masks(width: int, flips: int) -> np.ndarray:
    """Every mask of ``width`` bits with at most ``flips`` bits set (0 first)."""
    return np.array([sum(1 << b for b in c) for k in range(flips + 1)
                     for c in itertools.combinations(range(width), k)], dtype=np.uint64)


def _bucket(keys: np.ndarray, width: int, bits: int) -> np.ndarray:
    """Table slot of each ``width``-bit key: the key itself if the table has 2^width slots,
    else its Fibonacci hash to ``bits`` bits."""
    if bits >= width:
        return keys.astype(np.int64)
    return ((keys * _GOLDEN) >> np.uint64(64 - bits)).astype(np.int64)


def _block_search(queries: np.ndarray, database: np.ndarray, threshold: int,
                  allowed: Callable[[np.ndarray, np.ndarray], np.ndarray],
                  progress: Callable[[int], None] | None = None,
                  index: BlockIndex | None = None, *, nearest: bool = False
                  ) -> tuple[np.ndarray, ...]:
    """:func:`_range_search` through a :class:`BlockIndex` (built on ``database`` unless
    given): the same hits up to its exact radius, a subset beyond, in the same columns.
    Chunks of queries run in one thread per core (numpy releases the GIL in its loops); the
    result does not depend on the number."""
    index = BlockIndex(database) if index is None else index
    n, k = queries.shape
    block = max(1, _BLOCK_QUERIES // k)

    def chunk(start: int) -> tuple[np.ndarray, ...]:
        rows, tj, dist = index.search(queries[start:start + block].reshape(-1), threshold)
        qi, var = rows // k + start, rows % k
        keep = allowed(qi, tj)
        part = dist[keep], qi[keep], var[keep], tj[keep]
        return _nearest(*part) if nearest else part

    starts = range(0, n, block)
    parts: list[tuple[np.ndarray, ...]] = []
    with ThreadPoolExecutor(min(usable_cores(), max(1, len(starts)))) as pool:
        for start, part in zip(starts, pool.map(chunk, starts), strict=True):
            parts.append(part)
            if progress is not None:
                progress(min(n, start + block))
    if not parts:
        return tuple(np.zeros(0, np.int64) for _ in range(4))
    return tuple(np.concatenate(col) for col in zip(*parts, strict=True))


def usable_cores() -> int:
    """Cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


class PairHits:
    """The pairs a search found, ordered by (later, earlier) image, with their nearest hits.

    ``earlier``, ``later``, ``distance`` (the nearest hit's bits): arrays, one entry per pair.
    :meth:`hits` builds a pair's hits (the nearest of each mirror/band kind, nearest first;
    ties broken by query, variant: deterministic) only when asked: a run that verifies a
    few of many pairs never builds the others'.
    """

    def __init__(self, dist: np.ndarray, query: np.ndarray, variant: np.ndarray,
                 target: np.ndarray, band: np.ndarray) -> None:
        lo, hi = np.minimum(query, target), np.maximum(query, target)
        mirrored = _is_mirrored(variant)
        kind = mirrored.astype(np.int64) * 2 + band.astype(np.int64)
        order = np.lexsort((variant, query, dist, kind, lo, hi))
        keep = np.ones(len(order), bool)  # the nearest hit of each (pair, kind)
        keep[1:] = ((lo[order][1:] != lo[order][:-1]) | (hi[order][1:] != hi[order][:-1])
                    | (kind[order][1:] != kind[order][:-1]))
        nearest = order[keep]
        # each pair's hits nearest first, then band, mirror state, query, variant
        nearest = nearest[np.lexsort((variant[nearest], query[nearest], mirrored[nearest],
                                      band[nearest], dist[nearest], lo[nearest], hi[nearest]))]
        self._columns = (dist[nearest], query[nearest], variant[nearest], target[nearest],
                         band[nearest])
        lo, hi = lo[nearest], hi[nearest]
        new = np.ones(len(nearest), bool)
        new[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
        self._starts = np.append(np.flatnonzero(new), len(nearest))
        self.earlier, self.later = lo[new], hi[new]
        self.distance = self._columns[0][new]

    def __len__(self) -> int:
        return len(self.earlier)

    def hits(self, p: int) -> list[_Hit]:
        """Pair ``p``'s hits, nearest first."""
        rows = range(self._starts[p], self._starts[p + 1])
        d, q, v, t, b = self._columns
        return [_Hit(int(d[i]), int(q[i]), int(v[i]), int(t[i]), bool(b[i])) for i in rows]

    def as_dict(self) -> dict[tuple[int, int], list[_Hit]]:
        """Every pair (earlier, later) → its hits (all built)."""
        return {(int(self.earlier[p]), int(self.later[p])): self.hits(p) for p in range(len(self))}


# --------------------------------------------------------------------------------------------
# Pairs and their initial alignments


def search_pairs(thumbs: np.ndarray, stored: np.ndarray, n_ref: int, threshold: int,
                 progress: Callable[[int], None] | None = None, *,
                 index: str = "auto", executor: Executor | None = None) -> PairHits:
    """Every pair (earlier, later) of images whose hashes lie within ``threshold`` bits, with
    its hits nearest first. ``thumbs`` (N, S, S) uint8, ``stored`` (N,) uint64 phashes; the
    first ``n_ref`` images are references, never paired with each other. ``progress(done)``
    counts images searched. ``index``: ``flat``, ``blocks`` or ``auto`` (module docstring);
    ``executor``: where the flat search's shards run (:func:`search_hits`)."""
    variants = variant_hashes(thumbs).reshape(len(thumbs), -1)
    return PairHits(*search_hits(variants, band_hashes(thumbs), stored, n_ref, threshold,
                                 progress, index=index, executor=executor))


def search_hits(variants: np.ndarray, bands: np.ndarray, stored: np.ndarray, n_ref: int,
                threshold: int, progress: Callable[[int], None] | None = None, *,
                index: str = "auto", executor: Executor | None = None
                ) -> tuple[np.ndarray, ...]:
    """The hits behind :func:`search_pairs` as columns (distance, query, variant, target, band):
    ``variants`` (N, K) of each image against ``stored`` (N,), each band (N, B) against the
    same band of the others; the candidates (rows ``n_ref``…) against everyone, the references
    against the candidates only (the pairs two references would make are never looked up).
    Only the nearest hit of each (query, target, mirror state, band) is kept.

    ``executor`` (``concurrent.futures``, e.g. a Dask cluster's): the variant lookups run there
    in shards of query images, each carrying its queries and the database: the same hits. A
    flat shard holds :data:`_SHARD` images; the block index is built once per worker process
    and database (:func:`_block_shard`), so its shards are fewer and larger (at most
    :data:`_BLOCK_SHARDS` per lookup). (The band lookups, cheap beside them, run here.)"""
    n = len(stored)
    lookup = _range_search if resolve_index(index, n, threshold) == "flat" else _block_search
    found: list[tuple[np.ndarray, ...]] = []
    band: list[np.ndarray] = []
    # (query rows, target rows): references first, so that progress counts up to n
    for qs, ts in [(slice(0, n_ref), slice(n_ref, n)), (slice(n_ref, n), slice(0, n))]:
        q0, t0 = qs.start, ts.start
        if qs.start == qs.stop or ts.start == ts.stop:
            continue

        def allowed(qi: np.ndarray, tj: np.ndarray, q0: int = q0, t0: int = t0) -> np.ndarray:
            return qi + q0 != tj + t0

        def done(k: int, q0: int = q0) -> None:
            if progress is not None:
                progress(q0 + k)

        if executor is not None:
            parts = [_sharded_search(executor, variants[qs], stored[ts], threshold, q0, t0,
                                     done, blocks=lookup is _block_search)]
        else:
            parts = [lookup(variants[qs], stored[ts], threshold, allowed, done, nearest=True)]
        for b in range(bands.shape[1]):
            d, q, _, t = lookup(bands[qs, b:b + 1], bands[ts, b], threshold, allowed,
                                nearest=True)
            parts.append((d, q, np.zeros_like(q), t))
        for i, (d, q, v, t) in enumerate(parts):
            found.append((d, q + q0, v, t + t0))
            band.append(np.full(len(d), i > 0))
    if not found:
        return (*(np.zeros(0, np.int64) for _ in range(4)), np.zeros(0, bool))
    columns = [np.concatenate(col) for col in zip(*found, strict=True)]
    return (*columns, np.concatenate(band))


_SHARD = 2048  # query images per task of a sharded flat search
_BLOCK_SHARDS = 32  # tasks per sharded block-index lookup at most (each ships the database)


def _flat_shard(queries: np.ndarray, database: np.ndarray, threshold: int, q0: int,
                t0: int) -> tuple[np.ndarray, ...]:
    """One shard of a sharded flat search: ``queries`` are images ``q0``… of the search,
    ``database`` images ``t0``…; an image is never its own hit; indices local to the shard."""
    return _range_search(queries, database, threshold, lambda qi, tj: qi + q0 != tj + t0,
                         nearest=True)


_WORKER_INDEX: dict[bytes, BlockIndex] = {}  # a worker process's block index, by database
_WORKER_INDEX_LOCK = threading.Lock()


def _block_shard(queries: np.ndarray, database: np.ndarray, threshold: int, q0: int,
                 t0: int) -> tuple[np.ndarray, ...]:
    """One shard of a sharded block-index search (as :func:`_flat_shard`). The process keeps
    the index of the last database it was given, so each worker builds it once per lookup
    however many shards it runs (threads of one worker wait for one build)."""
    key = hashlib.blake2b(np.ascontiguousarray(database).view(np.uint8), digest_size=16).digest()
    with _WORKER_INDEX_LOCK:
        index = _WORKER_INDEX.get(key)
        if index is None:
            _WORKER_INDEX.clear()  # one index at a time: at 10^6 hashes it takes gigabytes
            index = _WORKER_INDEX[key] = BlockIndex(database)
    return _block_search(queries, database, threshold, lambda qi, tj: qi + q0 != tj + t0,
                         index=index, nearest=True)


def _sharded_search(executor: Executor, queries: np.ndarray, database: np.ndarray,
                    threshold: int, q0: int, t0: int,
                    progress: Callable[[int], None] | None, *, blocks: bool = False
                    ) -> tuple[np.ndarray, ...]:
    """The lookup of query images ``q0``… against database images ``t0``… (never an image
    against itself; the flat search's, or the block index's if ``blocks``), ``nearest=True``,
    its shards run through ``executor.map``: the same hits, indices local to ``queries`` and
    ``database``."""
    size = max(_SHARD, -(-len(queries) // _BLOCK_SHARDS)) if blocks else _SHARD
    starts = range(0, len(queries), size)
    parts = []
    shards = executor.map(_block_shard if blocks else _flat_shard,
                          [queries[s:s + size] for s in starts],
                          [database] * len(starts), [threshold] * len(starts),
                          [q0 + s for s in starts], [t0] * len(starts))
    for start, (d, q, v, t) in zip(starts, shards, strict=True):
        parts.append((d, q + start, v, t))
        if progress is not None:
            progress(min(len(queries), start + size))
    if not parts:
        return tuple(np.zeros(0, np.int64) for _ in range(4))
    return tuple(np.concatenate(col) for col in zip(*parts, strict=True))


def is_exact(resolved: str, threshold: int) -> bool:
    """Whether the ``flat`` or ``blocks`` search finds every pair within ``threshold`` bits."""
    return resolved == "flat" or threshold <= BLOCK_EXACT_RADIUS


def resolve_index(index: str, n: int, threshold: int) -> str:
    """``flat`` or ``blocks``: what ``index`` means for ``n`` images at ``threshold`` bits."""
    if index not in INDEXES:
        raise ValueError(f"index must be one of {', '.join(INDEXES)}, got {index!r}")
    if index != "auto":
        return index
    if threshold <= BLOCK_EXACT_RADIUS or n > FLAT_MAX_IMAGES:
        return "blocks"
    return "flat"


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
