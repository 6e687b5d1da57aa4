"""Ingest and dedup of a pool of similar real photographs, end to end through the CLI.

    python benchmarks/dedup_pool.py [--n 10000] [--photos DIR] [--dir DIR] [--seed S]
                                    [--index auto|flat|blocks] [--verify all|first] [--dask]

Issue 15's pool: ``--n`` 640×480 JPEGs cut from 15 real photographs at random positions and
scales (overlapping crops, as burst shots or video frames give: a pool where the search proposes
many pairs), plus a reference source of 100 crops of 5 other photographs. Photos: those
``scripts/fetch_photos.sh`` unpacked (``benchmarks/realphotos.py``'s list). Each stage is the
real ``blurset`` command in its own process (Prefect's ephemeral server included, as a user
runs it): ingest of the reference, ingest of the pool, ``dedup --reference ref --verify V``
(``first``: each candidate's pairs until its first duplicate). Printed: each stage's wall
seconds, the children's peak RSS, the pairs proposed and verified and the verdicts, and the
dedup time and pairs per second against the issue's measurement on the same kind of pool
(345 s for 134,720 pairs, main before issue 15; named, not re-run: that pool was cut from other
photos, so its pair count differs). The last line is ``RESULT n=… ingest_s=… dedup_s=… pairs=…
duplicates=… rejected=… uncertain=… peak_gb=… … pairs_per_s=… verify=… proposed=…
excluded=…`` (``pairs``: verified; ``pairs_per_s``: proposed pairs settled per second).
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realphotos import default_photos_dir, load_photos

ISSUE_DEDUP_S = 345.0  # issue 15: 10^4 such JPEGs from 15 photos, dedup on main before it,
ISSUE_PAIRS = 134_720  # ... with this many pairs proposed by the search
SIZE = (640, 480)


def write_pool(dest: Path, photos: list[tuple[str, Image.Image]], n: int, seed: int) -> None:
    """``n`` crops of the first 15 photos into dest/pool, 100 of the next 5 into dest/ref."""
    rng = np.random.default_rng(seed)
    pool, ref = photos[:15], photos[15:20]
    for folder, chosen, count in (("pool", pool, n), ("ref", ref, 100)):
        out = dest / folder
        out.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            _name, im = chosen[i % len(chosen)]
            scale = rng.uniform(0.45, 1.0)  # the crop's share of the photo's shorter fit
            w = int(min(im.width, im.height * 4 / 3) * scale)
            h = int(w * 3 / 4)
            x = int(rng.integers(0, im.width - w + 1))
            y = int(rng.integers(0, im.height - h + 1))
            crop = im.crop((x, y, x + w, y + h)).resize(SIZE, Image.Resampling.LANCZOS)
            crop.save(out / f"{i:06d}.jpg", quality=int(rng.integers(80, 96)))


def blurset(ws: Path, *args: str) -> float:
    start = time.perf_counter()
    with open(ws.parent / f"{ws.name}.log", "a") as log:  # the command's output and progress
        subprocess.run([sys.executable, "-m", "blurset.pipeline.cli.main", "-w", str(ws), *args],
                       check=True, stdout=log, stderr=log)
    return time.perf_counter() - start


def run_stages(ws: Path, args: argparse.Namespace, *global_args: str) -> tuple[float, ...]:
    """Ingest of ref and pool, dedup: each command's seconds."""
    data = ws.parent
    return (blurset(ws, *global_args, "ingest", "--kind", "folder", "--name", "ref",
                    str(data / "ref")),
            blurset(ws, *global_args, "ingest", "--kind", "folder", "--name", "pool",
                    str(data / "pool")),
            blurset(ws, *global_args, "dedup", "--reference", "ref", "--index", args.index,
                    "--verify", args.verify))


def outcome(ws: Path) -> tuple[dict, dict, set]:
    """The verdict counts (near duplicates), the last run's summary and the excluded paths."""
    with sqlite3.connect(ws / "catalog.sqlite") as db:
        verdicts = dict(db.execute("SELECT verdict, count(*) FROM duplicate_findings "
                                   "WHERE method != 'sha256' GROUP BY verdict").fetchall())
        summary = json.loads(db.execute("SELECT summary FROM dedup_runs ORDER BY id DESC")
                             .fetchone()[0])
        excluded = set(db.execute("SELECT source, rel_path FROM image_paths "
                                  "WHERE excluded IS NOT NULL").fetchall())
    return verdicts, summary, excluded


