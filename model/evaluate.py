"""Evaluate blur maps against masks: folders, in-memory pairs, reports, baseline maps.

- :func:`evaluate_dirs`: a folder of maps against a folder of masks, matched by file stem.
- :func:`evaluate_arrays`: ``(map, mask)`` pairs in memory.
- :func:`write_report`: ``metrics.json``, curve CSVs and PR / F / ROC figures of several methods.
- :func:`format_table`: the numbers as a plain-text table for the CLI.
- :func:`baseline_map`: blurset's own handcrafted maps (:mod:`blurset.model.baselines`) by name.

Numbers are :class:`blurset.model.metrics.BlurMetrics`' (``docs/metrics.md``). Maps are resized to
their mask's size; masks are never resized. Mask polarity is the dataset's: 255 = blurred.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from blurset.errors import ConflictError, InputError, NotFoundError
from blurset.model.baselines import laplacian_blur_map, lbp_blur_map
from blurset.model.metrics import METRIC_KEYS, BlurMetrics, paired_bootstrap

__all__ = [
    "BASELINES",
    "GT_EXTENSIONS",
    "PRED_EXTENSIONS",
    "EvalResult",
    "EvaluationInputError",
    "MapFolderNotFoundError",
    "ReportExistsError",
    "baseline_map",
    "compare_methods",
    "evaluate_arrays",
    "evaluate_dirs",
    "format_comparison",
    "format_table",
    "load_mask",
    "load_pred_map",
    "resize_map",
    "write_report",
]

PRED_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy")
GT_EXTENSIONS = (".png", ".bmp")
BASELINES = ("laplacian", "lbp")
REPORT_FILES = (
    "metrics.json",
    "pr_curve.csv",
    "f_curve.csv",
    "roc_curve.csv",
    "pr_curve.png",
    "f_curve.png",
    "roc_curve.png",
)
SUMMARY_KEYS = (
    *METRIC_KEYS,
    "max_f_pysod",
    "mean_f_pysod",
    "best_threshold",
    "n_images",
    "n_empty_gt",
    "n_full_gt",
)
_SHOW_MISSING = 5  # stems listed in an unmatched-files error


class EvaluationInputError(InputError):
    """The maps or masks given to :func:`evaluate_dirs` cannot be scored: unmatched stems, an
    unreadable file, a map whose shape differs from its mask's (a ``ValueError`` too)."""


class MapFolderNotFoundError(NotFoundError, FileNotFoundError):
    """A folder of maps or masks given to :func:`evaluate_dirs` does not exist."""


class ReportExistsError(ConflictError, FileExistsError):
    """:func:`write_report` found a report in its folder and was not asked to replace it."""


@dataclass(frozen=True)
class EvalResult:
    """One method's evaluation: ``metrics`` is :meth:`blurset.model.metrics.BlurMetrics.results`.

    ``stems`` are the evaluated images in order; ``extra_preds`` the maps that had no mask
    (only with ``allow_extra_preds=True``); ``ignored`` the files skipped for their extension;
    ``report_dir`` where :func:`write_report` wrote, if it did; ``per_image`` each image's
    classic sums (:meth:`blurset.model.metrics.BlurMetrics.image_rows`), which
    :func:`blurset.model.metrics.paired_bootstrap` compares methods on.
    """

    name: str
    metrics: dict[str, Any]
    stems: tuple[str, ...] = ()
    extra_preds: tuple[str, ...] = ()
    ignored: tuple[Path, ...] = ()
    report_dir: Path | None = None
    sources: dict[str, str] = field(default_factory=dict)
    per_image: np.ndarray | None = field(default=None, repr=False, compare=False)


# --------------------------------------------------------------------------------------------
# Loading and resizing


