"""Handcrafted blur maps: the baselines a learned blur detector has to beat.

Every map is float32 ``(H, W)`` in ``[0, 1]`` with the dataset's polarity, **1 = blurred**
(DESIGN.md: the mask is 255 where blurred), so a map, its thresholded mask and a release's ``mask``
column compare directly.

- :func:`laplacian_blur_map`: local variance of the Laplacian (the classic focus measure;
  Pech-Pacheco et al., "Diatom autofocusing in brightfield microscopy: a comparative study",
  ICPR 2000).
- :func:`lbp_blur_map`: the LBP sharpness metric of Yi & Eramian, "LBP-based segmentation of
  defocus blur", IEEE TIP 25(4), 2016.
- :func:`blur_mask_from_map`: a 0/255 mask from either (Otsu by default).

Pure functions of arrays: no I/O, no state.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from skimage.filters import threshold_otsu

__all__ = ["blur_mask_from_map", "laplacian_blur_map", "lbp_blur_map"]

LAPLACIAN_EPS = 1e-5  # variance floor on the [0, 1] intensity scale: (0.8 grey levels)²
LBP_SHARP_CODES = (6, 7, 8, 9)  # LBP^riu2_{8,1} bins counted by the metric (9 = non-uniform)


def laplacian_blur_map(image: np.ndarray, window: int = 15) -> np.ndarray:
    """Blur map from the local variance of the Laplacian; 1 = blurred.

    The variance of the Laplacian response over a ``window``×``window`` box (Pech-Pacheco et al.,
    ICPR 2000) is high where the image has fine detail and low where it is blurred::

        var = box(L²) - box(L)²,   L = 4-neighbour Laplacian of the grey image in [0, 1]

    The map is ``1 - (log(var + eps) - min) / (max - min)`` over the image (per-image min-max, as
    blur-detection benchmarks normalise maps anyway), with ``eps`` = :data:`LAPLACIAN_EPS`.
    Textureless regions have no detail to judge by and come out as blurred; a constant image
    gives all ones (and an image of one detail level everywhere, which has no range to
    normalise, all zeros).

    Args:
        image: uint8, grey ``(H, W)`` or RGB ``(H, W, 3)``.
        window: odd side of the box, in pixels.

    Returns:
        float32 ``(H, W)`` in ``[0, 1]``.
    """
    grey = _grey(image, "laplacian_blur_map")
    _check_window(window, "laplacian_blur_map")
    response = cv2.Laplacian(grey, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT)  # (H, W)
    mean = cv2.boxFilter(response, -1, (window, window), borderType=cv2.BORDER_REFLECT)
    mean_sq = cv2.boxFilter(
        response * response, -1, (window, window), borderType=cv2.BORDER_REFLECT
    )
    variance = np.maximum(mean_sq - mean * mean, 0.0)  # rounding can dip just below 0
    log_var = np.log(variance + LAPLACIAN_EPS)
    low, high = float(log_var.min()), float(log_var.max())
    if high - low < 1e-6:  # the same detail everywhere: blurred if there is none
        return np.full(grey.shape, float(variance.max() < LAPLACIAN_EPS), np.float32)
    return (1.0 - (log_var - low) / (high - low)).astype(np.float32)


def lbp_blur_map(image: np.ndarray, window: int = 21, threshold: float = 0.016) -> np.ndarray:
    """Blur map from the LBP sharpness metric of Yi & Eramian (IEEE TIP 2016); 1 = blurred.

    Section III of the paper: compute the rotation-invariant uniform local binary pattern
    ``LBP^riu2_{8,1}`` of every pixel (8 neighbours on a circle of radius 1, diagonal ones
    bilinearly interpolated; codes 0-8 count the set bits of a uniform pattern, 9 marks a
    non-uniform one), where a neighbour's bit is set only when it exceeds the centre by more than
    ``T_LBP`` (``threshold``, on intensities in [0, 1]; the paper's 0.016). Blurred patches hold
    markedly fewer patterns of bins 6-9, so the sharpness metric (Eq. 15) is their fraction in a
    local window::

        m_LBP = (1/N) * sum_{i=6..9} n(LBP^riu2_{8,1} = i)     over the N pixels of the window

    computed for every pixel at once with a box filter (the paper's integral image), borders
    replicated, then min-max normalised over the image as the authors' code does (``normPatch``).
    The map returned is ``1 - normalised m_LBP``. Flat regions set no bits and so come out as
    blurred; a constant image gives all ones.

    Details taken from the authors' reference code (``lbpCode.m``, ``lbpSharpness.m`` in their
    ``defocus_segmentation`` repository), and what is left out:

    - The bit test is the signed ``n_p - n_c > T_LBP`` of ``lbpCode``; with the threshold at 0
      and ``>=`` instead of ``>`` the codes are scikit-image's
      ``local_binary_pattern(grey, 8, 1, "uniform")`` (up to float rounding where an interpolated
      neighbour equals its centre). Interpolated neighbours are not floored to whole grey levels
      as in the MATLAB code.
    - One scale only (``window``; the paper uses 11, 15 and 21), and none of the paper's
      segmentation stage (Section IV: double-threshold seeds, alpha matting, multi-scale
      inference): this is the raw metric. Without matting, sharp but textureless regions (sky,
      skin) read as blurred, as they do in the metric itself.

    Args:
        image: uint8, grey ``(H, W)`` or RGB ``(H, W, 3)``.
        window: odd side of the local window, in pixels (paper: 11, 15 or 21).
        threshold: ``T_LBP`` on the [0, 1] intensity scale.

    Returns:
        float32 ``(H, W)`` in ``[0, 1]``.
    """
    grey = _grey(image, "lbp_blur_map")
    _check_window(window, "lbp_blur_map")
    if not math.isfinite(threshold) or threshold < 0:
        raise ValueError(
            f"lbp_blur_map: threshold must be a finite number >= 0 (T_LBP on [0, 1] "
            f"intensities), got {threshold!r}; the paper uses 0.016"
        )
    codes = _lbp_riu2(grey, threshold)  # (H, W) in 0..9
    sharp = (codes >= LBP_SHARP_CODES[0]).astype(np.float32)  # bins 6, 7, 8, 9
    metric = cv2.boxFilter(sharp, -1, (window, window), borderType=cv2.BORDER_REPLICATE)
    low, high = float(metric.min()), float(metric.max())
    if high - low < 1e-6:  # the same share of sharp patterns everywhere: keep it unscaled
        return np.full(grey.shape, 1.0 - high, np.float32)  # all ones when flat
    return np.clip(1.0 - (metric - low) / (high - low), 0.0, 1.0).astype(np.float32)


def blur_mask_from_map(blur_map: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Binary mask from a blur map: uint8 ``(H, W)``, 255 where ``blur_map > threshold``.

    With ``threshold=None`` the threshold is Otsu's (N. Otsu, "A threshold selection method from
    gray-level histograms", IEEE SMC 1979) on this map. A map holding a single value has nothing
    to split: its mask is all 255 if that value is at least 0.5, else all 0.
    """
    blur_map = np.asarray(blur_map)
    if blur_map.ndim != 2:
        raise ValueError(
            f"blur_mask_from_map: blur_map must be 2-D (H, W), got shape {blur_map.shape}; "
            "pass one map, not a batch or a multi-channel image"
        )
    values = blur_map.astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        raise ValueError(
            f"blur_mask_from_map: blur_map has {int((~np.isfinite(values)).sum())} NaN or "
            "infinite values; fix the map first"
        )
    if threshold is None:
        low, high = float(values.min()), float(values.max())
        if high == low:
            return np.full(values.shape, 255 if low >= 0.5 else 0, np.uint8)
        threshold = float(threshold_otsu(values))
    return np.where(values > threshold, 255, 0).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Helpers


def _grey(image: np.ndarray, caller: str) -> np.ndarray:
    """uint8 grey ``(H, W)`` or RGB ``(H, W, 3)`` → float32 grey ``(H, W)`` in [0, 1]."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(
            f"{caller}: image must be uint8, got {image.dtype}; convert with "
            "np.clip(x * 255, 0, 255).astype(np.uint8) for a [0, 1] float image"
        )
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)  # ITU-R 601 weights, as rgb2gray
    elif image.ndim != 2:
        raise ValueError(
            f"{caller}: image must be grey (H, W) or RGB (H, W, 3), got shape {image.shape}; "
            "drop an alpha channel first (image[..., :3])"
        )
    if min(image.shape) < 1:
        raise ValueError(f"{caller}: image is empty, shape {image.shape}")
    return image.astype(np.float32) / 255.0


def _check_window(window: int, caller: str) -> None:
    if not isinstance(window, int) or window < 3 or window % 2 == 0:
        raise ValueError(f"{caller}: window must be an odd integer >= 3, got {window!r}")


_DIAGONAL = math.sqrt(2.0) / 2.0  # offset of the diagonal neighbours on the unit circle


def _lbp_riu2(grey: np.ndarray, threshold: float, *, inclusive: bool = False) -> np.ndarray:
    """``LBP^riu2_{8,1}`` codes (0..9) of a float grey image, borders replicated.

    A neighbour's bit is ``n_p - n_c > threshold`` (``>=`` if ``inclusive``: with threshold 0
    that is Ojala's and scikit-image's ``s(x) = x >= 0``). Neighbours go round the unit circle,
    the four diagonal ones bilinearly interpolated from their 2×2 pixels.
    """
    h, w = grey.shape
    pad = np.pad(grey, 1, mode="edge")

    def at(dy: int, dx: int) -> np.ndarray:  # the pixel (dy, dx) away from each pixel, (H, W)
        return pad[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    a, b = 1.0 - _DIAGONAL, _DIAGONAL  # bilinear weights along each axis towards a diagonal

    def diagonal(dy: int, dx: int) -> np.ndarray:
        return a * a * grey + a * b * (at(dy, 0) + at(0, dx)) + b * b * at(dy, dx)

    neighbours = (  # counter-clockwise from the right, as scikit-image samples them
        at(0, 1),
        diagonal(-1, 1),
        at(-1, 0),
        diagonal(-1, -1),
        at(0, -1),
        diagonal(1, -1),
        at(1, 0),
        diagonal(1, 1),
    )
    bits = [(n - grey >= threshold) if inclusive else (n - grey > threshold) for n in neighbours]
    ones = np.zeros((h, w), np.uint8)
    transitions = np.zeros((h, w), np.uint8)
    for p, bit in enumerate(bits):
        ones += bit
        transitions += bit != bits[p - 1]  # p - 1 = -1 closes the circle
    return np.where(transitions <= 2, ones, 9).astype(np.uint8)
