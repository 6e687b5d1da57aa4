"""Metrics for blur maps against binary blur masks, with a PySODMetrics-like face.

A **blur map** is ``(H, W)``, high = blurred: uint8 (0-255), bool, or float. A **mask** is
``(H, W)`` with the dataset's polarity, blurred = true: uint8 (``> 128``, so 255 = blurred, as the
release's ``mask`` column and CUHK's ``gt/*.png``), bool, or float in ``[0, 1]`` (``> 0.5``).

:class:`BlurMetrics` accumulates images with ``step(pred, gt)`` and reports with ``results()``.
Every number is an average over images with equal weight (not over pixels). The protocols:

- **Normalisation** (every metric): the map goes to ``[0, 1]`` (uint8 / 255; bool as 0/1; float
  as it is) and is then min-max normalised per image, as MATLAB's ``mapminmax(im2double(map))``
  and PySODMetrics' ``prepare_data`` do. A constant map has no range: it is kept as it is (clipped
  to ``[0, 1]``), so an all-255 map stays all ones and an all-0 map all zeros, and such a map scores
  MAE 0 against a mask of the same constant.
- ``max_f`` / ``mean_f`` (**classic protocol**, the MATLAB toolboxes behind the DPN-era saliency
  and blur-detection tables): the normalised map is quantised to 256 levels, ``q = round(255·m)``
  (half up, as MATLAB's ``im2uint8``); at every threshold ``t = 0..255`` a pixel is predicted
  blurred iff ``q >= t``; per image ``P(t) = TP / (TP + FP)`` (0 when nothing is predicted) and
  ``R(t) = TP / (TP + FN)`` (0 when the mask has no blurred pixel); ``P(t)`` and ``R(t)`` are
  averaged over images; ``F(t) = (1 + β²)·P̄·R̄ / (β²·P̄ + R̄)`` with β² = 0.3 (0 where
  ``P̄ = R̄ = 0``); ``max_f`` is the maximum of ``F(t)`` over the 256 thresholds and ``mean_f``
  its mean. ``best_threshold`` is the ``t`` of ``max_f``.
- ``ap``: area under that averaged PR curve as the non-interpolated step sum of scikit-learn's
  ``average_precision_score``, ``Σ_t (R̄(t) - R̄(t+1))·P̄(t)`` over ``t = 255..0`` with
  ``R̄(256) = 0``. On one image it equals ``average_precision_score(mask, q)``.
- ``auc``: trapezoid area under the averaged ROC curve, ``TPR̄(t) = R̄(t)`` against
  ``FPR̄(t)`` (per-image ``FP / (FP + TN)``, 0 when the mask is all blurred), from ``(0, 0)``
  (``t = 256``) to ``(1, 1)`` (``t = 0``). On one image it equals ``roc_auc_score(mask, q)``.
- ``max_f_pysod`` / ``mean_f_pysod``: PySODMetrics' ``FmeasureV2`` + ``FmeasureHandler``
  (β² = 0.3): an F curve per image (its quantisation is ``floor(255·m)``), averaged over images,
  then max / mean. On real blur maps it differs from the classic ``max_f`` by about 0.01-0.02;
  shown for comparison with PySODMetrics-based code, not with the papers' tables.
- ``mae``: mean absolute difference between the normalised map and the 0/1 mask (PySODMetrics
  ``MAE``; Perazzi et al., CVPR 2012).
- ``s_measure``: structure measure, α = 0.5 (Fan et al., ICCV 2017; PySODMetrics ``Smeasure``).
- ``weighted_f``: weighted F-measure, β² = 1 (Margolin et al., CVPR 2014; PySODMetrics
  ``WeightedFmeasure``, which scores 0 on a mask with no blurred pixel).

Masks with no blurred pixel (``n_empty_gt``) score ``R = 0`` and so ``F = 0`` at every threshold,
even for a perfect (all-zero) map, as in the toolboxes: a dataset holding sharp-only images has a
``max_f`` below 1 for any method. ``results()`` counts them so that a reader can tell.

Pure computation: no I/O. Resizing a map to its mask is the caller's job
(:func:`blurset.model.evaluate.resize_map`); ``step`` refuses mismatched shapes.
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
    "binarize_mask",
    "normalize_map",
]

BETA2 = 0.3  # β² of the F-measure (Achanta et al., CVPR 2009), as every blur/saliency table
N_THRESHOLDS = 256  # thresholds t = 0..255 on the 8-bit quantised map
METRIC_KEYS = ("mae", "max_f", "mean_f", "ap", "auc", "s_measure", "weighted_f")
CURVE_KEYS = ("threshold", "precision", "recall", "f", "fpr", "tpr", "f_pysod")


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


class BlurMetrics:
    """Accumulates blur maps against masks; every protocol is in this module's docstring.

    Usage::

        metrics = BlurMetrics()
        for pred, gt in pairs:  # pred (H, W) uint8/float, gt (H, W) uint8 0/255 or bool
            metrics.step(pred, gt)
        metrics.results()["max_f"]

    Per image it keeps only running sums of the 256-point curves plus PySODMetrics' per-image
    numbers, so memory grows by a few KB per image.
    """

    def __init__(self, beta2: float = BETA2) -> None:
        if not 0 < beta2:
            raise ValueError(f"beta2 must be > 0, got {beta2!r}; blur tables use 0.3")
        self.beta2 = float(beta2)
        self.n_images = 0
        self.n_empty_gt = 0
        self.n_full_gt = 0
        self._precision = np.zeros(N_THRESHOLDS)  # sums over images, index = threshold t
        self._recall = np.zeros(N_THRESHOLDS)
        self._fpr = np.zeros(N_THRESHOLDS)
        self._mae = sod.MAE()
        self._sm = _Smeasure(alpha=0.5)
        self._wfm = sod.WeightedFmeasure(beta=1.0)
        self._fm = sod.FmeasureV2(
            metric_handlers={
                "fm": sod.FmeasureHandler(with_dynamic=True, with_adaptive=False, beta=self.beta2)
            }
        )

    def __len__(self) -> int:
        return self.n_images

    def step(self, pred: Any, gt: Any) -> None:
        """Add one image: ``pred`` a blur map ``(H, W)``, ``gt`` its mask of the same shape."""
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

        # Classic curves: 8-bit levels, "q >= t" counted by cumulative histograms.
        q = np.floor(m * 255.0 + 0.5).astype(np.intp)  # (H, W) in 0..255, MATLAB round
        n_pos = int(np.count_nonzero(g))
        n_neg = g.size - n_pos
        tp = np.cumsum(np.bincount(q[g], minlength=N_THRESHOLDS)[::-1])[::-1]  # (256,) q >= t
        fp = np.cumsum(np.bincount(q[~g], minlength=N_THRESHOLDS)[::-1])[::-1]
        self._precision += _divide(tp, tp + fp)
        self._recall += _divide(tp, n_pos)
        self._fpr += _divide(fp, n_neg)

        self._mae.step(m, g, normalize=False)
        self._sm.step(m, g, normalize=False)
        self._wfm.step(m, g, normalize=False)
        self._fm.step(m, g, normalize=False)
        self.n_images += 1
        self.n_empty_gt += n_pos == 0
        self.n_full_gt += n_neg == 0

    def results(self) -> dict[str, Any]:
        """The numbers (floats) and curves (float64 arrays of 256, index = threshold ``t``).

        Keys: ``mae, max_f, mean_f, ap, auc, s_measure, weighted_f`` (:data:`METRIC_KEYS`),
        ``max_f_pysod, mean_f_pysod, best_threshold, n_images, n_empty_gt, n_full_gt`` and
        ``curves`` = ``{threshold, precision, recall, f, fpr, tpr, f_pysod}``.
        """
        if self.n_images == 0:
            raise ValueError("BlurMetrics.results(): no image was added; call step() first")
        n = self.n_images
        precision = self._precision / n
        recall = self._recall / n
        fpr = self._fpr / n
        f = _f_measure(precision, recall, self.beta2)

        # AP: step sum over thresholds from high to low, recall rising from R(256) = 0.
        recall_next = np.append(recall[1:], 0.0)  # R(t + 1)
        ap = float(np.sum((recall - recall_next) * precision))
        # AUC: trapezoids between (FPR(t+1), TPR(t+1)) and (FPR(t), TPR(t)), from (0, 0).
        fpr_next = np.append(fpr[1:], 0.0)
        auc = float(np.sum((fpr - fpr_next) * (recall + recall_next) / 2.0))

        # PySODMetrics' curve runs t = 255..0; flip it to index = threshold.
        f_pysod = np.asarray(self._fm.get_results()["fm"]["dynamic"], np.float64)[::-1].copy()
        best = int(np.argmax(f))
        return {
            "mae": float(self._mae.get_results()["mae"]),
            "max_f": float(f[best]),
            "mean_f": float(f.mean()),
            "ap": ap,
            "auc": auc,
            "s_measure": float(self._sm.get_results()["sm"]),
            "weighted_f": float(self._wfm.get_results()["wfm"]),
            "max_f_pysod": float(f_pysod.max()),
            "mean_f_pysod": float(f_pysod.mean()),
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
                "f_pysod": f_pysod,
            },
        }
