"""Metrics for blur maps against binary blur masks, with a PySODMetrics-like face.

:class:`ClassicMetrics` is the classic protocol of the DPN-era tables (MAE, max F / mean F with
β² = 0.3, AP, AUC) as running sums that processes can add up; :class:`BlurMetrics` reports the same
numbers plus PySODMetrics' S-measure, weighted F and per-image F curves. Every number is an average
over images; the protocols, step by step, are in ``docs/metrics.md``. Pure computation, no I/O.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import py_sod_metrics as sod

__all__ = [
    "BETA2",
    "METRIC_KEYS",
    "N_THRESHOLDS",
    "BlurMetrics",
    "ClassicMetrics",
    "binarize_mask",
    "normalize_map",
    "paired_bootstrap",
]

BETA2 = 0.3  # β² of the F-measure (Achanta et al., CVPR 2009), as every blur/saliency table
N_THRESHOLDS = 256  # thresholds t = 0..255 on the 8-bit quantised map
METRIC_KEYS = ("mae", "max_f", "mean_f", "ap", "auc", "s_measure", "weighted_f")


def normalize_map(pred: Any) -> np.ndarray:
    """A blur map as float64 ``(H, W)`` in ``[0, 1]``, min-max normalised per image.

    uint8 is divided by 255, bool taken as 0/1, float kept; then ``(x - min) / (max - min)``.
    A constant map is left as it is, clipped to ``[0, 1]`` (MATLAB ``mapminmax`` semantics, as
    PySODMetrics). Raises ``TypeError`` for other dtypes and ``ValueError`` for NaN/inf or a
    map that is not 2-D.
    """
    arr = np.asarray(pred)
    if arr.ndim != 2:
        raise ValueError(
            f"blur map must be 2-D (H, W), got shape {arr.shape}; pass one single-channel map "
            "(take map[..., 0] of a grey map saved as RGB)"
        )
    if arr.dtype == np.uint8:
        x = arr.astype(np.float64) / 255.0
    elif arr.dtype == np.bool_:
        x = arr.astype(np.float64)
    elif np.issubdtype(arr.dtype, np.floating):
        x = arr.astype(np.float64)
        if not np.isfinite(x).all():
            raise ValueError(
                f"blur map has {int((~np.isfinite(x)).sum())} NaN or infinite values; fix the "
                "model output first"
            )
    else:
        raise TypeError(
            f"blur map must be uint8, bool or float, got {arr.dtype}; scale other integer maps "
            "to float first (e.g. map / 65535 for 16-bit)"
        )
    low, high = float(x.min()), float(x.max())
    if high > low:
        x = (x - low) / (high - low)
    return np.clip(x, 0.0, 1.0)


def binarize_mask(gt: Any) -> np.ndarray:
    """A blur mask as bool ``(H, W)``, True = blurred.

    uint8: ``> 128`` (the toolboxes' and PySODMetrics' cut; masks are 0/255); bool as it is;
    float: ``> 0.5`` (values must lie in ``[0, 1]``).
    """
    arr = np.asarray(gt)
    if arr.ndim != 2:
        raise ValueError(
            f"mask must be 2-D (H, W), got shape {arr.shape}; pass one single-channel mask"
        )
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype == np.uint8:
        return arr > 128
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1):
            raise ValueError(
                f"float mask must lie in [0, 1], got range [{arr.min()}, {arr.max()}]; pass "
                "the uint8 0/255 mask or mask / 255"
            )
        return arr > 0.5
    raise TypeError(
        f"mask must be uint8 (0/255), bool or float in [0, 1], got {arr.dtype}; "
        "convert with mask.astype(np.uint8) if it holds 0/255, or mask.astype(bool) if 0/1"
    )


class _Smeasure(sod.Smeasure):
    """PySODMetrics' S-measure, safe when the mask's centroid sits on the last row or column.

    There one of the four region quadrants is empty: its weight is 0, but PySODMetrics (and the
    MATLAB original) take the SSIM of an empty array, which is NaN and makes the sum NaN. An
    empty quadrant scores 0 here, so it contributes 0·0.
    """

    def ssim(self, pred: np.ndarray, gt: np.ndarray) -> float:
        if pred.size == 0:
            return 0.0
        return super().ssim(pred, gt)


def _divide(num: np.ndarray, den: np.ndarray | int) -> np.ndarray:
    """``num / den`` elementwise, 0 where ``den == 0``."""
    num = np.asarray(num, np.float64)
    den = np.broadcast_to(np.asarray(den, np.float64), num.shape)
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _f_measure(precision: np.ndarray, recall: np.ndarray, beta2: float) -> np.ndarray:
    return _divide((1.0 + beta2) * precision * recall, beta2 * precision + recall)


def _prepare(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    """Checked ``(normalised map float64, mask bool)`` of one image, both ``(H, W)``."""
    pred_arr, gt_arr = np.asarray(pred), np.asarray(gt)
    if pred_arr.shape != gt_arr.shape:
        raise ValueError(
            f"Shape mismatch between prediction {pred_arr.shape} and ground truth "
            f"{gt_arr.shape}; resize the map to the mask's size first "
            "(model.evaluate.resize_map(pred, gt.shape))"
        )
    m = normalize_map(pred_arr)  # (H, W) float64 in [0, 1]
    g = binarize_mask(gt_arr)  # (H, W) bool, True = blurred
    if g.size == 0:
        raise ValueError(f"empty image: shape {g.shape}")
    return m, g


class ClassicMetrics:
    """The classic protocol (``docs/metrics.md``): MAE, max F / mean F, AP, AUC.

    Usage::

        metrics = ClassicMetrics()
        for pred, gt in pairs:  # pred (H, W) uint8/float, gt (H, W) uint8 0/255 or bool
            metrics.step(pred, gt)
        metrics.results()["max_f"]

    Its whole state is :attr:`sums`, one float64 vector of :data:`SIZE`, so several processes can
    add theirs (``torch.distributed.all_reduce``) and :meth:`from_sums` reports the total.
    """

    # Σ MAE, images, masks without blur, masks all blur, then Σ P(t), Σ R(t), Σ FPR(t), t = 0..255
    SIZE = 4 + 3 * N_THRESHOLDS

    def __init__(self, beta2: float = BETA2) -> None:
        if not 0 < beta2:
            raise ValueError(f"beta2 must be > 0, got {beta2!r}; blur tables use 0.3")
        self.beta2 = float(beta2)
        self.sums = np.zeros(self.SIZE)

    @classmethod
    def from_sums(cls, sums: Any, beta2: float = BETA2) -> ClassicMetrics:
        """A report over the images whose :attr:`sums` were added up into ``sums``."""
        arr = np.asarray(sums, np.float64).reshape(-1)
        if arr.shape != (cls.SIZE,):
            raise ValueError(f"ClassicMetrics sums must hold {cls.SIZE} numbers, got {arr.size}")
        metrics = cls(beta2)
        metrics.sums = arr.copy()
        return metrics

    @property
    def n_images(self) -> int:
        return int(self.sums[1])

    @property
    def n_empty_gt(self) -> int:
        return int(self.sums[2])

    @property
    def n_full_gt(self) -> int:
        return int(self.sums[3])

    def __len__(self) -> int:
        return self.n_images

    def step(self, pred: Any, gt: Any) -> None:
        """Add one image: ``pred`` a blur map ``(H, W)``, ``gt`` its mask of the same shape."""
        self.add(*_prepare(pred, gt))

    def add(self, m: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Add one image already prepared: ``m`` normalised float64, ``g`` bool, same shape.
        Returns that image's own sums (``(SIZE,)``)."""
        row = self.image_sums(m, g)
        self.sums += row
        return row

    @staticmethod
    def image_sums(m: np.ndarray, g: np.ndarray) -> np.ndarray:
        """One prepared image's sums (``(SIZE,)``, the layout of :attr:`sums`)."""
        # 8-bit levels, "q >= t" counted by cumulative histograms.
        q = np.floor(m * 255.0 + 0.5).astype(np.intp)  # (H, W) in 0..255, MATLAB round
        n_pos = int(np.count_nonzero(g))
        n_neg = g.size - n_pos
        tp = np.cumsum(np.bincount(q[g], minlength=N_THRESHOLDS)[::-1])[::-1]  # (256,) q >= t
        fp = np.cumsum(np.bincount(q[~g], minlength=N_THRESHOLDS)[::-1])[::-1]
        n = N_THRESHOLDS
        row = np.zeros(ClassicMetrics.SIZE)
        row[0] = float(np.abs(m - g).mean())
        row[1:4] = (1, n_pos == 0, n_neg == 0)
        row[4 : 4 + n] = _divide(tp, tp + fp)
        row[4 + n : 4 + 2 * n] = _divide(tp, n_pos)
        row[4 + 2 * n :] = _divide(fp, n_neg)
        return row

    def results(self) -> dict[str, Any]:
        """``mae, max_f, mean_f, ap, auc, best_threshold, n_images, n_empty_gt, n_full_gt`` and
        ``curves`` = ``{threshold, precision, recall, f, fpr, tpr}`` (float64 arrays of 256,
        index = threshold ``t``)."""
        n = self.n_images
        if n == 0:
            raise ValueError(f"{type(self).__name__}.results(): no image was added; call step() "
                             "first")
        k = N_THRESHOLDS
        precision = self.sums[4 : 4 + k] / n
        recall = self.sums[4 + k : 4 + 2 * k] / n
        fpr = self.sums[4 + 2 * k :] / n
        f = _f_measure(precision, recall, self.beta2)

        # AP: step sum over thresholds from high to low, recall rising from R(256) = 0.
        recall_next = np.append(recall[1:], 0.0)  # R(t + 1)
        ap = float(np.sum((recall - recall_next) * precision))
        # AUC: trapezoids between (FPR(t+1), TPR(t+1)) and (FPR(t), TPR(t)), from (0, 0).
        fpr_next = np.append(fpr[1:], 0.0)
        auc = float(np.sum((fpr - fpr_next) * (recall + recall_next) / 2.0))
        best = int(np.argmax(f))
        return {
            "mae": float(self.sums[0]) / n,
            "max_f": float(f[best]),
            "mean_f": float(f.mean()),
            "ap": ap,
            "auc": auc,
            "best_threshold": best,
            "n_images": n,
            "n_empty_gt": self.n_empty_gt,
            "n_full_gt": self.n_full_gt,
            "curves": {
                "threshold": np.arange(N_THRESHOLDS),
                "precision": precision,
                "recall": recall,
                "f": f,
                "fpr": fpr,
                "tpr": recall.copy(),
            },
        }