def load_pred_map(path: str | Path) -> np.ndarray:
    """A blur map from a file: uint8 ``(H, W)`` for 8-bit images, float32 otherwise.

    Images: 8-bit grey as it is; RGB/RGBA/palette converted to grey (ITU-R 601 luma, which
    leaves a grey map saved as RGB unchanged); 16-bit scaled to ``[0, 1]``; 32-bit int/float as
    float. ``.npy``: a 2-D array (a leading or trailing axis of 1 is dropped), uint8, bool or
    float.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
            arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
        if arr.ndim != 2:
            raise ValueError(f"{path}: a blur map must be 2-D (H, W), got shape {arr.shape}")
        if arr.dtype not in (np.uint8, np.bool_) and not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"{path}: blur map must be uint8, bool or float, got {arr.dtype}")
        return arr
    with Image.open(path) as im:
        if im.mode == "L":
            return np.asarray(im, np.uint8).copy()
        if im.mode.startswith("I;16"):
            return (np.asarray(im, np.float32) / 65535.0).astype(np.float32)
        if im.mode in ("I", "F"):
            return np.asarray(im, np.float32).copy()
        return np.asarray(im.convert("L"), np.uint8).copy()


def load_mask(path: str | Path) -> np.ndarray:
    """A mask from a PNG/BMP: uint8 ``(H, W)``, 255 = blurred (binarised later at ``> 128``).

    A 1-bit image gives 0/255; RGB/palette masks are converted to grey.
    """
    with Image.open(path) as im:
        if im.mode == "1":
            return np.where(np.asarray(im, bool), 255, 0).astype(np.uint8)
        if im.mode.startswith("I;16"):
            return (np.asarray(im, np.float64) / 257.0).round().astype(np.uint8)
        if im.mode != "L":
            im = im.convert("L")
        return np.asarray(im, np.uint8).copy()


def resize_map(pred: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``pred`` resized to ``shape[:2]`` = ``(H, W)``, bilinear; float32 unless already that size.

    Uses Pillow's bilinear filter, which widens its support when shrinking (antialiasing, as
    MATLAB ``imresize``). uint8 and bool maps are taken to ``[0, 1]`` first.
    """
    pred = np.asarray(pred)
    height, width = int(shape[0]), int(shape[1])
    if pred.shape == (height, width):
        return pred
    if pred.ndim != 2:
        raise ValueError(f"blur map must be 2-D (H, W), got shape {pred.shape}")
    if pred.dtype == np.uint8:
        values = pred.astype(np.float32) / 255.0
    else:
        values = pred.astype(np.float32)
    resized = Image.fromarray(values).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, np.float32).copy()


def _as_unit(pred: np.ndarray) -> np.ndarray:
    """A map on the ``[0, 1]`` scale (uint8 / 255, bool as 0/1, float as it is), float32."""
    pred = np.asarray(pred)
    if pred.dtype == np.uint8:
        return pred.astype(np.float32) / 255.0
    return pred.astype(np.float32)


def _prepare(pred: Any, gt: Any, *, invert_pred: bool, invert_gt: bool) -> tuple:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if gt.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {gt.shape}")
    if invert_pred:
        pred = 1.0 - _as_unit(pred)  # 1 = blurred for a map that had 1 = sharp
    if invert_gt:
        gt = _invert_mask(gt)
    return resize_map(pred, gt.shape), gt


def _invert_mask(gt: np.ndarray) -> np.ndarray:
    if gt.dtype == np.uint8:
        return 255 - gt
    if gt.dtype == np.bool_:
        return ~gt
    return 1.0 - gt


# --------------------------------------------------------------------------------------------
# Evaluation


def evaluate_arrays(
    pairs: Iterable[tuple[Any, Any]],
    *,
    invert_gt: bool = False,
    invert_pred: bool = False,
    name: str = "method",
) -> EvalResult:
    """Evaluate ``(pred, gt)`` pairs in memory; each map is resized to its mask first.

    ``pred``: ``(H', W')`` uint8 / bool / float (probabilities or logits: every map is min-max
    normalised); ``gt``: ``(H, W)`` uint8 0/255, bool or float 0/1, True/255 = blurred.
    ``invert_pred`` / ``invert_gt`` flip a map or masks of the opposite polarity (1 = sharp).
    """
    labelled = ((f"pair {i}", pred, gt) for i, (pred, gt) in enumerate(pairs))
    metrics = _accumulate(labelled, invert_gt=invert_gt, invert_pred=invert_pred)
    if len(metrics) == 0:
        raise ValueError(f"evaluate_arrays({name!r}): no (pred, gt) pair was given")
    return EvalResult(name=name, metrics=metrics.results(), per_image=metrics.image_rows())


def _accumulate(
    labelled: Iterable[tuple[str, Any, Any]], *, invert_gt: bool, invert_pred: bool,
    refused: type[Exception] | None = None,
) -> BlurMetrics:
    """Step every ``(label, pred, gt)``; a bad pair's error names its label. With ``refused``
    (files the user gave) it is that error instead of ``ValueError``/``TypeError``."""
    metrics = BlurMetrics()
    for label, pred, gt in labelled:
        try:
            metrics.step(*_prepare(pred, gt, invert_pred=invert_pred, invert_gt=invert_gt))
        except (ValueError, TypeError) as exc:
            error = refused or (TypeError if isinstance(exc, TypeError) else ValueError)
            raise error(f"{label}: {exc}") from exc
    return metrics


