"""Pre-labels: a blur mask (and blur type) guessed before a person paints, as a Label Studio prediction.

One face for every pre-labeller: ``model_version`` and ``predict(paths) -> [prediction]``, built by
:func:`make_prelabeller` from a name (``laplacian``, ``lbp``: handcrafted blur maps) or a DPN
checkpoint's path, loaded once, so a bad checkpoint is refused before anything is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from blurset.annotation import rle
from blurset.annotation.config import BLUR_TYPE_HINT, BRUSH, brush_result, choice_result
from blurset.errors import InputError

HANDCRAFTED = ("laplacian", "lbp")
DPN_THRESHOLD = 0.5  # blur map ≥ this → blurred pixel

# The blur-type rule (guess_blur_type), thresholds chosen on the demo sample's hidden masks:
# a hint for the annotator, not a label (docs/annotation.md).
MOTION_MARGIN = 0.10  # region coherence minus the sharp rest's coherence above this → motion
REFERENCE_COHERENCE = 0.10  # stands in for the sharp rest when the region covers (almost) all
MIN_PIXELS = 64  # a region (or rest) smaller than this says nothing about its gradients


class PrelabelError(InputError):
    """A pre-labeller that cannot be made (unknown name, missing or unreadable checkpoint)."""


def prelabel_from_mask(mask: np.ndarray, model_version: str, score: float,
                       blur_type: str | None = None) -> dict:
    """A Label Studio prediction holding a blur mask as brush RLE, and the guessed blur type (if
    given) in the read-only hint control ``blur_type_hint``: never in ``blur_type``, the
    annotator's answer, which a prediction must not fill in."""
    h, w = mask.shape
    result = [brush_result(rle.encode(mask), w, h)]
    if blur_type is not None:
        result.append(dict(choice_result(BLUR_TYPE_HINT, blur_type), readonly=True))
    return {"model_version": model_version, "score": float(score), "result": result}


def prediction_mask(prediction: dict) -> np.ndarray | None:
    """The union of a prediction's brush results as uint8 0/255, or None if it has none."""
    out = None
    for item in prediction.get("result") or []:
        if item.get("from_name") != BRUSH or item.get("type") != "brushlabels":
            continue
        h, w = int(item["original_height"]), int(item["original_width"])
        part = rle.decode(item["value"]["rle"], h, w)
        out = part if out is None else out | part
    return out


def gradient_coherence(gray: np.ndarray, region: np.ndarray) -> float:
    """Coherence of the structure tensor summed over ``region``: 0 = gradients in every
    direction, 1 = all along one direction.

    ``(λ1 - λ2) / (λ1 + λ2)`` of ``J = Σ_region [Ix², IxIy; IxIy, Iy²]`` (Sobel gradients of the
    grey image); ``sqrt((Jxx - Jyy)² + 4 Jxy²) / (Jxx + Jyy)``.
    """
    g = gray.astype(np.float32) / 255.0
    ix = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)  # (H, W)
    iy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    r = region.astype(bool)
    jxx, jyy, jxy = float((ix * ix)[r].sum()), float((iy * iy)[r].sum()), float((ix * iy)[r].sum())
    if jxx + jyy <= 1e-12:
        return 0.0
    return float(np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / (jxx + jyy))


def guess_blur_type(gray: np.ndarray, mask: np.ndarray) -> str | None:
    """``motion`` or ``defocus`` for the blurred region ``mask > 0`` of a grey image, or None.

    Motion blur smears along one direction and suppresses the gradients along it, so the
    region's gradients line up (high structure-tensor coherence); defocus blur suppresses every
    direction alike. A scene can be anisotropic on its own (stripes, horizons), so the region's
    coherence is compared with the sharp rest of the same image: motion when it exceeds the
    rest's by more than ``MOTION_MARGIN``. With (almost) no sharp rest, ``REFERENCE_COHERENCE``
    stands in for it. None when the region has fewer than ``MIN_PIXELS`` pixels.
    """
    inside = mask > 0
    if inside.sum() < MIN_PIXELS:
        return None
    outside = ~inside
    ref = gradient_coherence(gray, outside) if outside.sum() >= MIN_PIXELS else REFERENCE_COHERENCE
    return "motion" if gradient_coherence(gray, inside) - ref > MOTION_MARGIN else "defocus"


class Prelabeller(Protocol):
    model_version: str

    def predict(self, paths: Sequence[Path]) -> list[dict]:
        """One Label Studio prediction per image file, in order."""
        ...


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