def paired_bootstrap(per_image: dict[str, np.ndarray], reference: str, *, rounds: int = 2000,
                     level: float = 0.95, seed: int = 0,
                     beta2: float = BETA2) -> dict[str, dict[str, float]]:
    """How sure a comparison on a few images is: ``reference`` against every other method.

    ``per_image[name]`` holds one method's per-image sums (:meth:`BlurMetrics.image_rows`, rows of
    :meth:`ClassicMetrics.image_sums`), the same images in the same order for every method. Each round draws the images again with replacement (one
    draw for all methods, so the comparison stays paired) and scores every method on the draw.
    For each other method: ``max_f_diff`` and ``mae_diff`` (reference minus method, on all the
    images), the ``level`` percentile interval of each over the rounds (``…_lo``, ``…_hi``), and
    ``wins``, the share of rounds in which the reference has both the higher max F and the lower
    MAE; under the key ``"all"``, ``wins`` is the share in which it beats every other method so.
    An interval that straddles 0 means the images cannot tell the two apart.
    """
    if "all" in per_image:
        raise ValueError("paired_bootstrap: 'all' names the summary entry; rename that method")
    if reference not in per_image:
        raise ValueError(f"paired_bootstrap: reference {reference!r} is not among the methods "
                         f"{sorted(per_image)}")
    shapes = {name: np.shape(rows) for name, rows in per_image.items()}
    n = shapes[reference][0]
    if n == 0 or any(shape != (n, ClassicMetrics.SIZE) for shape in shapes.values()):
        raise ValueError(f"paired_bootstrap: every method needs one row of {ClassicMetrics.SIZE} "
                         f"sums per image, the same images for all; got shapes {shapes}")
    if rounds < 1 or not 0 < level < 1:
        raise ValueError(f"paired_bootstrap: rounds must be >= 1 and level in (0, 1), got "
                         f"{rounds} and {level}")
    draws = np.random.default_rng(seed).integers(0, n, size=(rounds, n))
    counts = np.stack([np.bincount(d, minlength=n) for d in draws]).astype(np.float64)
    full = np.ones((1, n))
    k = N_THRESHOLDS

    def scores(rows: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sums = weights @ np.asarray(rows, np.float64) / n  # (rounds, SIZE), means over images
        f = _f_measure(sums[:, 4 : 4 + k], sums[:, 4 + k : 4 + 2 * k], beta2)
        return sums[:, 0], f.max(axis=1)  # MAE, max F

    ref_all, ref = scores(per_image[reference], full), scores(per_image[reference], counts)
    tail = (1.0 - level) / 2.0 * 100.0
    out: dict[str, dict[str, float]] = {}
    beats_all = np.ones(rounds, bool)
    for name, rows in per_image.items():
        if name == reference:
            continue
        other_all, other = scores(rows, full), scores(rows, counts)
        f_diff, mae_diff = ref[1] - other[1], ref[0] - other[0]
        out[name] = {
            "max_f_diff": float(ref_all[1][0] - other_all[1][0]),
            "max_f_diff_lo": float(np.percentile(f_diff, tail)),
            "max_f_diff_hi": float(np.percentile(f_diff, 100.0 - tail)),
            "mae_diff": float(ref_all[0][0] - other_all[0][0]),
            "mae_diff_lo": float(np.percentile(mae_diff, tail)),
            "mae_diff_hi": float(np.percentile(mae_diff, 100.0 - tail)),
            "wins": float(np.mean((f_diff > 0) & (mae_diff < 0))),
        }
        beats_all &= (f_diff > 0) & (mae_diff < 0)
    out["all"] = {"wins": float(np.mean(beats_all))}
    return out


class BlurMetrics:
    """:class:`ClassicMetrics` plus PySODMetrics' S-measure, weighted F and per-image F curves.

    Same usage (``step(pred, gt)``, ``results()``). Per image it keeps the classic running sums
    plus PySODMetrics' per-image numbers, so memory grows by a few KB per image.
    """

    def __init__(self, beta2: float = BETA2) -> None:
        self._classic = ClassicMetrics(beta2)
        self._rows: list[np.ndarray] = []  # each image's classic sums, for paired_bootstrap
        self.beta2 = self._classic.beta2
        self._sm = _Smeasure(alpha=0.5)
        self._wfm = sod.WeightedFmeasure(beta=1.0)
        self._fm = sod.FmeasureV2(
            metric_handlers={
                "fm": sod.FmeasureHandler(with_dynamic=True, with_adaptive=False, beta=self.beta2)
            }
        )

    @property
    def n_images(self) -> int:
        return self._classic.n_images

    @property
    def n_empty_gt(self) -> int:
        return self._classic.n_empty_gt

    @property
    def n_full_gt(self) -> int:
        return self._classic.n_full_gt

    def __len__(self) -> int:
        return self.n_images

    def step(self, pred: Any, gt: Any) -> None:
        """Add one image: ``pred`` a blur map ``(H, W)``, ``gt`` its mask of the same shape."""
        m, g = _prepare(pred, gt)
        self._rows.append(self._classic.add(m, g))
        self._sm.step(m, g, normalize=False)
        self._wfm.step(m, g, normalize=False)
        self._fm.step(m, g, normalize=False)

    def image_rows(self) -> np.ndarray:
        """``(n_images, ClassicMetrics.SIZE)``: each image's classic sums, in the order they
        were stepped (for :func:`paired_bootstrap`)."""
        return np.array(self._rows, np.float64).reshape(len(self._rows), ClassicMetrics.SIZE)

    def results(self) -> dict[str, Any]:
        """The numbers (floats) and curves (float64 arrays of 256, index = threshold ``t``).

        Keys: ``mae, max_f, mean_f, ap, auc, s_measure, weighted_f`` (:data:`METRIC_KEYS`),
        ``max_f_pysod, mean_f_pysod, best_threshold, n_images, n_empty_gt, n_full_gt`` and
        ``curves`` = ``{threshold, precision, recall, f, fpr, tpr, f_pysod}``.
        """
        if self.n_images == 0:
            raise ValueError("BlurMetrics.results(): no image was added; call step() first")
        classic = self._classic.results()
        # PySODMetrics' curve runs t = 255..0; flip it to index = threshold.
        f_pysod = np.asarray(self._fm.get_results()["fm"]["dynamic"], np.float64)[::-1].copy()
        return {
            "mae": classic["mae"],
            "max_f": classic["max_f"],
            "mean_f": classic["mean_f"],
            "ap": classic["ap"],
            "auc": classic["auc"],
            "s_measure": float(self._sm.get_results()["sm"]),
            "weighted_f": float(self._wfm.get_results()["wfm"]),
            "max_f_pysod": float(f_pysod.max()),
            "mean_f_pysod": float(f_pysod.mean()),
            "best_threshold": classic["best_threshold"],
            "n_images": classic["n_images"],
            "n_empty_gt": classic["n_empty_gt"],
            "n_full_gt": classic["n_full_gt"],
            "curves": {**classic["curves"], "f_pysod": f_pysod},
        }