def _index(directory: Path, extensions: tuple[str, ...], role: str) -> tuple[dict, list]:
    """stem → file for the files of ``directory`` with one of ``extensions``; others listed."""
    if not directory.is_dir():
        raise MapFolderNotFoundError(f"{role} directory {directory} does not exist or is not a "
                                     "folder; give the folder of the files")
    by_stem: dict[str, Path] = {}
    ignored: list[Path] = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in extensions:
            ignored.append(path)
            continue
        if path.stem in by_stem:
            raise EvaluationInputError(
                f"{role} directory {directory} holds two files with the stem {path.stem!r}: "
                f"{by_stem[path.stem].name} and {path.name}; keep one"
            )
        by_stem[path.stem] = path
    return by_stem, ignored


def evaluate_dirs(
    pred_dir: str | Path,
    gt_dir: str | Path,
    *,
    invert_gt: bool = False,
    invert_pred: bool = False,
    out_dir: str | Path | None = None,
    name: str = "method",
    allow_extra_preds: bool = False,
    force: bool = False,
) -> EvalResult:
    """Evaluate the maps of ``pred_dir`` against the masks of ``gt_dir``, matched by stem.

    Maps: ``*.png|jpg|jpeg|bmp|tif|tiff|npy``; masks: ``*.png|bmp`` (255 = blurred; pass
    ``invert_gt=True`` for sets whose masks are 255 = in focus). Only the folders' top level is
    read; hidden files are skipped, files of other extensions are returned in
    ``EvalResult.ignored``. Every mask needs a map: otherwise :class:`EvaluationInputError` (a
    ``ValueError``) says how many matched and which stems are missing. A map without a mask is
    an error too, unless ``allow_extra_preds`` (then its stem is in ``EvalResult.extra_preds``). With ``out_dir`` the
    report of this one method is written there (:func:`write_report`, ``force`` to overwrite).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    preds, ignored_preds = _index(pred_dir, PRED_EXTENSIONS, "prediction")
    gts, ignored_gts = _index(gt_dir, GT_EXTENSIONS, "mask")
    if not gts:
        raise EvaluationInputError(
            f"mask directory {gt_dir} holds no {'/'.join(GT_EXTENSIONS)} file"
            + (f" (it holds {len(ignored_gts)} other files)" if ignored_gts else "")
        )
    matched = sorted(set(gts) & set(preds))
    missing = sorted(set(gts) - set(preds))
    extra = sorted(set(preds) - set(gts))
    problems = []
    if missing:
        problems.append(f"{len(missing)} mask(s) have no map in {pred_dir}: {_first(missing)}")
    if extra and not allow_extra_preds:
        problems.append(
            f"{len(extra)} map(s) have no mask in {gt_dir}: {_first(extra)} "
            "(--allow-extra-preds, or allow_extra_preds=True, evaluates on the masks' images "
            "only)"
        )
    if problems:
        raise EvaluationInputError(
            f"evaluate_dirs({name!r}): {len(matched)} of {len(gts)} masks matched a map by "
            "file stem; " + "; ".join(problems)
        )

    def labelled():
        for stem in matched:
            label = f"{preds[stem]} vs {gts[stem]}"
            try:
                pred, gt = load_pred_map(preds[stem]), load_mask(gts[stem])
            except (OSError, ValueError, TypeError) as exc:  # unreadable or not a map
                raise EvaluationInputError(f"{label}: cannot read the pair: {exc}") from exc
            yield label, pred, gt

    metrics = _accumulate(labelled(), invert_gt=invert_gt, invert_pred=invert_pred,
                          refused=EvaluationInputError)
    result = EvalResult(
        name=name,
        metrics=metrics.results(),
        stems=tuple(matched),
        extra_preds=tuple(extra),
        ignored=tuple(ignored_preds + ignored_gts),
        sources={"pred_dir": str(pred_dir), "gt_dir": str(gt_dir)},
        per_image=metrics.image_rows(),
    )
    if out_dir is not None:
        write_report({name: result}, out_dir, force=force)
        result = replace(result, report_dir=Path(out_dir))
    return result


def _first(stems: list[str]) -> str:
    shown = ", ".join(repr(s) for s in stems[:_SHOW_MISSING])
    return shown + (
        f", … ({len(stems) - _SHOW_MISSING} more)" if len(stems) > _SHOW_MISSING else ""
    )


# --------------------------------------------------------------------------------------------
# Reports


def _metrics_of(result: EvalResult | Mapping[str, Any]) -> Mapping[str, Any]:
    return result.metrics if isinstance(result, EvalResult) else result


def write_report(
    results: Mapping[str, EvalResult | Mapping[str, Any]],
    out_dir: str | Path,
    *,
    force: bool = False,
) -> dict[str, Path]:
    """Write the numbers and curves of several methods (name → result) into ``out_dir``.

    Files: ``metrics.json`` (``{"methods": {name: {mae, max_f, mean_f, ap, auc, s_measure,
    weighted_f, max_f_pysod, mean_f_pysod, best_threshold, n_images, n_empty_gt, n_full_gt,
    curves: {pr, f, roc}}}, "protocol": …}``, curve paths relative to ``out_dir``);
    ``pr_curve.csv`` (method, threshold, precision, recall, f), ``f_curve.csv`` (method,
    threshold, f, f_pysod) and ``roc_curve.csv`` (method, threshold, fpr, tpr), 256 rows per
    method; ``pr_curve.png``, ``f_curve.png``, ``roc_curve.png`` with every method on one axis.
    An existing report is not overwritten unless ``force``. Returns file name → path.
    """
    if not results:
        raise ValueError("write_report: no result to write")
    out = Path(out_dir)
    paths = {name: out / name for name in REPORT_FILES}
    existing = [p.name for p in paths.values() if p.exists()]
    if existing and not force:
        raise ReportExistsError(
            f"{out} already holds a report ({', '.join(existing)}); pass force=True (--force) "
            "to overwrite it or choose another directory"
        )
    out.mkdir(parents=True, exist_ok=True)
    methods = {name: _metrics_of(r) for name, r in results.items()}

    summary: dict[str, Any] = {}
    for name, m in methods.items():
        entry = {key: m[key] for key in SUMMARY_KEYS}
        entry["curves"] = {"pr": "pr_curve.csv", "f": "f_curve.csv", "roc": "roc_curve.csv"}
        result = results[name]
        if isinstance(result, EvalResult) and result.sources:
            entry["sources"] = dict(result.sources)
        summary[name] = entry
    document = {
        "methods": summary,
        "protocol": {
            "max_f/mean_f": "classic: per-image min-max map, 256 thresholds (round(255*m) >= t), "
            "P and R averaged over images per threshold, F (beta^2 = 0.3) of the averages",
            "ap": "step sum of averaged precision over averaged recall, t = 255..0",
            "auc": "trapezoid area under averaged (FPR, TPR), from (0, 0) to (1, 1)",
            "max_f_pysod/mean_f_pysod": "PySODMetrics FmeasureV2: per-image F curves averaged",
            "mae/s_measure/weighted_f": "PySODMetrics MAE, Smeasure (alpha 0.5), "
            "WeightedFmeasure (beta^2 = 1), averaged over images",
        },
    }
    paths["metrics.json"].write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")

    _write_curves(paths["pr_curve.csv"], methods, ("precision", "recall", "f"))
    _write_curves(paths["f_curve.csv"], methods, ("f", "f_pysod"))
    _write_curves(paths["roc_curve.csv"], methods, ("fpr", "tpr"))
    _plot(paths, methods)
    return paths


def _write_curves(path: Path, methods: Mapping[str, Mapping], columns: tuple[str, ...]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("method", "threshold", *columns))
        for name, m in methods.items():
            curves = m["curves"]
            for t in range(len(curves["threshold"])):
                writer.writerow(
                    (name, int(curves["threshold"][t]), *(f"{curves[c][t]:.6f}" for c in columns))
                )


def _plot(paths: Mapping[str, Path], methods: Mapping[str, Mapping]) -> None:
    """PR, F-threshold and ROC figures, every method on one axis (Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def figure(xlabel: str, ylabel: str, title: str):
        fig = Figure(figsize=(5.5, 4.5), dpi=120)
        FigureCanvasAgg(fig)  # render with Agg whatever pyplot's backend is
        ax = fig.add_subplot()
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xlim=(0, 1), ylim=(0, 1.01))
        ax.grid(True, alpha=0.3)
        return fig, ax

    fig, ax = figure("recall", "precision", "Precision-recall (averaged over images)")
    for name, m in methods.items():
        c = m["curves"]
        ax.plot(c["recall"], c["precision"], label=f"{name} (max F {m['max_f']:.3f})")
    ax.legend(loc="lower left", fontsize="small")
    fig.savefig(paths["pr_curve.png"])

    fig, ax = figure("threshold / 255", "F-measure (β² = 0.3)", "F-measure per threshold")
    for name, m in methods.items():
        c = m["curves"]
        ax.plot(c["threshold"] / 255.0, c["f"], label=f"{name} (mean F {m['mean_f']:.3f})")
    ax.legend(loc="lower left", fontsize="small")
    fig.savefig(paths["f_curve.png"])

    fig, ax = figure("false positive rate", "true positive rate", "ROC (averaged over images)")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for name, m in methods.items():
        c = m["curves"]
        ax.plot(c["fpr"], c["tpr"], label=f"{name} (AUC {m['auc']:.3f})")
    ax.legend(loc="lower right", fontsize="small")
    fig.savefig(paths["roc_curve.png"])


