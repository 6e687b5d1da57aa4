"""Blur-type head: motion or defocus, from a DPN's own features over the region it calls blurred.

The head is a logistic regression on one vector per image: the DPN's backbone features F1 … F5
(ImageNet-pretrained for ``efficientnet-lite0``), each summarised over the region the DPN calls
blurred by its mean and its standard deviation, both weighted by the DPN's blur map. (Chosen
among five summaries, docs/pretrained.md; the sharp rest's statistics added nothing.)
Fitted after the DPN on the same training release (its ``blur_type`` column), with the DPN
frozen; stored inside the checkpoint (``blur_type_head``: plain lists, no pickled objects).

:func:`predict_maps_and_types` gives blur maps and the head's answers in one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from blurset.model.dpn import DPN

__all__ = [
    "CLASSES",
    "BlurTypeHead",
    "fit_blur_type_head",
    "predict_maps_and_types",
    "region_features",
]

CLASSES = ("defocus", "motion")  # label 0, 1
LEVELS = (0, 1, 2, 3, 4)  # F1 … F5


@dataclass(frozen=True)
class BlurTypeHead:
    """``P(motion) = sigmoid(w · (f - mean) / std + b)`` on :func:`region_features` vectors."""

    weight: list[float]
    bias: float
    mean: list[float]
    std: list[float]
    levels: tuple[int, ...] = LEVELS
    accuracy: dict | None = None  # how it scored when fitted (train CV, held-out), for the record

    def prob_motion(self, features: np.ndarray) -> np.ndarray:
        """``(N, D)`` features → ``(N,)`` probability of motion blur."""
        if features.shape[-1] != len(self.weight):
            raise ValueError(f"the blur-type head takes {len(self.weight)} features, got "
                             f"{features.shape[-1]}: was it fitted on another backbone?")
        z = (features - np.asarray(self.mean)) / np.asarray(self.std)
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.weight) + self.bias)))

    def predict(self, features: np.ndarray) -> list[str]:
        return [CLASSES[int(p >= 0.5)] for p in self.prob_motion(features)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["levels"] = list(self.levels)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> BlurTypeHead:
        try:
            return cls(weight=[float(v) for v in data["weight"]], bias=float(data["bias"]),
                       mean=[float(v) for v in data["mean"]], std=[float(v) for v in data["std"]],
                       levels=tuple(int(v) for v in data.get("levels", LEVELS)),
                       accuracy=data.get("accuracy"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a blur-type head (expected weight, bias, mean, std): {e}"
                             ) from None


def _pool(feature: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted mean and standard deviation of ``feature`` (B, C, h, w) → two (B, C)."""
    w = F.interpolate(weight, size=feature.shape[-2:], mode="area")  # (B, 1, h, w)
    total = w.sum((2, 3)).clamp_min(1e-6)  # (B, 1)
    mean = (feature * w).sum((2, 3)) / total  # (B, C)
    var = ((feature - mean[..., None, None]) ** 2 * w).sum((2, 3)) / total
    return mean, var.sqrt()


@torch.no_grad()
def region_features(model: DPN, x: Tensor, levels: Sequence[int] = LEVELS
                    ) -> tuple[Tensor, Tensor]:
    """One forward pass → (blur probability ``(B, 1, H, W)``, features ``(B, D)``).

    ``x``: RGB ``(B, 3, H, W)`` in [0, 1]. D = 2 × (channels of the chosen levels): mean and
    standard deviation over the blurred region, level by level.
    """
    captured: list[list[Tensor]] = []
    hook = model.backbone.register_forward_hook(lambda m, i, out: captured.append(out))
    try:
        prob = model.predict(x)  # (B, 1, H, W)
    finally:
        hook.remove()
    feats = captured[0]
    parts = []
    for level in levels:
        parts.extend(_pool(feats[level], prob))  # over the blurred region
    return prob, torch.cat(parts, dim=1).float()


def _resize_batch(rgbs: Sequence[np.ndarray], size: int) -> Tensor:
    import cv2
    batch = [cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA) for rgb in rgbs]
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).float() / 255.0


def predict_maps_and_types(model: DPN, head: BlurTypeHead | None, rgbs: Sequence[np.ndarray],
                           input_size: int, batch_size: int = 4
                           ) -> tuple[list[np.ndarray], list[str | None], list[np.ndarray]]:
    """Blur maps (float32 ``(H, W)`` in [0, 1] at each image's size), the head's blur type per
    image (None without a head) and the feature vectors, for RGB uint8 images."""
    import cv2
    maps: list[np.ndarray] = []
    feats: list[np.ndarray] = []
    for start in range(0, len(rgbs), batch_size):
        chunk = rgbs[start:start + batch_size]
        prob, f = region_features(model, _resize_batch(chunk, input_size),
                                  head.levels if head else LEVELS)
        for rgb, p in zip(chunk, prob[:, 0].numpy(), strict=True):
            h, w = rgb.shape[:2]
            maps.append(np.clip(cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR), 0, 1))
        feats.extend(f.numpy())
    types: list[str | None] = (head.predict(np.stack(feats)) if head and feats
                               else [None] * len(maps))
    return maps, types, feats


def fit_blur_type_head(features: np.ndarray, labels: Sequence[str], *,
                       cs: Sequence[float] = (0.001, 0.01, 0.1, 1.0), seed: int = 0
                       ) -> tuple[BlurTypeHead, dict]:
    """Logistic regression (scikit-learn) on standardised features, its C chosen by 5-fold
    cross-validation. → (head, {"c", "cv_accuracy", "train_accuracy", "n"})."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    y = np.array([CLASSES.index(v) for v in labels])
    if len(set(y.tolist())) < 2:
        raise ValueError("the blur-type head needs examples of both motion and defocus blur")
    mean, std = features.mean(0), features.std(0) + 1e-6
    z = (features - mean) / std
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    scores = {c: float(cross_val_score(LogisticRegression(C=c, max_iter=2000), z, y,
                                       cv=folds).mean()) for c in cs}
    best_c = max(scores, key=scores.get)
    clf = LogisticRegression(C=best_c, max_iter=2000).fit(z, y)
    info = {"c": best_c, "cv_accuracy": scores[best_c], "cv_by_c": scores,
            "train_accuracy": float(clf.score(z, y)), "n": len(y)}
    head = BlurTypeHead(weight=clf.coef_[0].tolist(), bias=float(clf.intercept_[0]),
                        mean=mean.tolist(), std=std.tolist(), levels=LEVELS)
    return head, info
