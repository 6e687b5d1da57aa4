"""The shipped ``pretrained`` DPN: which photos make its data, and how a trained run becomes it.

``python -m blurset.model.pretrained photos --src PHOTOS --dest DIR`` links the chosen photographs
of the Debian wallpaper packages (``scripts/fetch_photos.sh``) and of scikit-image / scikit-learn
into ``DIR/train/<collection>/`` and ``DIR/heldout/<collection>/``: the split is by collection, so
no held-out composite shares a photographer or a package with training (artwork, renders and
duplicates left out by eye). ``python -m blurset.model.pretrained export`` turns a training run's
checkpoint into the package-data checkpoint: fp16 weights (the model is rebuilt in float32 when
loaded), the blur-type head (:mod:`blurset.model.blur_type`) fitted on the training release, and
the provenance (commands, photo fingerprints, releases, held-out scores). ``python -m
blurset.model.pretrained build --masks DIR`` (``make pretrained MASKS=DIR``) runs the whole recipe,
:func:`recipe`, and records it in the checkpoint (docs/pretrained.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["HELDOUT_PHOTOS", "NATURAL_BLUR_PHOTOS", "SHARP_CROPS", "TRAIN_PHOTOS",
           "export_pretrained", "link_photos", "photo_file", "recipe"]

TRAIN_N, HELDOUT_N, SIZE = 2400, 300, 320  # composites; long side in pixels

# collection -> photo files (photographs only); the collection is the Debian package or library.
# Training photos must be sharp wherever a composite can fall: the area outside a composite's mask
# is labelled sharp, so a photo with natural depth of field would teach that real defocus is sharp.
# Photos that are sharp only in part are cropped to that part (SHARP_CROPS); photos that are mostly
# naturally blurred are left out of training (NATURAL_BLUR_PHOTOS).
TRAIN_PHOTOS = {
    "lomiri-wallpapers-16.04": [
        "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
        "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
        "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg",
        "greentock_by_Peter_Nerlich.jpg", "life_by_Aitzol_Berasategi.jpg",
        "picosdeeuropa_by_Aitzol_Berasategi.jpg", "sunset_by_Aitzol_Berasategi.jpg"],
    "mate-backgrounds": ["GreenMeadow.jpg", "RainDrops.jpg", "YellowFlower.jpg"],
    "plasma-workspace-wallpapers": [
        "ColdRipple.jpg", "ColorfulCups.jpg", "DarkestHour.jpg", "EveningGlow.jpg", "Grey.jpg",
        "Kite.jpg", "OneStandsOut.jpg", "Path.jpg", "summer_1am.jpg"],
}
# photo -> (x0, y0, x1, y1), fractions of its width and height: its sharp part, judged by eye
SHARP_CROPS = {
    "greentock_by_Peter_Nerlich.jpg": (0.15, 0.05, 0.75, 0.7),
    "GreenMeadow.jpg": (0.0, 0.55, 1.0, 1.0),
    "RainDrops.jpg": (0.0, 0.15, 0.6, 1.0),
    "YellowFlower.jpg": (0.5, 0.45, 1.0, 1.0),
}
HELDOUT_PHOTOS = {
    "lomiri-wallpapers-20.04": ["Kleiber_by_Lukas_Baubkus.jpg", "Infinite-Sea_by_Aury88.jpg"],
    "scikit-image": ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                     "motorcycle_left.png"],
    "scikit-learn": ["china.jpg", "flower.jpg"],
}
# photographs with natural defocus or motion blur, left out of training; benchmarks/realblur.py
# scores the DPN on those whose blurred regions could be painted (benchmarks/data/realblur.json,
# with two held-out photos); the soft-all-over macro shots and Dune's grass blades could not be.
NATURAL_BLUR_PHOTOS = {
    "lomiri-wallpapers-16.04": [
        "Picture_1A_by_freespace.jpg", "seeding_by_Clements_Engelhardt.jpg"],
    "mate-backgrounds": [
        "Aqua.jpg", "Blinds.jpg", "Dune.jpg", "FreshFlower.jpg", "Garden.jpg", "LadyBird.jpg",
        "Storm.jpg", "TwoWings.jpg", "Wood.jpg"],
    "plasma-workspace-wallpapers": ["BytheWater.jpg", "FallenLeaf.jpg"],
}


def _library_folder(collection: str) -> Path:
    if collection == "scikit-image":
        import skimage.data
        return Path(skimage.data.__file__).parent
    import sklearn.datasets
    return Path(sklearn.datasets.__file__).parent / "images"


def photo_file(src: str | os.PathLike, collection: str, name: str) -> Path:
    """One listed photo's file: scikit-image's and scikit-learn's from the installed library,
    the Debian packages' from ``src`` (the folder ``scripts/fetch_photos.sh`` filled);
    :class:`FileNotFoundError` naming the fix when it is missing."""
    folder = (_library_folder(collection) if collection.startswith("scikit-")
              else Path(src) / collection)
    if not (folder / name).is_file():
        raise FileNotFoundError(f"photo {folder / name} is missing: run "
                                f"scripts/fetch_photos.sh {src} first")
    return folder / name


def _write_crop(src: Path, dest: Path, box: tuple[float, float, float, float]) -> None:
    """The sharp part of a photo, lossless (PNG), written once and atomically (a run killed
    halfway leaves no partial crop for the next run to take)."""
    if dest.exists():
        return
    import io

    from PIL import Image

    from blurset.fileio import atomic_write
    with Image.open(src) as im:
        w, h = im.size
        x0, y0, x1, y1 = box
        crop = im.convert("RGB").crop((round(x0 * w), round(y0 * h), round(x1 * w),
                                       round(y1 * h)))
    buf = io.BytesIO()
    crop.save(buf, "PNG")
    atomic_write(dest, buf.getvalue())


def link_photos(src: str | os.PathLike, dest: str | os.PathLike) -> dict[str, int]:
    """Symlink the chosen photos into ``dest/{train,heldout}/<collection>/`` (a training photo in
    ``SHARP_CROPS`` as a PNG of its sharp part); ``src`` is the folder ``scripts/fetch_photos.sh``
    filled. Returns {role: photos linked}."""
    src, dest = Path(src), Path(dest)
    counts = {}
    for role, table in (("train", TRAIN_PHOTOS), ("heldout", HELDOUT_PHOTOS)):
        n = 0
        for collection, names in table.items():
            out = dest / role / collection
            out.mkdir(parents=True, exist_ok=True)
            for name in names:
                photo = photo_file(src, collection, name)
                if role == "train" and name in SHARP_CROPS:
                    _write_crop(photo, out / f"{Path(name).stem}.crop.png", SHARP_CROPS[name])
                else:
                    link = out / name
                    if not link.exists():
                        link.symlink_to(photo.resolve())
                n += 1
        counts[role] = n
    return counts


def _features(model, release, split: str | None, input_size: int, limit: int | None,
              seed: int = 0) -> tuple[np.ndarray, list[str], list]:
    """Region features, blur types and (map, mask, gray) of up to ``limit`` rows of a split."""
    import cv2
    import pyarrow.parquet as pq

    from blurset.model.blur_type import predict_maps_and_types
    from blurset.model.crosscheck import iter_rows

    shards = release.shards_of(split) if split else release.shards
    types = {}
    for shard in shards:
        t = pq.read_table(release.path / shard.file, columns=["id", "blur_type"])
        types.update(zip(t.column("id").to_pylist(), t.column("blur_type").to_pylist(),
                         strict=True))
    keep = None
    if limit is not None and limit < len(types):
        keep = set(np.random.default_rng(seed).choice(sorted(types), limit, replace=False))
    feats, labels, extra = [], [], []
    for row in iter_rows(release, split):
        if keep is not None and row.id not in keep:
            continue
        maps, _, f = predict_maps_and_types(model, None, [row.image], input_size)
        feats.append(f[0])
        labels.append(types[row.id])
        extra.append((maps[0], row.mask, cv2.cvtColor(row.image, cv2.COLOR_RGB2GRAY)))
    return np.stack(feats), labels, extra


def blur_type_scores(head, feats: np.ndarray, labels: Sequence[str], extra: list) -> dict:
    """Accuracy of the head, of the coherence rule on the DPN's region, and of the majority."""
    from blurset.pipeline.stages.prelabel import DPN_THRESHOLD, guess_blur_type

    truth = ["motion" if t == "motion" else "defocus" for t in labels]
    head_pred = head.predict(feats)
    rule_pred = [guess_blur_type(gray, (m >= DPN_THRESHOLD).astype(np.uint8) * 255)
                 for m, _, gray in extra]
    n = len(truth)
    majority = max(truth.count("motion"), truth.count("defocus")) / n
    return {"n": n, "motion": truth.count("motion"),
            "head": sum(a == b for a, b in zip(head_pred, truth, strict=True)) / n,
            "rule": sum(a == b for a, b in zip(rule_pred, truth, strict=True)) / n,
            "majority": majority}