_TABLE_COLUMNS = (
    ("mae", "MAE↓"),
    ("max_f", "maxF"),
    ("mean_f", "meanF"),
    ("ap", "AP"),
    ("auc", "AUC"),
    ("s_measure", "S"),
    ("weighted_f", "wF"),
    ("max_f_pysod", "maxF(pysod)"),
)


def format_table(results: Mapping[str, EvalResult | Mapping[str, Any]]) -> str:
    """A plain-text table: one row per method, one column per metric, 3 decimals, plus ``n``."""
    headers = ["method", *(label for _, label in _TABLE_COLUMNS), "n"]
    rows = []
    for name, result in results.items():
        m = _metrics_of(result)
        cells = [f"{m[key]:.3f}" if math.isfinite(m[key]) else "nan" for key, _ in _TABLE_COLUMNS]
        rows.append([str(name), *cells, str(m["n_images"])])
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first, *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:]))])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def compare_methods(results: Mapping[str, EvalResult], rounds: int = 2000,
                    seed: int = 0) -> dict[str, dict[str, float]]:
    """The first method against each other one, over ``rounds`` resamples of the images
    (:func:`blurset.model.metrics.paired_bootstrap`); the methods must have been scored on the
    same images in the same order."""
    names = list(results)
    if len(names) < 2:
        raise ValueError("comparing methods needs at least two of them (with --checkpoint, keep "
                         "--baselines)")
    missing = [n for n in names if results[n].per_image is None]
    if missing:
        raise ValueError(f"no per-image numbers for {missing}: score them with evaluate_arrays "
                         "or evaluate_dirs")
    stems = {n: results[n].stems for n in names}
    if len({s for s in stems.values() if s}) > 1:
        raise ValueError("the methods were scored on different images; compare them on one set")
    return paired_bootstrap({n: results[n].per_image for n in names}, names[0], rounds=rounds,
                            seed=seed)


