"""Held-out quality of a DPN checkpoint (default: the shipped ``pretrained``) against the
handcrafted blur maps, and of its blur-type head against the coherence rule and the majority.

    python benchmarks/dpn_quality.py --release synth-heldout@1.0.0 [--checkpoint pretrained]
                                     [--releases-root DIR] [--json FILE] [--limit N]

Every image of the release (or its ``:SPLIT``) is scored at its own size with the classic
protocol (:mod:`blurset.model.metrics`: per-image min-max normalisation, 256 thresholds, P and R
averaged over images, β² = 0.3), for the DPN (one forward pass at the checkpoint's input size,
the map resized back) and for the Laplacian-variance and LBP maps (:mod:`blurset.model.baselines`).
The same pass gives the blur-type answers: the checkpoint's learned head (when it has one), the
coherence rule of the pre-labeller on the DPN's region (map ≥ 0.5), and always answering the
release's most common type. The last line is machine-readable: ``RESULT dpn_mae=… dpn_max_f=…
laplacian_mae=… laplacian_max_f=… lbp_mae=… lbp_max_f=… beats_both=… head_acc=… rule_acc=…
majority_acc=… images=…``.
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
    args = parser.parse_args(argv)

    import cv2
    import numpy as np
    import pyarrow.parquet as pq

    from blurset.model.blur_type import BlurTypeHead, predict_maps_and_types
    from blurset.model.checkpoint import load_checkpoint
    from blurset.model.crosscheck import iter_rows
    from blurset.model.data import resolve_release
    from blurset.model.evaluate import BASELINES, baseline_map, evaluate_arrays, format_table
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
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"checkpoint": args.checkpoint, "release": release.spec, **numbers}, fh,
                      indent=2)
    print("RESULT " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in numbers.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
