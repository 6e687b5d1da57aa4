"""Verification throughput on the pairs a real search proposes, one core.

    python benchmarks/dedup_verify.py --workspace WS [--n 20000] [--pairs 3000]
                                      [--skip-source NAME] [--seed S]

Takes the first ``--n`` images of a workspace's catalog (references first), runs the flat search
over them as ``dedup`` does, samples ``--pairs`` of the proposed pairs and verifies them in this
process (one thread): first with every measure computed for every alignment and every pair ECC
can refine refined (the baseline: ``measure(full=True)``, no ``max_colour_error_for_ecc``), then
as ``dedup`` runs it (measures skipped where they cannot change the verdict, no ECC for colours
too far apart). Both must give the same verdict (duplicate, uncertain, rejected) to every pair;
the evidence a rejected pair is rejected on may differ, and is counted. The workspace is one that ``dedup_e2e.py`` or
``dedup_pool.py`` left behind; ``--skip-source similar`` leaves their pool of overlapping crops out,
so that the sample is mostly the chance pairs that dominate at 10^5 images. The last line is
``RESULT pairs=… full_s=… fast_s=… full_pairs_per_s=… pairs_per_s=… speedup=… same=…
other_evidence=…``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from blurset.pipeline.catalog import Catalog
from blurset.pipeline.stages.dedup import _verify_jobs, search, verify
from blurset.pipeline.stages.hashing import ImageHashes


def load(workspace: Path, n: int, skip: str | None) -> list[ImageHashes]:
    db = workspace / "catalog.sqlite"
    if not db.is_file():
        raise SystemExit(f"{db} not found: --workspace takes a blurset workspace with a SQLite "
                         "catalog (e.g. the ws-* folder dedup_e2e.py or dedup_pool.py wrote)")
    rows = sorted(Catalog(f"sqlite:///{db}").hash_rows(),
                  key=lambda r: (r["source"] != "ref", r["source"], r["rel_path"]))
    seen: set[int] = set()
    out = []
    for r in rows:
        if r["source"] == skip or r["image_id"] in seen:
            continue
        seen.add(r["image_id"])
        out.append(ImageHashes.from_stored(int(r["phash"], 16), r["thumb"], r.get("chroma")))
        if len(out) >= n:
            break
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--n", type=int, default=20_000, help="images taken from the catalog")
    parser.add_argument("--pairs", type=int, default=3_000, help="proposed pairs verified")
    parser.add_argument("--skip-source", help="a source to leave out (e.g. similar)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    records = load(args.workspace, args.n, args.skip_source)
    thumbs = np.stack([search.thumb64(h) for h in records])
    stored = np.array([h.phash for h in records], np.uint64)
    t = time.perf_counter()
    pairs = search.search_pairs(thumbs, stored, min(1000, len(records) // 10),
                                search.DEFAULT_THRESHOLD, index="flat")
    print(f"{len(records)} images: the search proposed {len(pairs)} pairs in "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    rng = np.random.default_rng(args.seed)
    chosen = np.sort(rng.choice(len(pairs), min(args.pairs, len(pairs)), replace=False))
    jobs = [(int(pairs.earlier[p]), int(pairs.later[p]), search.initialisations(pairs.hits(p)))
            for p in chosen]
    chromas = [h.chroma for h in records]
    every_refinement = dataclasses.replace(verify.BARS, max_colour_error_for_ecc=float("inf"))

    def timed(bars: verify.Bars, full: bool) -> tuple[float, list]:
        _verify_jobs(thumbs, chromas, jobs[:50], bars, full=full)  # warm the warp caches
        start = time.perf_counter()
        out = _verify_jobs(thumbs, chromas, jobs, bars, full=full)
        return time.perf_counter() - start, out

    full_s, full_out = timed(every_refinement, full=True)
    fast_s, fast_out = timed(verify.BARS, full=False)
    same = [v.verdict for _, v in full_out] == [v.verdict for _, v in fast_out]
    other = sum(a != b for a, b in zip(full_out, fast_out))
    print("verdicts:", dict(Counter(f"{v.verdict}/{v.evidence}" for _, v in fast_out)))
    print(f"every measure and refinement: {len(jobs) / full_s:.0f} pairs/s; as dedup runs it: "
          f"{len(jobs) / fast_s:.0f} pairs/s ({full_s / fast_s:.2f}x); same verdicts: {same} "
          f"({other} rejected on other evidence)")
    print(f"RESULT pairs={len(jobs)} full_s={full_s:.2f} fast_s={fast_s:.2f} "
          f"full_pairs_per_s={len(jobs) / full_s:.0f} pairs_per_s={len(jobs) / fast_s:.0f} "
          f"speedup={full_s / fast_s:.2f} same={int(same)} other_evidence={other}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