def format_comparison(comparison: Mapping[str, Mapping[str, float]], reference: str,
                      rounds: int, n_images: int) -> str:
    """The lines :func:`compare_methods` gives, for people."""
    head = (f"{reference} minus each method, {rounds} resamples of the {n_images} images "
            "(95 % intervals; one that straddles 0 cannot tell the two apart):")
    lines = [head]
    for name, d in comparison.items():
        if name == "all":
            continue
        lines.append(
            f"  {name:10} max F {d['max_f_diff']:+.4f} [{d['max_f_diff_lo']:+.4f}, "
            f"{d['max_f_diff_hi']:+.4f}]  MAE {d['mae_diff']:+.4f} [{d['mae_diff_lo']:+.4f}, "
            f"{d['mae_diff_hi']:+.4f}]  {reference} ahead on both in {d['wins']:.0%}")
    lines.append(f"  {reference} ahead of every other method on both measures in "
                 f"{comparison['all']['wins']:.0%} of them")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Baselines


def baseline_map(name: str, image: np.ndarray, **kwargs: Any) -> np.ndarray:
    """blurset's handcrafted blur map ``name`` of a uint8 RGB ``(H, W, 3)`` or grey image.

    ``"laplacian"``: :func:`blurset.model.baselines.laplacian_blur_map` (local Laplacian variance);
    ``"lbp"``: :func:`blurset.model.baselines.lbp_blur_map` (Yi & Eramian's LBP sharpness). ``kwargs``
    go to that function (``window``, ``threshold``). Returns float32 ``(H, W)`` in ``[0, 1]``,
    1 = blurred.
    """
    if name == "laplacian":
        return laplacian_blur_map(image, **kwargs)
    if name == "lbp":
        return lbp_blur_map(image, **kwargs)
    raise ValueError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
