"""Training loss of the DPN: BCE on every output scale plus an optional boundary penalty.

``total = Σ_k w_k · BCE(logits_k, down_k(target)) + λ · L1(|∇σ(logits_0)|, |∇target|)``; the
paper's loss, and the choices it leaves open (Sobel, L1), are in ``docs/dpn.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DEFAULT_BOUNDARY_WEIGHT", "FLAT_GRADIENT", "boundary_loss", "dpn_loss", "flat_sharp_weights",
           "sobel_magnitude"]

DEFAULT_BOUNDARY_WEIGHT = 1.0  # λ for the "deb+bl" variant when the training config gives none
_GRAD_EPS = 1e-6  # inside the square root: keeps d|∇|/dx finite where the map is flat

FLAT_GRADIENT = 0.01  # mean Sobel magnitude (grey in [0, 1]) below which a window shows no texture
_FLAT_WINDOW = 9  # side of that window, input pixels

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4.0


def sobel_magnitude(maps: Tensor) -> Tensor:
    """Sobel gradient magnitude of ``(B, 1, H, W)`` maps, same shape; a unit step gives 1.

    Borders are replicated, so a constant map has zero gradient everywhere, edges included.
    """
    if maps.ndim != 4 or maps.shape[1] != 1:
        raise ValueError(f"sobel_magnitude expects (B, 1, H, W) maps, got {tuple(maps.shape)}")
    kx = _SOBEL_X.to(device=maps.device, dtype=maps.dtype).view(1, 1, 3, 3)
    kernels = torch.cat([kx, kx.transpose(-1, -2)], dim=0)  # (2, 1, 3, 3): d/dx, d/dy
    padded = F.pad(maps, (1, 1, 1, 1), mode="replicate")  # (B, 1, H+2, W+2)
    grad = F.conv2d(padded, kernels)  # (B, 2, H, W)
    return torch.sqrt((grad * grad).sum(dim=1, keepdim=True) + _GRAD_EPS)  # (B, 1, H, W)


def boundary_loss(prob: Tensor, target: Tensor) -> Tensor:
    """Mean ``|sobel(prob) - sobel(target)|`` of two ``(B, 1, H, W)`` maps in ``[0, 1]``."""
    _check_same_shape(prob, target, "prediction", "target")
    return (sobel_magnitude(prob) - sobel_magnitude(target)).abs().mean()


def flat_sharp_weights(images: Tensor, target: Tensor, weight: float) -> Tensor:
    """Per-pixel BCE weights ``(B, 1, H, W)``: ``weight`` where a pixel is labelled sharp but its
    neighbourhood in the input has no texture (mean Sobel magnitude of the grey image over a
    window below ``FLAT_GRADIENT``), 1 elsewhere.

    A flat sky or wall carries no evidence of sharpness: whether it is in focus cannot be seen.
    Labelled sharp at full weight, such areas of the training photos teach that smooth means
    sharp, while in blur datasets a smooth area is mostly a blurred one. ``images`` are
    ``(B, 3, H, W)`` in [0, 1], as the DPN takes them."""
    grey = (0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3]).float()
    texture = F.avg_pool2d(sobel_magnitude(grey), _FLAT_WINDOW, stride=1,
                           padding=_FLAT_WINDOW // 2, count_include_pad=False)
    flat_sharp = (texture < FLAT_GRADIENT) & (target < 0.5)
    return torch.where(flat_sharp, torch.full_like(texture, float(weight)),
                       torch.ones_like(texture))


def dpn_loss(
    outputs: Sequence[Tensor],
    target: Tensor,
    *,
    boundary_weight: float = 0.0,
    scale_weights: Sequence[float] | None = None,
    pixel_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Multi-scale BCE plus (when ``boundary_weight > 0``) the boundary penalty.

    Args:
        outputs: logit maps from :class:`blurset.model.dpn.DPN`, finest first; ``outputs[0]`` is
            ``(B, 1, H, W)``, the others ``(B, 1, h, w)`` with ``h <= H``, ``w <= W``.
        target: ground truth ``(B, 1, H, W)``, float in ``[0, 1]``, 1 = blurred (mask / 255).
        boundary_weight: λ of the boundary term; 0 leaves it out (variants other than "deb+bl").
        scale_weights: one weight per output (default 1 for each).
        pixel_weights: BCE weights ``(B, 1, H, W)`` at the target's size (area-averaged for the
            coarser outputs), e.g. :func:`flat_sharp_weights`; None weighs every pixel 1.

    Returns:
        The total loss (a scalar tensor to backpropagate) and its parts as floats for logging:
        ``{"bce": …, "boundary": …, "total": …}`` (``boundary`` is 0.0 when it is left out).
    """
    outputs = list(outputs)
    if not outputs:
        raise ValueError("dpn_loss needs at least one output map, got an empty list")
    if target.ndim != 4 or target.shape[1] != 1:
        raise ValueError(
            f"target must be (B, 1, H, W), got {tuple(target.shape)}; add the channel axis with "
            f"target.unsqueeze(1)"
        )
    if not target.is_floating_point():
        raise TypeError(
            f"target must be a float tensor in [0, 1], got dtype {target.dtype}; use "
            f"mask.float() / 255 for 0/255 masks"
        )
    lo, hi = float(target.detach().min()), float(target.detach().max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"target values must lie in [0, 1], got [{lo:g}, {hi:g}]"
            + ("; divide 0/255 masks by 255" if hi > 1.0 else "")
        )
    _check_same_shape(outputs[0], target, "finest output (outputs[0])", "target")
    batch, _, height, width = target.shape
    for k, out in enumerate(outputs[1:], start=1):
        if out.ndim != 4 or out.shape[:2] != (batch, 1) or out.shape[2] > height or (
            out.shape[3] > width
        ):
            raise ValueError(
                f"outputs[{k}] has shape {tuple(out.shape)}; expected (B={batch}, 1, h, w) with "
                f"h <= {height} and w <= {width}"
            )
    if scale_weights is None:
        weights = [1.0] * len(outputs)
    else:
        weights = [float(w) for w in scale_weights]
        if len(weights) != len(outputs):
            raise ValueError(
                f"scale_weights has {len(weights)} entries for {len(outputs)} outputs; give one "
                f"weight per output map, finest first"
            )
    if not (math.isfinite(boundary_weight) and boundary_weight >= 0):
        raise ValueError(f"boundary_weight must be finite and >= 0, got {boundary_weight}")

    bce = target.new_zeros(())
    for out, w in zip(outputs, weights, strict=True):
        scaled = target if out.shape[-2:] == target.shape[-2:] else F.interpolate(
            target, size=out.shape[-2:], mode="area"
        )  # (B, 1, h, w): fraction of blurred pixels under each output pixel
        pw = None
        if pixel_weights is not None:
            pw = pixel_weights if out.shape[-2:] == target.shape[-2:] else F.interpolate(
                pixel_weights, size=out.shape[-2:], mode="area")
        bce = bce + w * F.binary_cross_entropy_with_logits(out, scaled.to(out.dtype), weight=pw)
    total = bce
    boundary = target.new_zeros(())
    if boundary_weight > 0:
        boundary = boundary_loss(torch.sigmoid(outputs[0]), target.to(outputs[0].dtype))
        total = total + boundary_weight * boundary
    parts = {"bce": float(bce.detach()), "boundary": float(boundary.detach()),
             "total": float(total.detach())}
    return total, parts


def _check_same_shape(a: Tensor, b: Tensor, a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"shape mismatch between {a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)}; "
            f"both must be (B, 1, H, W) at the same size"
        )
