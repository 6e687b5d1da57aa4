"""Dedup time against the verifier it replaced, on the same hash records in one process.

    python benchmarks/dedup_speed.py SET [SET ...] [--rounds 3] [--baseline 594a865]
                                     [--workers 2]

Each ``SET`` is a folder with a ``truth.json`` (``benchmarks/realphotos.py`` or the sample
bench, ``benchmarks/dedup_quality.py``'s sets): the first set's references are the references,
every other image of every set (each distinct content once) is a candidate, so three real sets
and the sample bench make about 10^4 images. Every image is hashed once
(``blurset.pipeline.stages.hashing.hash_opened``); both methods then get the same records:

- **baseline**: ``find_duplicates`` of the dedup module at commit ``--baseline`` (default
  594a865, the verifier before the ``uncertain`` verdict, colour and coarse evidence; read with
  ``git show`` from this repository's history, so run this inside a clone);
- **now**: ``blurset.pipeline.stages.dedup.find_duplicates`` in one process, as the baseline;
- **now_workers** (with ``--workers N``, N > 1): the same with N verification processes (what
  ``find_duplicates`` does by default on a machine with N cores and at least 4,000·N pairs).

Rounds alternate the two (baseline first) so that load on the shared cores hits both alike;
each figure is the best round, wall clock and CPU seconds of this process and its workers.
The last line is ``RESULT images=… pairs=… baseline_pairs=… baseline_s=… now_s=…
now_vs_baseline=… baseline_cpu_s=… now_cpu_s=… cpu_ratio=… [workers=… workers_s=…
workers_vs_baseline=… workers_cpu_s=…]`` (ratios: now / baseline; below 1 is faster; the two
search for different numbers of pairs: ``pairs`` and ``baseline_pairs``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASELINE_PATH = "pipeline/stages/dedup/search.py"  # where the whole dedup lived at 594a865


def load_baseline(commit: str):
    """The dedup module of ``commit``, imported from ``git show`` under a private name."""
    source = subprocess.run(["git", "-C", str(HERE.parent), "show", f"{commit}:{BASELINE_PATH}"],
                            check=True, capture_output=True, text=True).stdout
    tmp = Path(tempfile.mkdtemp(prefix="blurset-baseline-")) / f"dedup_{commit}.py"
    tmp.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(f"dedup_{commit}", tmp)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def hash_sets(roots: Sequence[Path]) -> tuple[list[tuple[str, object]], list[tuple[str, object]]]:
    """(references, candidates) as (key, ImageHashes), each distinct content once."""
    from PIL import Image

    sys.path.insert(0, str(HERE))
    import dedup_quality as dq

    from blurset.pipeline.stages.hashing import hash_opened

    taken: set[str] = set()
    refs, cands = [], []
    for n, root in enumerate(roots):
        sample = dq.load_sample(root)
        ids = dq.content_ids(sample)
        r = dq.unique_in_order(sample.refs, ids, taken)
        c = dq.unique_in_order(sample.cands, ids, taken)
        for bucket, paths in ((refs if n == 0 else cands, r), (cands, c)):
            for p in paths:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    with Image.open(root / p) as im:
                        bucket.append((f"{n}:{p}", hash_opened(im)))
    return refs, cands


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    out = fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu, out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="+", type=Path, help="folders with a truth.json")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default="594a865", help="commit of the baseline verifier")
    parser.add_argument("--workers", type=int, default=2,
                        help="verification processes of the now_workers run (1: skip it)")
    args = parser.parse_args(argv)

    from blurset.pipeline.stages import dedup

    old = load_baseline(args.baseline)
    start = time.perf_counter()
    refs, cands = hash_sets(args.sets)
    print(f"{len(refs)} references, {len(cands)} candidates hashed in "
          f"{time.perf_counter() - start:.0f} s; OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)
    old_r = [old.HashRecord(k, h) for k, h in refs]
    old_c = [old.HashRecord(k, h) for k, h in cands]
    new_r = [dedup.HashRecord(k, h) for k, h in refs]
    new_c = [dedup.HashRecord(k, h) for k, h in cands]
    calls = {"baseline": lambda: old.find_duplicates(old_r, old_c),
             "now": lambda: dedup.find_duplicates(new_r, new_c, workers=1)}
    if args.workers > 1:
        calls["now_workers"] = lambda: dedup.find_duplicates(new_r, new_c, workers=args.workers)
    best = {name: (float("inf"), float("inf")) for name in calls}
    pairs = {}
    for r in range(args.rounds):
        for name, call in calls.items():
            wall, cpu, matches = timed(call)
            pairs[name] = len(matches)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
            print(f"round {r + 1} {name:11} {wall:7.1f} s wall {cpu:7.1f} s CPU "
                  f"{len(matches)} pairs", flush=True)
    (bw, bc), (nw, nc) = best["baseline"], best["now"]
    line = (f"RESULT images={len(refs) + len(cands)} pairs={pairs['now']} "
            f"baseline_pairs={pairs['baseline']} baseline_s={bw:.1f} now_s={nw:.1f} "
            f"now_vs_baseline={nw / bw:.2f} baseline_cpu_s={bc:.1f} now_cpu_s={nc:.1f} "
            f"cpu_ratio={nc / bc:.2f}")
    if args.workers > 1:
        ww, wc = best["now_workers"]
        line += (f" workers={args.workers} workers_s={ww:.1f} workers_vs_baseline={ww / bw:.2f}"
                 f" workers_cpu_s={wc:.1f}")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
