"""Release shard-writing throughput against a plain copy of the same bytes to the same disk.

    python benchmarks/release_write.py [--images N] [--repeats R] [--workdir DIR]

Builds a CUHK-layout source of ``--images`` JPEGs (~640 px wide, quality 90) whose ground-truth
masks are the real CUHK masks in ``../shared/data/cuhk_gt`` (the photos, cut from the
package-shipped ones, blurred where their mask is 255), ingests it into a fresh workspace, then
``--repeats`` times, interleaved (``os.sync()`` before each):

- release: ``blurset.pipeline.release.build_release`` with the published 800/200 split; the time
  is its shard-writing step (reading every image and mask object, building the Arrow row groups,
  writing the Parquet shards, sha256 while writing, fsync), from ``ReleaseInfo.timings``;
- copy: the same image and mask objects read and appended to one file in the same folder,
  fsync'd once: the fastest a plain copy of those bytes can go.

MB/s counts the image + mask bytes (1 MB = 10^6 bytes); the best pass of each is reported
(this machine's disk is shared and noisy), with the median of the per-pass ratios. The
object store is page-cached by a warm-up read first, so both read from memory and the disk
only sees the writes. The last line is machine-readable:
``RESULT release_mb_s=… copy_mb_s=… ratio=…`` (release / copy; the target is ≥ 0.8).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
KIM = str(SHARED / "cuhk_splits" / "kim_pg2018_{split}_list.txt")


def make_cuhk(dest: Path, count: int, seed: int = 0) -> int:
    """A CUHK-layout folder: ``image/<stem>.jpg`` cut from real photos, ``gt/<stem>.png``."""
    import cv2
    import numpy as np
    from PIL import Image

    from blurset.pipeline.demo.transforms import photo_pool

    masks = sorted((SHARED / "cuhk_gt").glob("*.png"))
    if not masks:
        raise SystemExit(f"no CUHK masks in {SHARED / 'cuhk_gt'}")
    rng = np.random.default_rng(seed)
    pool = photo_pool()
    (dest / "image").mkdir(parents=True)
    (dest / "gt").mkdir()
    picks = rng.choice(len(masks), size=min(count, len(masks)), replace=False)
    for k, i in enumerate(sorted(picks)):
        mask_path = masks[i]
        with Image.open(mask_path) as m:
            mask = np.asarray(m.convert("L")) >= 128
        h, w = mask.shape
        _, photo = pool[k % len(pool)]
        pw, ph = photo.size
        scale = max(w / pw, h / ph) * float(rng.uniform(1.0, 1.4))
        big = photo.resize((max(w, round(pw * scale)), max(h, round(ph * scale))),
                           Image.Resampling.BILINEAR)
        x = int(rng.integers(0, big.width - w + 1))
        y = int(rng.integers(0, big.height - h + 1))
        sharp = np.asarray(big.crop((x, y, x + w, y + h)).convert("RGB"))
        blurred = cv2.GaussianBlur(sharp, (0, 0), float(rng.uniform(2, 5)))
        grain = rng.normal(0, 4, sharp.shape)  # sensor noise: JPEG sizes of real photos
        out = np.clip(np.where(mask[..., None], blurred, sharp) + grain, 0, 255).astype(np.uint8)
        Image.fromarray(out).save(dest / "image" / f"{mask_path.stem}.jpg", quality=90)
        shutil.copyfile(mask_path, dest / "gt" / mask_path.name)
    return len(picks)


def copy_bytes(paths: list[Path], target: Path) -> int:
    """Append every file to ``target`` and fsync once; the bytes written."""
    n = 0
    with target.open("xb") as out:
        for p in paths:
            n += out.write(p.read_bytes())
        out.flush()
        os.fsync(out.fileno())
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--workdir", type=Path, help="keep the workspace here (default: a temp dir)")
    args = ap.parse_args(argv)

    from blurset.pipeline import release as R
    from blurset.pipeline.stages.ingest import ingest_batch
    from blurset.pipeline.stages.sources import scan_source
    from blurset.pipeline.workspace import Workspace

    work = args.workdir or Path(tempfile.mkdtemp(prefix="release-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        n = make_cuhk(work / "cuhk", args.images)
        ws = Workspace.open(work / "ws")
        catalog = ws.catalog()
        catalog.register_source("cuhk", "cuhk", str(work / "cuhk"))
        res = ingest_batch(work / "cuhk", scan_source("cuhk", work / "cuhk").items,
                           ws.objects.root, ws.quarantine_store.root)
        catalog.record_batch("cuhk", res.images, res.paths, res.masks, res.quarantined)
        print(f"workspace: {n} images with masks ingested in {time.perf_counter() - t:.1f} s")

        objects = [ws.objects.root / im.object_path for im in res.images]
        objects += [ws.objects.root / m.object_path for m in res.masks]
        data = sum(len(p.read_bytes()) for p in objects)  # and the page cache is warm
        release, copy = [], []
        rows = 0
        for r in range(args.repeats):
            os.sync()  # no writeback of an earlier pass left to compete with this one
            spec = R.ReleaseSpec("bench", "1.0.0", from_sources=["cuhk"], split_file=KIM,
                                 out_root=work / f"releases-{r}")
            info = R.build_release(ws, catalog, spec)
            rows = info.rows
            release.append((data, info.timings["shards"], info.timings["total"]))
            os.sync()
            t = time.perf_counter()
            nbytes = copy_bytes(objects, work / f"copy-{r}.bin")
            copy.append((nbytes, time.perf_counter() - t))
            print(f"pass {r + 1}: release {data / 1e6 / info.timings['shards']:.0f} MB/s "
                  f"(whole build {info.timings['total']:.2f} s), "
                  f"copy {nbytes / 1e6 / copy[-1][1]:.0f} MB/s")
            shutil.rmtree(work / f"releases-{r}")
            (work / f"copy-{r}.bin").unlink()
        catalog.close()
        ratios = sorted((c[1] / r[1]) for r, c in zip(release, copy, strict=True))
        _, shards_s, total_s = min(release, key=lambda x: x[1])
        cbytes, copy_s = min(copy, key=lambda x: x[1])
        release_mb_s, copy_mb_s = data / 1e6 / shards_s, cbytes / 1e6 / copy_s
        print(f"{rows} rows, {data / 1e6:.1f} MB of image + mask bytes")
        print(f"release shards: {shards_s:.3f} s = {release_mb_s:.1f} MB/s, "
              f"{rows / shards_s:.0f} rows/s (whole build incl. selection, card, manifest: "
              f"{total_s:.2f} s = {data / 1e6 / total_s:.1f} MB/s)")
        print(f"plain copy:     {copy_s:.3f} s = {copy_mb_s:.1f} MB/s, {rows / copy_s:.0f} rows/s")
        print(f"ratio of the best passes {release_mb_s / copy_mb_s:.2f}; per pass (release/copy "
              f"of the same pass): median {ratios[len(ratios) // 2]:.2f}, "
              f"range {ratios[0]:.2f}-{ratios[-1]:.2f}")
        print(f"RESULT release_mb_s={release_mb_s:.1f} copy_mb_s={copy_mb_s:.1f} "
              f"ratio={release_mb_s / copy_mb_s:.2f}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
