"""Train a DPN on a release: ``main(config, train=…, val=…, out_dir=…)``, also under torchrun.

Outputs (``out_dir``), written by rank 0 only::

    config.yaml            the resolved TrainConfig (loadable with model.config.load_config)
    metrics.jsonl          one line per epoch: train loss and its parts, val MAE / max F, lr, speed
    checkpoints/last.pt    after every epoch, written atomically (temporary file + os.replace)
    checkpoints/best.pt    the epoch with the lowest val MAE (the lowest train loss without val)

A checkpoint carries its provenance (STYLE.md: metadata travels with the artifact): the weights,
optimizer and AMP scaler states, epoch and step, the resolved config and DPNConfig, the train and
val releases (name, version, split, fingerprint, every shard's sha256), the epoch's metrics, the
best so far, the run (world size, device, AMP, torch version), the blurset version and the time.
:func:`load_checkpoint` rebuilds the model from it alone.

Determinism: every epoch reseeds ``random``, numpy, torch and the DataLoader's worker seeds from
(seed, epoch, rank), and :class:`blurset.model.data.GroupedSampler` orders samples from (seed, epoch). So
an epoch draws the same numbers whether the run was resumed before it or not, and a resumed run
(``resume=True``: weights, optimizer, scaler, epoch, step and best restored from ``last.pt``)
continues exactly as the uninterrupted run would have (bit for bit on CPU). ``max_steps`` ends
the run inside an epoch; that epoch is then closed (validated, saved) as if it were complete.

Multi-GPU: under torchrun (``WORLD_SIZE`` > 1) the process group is initialised (NCCL on CUDA,
gloo on CPU), the model wrapped in DistributedDataParallel, each rank reads its share of the
training order, validation is split between ranks and its sums all-reduced. ``batch_size`` is per
process. Entry point::

    torchrun --nproc_per_node 4 -m blurset.model.train --config configs/dpn-paper.yaml \\
        --train szu-bd@1.0.0 --val szu-bd@1.0.0:test --out runs/dpn-paper

Validation metrics are computed at the input size (the mask resized as the training target), with
the classic protocol of :mod:`blurset.model.metrics` (per-image min-max normalisation, 256 thresholds,
P and R averaged over images, β² = 0.3); ``blurset.model.evaluate`` gives the reportable numbers at each
image's own resolution.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import math
import os
import pickle
import random
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from blurset.errors import InputError
from blurset.model.config import ConfigError, TrainConfig, load_config
from blurset.model.data import GroupedSampler, ReleaseDataset, ReleaseRef, resolve_release
from blurset.model.dpn import DPN, DPNConfig, build_dpn
from blurset.model.losses import dpn_loss

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "TrainResult", "cli_main", "load_checkpoint",
           "main"]

log = logging.getLogger("blurset.train")

CHECKPOINT_FORMAT = "blurset-checkpoint/1"
RESUMABLE_KEYS = ("epochs", "max_steps", "num_workers", "val_every")  # may change on resume
BETA2 = 0.3
_WEIGHTS = ("model", "optimizer", "scaler")


class CheckpointError(InputError):
    """A file is not a blurset checkpoint, or cannot continue this run; the message says why."""


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    config_path: Path
    last_checkpoint: Path
    best_checkpoint: Path
    epochs: int  # epochs completed in the run so far
    steps: int  # optimizer steps so far
    finished: bool
    history: list[dict]  # the metrics.jsonl rows, oldest first
    best: dict  # {"metric": "val_mae" | "train_loss", "value", "epoch"}
    seconds: float  # wall time of this call
    steps_per_second: float  # of this call's training steps (0 when none ran)
    world_size: int
    device: str


# --------------------------------------------------------------------------------------------
# Process setup


@dataclass(frozen=True)
class _Dist:
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # initialised here, so destroyed here

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup_distributed() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world <= 1:
        return _Dist(0, 1, torch.device("cuda" if cuda else "cpu"), False)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    return _Dist(dist.get_rank(), dist.get_world_size(), device, owns)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0]
               % 2**63)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CPU and every CUDA device


def _blurset_version() -> str:
    try:
        return importlib.metadata.version("blurset")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------------------------
# Files


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _atomic_copy(src: Path, dst: Path) -> None:
    """``dst`` becomes ``src``'s content: a hard link when the filesystem allows (``src`` is
    only ever replaced, never rewritten in place), else a copy; renamed into place."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _read_torch(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, IndexError,
            KeyError, TypeError) as e:  # garbage bytes raise any of these
        raise CheckpointError(f"{path} is not a blurset checkpoint: torch.load cannot read it "
                              f"({type(e).__name__}; a file saved by `blurset train` holds a "
                              f"dict with format {CHECKPOINT_FORMAT!r})"
                              ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        keys = ", ".join(list(ckpt)[:5]) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is not a blurset checkpoint (no format {CHECKPOINT_FORMAT!r}; it holds "
            f"{keys}): a bare state_dict can be loaded with DPN(config).load_state_dict(...), "
            "but nothing says which config or data it came from")
    return ckpt


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> tuple[DPN, dict]:
    """A checkpoint written by :func:`main` → (DPN in eval mode, metadata).

    The model is rebuilt from the stored ``model_config`` alone; the metadata is every key but
    the weights (``config``, ``model_config``, ``releases``, ``metrics``, ``best``, ``epoch``,
    ``step``, ``run``, ``blurset_version``, ``created``...). Raises :class:`CheckpointError` for a
    file that is not one.
    """
    path = Path(path)
    ckpt = _read_torch(path)
    try:
        model = DPN(DPNConfig.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its weights do not fit its model_config: {e}") from None
    model.to(map_location).eval()
    return model, {k: v for k, v in ckpt.items() if k not in _WEIGHTS}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _resume_problems(ckpt: dict, config: dict, train: dict, val: dict | None) -> list[str]:
    old, new = _flatten(ckpt.get("config") or {}), _flatten(config)
    problems = [f"{k}: {old.get(k)!r} in the run, {new.get(k)!r} now"
                for k in sorted(set(old) | set(new))
                if k.split(".")[0] not in RESUMABLE_KEYS and old.get(k) != new.get(k)]
    releases = ckpt.get("releases") or {}
    for role, now in (("train", train), ("val", val)):
        then = releases.get(role)
        key = (lambda r: None if r is None else (r["name"], r["version"], r["split"],
                                                 r["fingerprint"]))
        if key(then) != key(now):
            def show(r: dict | None) -> str:
                return "none" if r is None else (f"{r['name']}@{r['version']}:{r['split']} "
                                                 f"(fingerprint {r['fingerprint'][:12]})")
            problems.append(f"{role} release: {show(then)} in the run, {show(now)} now")
    return problems


def _run_state(out_dir: Path) -> str:
    last = out_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        return "an unfinished run (no checkpoint yet)"
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        done = "finished" if ckpt.get("finished") else "unfinished"
        return f"a {done} run (epoch {ckpt.get('epoch')}, step {ckpt.get('step')})"
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError):
        return "a run (its last.pt is unreadable)"


# --------------------------------------------------------------------------------------------
# Validation (classic protocol, as model.metrics.BlurMetrics, on torch tensors so that ranks can
# sum their parts)


def curve_sums(prob: Tensor, mask: Tensor) -> Tensor:
    """Per-batch sums → float64 ``(3 + 512,)``: [Σ MAE, images, images with an empty mask,
    Σ P(t) for t = 0..255, Σ R(t) for t = 0..255]. ``prob``, ``mask``: ``(B, 1, H, W)``, mask in
    [0, 1] (> 0.5 = blurred). Each map is min-max normalised (a constant one clipped to [0, 1]),
    quantised with ``round(255·m)`` and predicted blurred where ``q >= t``."""
    b = prob.shape[0]
    p = prob.detach().double().reshape(b, -1)
    g = mask.detach().reshape(b, -1) > 0.5
    lo, hi = p.min(1, keepdim=True).values, p.max(1, keepdim=True).values
    span = hi - lo
    m = torch.where(span > 0, (p - lo) / span.clamp_min(1e-300), p.clamp(0, 1))
    q = torch.floor(m * 255.0 + 0.5).long().clamp(0, 255)  # (B, N)
    offset = (torch.arange(b, device=q.device) * 256)[:, None]
    flat = (q + offset).reshape(-1)
    hist_all = torch.bincount(flat, minlength=256 * b).reshape(b, 256).double()
    hist_pos = torch.bincount(flat, weights=g.reshape(-1).double(),
                              minlength=256 * b).reshape(b, 256)
    tp = hist_pos.flip(1).cumsum(1).flip(1)  # (B, 256): blurred pixels with q >= t
    pp = hist_all.flip(1).cumsum(1).flip(1)  # predicted blurred
    n_pos = g.sum(1, keepdim=True).double()
    precision = torch.where(pp > 0, tp / pp.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(n_pos > 0, tp / n_pos.clamp_min(1), torch.zeros_like(tp))
    mae = (m - g.double()).abs().mean(1)
    head = torch.stack([mae.sum(), torch.tensor(float(b), dtype=torch.float64, device=p.device),
                        (n_pos == 0).sum().double()])
    return torch.cat([head, precision.sum(0), recall.sum(0)])


def metrics_from_sums(sums: Tensor) -> dict[str, float]:
    """:func:`curve_sums` totals → {mae, max_f, mean_f, images, empty_masks}."""
    sums = sums.double().cpu()
    n = float(sums[1])
    if n == 0:
        return {"mae": float("nan"), "max_f": float("nan"), "mean_f": float("nan"), "images": 0}
    precision, recall = sums[3:259] / n, sums[259:515] / n
    den = BETA2 * precision + recall
    f = torch.where(den > 0, (1 + BETA2) * precision * recall / den.clamp_min(1e-300),
                    torch.zeros_like(den))
    return {"mae": float(sums[0]) / n, "max_f": float(f.max()), "mean_f": float(f.mean()),
            "images": int(n), "empty_masks": int(sums[2])}


@torch.no_grad()
def _validate(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool,
              ddp: _Dist) -> dict[str, float]:
    was_training = model.training
    model.eval()
    sums = torch.zeros(515, dtype=torch.float64, device=device)
    for x, y, _ in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            prob = torch.sigmoid(model(x)[0].float())  # (B, 1, S, S)
        sums += curve_sums(prob, y)
    if ddp.world_size > 1:
        dist.all_reduce(sums)
    model.train(was_training)
    return metrics_from_sums(sums)


# --------------------------------------------------------------------------------------------
# Training


def _lr_factor(schedule: str, step: int, total: int) -> float:
    if schedule == "constant" or total <= 0:
        return 1.0
    t = min(step / total, 1.0)
    if schedule == "poly":
        return (1.0 - t) ** 0.9
    return 0.5 * (1.0 + math.cos(math.pi * t))  # cosine


def _optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _read_history(path: Path, upto_epoch: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [r for r in rows if r.get("epoch", 0) <= upto_epoch]


def main(config: TrainConfig, *, train: ReleaseRef, val: ReleaseRef | None = None,
         out_dir: str | Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train ``config``'s DPN on ``train`` (its split, default ``train``), validating on ``val``
    (its split, default ``val`` when the release has one, else ``test``), into ``out_dir``.

    Refuses (``FileExistsError``) an ``out_dir`` that already holds a run unless ``resume``; with
    ``resume`` continues ``checkpoints/last.pt`` if the config (except epochs, max_steps,
    num_workers, val_every) and the releases are the same, else says what differs
    (:class:`CheckpointError`). A resumed run that is already finished returns at once.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    ddp = _setup_distributed()
    try:
        return _main(config, train, val, out_dir, resume, progress, ddp, t_start)
    finally:
        if ddp.owns_group:
            dist.destroy_process_group()


def _default_splits(train: ReleaseRef, val: ReleaseRef | None
                    ) -> tuple[ReleaseRef, ReleaseRef | None]:
    train = train.with_split(train.split or "train")
    if val is not None and not val.split:
        splits = val.splits()
        val = val.with_split("val" if "val" in splits else "test")
    return train, val


def _main(config: TrainConfig, train: ReleaseRef, val: ReleaseRef | None, out_dir: Path,
          resume: bool, progress: bool, ddp: _Dist, t_start: float) -> TrainResult:
    device = ddp.device
    if config.amp is True and device.type != "cuda":
        raise ConfigError("amp: true needs CUDA, and this process has none; use amp: auto")
    use_amp = device.type == "cuda" and config.amp in ("auto", True)
    train, val = _default_splits(train, val)
    resolved = config.resolved()
    dpn_config = config.dpn_config()
    provenance = {"train": train.provenance(), "val": val.provenance() if val else None}

    ckpt_dir = out_dir / "checkpoints"
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    config_path, metrics_path = out_dir / "config.yaml", out_dir / "metrics.jsonl"
    ckpt: dict | None = None
    if resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"nothing to resume in {out_dir}: no checkpoints/last.pt "
                                    "(start the run without --resume)")
        ckpt = _read_torch(last_path)
        if problems := _resume_problems(ckpt, resolved, provenance["train"], provenance["val"]):
            raise CheckpointError(
                f"cannot resume {out_dir} with a different setup (only "
                f"{', '.join(RESUMABLE_KEYS)} may change):\n  " + "\n  ".join(problems))
    elif any(p.exists() for p in (config_path, metrics_path, last_path)):
        raise FileExistsError(f"{out_dir} already holds {_run_state(out_dir)}; nothing was "
                              "overwritten: continue it with resume=True (--resume) or choose "
                              "another output folder")

    # Data
    train_ds = ReleaseDataset(train, input_size=config.input_size, augment=config.augment)
    if len(train_ds) == 0:
        raise ValueError(f"split {train.split!r} of {train.name}@{train.version} has no rows")
    sampler = GroupedSampler(train_ds.groups, shuffle=True, seed=config.seed,
                             num_replicas=ddp.world_size, rank=ddp.rank)
    loader_gen = torch.Generator()
    pin = device.type == "cuda"
    # Workers start from a fork server, not a fork of this process: a fork inherits whatever
    # threads and exit handlers the caller runs (Prefect's, for one), and such workers died.
    context = "forkserver" if config.num_workers > 0 else None
    train_loader = DataLoader(train_ds, batch_size=config.batch_size, sampler=sampler,
                              num_workers=config.num_workers, pin_memory=pin, drop_last=False,
                              generator=loader_gen, multiprocessing_context=context)
    val_loader = None
    if val is not None:
        val_ds = ReleaseDataset(val, input_size=config.input_size, augment=None)
        mine = Subset(val_ds, range(ddp.rank, len(val_ds), ddp.world_size))
        val_loader = DataLoader(mine, batch_size=config.batch_size, shuffle=False,
                                num_workers=config.num_workers, pin_memory=pin,
                                multiprocessing_context=context)

    # Model, optimizer
    _seed_all(config.seed)
    raw = build_dpn(dpn_config, config.backbone_weights).to(device)
    optimizer = _optimizer(config, raw.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    epoch, step = 0, 0
    best: dict = {"metric": "val_mae" if val else "train_loss", "value": None, "epoch": None}
    if ckpt is not None:
        raw.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        epoch, step, best = int(ckpt["epoch"]), int(ckpt["step"]), dict(ckpt["best"])
    model: nn.Module = raw
    if ddp.world_size > 1:
        model = DistributedDataParallel(raw, device_ids=[device.index] if pin else None)

    steps_per_epoch = len(train_loader)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    boundary_weight = config.effective_boundary_weight
    run_info = {"world_size": ddp.world_size, "device": device.type, "amp": use_amp,
                "torch": str(torch.__version__), "cuda": torch.version.cuda,
                "steps_per_epoch": steps_per_epoch, "samples_per_epoch": len(train_ds)}

    history = _read_history(metrics_path, epoch) if resume else []
    if ddp.world_size > 1:
        dist.barrier()  # every rank has checked out_dir and read the history before rank 0 writes
    if ddp.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(config_path, yaml.safe_dump(resolved, sort_keys=False).encode())
        _atomic_write_bytes(metrics_path, "".join(json.dumps(r) + "\n" for r in history).encode())

    def finished_at(e: int, s: int) -> bool:
        return e >= config.epochs or bool(config.max_steps and s >= config.max_steps)

    trained_steps, train_seconds = 0, 0.0
    while not finished_at(epoch, step):
        seed = _epoch_seed(config.seed, epoch, ddp.rank)
        _seed_all(seed)
        loader_gen.manual_seed(seed)
        sampler.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        seen = 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch",
                   disable=not (progress and ddp.is_main), leave=False, dynamic_ncols=True)
        for x, y, _ in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * _lr_factor(config.lr_schedule, step, total_steps)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                outputs = model(x)  # [(B,1,S,S), (B,1,S/2,S/2), …]
            loss, parts = dpn_loss([o.float() for o in outputs], y,
                                   boundary_weight=boundary_weight,
                                   scale_weights=config.scale_weights)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            trained_steps += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * x.shape[0]
            seen += x.shape[0]
            bar.set_postfix(loss=f"{parts['total']:.4f}")
            if config.max_steps and step >= config.max_steps:
                break
        bar.close()
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        keys = sorted(sums)
        totals = torch.tensor([sums[k] for k in keys] + [float(seen)], dtype=torch.float64,
                              device=device)
        if ddp.world_size > 1:
            dist.all_reduce(totals)
        n = float(totals[-1])
        row: dict[str, Any] = {"epoch": epoch + 1, "step": step,
                               "train_loss": float(totals[keys.index("total")]) / n}
        row.update({f"train_{k}": float(totals[i]) / n for i, k in enumerate(keys)
                    if k != "total"})
        row["lr"] = optimizer.param_groups[0]["lr"]
        epoch += 1
        last_epoch = finished_at(epoch, step)
        if val_loader is not None and (epoch % config.val_every == 0 or last_epoch):
            row.update({f"val_{k}": v for k, v in
                        _validate(raw, val_loader, device, use_amp, ddp).items()})
        row["seconds"] = round(seconds, 3)
        row["images_per_second"] = round(n / seconds, 2) if seconds > 0 else None
        row["time"] = datetime.now(UTC).isoformat(timespec="seconds")
        history.append(row)
        score = row.get("val_mae") if val else row["train_loss"]
        improved = score is not None and (best["value"] is None or score < best["value"])
        if improved:
            best = {"metric": best["metric"], "value": score, "epoch": epoch}
        log.info("epoch %d/%d step %d: %s", epoch, config.epochs, step,
                 ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                           if isinstance(v, float) and (k.startswith(("train_", "val_")))))
        if ddp.is_main:
            with open(metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            state = {
                "format": CHECKPOINT_FORMAT,
                "model": raw.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "step": step,
                "finished": last_epoch,
                "stopped_by": ("max_steps" if config.max_steps and step >= config.max_steps
                               and epoch < config.epochs else None),
                "config": resolved,
                "model_config": dpn_config.to_dict(),
                "releases": provenance,
                "metrics": row,
                "best": best,
                "run": run_info,
                "blurset_version": _blurset_version(),
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            _atomic_torch_save(state, last_path)
            if improved or not best_path.exists():
                _atomic_copy(last_path, best_path)

    if ddp.world_size > 1:
        dist.barrier()  # every rank returns after rank 0 has written the last files
    return TrainResult(
        out_dir=out_dir, config_path=config_path, last_checkpoint=last_path,
        best_checkpoint=best_path, epochs=epoch, steps=step, finished=finished_at(epoch, step),
        history=history, best=best, seconds=time.perf_counter() - t_start,
        steps_per_second=trained_steps / train_seconds if train_seconds > 0 else 0.0,
        world_size=ddp.world_size, device=str(device))


# --------------------------------------------------------------------------------------------
# Command line (torchrun entry point)


def cli_main(argv: list[str] | None = None) -> int:
    """``python -m blurset.model.train --config F --train SPEC [--val SPEC] --out DIR [--resume]``."""
    p = argparse.ArgumentParser(
        prog="python -m blurset.model.train",
        description="Train a DPN on a blurset release (runs under torchrun for several GPUs).")
    p.add_argument("--config", required=True, help="training config (YAML)")
    p.add_argument("--train", required=True,
                   help="NAME@VERSION[:SPLIT] or a release folder (split defaults to train)")
    p.add_argument("--val", help="NAME@VERSION[:SPLIT] or a release folder (split: val or test)")
    p.add_argument("--out", required=True, help="output folder (refused if it holds a run)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--releases-root",
                   help="folder of NAME/VERSION releases (default $BLURSET_RELEASES or ./releases)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (YAML value; augment.hflip=true), repeatable")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(message)s")
    try:
        config = load_config(args.config)
        if args.set:
            config = config.with_overrides(args.set)
        train = resolve_release(args.train, args.releases_root)
        val = resolve_release(args.val, args.releases_root) if args.val else None
        result = main(config, train=train, val=val, out_dir=Path(args.out), resume=args.resume,
                      progress=not args.no_progress)
    except (ConfigError, CheckpointError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if rank == 0:
        last = result.history[-1] if result.history else {}
        print(json.dumps({"out_dir": str(result.out_dir), "epochs": result.epochs,
                          "steps": result.steps, "finished": result.finished,
                          "best": result.best, "last": last,
                          "world_size": result.world_size, "device": result.device,
                          "steps_per_second": round(result.steps_per_second, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
