"""Dedup's all-pairs hash search at 10^4…10^6 images: the block index against the flat search.

    python benchmarks/dedup_scale.py [--n 1000000] [--sample 200] [--seed 0] [--dask W]

Synthetic images with the real variant structure: ``--pool`` synthetic 64×64 thumbs (smooth
random fields) are hashed by ``blurset.pipeline.stages.dedup.search`` itself (162 window/mirror
variants + 2 band hashes each); image ``i`` takes the hashes of pool thumb ``i % pool`` XOR a
random 64-bit mask of its own (one for the variants, one per band), so the distances between one
image's variants are those of a real thumb while different images are unrelated random hashes.
1 % of the images are planted copies of a random other image: its masks XOR ``k`` common flipped
bits (``k`` uniform in 0…12, the dedup threshold), and each of its hashes XOR 0-2 bits of its own.

For each size (10^4, 10^5, then ``--n``; smaller ``--n`` stops there):

- **blocks**: ``search_hits(..., index="blocks")``, the whole all-pairs search (every image's
  variants against every stored phash, every band against every band), timed (wall and CPU);
- **flat**: the exhaustive faiss search of ``search_hits(..., index="flat")``. At 10^4 it runs
  whole; above, it runs for ``--sample`` random query images (their 164 hashes against all N)
  and its full time is **extrapolated** as N × the time per sampled image (the flat search is
  one query image at a time, so this is its own cost model, not a fit).

Recall: the pairs (query image, other image) the flat search finds for the sampled query images
(all of them at 10^4), and how many of those the block index finds with the same query image.
Planted copies: the pairs the flat search finds among all planted (copy, original) pairs
(computed directly by popcount), and how many the block index finds, by ``k``. The exponent is
the log-log slope of the block index's wall time against N over the sizes run (``cpu_exponent``:
of its CPU time, steadier on shared cores). Last line: ``RESULT n=… seconds=… recall_vs_flat=…
peak_gb=… exponent=… flat_seconds=… flat_extrapolated=… speedup=… cpu_seconds=…
cpu_exponent=… flat_cpu_seconds=… cpu_speedup=… planted_recall=…`` for the largest N.

``--dask W``: at the largest N the block-index search also runs sharded on a
``distributed.LocalCluster`` of ``W`` worker processes (one thread each; what ``blurset
--dask-address`` does), timed against the local run above: ``dask_seconds=… dask_vs_local=…
dask_same=…`` (1 when it found exactly the same hits) are added to the last line.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Sequence

THRESHOLD = 12  # the dedup default (search.DEFAULT_THRESHOLD)


def pool_hashes(size: int, rng) -> tuple:
    """(size, 162) variant and (size, 2) band hashes of synthetic smooth thumbs."""
    import cv2
    import numpy as np

    from blurset.pipeline.stages.dedup import search

    thumbs = np.empty((size, 64, 64), np.uint8)
    for i in range(size):
        low = cv2.resize(rng.normal(0, 1, (8, 8)).astype(np.float32), (64, 64),
                         interpolation=cv2.INTER_CUBIC)
        mid = cv2.resize(rng.normal(0, 0.5, (16, 16)).astype(np.float32), (64, 64),
                         interpolation=cv2.INTER_CUBIC)
        thumbs[i] = np.clip(128 + 40 * (low + mid), 0, 255)
    return search.variant_hashes(thumbs).reshape(size, -1), search.band_hashes(thumbs)


def random_masks(shape, rng):
    import numpy as np

    return rng.integers(0, 1 << 63, shape, dtype=np.uint64) ^ (
        rng.integers(0, 2, shape, dtype=np.uint64) << np.uint64(63))


def flips(shape, counts, rng):
    """uint64 masks of ``shape`` with ``counts`` (broadcast) random bits set each."""
    import numpy as np

    keys = rng.random(shape + (64,))
    ranks = np.argsort(np.argsort(keys, axis=-1), axis=-1)  # a random permutation per mask
    bits = ranks < np.asarray(counts)[..., None]
    return (bits.astype(np.uint64) << np.arange(64, dtype=np.uint64)).sum(axis=-1,
                                                                         dtype=np.uint64)


def make_images(n: int, pool: tuple, rng) -> tuple:
    """(variants (n, 162), bands (n, 2), stored (n,), copies (m,), originals (m,), k (m,))."""
    import numpy as np

    pool_var, pool_band = pool
    p = np.arange(n) % len(pool_var)
    var_mask, band_mask = random_masks(n, rng), random_masks((n, 2), rng)
    copies = rng.choice(n, max(1, n // 100), replace=False)
    originals = (copies + rng.integers(1, n, len(copies))) % n
    k = rng.integers(0, THRESHOLD + 1, len(copies))
    common = flips((len(copies),), k, rng)
    p[copies] = p[originals]
    var_mask[copies] = var_mask[originals] ^ common
    band_mask[copies] = band_mask[originals] ^ common[:, None]
    variants = pool_var[p] ^ var_mask[:, None]
    bands = pool_band[p] ^ band_mask
    own = rng.integers(0, 3, (len(copies), variants.shape[1] + 2))
    noise = flips((len(copies), variants.shape[1] + 2), own, rng)
    variants[copies] ^= noise[:, :-2]
    bands[copies] ^= noise[:, -2:]
    stored = variants[:, 0].copy()  # the whole, unmirrored window is the stored phash
    return variants, bands, stored, copies, originals, k


def planted_found_by_flat(variants, bands, stored, copies, originals):
    """Whether the exhaustive search pairs each planted copy with its original (either way)."""
    import numpy as np

    def near(a, b):
        return np.bitwise_count(a ^ b) <= THRESHOLD

    return (near(variants[copies], stored[originals, None]).any(axis=1)
            | near(variants[originals], stored[copies, None]).any(axis=1)
            | near(bands[copies], bands[originals]).any(axis=1))


def flat_hits(variants, bands, stored, queries) -> tuple:
    """The flat search's hits (columns of ``search_hits``) with the images ``queries`` as the
    query side, against all images: what ``search_hits(..., index="flat")`` finds for them."""
    import numpy as np

    from blurset.pipeline.stages.dedup import search

    def allowed(qi, tj):
        return queries[qi] != tj

    found = [search._range_search(variants[queries], stored, THRESHOLD, allowed)]
    for b in range(bands.shape[1]):
        d, q, _, t = search._range_search(bands[queries, b:b + 1], bands[:, b], THRESHOLD,
                                          allowed)
        found.append((d, q, np.zeros_like(q), t))
    d, q, v, t = (np.concatenate(col) for col in zip(*found, strict=True))
    band = np.concatenate([np.full(len(f[0]), i > 0) for i, f in enumerate(found)])
    return d, queries[q], v, t, band


def directed_pairs(columns, queries) -> set[tuple[int, int]]:
    """(query image, target image) of the hits whose query image is in ``queries``."""
    import numpy as np

    _, q, _, t, _ = columns
    keep = np.isin(q, queries)
    return set(zip(q[keep].tolist(), t[keep].tolist(), strict=True))


def unique_pairs(columns) -> int:
    import numpy as np

    _, q, _, t, _ = columns
    return len(np.unique(np.minimum(q, t) * np.int64(1 << 32) + np.maximum(q, t)))


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: kB


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def sorted_hits(columns) -> list:
    import numpy as np

    order = np.lexsort(columns[::-1])
    return [np.asarray(c)[order] for c in columns]


def on_cluster(workers: int, variants, bands, stored, local) -> dict:
    """The block-index search sharded on a LocalCluster of ``workers`` processes: its wall
    time and whether its hits are the local run's."""
    from distributed import Client, LocalCluster

    from blurset.pipeline.stages.dedup import search

    with LocalCluster(n_workers=workers, processes=True, threads_per_worker=1,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        wall, _, remote = timed(lambda: search.search_hits(
            variants, bands, stored, 0, THRESHOLD, index="blocks",
            executor=client.get_executor()))
    same = all((a == b).all() for a, b in zip(sorted_hits(remote), sorted_hits(local),
                                               strict=True))
    return {"dask_seconds": wall, "dask_same": same and len(remote[0]) == len(local[0])}


def run_size(n: int, pool: tuple, sample: int, rng, dask_workers: int = 0) -> dict:
    import numpy as np

    from blurset.pipeline.stages.dedup import search

    variants, bands, stored, copies, originals, k = make_images(n, pool, rng)
    wall, cpu, blocks = timed(lambda: search.search_hits(variants, bands, stored, 0, THRESHOLD,
                                                         index="blocks"))
    dask = on_cluster(dask_workers, variants, bands, stored, blocks) if dask_workers else {}
    whole = n <= 10_000
    queries = np.arange(n) if whole else np.sort(rng.choice(n, sample, replace=False))
    flat_wall, flat_cpu, flat = timed(lambda: flat_hits(variants, bands, stored, queries))
    scale = n / len(queries)
    want = directed_pairs(flat, queries)
    got = directed_pairs(blocks, queries)
    planted = planted_found_by_flat(variants, bands, stored, copies, originals)
    q, t = blocks[1], blocks[3]
    found = set(zip(np.minimum(q, t).tolist(), np.maximum(q, t).tolist(), strict=True))
    by_blocks = np.array([(min(c, o), max(c, o)) in found for c, o in
                          zip(copies.tolist(), originals.tolist(), strict=True)])
    per_k = {int(d): (int((by_blocks & planted)[k == d].sum()), int(planted[k == d].sum()))
             for d in np.unique(k)}
    return {"n": n, "seconds": wall, "cpu": cpu, "pairs": unique_pairs(blocks),
            "hits": len(blocks[0]), "flat_seconds": flat_wall * scale,
            "flat_cpu": flat_cpu * scale, "extrapolated": not whole, "flat_queries": len(queries),
            "want": len(want), "got": len(want & got), "extra": len(got - want),
            "planted": int(planted.sum()), "planted_found": int((by_blocks & planted).sum()),
            "per_k": per_k, "peak": peak_gb(), **dask}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="largest number of images")
    parser.add_argument("--sample", type=int, default=200,
                        help="query images the flat search runs for above 10^4")
    parser.add_argument("--pool", type=int, default=2000, help="distinct synthetic thumbs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dask", type=int, default=0, metavar="W",
                        help="also run the largest N on a LocalCluster of W worker processes")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import faiss
    import numpy as np

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    pool = pool_hashes(args.pool, rng)
    print(f"{args.pool} pool thumbs hashed in {time.perf_counter() - start:.0f} s; threshold "
          f"{THRESHOLD}; one thread; times in seconds (wall, CPU)", flush=True)
    sizes = [s for s in (10_000, 100_000) if s < args.n] + [args.n]
    rows = []
    for n in sizes:
        r = run_size(n, pool, args.sample, rng, args.dask if n == sizes[-1] else 0)
        rows.append(r)
        flat_kind = (f"extrapolated from {r['flat_queries']} query images"
                     if r["extrapolated"] else "measured")
        print(f"N={n}: blocks {r['seconds']:.1f} s ({r['cpu']:.1f} CPU), {r['hits']} hits, "
              f"{r['pairs']} pairs; flat {r['flat_seconds']:.0f} s ({flat_kind}); "
              f"speedup {r['flat_seconds'] / r['seconds']:.0f}×; recall vs flat "
              f"{r['got']}/{r['want']} = {r['got'] / max(1, r['want']):.4f} "
              f"(+{r['extra']} not in flat); planted pairs found "
              f"{r['planted_found']}/{r['planted']}; peak {r['peak']:.2f} GB", flush=True)
        print("  planted recall by k (common bits flipped): " + " ".join(
            f"{d}:{a}/{b}" for d, (a, b) in r["per_k"].items()), flush=True)
    ns = np.log([r["n"] for r in rows])

    def slope(key: str) -> float:
        ts = np.log([r[key] for r in rows])
        return float(np.polyfit(ns, ts, 1)[0]) if len(rows) > 1 else float("nan")

    exponent, cpu_exponent = slope("seconds"), slope("cpu")
    last = rows[-1]
    print(f"RESULT n={last['n']} seconds={last['seconds']:.1f} "
          f"recall_vs_flat={last['got'] / max(1, last['want']):.4f} peak_gb={last['peak']:.2f} "
          f"exponent={exponent:.2f} flat_seconds={last['flat_seconds']:.0f} "
          f"flat_extrapolated={int(last['extrapolated'])} "
          f"speedup={last['flat_seconds'] / last['seconds']:.0f} cpu_seconds={last['cpu']:.1f} "
          f"cpu_exponent={cpu_exponent:.2f} flat_cpu_seconds={last['flat_cpu']:.0f} "
          f"cpu_speedup={last['flat_cpu'] / last['cpu']:.0f} "
          f"planted_recall={last['planted_found'] / max(1, last['planted']):.4f}"
          + (f" dask_seconds={last['dask_seconds']:.1f} "
             f"dask_vs_local={last['dask_seconds'] / last['seconds']:.2f} "
             f"dask_same={int(last['dask_same'])}" if "dask_seconds" in last else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