def export_pretrained(run_checkpoint: str | os.PathLike, train_spec: str,
                      heldout_spec: str | None, out: str | os.PathLike, *,
                      releases_root: str | os.PathLike | None = None, head_samples: int = 800,
                      provenance: dict | None = None) -> dict:
    """Write the package-data checkpoint ``out`` from a run's checkpoint; returns its metadata
    (without the weights)."""
    from blurset.fileio import atomic_write
    from blurset.model.blur_type import fit_blur_type_head
    from blurset.model.checkpoint import load_checkpoint, read_checkpoint
    from blurset.model.data import resolve_release

    ckpt = read_checkpoint(run_checkpoint)
    model, meta = load_checkpoint(run_checkpoint)
    input_size = int(meta["config"]["input_size"])
    train = resolve_release(train_spec, releases_root)
    feats, labels, _ = _features(model, train, train.split or "train", input_size, head_samples)
    head, fit = fit_blur_type_head(feats, labels)
    accuracy: dict = {"train_cv": fit}
    if heldout_spec:
        heldout = resolve_release(heldout_spec, releases_root)
        hf, hl, extra = _features(model, heldout, heldout.split, input_size, None)
        accuracy["heldout"] = blur_type_scores(head, hf, hl, extra)
    head = type(head)(**{**head.to_dict(), "levels": tuple(head.levels), "accuracy": accuracy})
    state = {k: v for k, v in ckpt.items() if k not in ("optimizer", "scaler")}
    state["model"] = {k: (v.half() if v.is_floating_point() else v)
                      for k, v in ckpt["model"].items()}
    state["blur_type_head"] = head.to_dict()
    state["pretrained"] = {"source_checkpoint": os.fspath(run_checkpoint),
                           **(provenance or {})}
    import io
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(out, buf.getvalue(), mode=0o644)
    return {k: v for k, v in state.items() if k != "model"}


