"""Real blurred photographs with hand-painted ground truth: the DPN against the handcrafted maps.

    python benchmarks/realblur.py [--photos ~/.cache/blurset/photos] [--work build/realblur]
                                  [--checkpoint pretrained [--checkpoint FILE ...]]
                                  [--size 640] [--sheet FILE.png]

The photographs (Debian wallpapers that ``scripts/fetch_photos.sh`` fetches, and scikit-image's
cat) show natural defocus or motion blur; their blurred regions are painted by eye in
``benchmarks/data/realblur.json`` (polygons and ellipses, coarse: a filament or a soft transition
is not painted). None of them is used to train the shipped DPN. Each photo is scaled to ``--size``
on its long side (CUHK's photos are about 640 wide) and written with its mask as a CUHK-layout
source (``image/{out_of_focus,motion}NNNN.jpg``, ``gt/*.png``, 255 = blurred); the source goes
through the real pipeline (``blurset ingest --kind cuhk``, ``blurset release build``), and every
checkpoint is scored on the release by ``benchmarks/dpn_quality.py`` with the classic protocol,
beside Laplacian variance and LBP. The last line: ``RESULT images=… laplacian_mae=…
laplacian_max_f=… lbp_mae=… lbp_max_f=… <label>_mae=… <label>_max_f=… <label>_beats_both=…``
for each checkpoint (label: ``pretrained``, or the file's stem; ``_N`` added when taken), and
``<label>_beats_both_share``: twelve photos are few, so each checkpoint's lead over each map is
also given as a 95 % interval over 2,000 resamples of the photos (``--bootstrap``), and the share
is how many of those resamples the DPN wins on both measures against both maps. With several
checkpoints, each one's lead over the first is given the same way (paired: the same draws), and
``<label>_vs_<first>_max_f_lo/_hi`` bound it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
MASKS = HERE / "data" / "realblur.json"


def render_mask(shapes: Sequence[dict], blurred: str, h: int, w: int):
    """The 0/255 mask (255 = blurred) of one photo's shapes at h × w."""
    import cv2
    import numpy as np

    inside = np.zeros((h, w), np.uint8)
    sx, sy = w / 100.0, h / 100.0
    for shape in shapes:
        if "polygon" in shape:
            pts = np.array([[x * sx, y * sy] for x, y in shape["polygon"]], np.float64)
            cv2.fillPoly(inside, [np.round(pts).astype(np.int32)], 255)
        elif "ellipse" in shape:
            cx, cy, rx, ry = shape["ellipse"]
            cv2.ellipse(inside, (round(cx * sx), round(cy * sy)), (round(rx * sx), round(ry * sy)),
                        0, 0, 360, 255, -1)
        else:
            raise ValueError(f"{MASKS}: a shape must be a polygon or an ellipse, not {shape}")
    if blurred not in ("inside", "outside"):
        raise ValueError(f"{MASKS}: 'blurred' must be inside or outside, not {blurred!r}")
    return inside if blurred == "inside" else 255 - inside


def write_source(photos: Path, out: Path, size: int) -> list[dict]:
    """The CUHK-layout source of the painted photos under ``out``; returns what went where."""
    import cv2
    import numpy as np
    from PIL import Image

    from blurset.model.pretrained import photo_file

    table = json.loads(MASKS.read_text())["photos"]
    (out / "image").mkdir(parents=True, exist_ok=True)
    (out / "gt").mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    written = []
    for entry in table:
        try:
            src = photo_file(photos, entry["collection"], entry["name"])
        except FileNotFoundError as e:
            raise SystemExit(str(e)) from None
        with Image.open(src) as im:
            rgb = np.asarray(im.convert("RGB"))
        h, w = rgb.shape[:2]
        scale = min(1.0, size / max(h, w))
        hw = (round(h * scale), round(w * scale))
        rgb = cv2.resize(rgb, hw[::-1], interpolation=cv2.INTER_AREA)
        mask = render_mask(entry["shapes"], entry["blurred"], *hw)
        kind = entry["blur_type"]
        counts[kind] = counts.get(kind, 0) + 1
        stem = f"{kind}{counts[kind]:04d}"
        Image.fromarray(rgb).save(out / "image" / f"{stem}.jpg", quality=95)
        Image.fromarray(mask).save(out / "gt" / f"{stem}.png")
        written.append({"stem": stem, "photo": f"{entry['collection']}/{entry['name']}",
                        "blurred_share": round(float((mask > 128).mean()), 3)})
    return written


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stdout


