"""Scoring on releases: a checkpoint and the handcrafted baselines on one split, and the
cross-dataset check of the DPN paper's section 6.2 (train on A, test on B, one table, one figure).

Every method is scored on the images at their own size against the release's masks
(255 = blurred), with :mod:`blurset.model.metrics` (the classic protocol for max F / mean F).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from blurset.model.data import ReleaseRef, decode_pair
from blurset.model.evaluate import (
    BASELINES,
    EvalResult,
    baseline_map,
    evaluate_arrays,
    format_table,
    write_report,
)
from blurset.model.release_format import ReleaseSpecError


@dataclass(frozen=True)
class Row:
    id: str
    source_path: str
    image: np.ndarray  # (H, W, 3) uint8 RGB, EXIF orientation applied
    mask: np.ndarray  # (H, W) uint8, 255 = blurred


def iter_rows(release: ReleaseRef, split: str | None = None) -> Iterator[Row]:
    """The rows of one split (all splits when None), decoded at their own size, row group by
    row group (never the whole release in memory)."""
    shards = release.shards_of(split) if split else release.shards
    for shard in shards:
        f = pq.ParquetFile(release.path / shard.file)
        for g in range(f.num_row_groups):
            t = f.read_row_group(g, columns=["id", "source_path", "image", "mask"])
            for r in t.to_pylist():
                rgb, grey = decode_pair(r["image"]["bytes"], r["mask"]["bytes"], None,
                                        f"{r['id']} of {release.spec} {shard.file}")
                image, mask = np.asarray(rgb), np.asarray(grey)
                yield Row(r["id"], r["source_path"], image, mask)


def default_split(release: ReleaseRef) -> str | None:
    """The release's own split if the spec named one, else ``test`` if it has one, else all."""
    if release.split:
        return release.split
    return "test" if "test" in release.splits() else None


def score_on_release(release: ReleaseRef, split: str | None, *,
                     model=None, input_size: int = 352, model_name: str = "DPN",
                     baselines: Sequence[str] = BASELINES,
                     progress: Callable[[int], None] | None = None) -> dict[str, EvalResult]:
    """Score the model (if given) and each baseline on ``split`` of ``release``.

    Returns {method: EvalResult}, the model first.
    """
    from blurset.model.apply import predict_maps

    for b in baselines:
        if b not in BASELINES:
            raise ValueError(f"unknown baseline {b!r}; choose from {', '.join(BASELINES)}")
    pairs: dict[str, list] = {name: [] for name in ([model_name] if model is not None else [])}
    pairs |= {b: [] for b in baselines}
    n = 0
    for row in iter_rows(release, split):
        if model is not None:
            pred = predict_maps(model, [row.image], input_size=input_size)[0]
            pairs[model_name].append((pred, row.mask))
        for b in baselines:
            pairs[b].append((baseline_map(b, row.image), row.mask))
        n += 1
        if progress:
            progress(1)
    if n == 0:
        raise ReleaseSpecError(f"{release.spec}: split {split or 'all'} has no rows to score; "
                               "choose a split with rows ("
                               + ", ".join(f"{k} {v}" for k, v in release.splits().items() if v) + ")")
    return {name: evaluate_arrays(p, name=name) for name, p in pairs.items()}


def write_scores(results: dict[str, EvalResult], out_dir: str | os.PathLike, *,
                 title: dict | None = None, force: bool = False) -> dict[str, Path]:
    """metrics.json, the curves' CSV and PNG (all methods on one axis) and table.txt."""
    out = Path(out_dir)
    paths = write_report(results, out, force=force)
    table = out / "table.txt"
    table.write_text(format_table(results) + "\n", encoding="utf-8")
    paths["table"] = table
    if title:
        meta = out / "run.json"
        meta.write_text(json.dumps(title, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        paths["run"] = meta
    return paths
