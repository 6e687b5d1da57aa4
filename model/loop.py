"""One training epoch and one validation pass of the DPN, on every rank of a run.

Validation scores the maps at the input size (the mask resized as the training target) with
:class:`blurset.model.metrics.ClassicMetrics`, whose running sums are added up across ranks;
``blurset evaluate`` gives the reportable numbers at each image's own resolution.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from blurset.model.config import TrainConfig
from blurset.model.losses import dpn_loss, flat_sharp_weights
from blurset.model.metrics import ClassicMetrics
from blurset.model.setup import Distributed, lr_factor

__all__ = ["EpochStats", "add_batch", "train_epoch", "validate", "validation_numbers"]


@dataclass(frozen=True)
class EpochStats:
    step: int  # optimizer steps of the run after this epoch
    steps: int  # optimizer steps in this epoch (this rank)
    losses: dict[str, float]  # train_loss, train_<part>: means over the epoch's samples, all ranks
    lr: float  # the learning rate of the last step
    images: int  # samples seen, all ranks
    seconds: float


def train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, config: TrainConfig, *, step: int,
                total_steps: int, amp: bool, ddp: Distributed, desc: str,
                progress: bool) -> EpochStats:
    """Train ``model`` on one pass over ``loader``, from optimizer step ``step``; stops early at
    ``config.max_steps``. The caller seeds the epoch and sets the sampler's epoch."""
    device = ddp.device
    model.train()
    boundary_weight = config.effective_boundary_weight
    t0 = time.perf_counter()
    sums: dict[str, float] = {}
    seen, first = 0, step
    bar = tqdm(loader, desc=desc, unit="batch", disable=not (progress and ddp.is_main),
               leave=False, dynamic_ncols=True)
    for x, y, _ in bar:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * lr_factor(config.lr_schedule, step, total_steps)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            outputs = model(x)  # [(B,1,S,S), (B,1,S/2,S/2), …]
        pixel_weights = (flat_sharp_weights(x, y, config.flat_sharp_weight)
                         if config.flat_sharp_weight != 1.0 else None)
        loss, parts = dpn_loss([o.float() for o in outputs], y, boundary_weight=boundary_weight,
                               scale_weights=config.scale_weights, pixel_weights=pixel_weights)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        step += 1
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * x.shape[0]
        seen += x.shape[0]
        bar.set_postfix(loss=f"{parts['total']:.4f}")
        if config.max_steps and step >= config.max_steps:
            break
    bar.close()
    seconds = time.perf_counter() - t0
    keys = sorted(sums)
    totals = ddp.all_reduce(torch.tensor([sums[k] for k in keys] + [float(seen)],
                                         dtype=torch.float64, device=device))
    n = float(totals[-1])
    losses = {"train_loss": float(totals[keys.index("total")]) / n}
    losses.update({f"train_{k}": float(totals[i]) / n for i, k in enumerate(keys)
                   if k != "total"})
    return EpochStats(step=step, steps=step - first, losses=losses,
                      lr=optimizer.param_groups[0]["lr"], images=int(n), seconds=seconds)


def add_batch(metrics: ClassicMetrics, prob: Tensor, mask: Tensor) -> None:
    """Step every image of a batch: ``prob`` ``(B, 1, H, W)`` in [0, 1], ``mask`` the same shape
    in [0, 1] (> 0.5 = blurred)."""
    p = prob.detach().double().cpu().numpy()
    g = mask.detach().float().cpu().numpy()
    for k in range(p.shape[0]):
        metrics.step(p[k, 0], g[k, 0])


def validation_numbers(metrics: ClassicMetrics) -> dict[str, float]:
    """What a metrics row records of validation: ``mae, max_f, mean_f, images, empty_masks``."""
    if metrics.n_images == 0:
        return {"mae": float("nan"), "max_f": float("nan"), "mean_f": float("nan"), "images": 0}
    r = metrics.results()
    return {"mae": r["mae"], "max_f": r["max_f"], "mean_f": r["mean_f"],
            "images": r["n_images"], "empty_masks": r["n_empty_gt"]}


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, *, amp: bool, ddp: Distributed
             ) -> dict[str, float]:
    """:func:`validation_numbers` over every rank's share of the validation images."""
    was_training = model.training
    model.eval()
    metrics = ClassicMetrics()
    for x, y, _ in loader:
        x = x.to(ddp.device, non_blocking=True)
        with torch.autocast(ddp.device.type, dtype=torch.float16, enabled=amp):
            prob = torch.sigmoid(model(x)[0].float())  # (B, 1, S, S)
        add_batch(metrics, prob, y)
    sums = ddp.all_reduce(torch.from_numpy(metrics.sums).to(ddp.device))
    model.train(was_training)
    return validation_numbers(ClassicMetrics.from_sums(sums.cpu().numpy()))
