"""Ingest and dedup of 10^5 real-size JPEGs against a 10^3 reference, end to end through the CLI.

    python benchmarks/dedup_e2e.py [--n 100000] [--similar 10000] [--photos DIR] [--dir DIR]
                                   [--seed S] [--index auto|flat|blocks] [--verify all|first]
                                   [--web crops|montage] [--workers W]

Issue 15's end-to-end target: 10^5 640×480 JPEGs ingested and deduplicated with a 10^3
reference in under an hour on this machine, a pool of similar images among them. Written from
the real photographs ``scripts/fetch_photos.sh`` unpacked (``benchmarks/realphotos.py``'s list):

- ``ref/``: ``--ref`` (1,000) crops of the photos after the first 20;
- ``similar/``: ``--similar`` (10^4) crops of the first 15 photos at 45-100 % of their size
  (``benchmarks/dedup_pool.py``'s pool: burst shots or video frames, most of them near copies);
- ``web/``: the rest, ``--n`` − ``--similar``, plus a planted copy of 1 % of the references
  (JPEG re-encoded, brightened 5 %) so that the reference side is exercised. ``--web crops``
  (the default): small crops (22-40 % of the photo's side) of the 80-odd photos after the
  first 20, upscaled: about 1,100 crops per photo, so every image has dozens of look-alike
  crops of its photo for the search to propose and the verification to reject: far more
  look-alikes than a pool of distinct photographs has. ``--web montage``: each image a 2×2
  montage of such crops of four random photos (real photographic content, distinct images:
  there are not 10^5 distinct photographs on this machine), so the search proposes mostly
  chance pairs, as in a pool of different photographs.

Each stage is the real ``blurset`` command in its own process (Prefect's ephemeral server
included): ingest ``ref``, ingest ``similar``, ingest ``web``, ``dedup --reference ref``.
Printed: each stage's wall seconds, the children's peak RSS, the dedup summary (pairs found
and verified, paths excluded, the planted reference copies found). The images are written once
per (n, similar, seed) under ``--dir`` (not timed; about 2 ms of CPU per image per worker) and
reused. No baseline runs here: the target is the hour; the last line is ``RESULT n=…
ingest_s=… dedup_s=… total_s=… peak_gb=… proposed=… verified=… excluded=… planted_found=…
index=… verify=… under_hour=…``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dedup_pool import SIZE, blurset, write_pool
from realphotos import default_photos_dir, load_photos

_PHOTOS: list[tuple[str, Image.Image]] = []  # a writer process's photos


def _crop(im: Image.Image, rng: np.random.Generator, lo: float, hi: float,
          size: tuple[int, int] = SIZE,
          resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    w = int(min(im.width, im.height * 4 / 3) * rng.uniform(lo, hi))
    h = int(w * 3 / 4)
    x = int(rng.integers(0, im.width - w + 1))
    y = int(rng.integers(0, im.height - h + 1))
    return im.crop((x, y, x + w, y + h)).resize(size, resample)


def _init(photos_dir: str) -> None:
    _PHOTOS.extend(load_photos(Path(photos_dir))[20:])


def _web_image(rng: np.random.Generator, kind: str) -> Image.Image:
    def photo() -> Image.Image:
        return _PHOTOS[int(rng.integers(len(_PHOTOS)))][1]

    if kind == "crops":
        return _crop(photo(), rng, 0.22, 0.40)
    out = Image.new("RGB", SIZE)
    half = (SIZE[0] // 2, SIZE[1] // 2)
    for k in range(4):
        out.paste(_crop(photo(), rng, 0.22, 0.40, half, Image.Resampling.BILINEAR),
                  ((k % 2) * half[0], (k // 2) * half[1]))
    return out


def _write_web(task: tuple[str, int, int, int, str]) -> int:
    """Images start…stop of web/ (each from its own seeded generator: any worker split gives
    the same files)."""
    dest, start, stop, seed, kind = task
    for i in range(start, stop):
        rng = np.random.default_rng((seed, i))
        _web_image(rng, kind).save(Path(dest) / f"{i:06d}.jpg", quality=int(rng.integers(80, 96)))
    return stop - start


def write_set(data: Path, photos_dir: Path, n: int, similar: int, refs: int, seed: int,
              workers: int, kind: str) -> None:
    photos = load_photos(photos_dir)
    if len(photos) < 40:
        raise SystemExit(f"need 40 photos, found {len(photos)}: run scripts/fetch_photos.sh")
    rng = np.random.default_rng(seed)
    (data / "ref").mkdir(parents=True, exist_ok=True)
    others = photos[20:]
    for i in range(refs):
        _name, im = others[i % len(others)]
        _crop(im, rng, 0.5, 1.0).save(data / "ref" / f"{i:05d}.jpg", quality=92)
    if similar:
        write_pool(data / "similar-tmp", photos, similar, seed)  # writes pool/ and ref/
        (data / "similar-tmp" / "pool").rename(data / "similar")
    web = data / "web"
    web.mkdir(exist_ok=True)
    count = n - similar
    chunk = 2000
    tasks = [(str(web), s, min(count, s + chunk), seed, kind) for s in range(0, count, chunk)]
    ctx = multiprocessing.get_context("spawn")
    done = 0
    with ctx.Pool(workers, initializer=_init, initargs=(str(photos_dir),)) as pool:
        for k in pool.imap_unordered(_write_web, tasks):
            done += k
            print(f"  web: {done}/{count}", flush=True)
    planted = rng.choice(refs, max(1, refs // 100), replace=False)
    for k, r in enumerate(sorted(planted)):
        with Image.open(data / "ref" / f"{r:05d}.jpg") as im:
            copy = ImageEnhance.Brightness(im.convert("RGB")).enhance(1.05)
        copy.save(web / f"planted-{k:03d}-ref{r:05d}.jpg", quality=85)
    (data / "done").write_text(json.dumps({"planted": [int(r) for r in sorted(planted)]}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="candidate images in all")
    parser.add_argument("--similar", type=int, default=10_000, help="of them, the similar pool")
    parser.add_argument("--ref", type=int, default=1000, help="reference images")
    parser.add_argument("--photos", type=Path, default=None, help="scripts/fetch_photos.sh's folder")
    parser.add_argument("--dir", type=Path, default=Path("build/dedup_e2e"),
                        help="where the images and the workspace are written (images reused)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--index", choices=("auto", "flat", "blocks"), default="auto")
    parser.add_argument("--verify", choices=("all", "first"), default="first")
    parser.add_argument("--web", choices=("crops", "montage"), default="crops",
                        help="the web images: crops of ~80 photos, or 2x2 montages of them")
    parser.add_argument("--workers", type=int, default=2, help="processes writing the images")
    args = parser.parse_args(argv)
    if not 0 <= args.similar <= args.n:
        parser.error("--similar must be between 0 and --n")
    data = args.dir / (f"n{args.n}-s{args.similar}-r{args.ref}-seed{args.seed}"
                       + ("-montage" if args.web == "montage" else ""))
    if not (data / "done").exists():
        t = time.perf_counter()
        write_set(data, args.photos or default_photos_dir(), args.n, args.similar, args.ref,
                  args.seed, args.workers, args.web)
        print(f"images written in {time.perf_counter() - t:.0f} s (not timed below)", flush=True)
    planted = json.loads((data / "done").read_text())["planted"]
    ws = data / f"ws-{time.strftime('%Y%m%d-%H%M%S')}"
    times = {}
    for name in ("ref", "similar", "web"):
        if (data / name).is_dir():
            times[name] = blurset(ws, "ingest", "--kind", "folder", "--name", name,
                                  str(data / name))
            print(f"ingest {name}: {times[name]:.1f} s", flush=True)
    t_dedup = blurset(ws, "dedup", "--reference", "ref", "--index", args.index,
                      "--verify", args.verify)
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    with sqlite3.connect(ws / "catalog.sqlite") as db:
        summary = json.loads(db.execute("SELECT summary FROM dedup_runs ORDER BY id DESC")
                             .fetchone()[0])
        found = {path for (path,) in db.execute(
            "SELECT candidate_path FROM duplicate_findings WHERE verdict = 'duplicate' AND "
            "candidate_source = 'web' AND reference_source = 'ref' AND "
            "candidate_path LIKE 'planted-%'")}
    ingest_s = sum(times.values())
    total = ingest_s + t_dedup
    print(f"dedup {t_dedup:.1f} s: {summary['pairs_proposed']} pairs found, "
          f"{summary['pairs_verified']} verified, {summary['excluded_paths']} paths excluded "
          f"({summary['excluded_as_reference_duplicates']} as reference duplicates), "
          f"index {summary['index']}; planted reference copies found "
          f"{len(found)}/{len(planted)}; peak RSS of a stage {peak_gb:.2f} GB")
    print(f"ingest + dedup: {total:.0f} s against the target of 3600 s "
          f"({total / 3600:.2f}x)")
    print(f"RESULT n={args.n} similar={args.similar} ref={args.ref} ingest_s={ingest_s:.1f} "
          f"dedup_s={t_dedup:.1f} total_s={total:.1f} peak_gb={peak_gb:.2f} "
          f"proposed={summary['pairs_proposed']} verified={summary['pairs_verified']} "
          f"excluded={summary['excluded_paths']} planted_found={len(found)}/{len(planted)} "
          f"index={summary['index']} verify={args.verify} web={args.web} "
          f"under_hour={int(total < 3600)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