def recipe(photos: str, masks: str, work: str, out: str, *, python: str = "python"
           ) -> list[list[str]]:
    """The commands that make the shipped checkpoint from nothing but the photos and masks
    (``python`` runs them: the interpreter of the environment blurset is installed in)."""
    py = python
    bs = [py, "-m", "blurset.pipeline.cli.main", "-w", f"{work}/ws"]
    me = [py, "-m", "blurset.model.pretrained"]
    return [
        ["bash", "scripts/fetch_photos.sh", photos],
        [*me, "photos", "--src", photos, "--dest", f"{work}/photos"],
        [*bs, "synth", "--photos", f"{work}/photos/train", "--masks", masks, "--out",
         f"{work}/synth-train", "--n", str(TRAIN_N), "--seed", "0", "--size", str(SIZE)],
        [*bs, "synth", "--photos", f"{work}/photos/heldout", "--masks", masks, "--out",
         f"{work}/synth-heldout", "--n", str(HELDOUT_N), "--seed", "1", "--size", str(SIZE)],
        [*bs, "ingest", f"{work}/synth-train", "--kind", "cuhk", "--name", "synth-train"],
        [*bs, "ingest", f"{work}/synth-heldout", "--kind", "cuhk", "--name", "synth-heldout"],
        [*bs, "release", "build", "synth-train", "1.0.0", "--from-source", "synth-train",
         "--split", "train=0.9,test=0.1"],
        [*bs, "release", "build", "synth-heldout", "1.0.0", "--from-source", "synth-heldout",
         "--split", "test=1.0"],
        [*bs, "train", "--config", "configs/dpn-lite0-cpu.yaml", "--train", "synth-train@1.0.0",
         "--val", "synth-train@1.0.0:test", "--out", f"{work}/run"],
        [*me, "export", "--run", f"{work}/run/checkpoints/best.pt", "--train",
         "synth-train@1.0.0", "--heldout", "synth-heldout@1.0.0", "--releases-root",
         f"{work}/ws/releases", "--synth", f"{work}/synth-train", "--synth",
         f"{work}/synth-heldout", "--out", out],
    ]