class HandcraftedPrelabeller:
    """A handcrafted blur map (model/baselines.py) thresholded with Otsu.

    The score is the mean distance of the map from its mean, doubled: near 0 when the map
    cannot tell blurred from sharp, near 1 when it separates them cleanly.
    """

    def __init__(self, name: str):
        from blurset.model import baselines
        self.name = name
        self.model_version = f"{name}-blur-map@blurset"
        self._map = {"laplacian": baselines.laplacian_blur_map, "lbp": baselines.lbp_blur_map}[name]
        self._threshold = baselines.blur_mask_from_map

    def predict(self, paths: Sequence[Path]) -> list[dict]:
        from blurset.model.apply import read_rgb
        out = []
        for p in paths:
            gray = _gray(read_rgb(p))
            blur_map = self._map(gray)
            mask = self._threshold(blur_map)
            score = float(np.clip(2 * np.abs(blur_map - blur_map.mean()).mean(), 0, 1))
            out.append(prelabel_from_mask(mask, self.model_version, score,
                                          guess_blur_type(gray, mask)))
        return out


@dataclass(frozen=True)
class _Loaded:
    model: object
    input_size: int


class DpnPrelabeller:
    """A trained DPN: its blur map at the image's size, ``≥ DPN_THRESHOLD`` → blurred.

    ``model_version`` is ``dpn:<checkpoint stem>@<train release name>@<version>``, so two
    checkpoints of one run (``best``, ``last``) and runs on other releases stay apart.
    The score is the map's mean confidence ``mean(|2p - 1|)`` over the image's pixels: 0 when
    every pixel sits at 0.5, 1 when every pixel is 0 or 1.
    """

    def __init__(self, checkpoint: str | Path, batch_size: int = 4):
        from blurset.model.blur_type import BlurTypeHead
        from blurset.model.checkpoint import CheckpointNotFoundError
        from blurset.model.train import CheckpointError, load_checkpoint
        path = Path(checkpoint)
        try:  # the loader resolves the name 'pretrained' (the shipped DPN)
            model, meta = load_checkpoint(path)
        except CheckpointNotFoundError:
            raise PrelabelError(f"pre-labeller {str(checkpoint)!r} is neither one of "
                                f"{', '.join(HANDCRAFTED)} nor an existing DPN checkpoint file "
                                "(nor pretrained, the shipped DPN)") from None
        except CheckpointError as e:
            raise PrelabelError(f"cannot pre-label with {path}: {e}") from None
        train = (meta.get("releases") or {}).get("train") or {}
        self.model_version = (f"dpn:{path.stem}@{train.get('name', 'unknown')}"
                              f"@{train.get('version', 'unknown')}")
        self._loaded = _Loaded(model, int((meta.get("config") or {}).get("input_size", 352)))
        # a learned blur-type head travels in the checkpoint (the shipped one has it); else the rule
        head = meta.get("blur_type_head")
        self._head = BlurTypeHead.from_dict(head) if head else None
        self.batch_size = batch_size

    def predict(self, paths: Sequence[Path]) -> list[dict]:
        from blurset.model.apply import predict_maps, read_rgb
        from blurset.model.blur_type import predict_maps_and_types
        rgbs = [read_rgb(p) for p in paths]
        if self._head is not None:
            maps, types, _ = predict_maps_and_types(self._loaded.model, self._head, rgbs,
                                                    self._loaded.input_size, self.batch_size)
        else:
            maps = predict_maps(self._loaded.model, rgbs, input_size=self._loaded.input_size,
                                batch_size=self.batch_size)
            types = [None] * len(maps)
        out = []
        for rgb, m, kind in zip(rgbs, maps, types, strict=True):
            mask = np.where(m >= DPN_THRESHOLD, 255, 0).astype(np.uint8)  # (H, W)
            score = float(np.abs(2 * m - 1).mean())
            if kind is None or (mask > 0).sum() < MIN_PIXELS:  # no region: no hint
                kind = guess_blur_type(_gray(rgb), mask)
            out.append(prelabel_from_mask(mask, self.model_version, score, kind))
        return out


def make_prelabeller(spec: str) -> Prelabeller:
    """``laplacian`` / ``lbp``, ``pretrained`` (the shipped DPN) or the path of a DPN checkpoint
    (loaded here, once)."""
    if spec in HANDCRAFTED:
        return HandcraftedPrelabeller(spec)
    return DpnPrelabeller(spec)
