"""Held-out quality of a DPN checkpoint (default: the shipped ``pretrained``) against the
handcrafted blur maps, and of its blur-type head against the coherence rule and the majority.

    python benchmarks/dpn_quality.py --release synth-heldout@1.0.0 [--checkpoint pretrained]
                                     [--releases-root DIR] [--json FILE] [--limit N]
                                     [--bootstrap ROUNDS] [--rows FILE.npy]
                                     [--sheet FILE.png [--sheet-photo PATH ...]]

Every image of the release (or its ``:SPLIT``) is scored at its own size with the classic
protocol (:mod:`blurset.model.metrics`: per-image min-max normalisation, 256 thresholds, P and R
averaged over images, β² = 0.3), for the DPN (one forward pass at the checkpoint's input size,
the map resized back) and for the Laplacian-variance and LBP maps (:mod:`blurset.model.baselines`).
The same pass gives the blur-type answers: the checkpoint's learned head (when it has one), the
coherence rule of the pre-labeller on the DPN's region (map ≥ 0.5), and always answering the
release's most common type. The last line is machine-readable: ``RESULT dpn_mae=… dpn_max_f=…
laplacian_mae=… laplacian_max_f=… lbp_mae=… lbp_max_f=… beats_both=… head_acc=… rule_acc=…
majority_acc=… images=…``.

On a few images a lead of 0.01 may be luck. ``--bootstrap ROUNDS`` draws the images again with
replacement ROUNDS times (one draw for all methods) and prints the 95 % interval of the DPN's lead
over each map in max F and MAE, and the share of draws in which the DPN beats both maps on both
(:func:`blurset.model.metrics.paired_bootstrap`); the RESULT line gains ``<map>_max_f_diff_lo/_hi``,
``<map>_mae_diff_lo/_hi`` and ``beats_both_share``. ``--rows`` saves the DPN's per-image sums, so
that checkpoints scored on the same release can be compared the same way (``realblur.py`` does).

``--sheet`` also draws a contact sheet for people to judge by eye: each photo (default: the
scikit-image and scikit-learn photographs, several with natural shallow depth of field, none
used in training) beside the DPN's map and the Laplacian-variance map (white = blurred).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", required=True, help="NAME@VERSION[:SPLIT] to score on")
    parser.add_argument("--checkpoint", default="pretrained", help="a file or 'pretrained'")
    parser.add_argument("--releases-root", help="folder of NAME/VERSION releases")
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--limit", type=int, help="score only the first N images")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="ROUNDS",
                        help="resample the images ROUNDS times: 95%% intervals of the DPN's lead "
                             "over each map (0: off)")
    parser.add_argument("--rows", help="save the DPN's per-image classic sums here (.npy), for "
                                       "comparing checkpoints on the same release")
    parser.add_argument("--sheet", help="write a contact sheet (PNG) of predictions on photos")
    parser.add_argument("--sheet-photo", action="append", default=[],
                        help="another photo for the sheet (repeatable)")
    args = parser.parse_args(argv)

    import cv2
    import numpy as np
    import pyarrow.parquet as pq

    from blurset.model.blur_type import BlurTypeHead, predict_maps_and_types
    from blurset.model.checkpoint import load_checkpoint
    from blurset.model.crosscheck import iter_rows
    from blurset.model.data import resolve_release
    from blurset.model.evaluate import (
        BASELINES,
        baseline_map,
        compare_methods,
        evaluate_arrays,
        format_comparison,
        format_table,
    )
    from blurset.pipeline.stages.prelabel import DPN_THRESHOLD, guess_blur_type

    model, meta = load_checkpoint(args.checkpoint)
    size = int(meta["config"]["input_size"])
    head = BlurTypeHead.from_dict(meta["blur_type_head"]) if meta.get("blur_type_head") else None
    release = resolve_release(args.release, args.releases_root)
    shards = release.shards_of(release.split) if release.split else release.shards
    types: dict[str, str] = {}
    for shard in shards:
        t = pq.read_table(release.path / shard.file, columns=["id", "blur_type"])
        types.update(zip(t.column("id").to_pylist(), t.column("blur_type").to_pylist(),
                         strict=True))

    pairs: dict[str, list] = {"DPN": [], **{b: [] for b in BASELINES}}
    truth, by_head, by_rule = [], [], []
    for i, row in enumerate(iter_rows(release, release.split)):
        if args.limit is not None and i >= args.limit:
            break
        maps, head_types, _ = predict_maps_and_types(model, head, [row.image], size)
        pairs["DPN"].append((maps[0], row.mask))
        for b in BASELINES:
            pairs[b].append((baseline_map(b, row.image), row.mask))
        gray = cv2.cvtColor(row.image, cv2.COLOR_RGB2GRAY)
        truth.append("motion" if types[row.id] == "motion" else "defocus")
        by_head.append(head_types[0])
        by_rule.append(guess_blur_type(gray, (maps[0] >= DPN_THRESHOLD).astype(np.uint8) * 255))
    results = {name: evaluate_arrays(p, name=name) for name, p in pairs.items()}
    print(f"{args.checkpoint} on {release.spec} ({len(truth)} images, input {size})")
    print(format_table(results))

    def acc(pred: list) -> float:
        return sum(p == t for p, t in zip(pred, truth, strict=True)) / len(truth)

    majority = max(truth.count("motion"), truth.count("defocus")) / len(truth)
    head_acc = acc(by_head) if head else float("nan")
    print(f"blur type ({truth.count('motion')} motion, {truth.count('defocus')} defocus): head "
          f"{head_acc:.3f}, rule {acc(by_rule):.3f}, majority {majority:.3f}")
    score = {name: (float(r.metrics["mae"]), float(r.metrics["max_f"]))
             for name, r in results.items()}
    beats = all(score["DPN"][0] < score[b][0] and score["DPN"][1] > score[b][1]
                for b in BASELINES)
    numbers = {"dpn_mae": score["DPN"][0], "dpn_max_f": score["DPN"][1]}
    for b in BASELINES:
        numbers |= {f"{b}_mae": score[b][0], f"{b}_max_f": score[b][1]}
    numbers |= {"beats_both": beats, "head_acc": head_acc, "rule_acc": acc(by_rule),
                "majority_acc": majority, "images": len(truth)}
    if args.bootstrap:
        boot = compare_methods(results, rounds=args.bootstrap)
        print(format_comparison(boot, "DPN", args.bootstrap, len(truth)))
        for b in BASELINES:
            numbers |= {f"{b}_{k}": boot[b][k] for k in ("max_f_diff_lo", "max_f_diff_hi",
                                                         "mae_diff_lo", "mae_diff_hi")}
        numbers["beats_both_share"] = boot["all"]["wins"]
    if args.rows:
        np.save(args.rows, results["DPN"].per_image)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"checkpoint": args.checkpoint, "release": release.spec, **numbers}, fh,
                      indent=2)
    if args.sheet:
        contact_sheet(model, size, default_sheet_photos() + args.sheet_photo, args.sheet)
        print(f"contact sheet: {args.sheet}")
    print("RESULT " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in numbers.items()))
    return 0


def default_sheet_photos() -> list[str]:
    from blurset.model.pretrained import HELDOUT_PHOTOS, photo_file

    return [str(photo_file(".", c, name)) for c, names in HELDOUT_PHOTOS.items()
            if c.startswith("scikit-") for name in names]


def contact_sheet(model, size: int, photos: Sequence[str], out: str, row_h: int = 200) -> None:
    """Rows of photo | DPN map | Laplacian-variance map, each scaled to ``row_h`` pixels high."""
    import cv2
    import numpy as np
    from PIL import Image, ImageDraw

    from blurset.model.apply import predict_maps, read_rgb
    from blurset.model.evaluate import baseline_map

    rows = []
    for path in photos:
        rgb = read_rgb(path)
        scale = row_h / rgb.shape[0]
        w = max(1, round(rgb.shape[1] * scale))
        cells = [cv2.resize(rgb, (w, row_h), interpolation=cv2.INTER_AREA)]
        for m in (predict_maps(model, [rgb], input_size=size)[0], baseline_map("laplacian", rgb)):
            m = m.astype(np.float32)
            if m.max() > 1.0:
                m = m / 255.0
            grey = np.clip(cv2.resize(m, (w, row_h)) * 255, 0, 255).astype(np.uint8)
            cells.append(np.repeat(grey[..., None], 3, axis=2))
        rows.append(np.concatenate([np.pad(c, ((0, 0), (0, 4), (0, 0)), constant_values=255)
                                    for c in cells], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255)
            for r in rows]
    sheet = Image.fromarray(np.concatenate([np.full((18, width, 3), 255, np.uint8), *rows]))
    ImageDraw.Draw(sheet).text((4, 3), "photo | DPN | Laplacian variance; "
                               "white = blurred", fill=(0, 0, 0))
    sheet.save(out)


if __name__ == "__main__":
    sys.exit(main())