def on_dask(data: Path, args: argparse.Namespace) -> tuple[float, float, Path]:
    """The same commands with --dask-address of a LocalCluster of 2 worker processes:
    (ingest seconds, dedup seconds, the workspace they ran in)."""
    from distributed import LocalCluster
    ws = data / f"ws-dask-{time.strftime('%Y%m%d-%H%M%S')}"
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                      dashboard_address=None, host="127.0.0.1") as cluster:
        t_ref, t_pool, t_dedup = run_stages(ws, args, "--dask-address", cluster.scheduler_address)
    return t_ref + t_pool, t_dedup, ws


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="images in the pool")
    parser.add_argument("--photos", type=Path, default=None, help="scripts/fetch_photos.sh's folder")
    parser.add_argument("--dir", type=Path, default=Path("build/dedup_pool"),
                        help="where the pool and the workspace are written (reused)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--index", choices=("auto", "flat", "blocks"), default="auto")
    parser.add_argument("--verify", choices=("all", "first"), default="all",
                        help="dedup --verify: all pairs, or each candidate's up to its first duplicate")
    parser.add_argument("--dask", action="store_true",
                        help="also run the commands on a LocalCluster of 2 worker processes")
    args = parser.parse_args(argv)
    photos = load_photos(args.photos or default_photos_dir())
    if len(photos) < 20:
        parser.error(f"need 20 photos, found {len(photos)}: run scripts/fetch_photos.sh")
    data = args.dir / f"n{args.n}-s{args.seed}"
    if not (data / "pool" / f"{args.n - 1:06d}.jpg").exists():
        t = time.perf_counter()
        write_pool(data, photos, args.n, args.seed)
        print(f"pool written: {args.n} + 100 JPEGs in {time.perf_counter() - t:.1f} s")
    ws = data / f"ws-{time.strftime('%Y%m%d-%H%M%S')}"
    t_ref, t_pool, t_dedup = run_stages(ws, args)
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    verdicts, summary, excluded = outcome(ws)
    pairs = sum(verdicts.values())
    proposed = summary.get("pairs_proposed", pairs)
    print(f"ingest: reference {t_ref:.1f} s, pool {t_pool:.1f} s; dedup {t_dedup:.1f} s "
          f"({proposed} pairs found, {pairs} verified: {verdicts}; index "
          f"{summary.get('index')}; {summary['excluded_paths']} paths excluded); "
          f"peak RSS of a stage {peak_gb:.2f} GB")
    rate, issue_rate = proposed / t_dedup, ISSUE_PAIRS / ISSUE_DEDUP_S
    if args.dask:
        dask = on_dask(data, args)
        d_verdicts, _, d_excluded = outcome(dask[2])
        same = d_verdicts == verdicts and d_excluded == excluded
        dask_ratio = (dask[0] + dask[1]) / (t_ref + t_pool + t_dedup)
        print(f"on a LocalCluster of 2 worker processes: ingest {dask[0]:.1f} s, dedup "
              f"{dask[1]:.1f} s; {dask_ratio:.2f}x the local time; same exclusions and "
              f"verdict counts as the local run: {same}")
    print(f"dedup against the issue's measurement ({ISSUE_DEDUP_S:.0f} s for {ISSUE_PAIRS} "
          f"pairs): {t_dedup / ISSUE_DEDUP_S:.2f}x the time, {rate:.0f} pairs found settled "
          f"per second against {issue_rate:.0f} ({rate / issue_rate:.2f}x)")
    print(f"RESULT n={args.n} ingest_s={t_ref + t_pool:.1f} dedup_s={t_dedup:.1f} "
          f"pairs={pairs} duplicates={verdicts.get('duplicate', 0)} "
          f"rejected={verdicts.get('rejected', 0)} uncertain={verdicts.get('uncertain', 0)} "
          f"peak_gb={peak_gb:.2f} index={summary.get('index')} "
          f"dedup_vs_issue={t_dedup / ISSUE_DEDUP_S:.2f} pairs_per_s={rate:.0f} "
          f"pairs_per_s_vs_issue={rate / issue_rate:.2f} verify={args.verify} "
          f"proposed={proposed} excluded={summary['excluded_paths']}"
          + (f" dask_ingest_s={dask[0]:.1f} dask_dedup_s={dask[1]:.1f} "
             f"dask_vs_local={dask_ratio:.2f} same_catalog={int(same)}" if args.dask else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