def _synth_provenance(folders: Sequence[str]) -> dict:
    out = {}
    for folder in folders:
        info = json.loads((Path(folder) / "synth.json").read_text(encoding="utf-8"))
        role = "heldout" if "heldout" in Path(folder).name else "train"
        out[role] = {"fingerprint": info["photo_fingerprint"], "photos": info["photos"],
                     "collections": info["photo_folders"], "seed": info["seed"],
                     "n": info["n"], "size": info["size"]}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blurset.model.pretrained",
                                description="Photos and export of the shipped DPN.")
    sub = p.add_subparsers(dest="cmd", required=True)
    ph = sub.add_parser("photos", help="link the chosen photos into DEST/{train,heldout}")
    ph.add_argument("--src", default=str(Path.home() / ".cache" / "blurset" / "photos"))
    ph.add_argument("--dest", required=True)
    ex = sub.add_parser("export", help="a run's checkpoint → the package-data checkpoint")
    ex.add_argument("--run", required=True, help="checkpoint of the training run (best.pt)")
    ex.add_argument("--train", required=True, help="training release NAME@VERSION")
    ex.add_argument("--heldout", help="held-out release NAME@VERSION[:SPLIT]")
    ex.add_argument("--releases-root")
    ex.add_argument("--out", required=True)
    ex.add_argument("--provenance", help="JSON file merged into the checkpoint's 'pretrained'")
    ex.add_argument("--head-samples", type=int, default=800)
    ex.add_argument("--synth", action="append", default=[],
                    help="a `blurset synth` folder whose synth.json to record (repeatable)")
    bd = sub.add_parser("build", help="the whole recipe: photos → composites → releases → "
                                      "training → export (about an hour on 2 CPU cores)")
    bd.add_argument("--masks", required=True, help="the CUHK masks (motion*/out_of_focus*.png)")
    bd.add_argument("--photos", default=str(Path.home() / ".cache" / "blurset" / "photos"))
    bd.add_argument("--work", default="build/pretrained")
    bd.add_argument("--out", default="model/weights/pretrained.pt")
    args = p.parse_args(argv)
    if args.cmd == "photos":
        print(json.dumps(link_photos(args.src, args.dest)))
        return 0
    if args.cmd == "build":
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        for cmd in recipe(args.photos, args.masks, args.work, args.out, python=sys.executable):
            print("+ " + shlex.join(cmd), flush=True)
            subprocess.run(cmd, check=True, env=env)
        return 0
    prov = json.loads(Path(args.provenance).read_text()) if args.provenance else {}
    prov.setdefault("commands", [shlex.join(c) for c in recipe(
        "~/.cache/blurset/photos", "MASKS", "build/pretrained", args.out)])
    if args.synth:
        prov["photos"] = _synth_provenance(args.synth)
    meta = export_pretrained(args.run, args.train, args.heldout, args.out,
                             releases_root=args.releases_root, head_samples=args.head_samples,
                             provenance=prov)
    print(json.dumps({"out": args.out, "blur_type_accuracy":
                      meta["blur_type_head"]["accuracy"]}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