def _result(stdout: str) -> dict[str, str]:
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return dict(kv.split("=", 1) for kv in line.split()[1:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", default=str(Path.home() / ".cache" / "blurset" / "photos"))
    parser.add_argument("--work", default="build/realblur")
    parser.add_argument("--checkpoint", action="append", help="a file or 'pretrained' (repeatable)")
    parser.add_argument("--size", type=int, default=640, help="long side of the scored photos")
    parser.add_argument("--sheet", help="also draw a contact sheet of the first checkpoint's maps")
    parser.add_argument("--bootstrap", type=int, default=2000, metavar="ROUNDS",
                        help="resamples of the photos for the intervals of each lead (0: off)")
    args = parser.parse_args(argv)
    checkpoints = args.checkpoint or ["pretrained"]
    work = Path(args.work).resolve()
    release_dir = work / "ws" / "releases" / "realblur" / "1.0.0"
    py = sys.executable
    bs = [py, "-m", "blurset.pipeline.cli.main", "-w", str(work / "ws")]
    if not release_dir.exists():
        written = write_source(Path(args.photos).expanduser(), work / "source", args.size)
        for row in written:
            print(f"{row['stem']:<18} {row['photo']:<55} blurred {row['blurred_share']:.0%}")
        _run([*bs, "ingest", str(work / "source"), "--kind", "cuhk", "--name", "realblur"])
        _run([*bs, "release", "build", "realblur", "1.0.0", "--from-source", "realblur",
              "--split", "test=1.0"])
    results: dict[str, str] = {}
    labels: list[str] = []
    for ckpt in checkpoints:
        label = "pretrained" if ckpt == "pretrained" else Path(ckpt).stem.replace("-", "_")
        label = label if label not in labels else f"{label}_{len(labels) + 1}"
        labels.append(label)
        cmd = [py, str(HERE / "dpn_quality.py"), "--release", "realblur@1.0.0",
               "--releases-root", str(work / "ws" / "releases"), "--checkpoint", ckpt,
               "--bootstrap", str(args.bootstrap), "--rows", str(work / f"rows-{label}.npy")]
        if args.sheet and ckpt == checkpoints[0]:
            cmd += ["--sheet", args.sheet,
                    *[f"--sheet-photo={p}" for p in sorted((work / "source" / "image").glob("*"))]]
        out = _run(cmd)
        print(f"--- {label} ({ckpt})")
        print("\n".join(ln for ln in out.splitlines() if not ln.startswith("RESULT ")))
        r = _result(out)
        results.setdefault("images", r["images"])
        for base in ("laplacian", "lbp"):
            for m in ("mae", "max_f"):
                results.setdefault(f"{base}_{m}", r[f"{base}_{m}"])
        results[f"{label}_mae"], results[f"{label}_max_f"] = r["dpn_mae"], r["dpn_max_f"]
        results[f"{label}_beats_both"] = r["beats_both"]
        if "beats_both_share" in r:
            results[f"{label}_beats_both_share"] = r["beats_both_share"]
    if args.bootstrap and len(labels) > 1:
        import numpy as np

        from blurset.model.evaluate import format_comparison
        from blurset.model.metrics import paired_bootstrap
        rows = {label: np.load(work / f"rows-{label}.npy") for label in labels}
        boot = paired_bootstrap(rows, labels[0], rounds=args.bootstrap)
        print("--- the checkpoints against each other")
        print(format_comparison(boot, labels[0], args.bootstrap, int(results["images"])))
        for label in labels[1:]:
            d = boot[label]
            results[f"{label}_vs_{labels[0]}_max_f_lo"] = f"{-d['max_f_diff_hi']:.4f}"
            results[f"{label}_vs_{labels[0]}_max_f_hi"] = f"{-d['max_f_diff_lo']:.4f}"
    print("RESULT " + " ".join(f"{k}={v}" for k, v in results.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
