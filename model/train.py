"""Train a DPN on a release: ``main(config, train=…, val=…, out_dir=…)``, also under torchrun.

Outputs (``out_dir``), written by rank 0 only: ``config.yaml`` (the resolved config, loadable with
:func:`blurset.model.config.load_config`), ``metrics.jsonl`` (one line per epoch),
``checkpoints/last.pt`` (every epoch) and ``checkpoints/best.pt`` (lowest val MAE, else lowest
train loss). A resumed run continues exactly as the uninterrupted run would have: every epoch is
seeded from (seed, epoch, rank). Several GPUs::

    torchrun --nproc_per_node 4 -m blurset.model.train --config configs/dpn-paper.yaml \\
        --train szu-bd@1.0.0 --val szu-bd@1.0.0:test --out runs/dpn-paper
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from blurset.errors import BlursetError
from blurset.fileio import atomic_write
from blurset.model.checkpoint import (
    CHECKPOINT_FORMAT,
    RESUMABLE_KEYS,
    CheckpointError,
    CheckpointNotFoundError,
    RunExistsError,
    load_checkpoint,
    read_checkpoint,
    resume_problems,
    run_state,
    write_checkpoint,
)
from blurset.model.config import TrainConfig, load_config
from blurset.model.data import ReleaseRef, resolve_release
from blurset.model.dpn import build_dpn
from blurset.model.loop import train_epoch, validate
from blurset.model.setup import (
    Distributed,
    build_loaders,
    build_optimizer,
    default_splits,
    epoch_seed,
    init_distributed,
    seed_all,
    use_amp,
)

# load_checkpoint and CheckpointError live in blurset.model.checkpoint; importable from here too.
__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "TrainResult", "cli_main", "load_checkpoint",
           "main"]

log = logging.getLogger("blurset.train")


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


@dataclass(frozen=True)
class _Paths:
    out_dir: Path

    @property
    def config(self) -> Path:
        return self.out_dir / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    @property
    def last(self) -> Path:
        return self.out_dir / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        return self.out_dir / "checkpoints" / "best.pt"


def main(config: TrainConfig, *, train: ReleaseRef, val: ReleaseRef | None = None,
         out_dir: str | Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train ``config``'s DPN on ``train`` (its split, default ``train``), validating on ``val``
    (its split, default ``val`` when the release has one, else ``test``), into ``out_dir``.

    Refuses (:class:`RunExistsError`, a ``FileExistsError``) an ``out_dir`` that already holds a
    run unless ``resume``; with ``resume`` continues ``checkpoints/last.pt`` if the config (except
    epochs, max_steps, num_workers, val_every) and the releases are the same, else says what
    differs (:class:`CheckpointError`). A resumed run that is already finished returns at once.
    """
    t_start = time.perf_counter()
    ddp = init_distributed()
    try:
        return _run(config, train, val, _Paths(Path(out_dir)), resume, progress, ddp, t_start)
    finally:
        ddp.close()


def _open_run(paths: _Paths, resume: bool, resolved: dict, provenance: dict) -> dict | None:
    """The checkpoint to resume from (None for a new run), after checking ``out_dir``."""
    if not resume:
        if any(p.exists() for p in (paths.config, paths.metrics, paths.last)):
            raise RunExistsError(f"{paths.out_dir} already holds {run_state(paths.out_dir)}; "
                                 "nothing was overwritten: continue it with resume=True "
                                 "(--resume) or choose another output folder")
        return None
    if not paths.last.is_file():
        raise CheckpointNotFoundError(f"nothing to resume in {paths.out_dir}: no "
                                      "checkpoints/last.pt (start the run without --resume)")
    ckpt = read_checkpoint(paths.last)
    if problems := resume_problems(ckpt, resolved, provenance["train"], provenance["val"]):
        raise CheckpointError(
            f"cannot resume {paths.out_dir} with a different setup (only "
            f"{', '.join(RESUMABLE_KEYS)} may change):\n  " + "\n  ".join(problems))
    return ckpt


def _read_history(path: Path, upto_epoch: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [r for r in rows if r.get("epoch", 0) <= upto_epoch]


@dataclass
class _State:
    """The model, its optimizer and where the run stands; restored from a checkpoint on resume."""

    raw: nn.Module  # the DPN (what checkpoints hold)
    model: nn.Module  # the DPN, wrapped in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    epoch: int
    step: int
    best: dict  # {"metric": "val_mae" | "train_loss", "value", "epoch"}


def _build(config: TrainConfig, ckpt: dict | None, ddp: Distributed, amp: bool,
           has_val: bool) -> _State:
    seed_all(config.seed)
    raw = build_dpn(config.dpn_config(), config.backbone_weights).to(ddp.device)
    optimizer = build_optimizer(config, raw.parameters())
    scaler = torch.amp.GradScaler(ddp.device.type, enabled=amp)
    epoch, step = 0, 0
    best: dict = {"metric": "val_mae" if has_val else "train_loss", "value": None, "epoch": None}
    if ckpt is not None:
        raw.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        epoch, step, best = int(ckpt["epoch"]), int(ckpt["step"]), dict(ckpt["best"])
    model: nn.Module = raw
    if ddp.world_size > 1:
        model = DistributedDataParallel(
            raw, device_ids=[ddp.device.index] if ddp.device.type == "cuda" else None)
    return _State(raw, model, optimizer, scaler, epoch, step, best)


def _run(config: TrainConfig, train: ReleaseRef, val: ReleaseRef | None, paths: _Paths,
         resume: bool, progress: bool, ddp: Distributed, t_start: float) -> TrainResult:
    amp = use_amp(config, ddp.device)
    train, val = default_splits(train, val)
    resolved = config.resolved()
    provenance = {"train": train.provenance(), "val": val.provenance() if val else None}
    ckpt = _open_run(paths, resume, resolved, provenance)
    loaders = build_loaders(config, train, val, ddp)
    st = _build(config, ckpt, ddp, amp, has_val=val is not None)

    steps_per_epoch = len(loaders.train)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    meta = {"config": resolved, "model_config": config.dpn_config().to_dict(),
            "releases": provenance,
            "run": {"world_size": ddp.world_size, "device": ddp.device.type, "amp": amp,
                    "torch": str(torch.__version__), "cuda": torch.version.cuda,
                    "steps_per_epoch": steps_per_epoch,
                    "samples_per_epoch": loaders.train_samples}}

    history = _read_history(paths.metrics, st.epoch) if resume else []
    ddp.barrier()  # every rank has checked out_dir and read the history before rank 0 writes
    if ddp.is_main:
        atomic_write(paths.config, yaml.safe_dump(resolved, sort_keys=False).encode())
        atomic_write(paths.metrics, "".join(json.dumps(r) + "\n" for r in history).encode())
        paths.last.parent.mkdir(parents=True, exist_ok=True)

    def finished_at(e: int, s: int) -> bool:
        return e >= config.epochs or bool(config.max_steps and s >= config.max_steps)

    trained_steps, train_seconds = 0, 0.0
    while not finished_at(st.epoch, st.step):
        seed = epoch_seed(config.seed, st.epoch, ddp.rank)
        seed_all(seed)
        loaders.generator.manual_seed(seed)
        loaders.sampler.set_epoch(st.epoch)
        stats = train_epoch(st.model, loaders.train, st.optimizer, st.scaler, config,
                            step=st.step, total_steps=total_steps, amp=amp, ddp=ddp,
                            progress=progress, desc=f"epoch {st.epoch + 1}/{config.epochs}")
        st.step, st.epoch = stats.step, st.epoch + 1
        trained_steps += stats.steps
        train_seconds += stats.seconds
        finished = finished_at(st.epoch, st.step)
        row: dict[str, Any] = {"epoch": st.epoch, "step": st.step, **stats.losses, "lr": stats.lr}
        if loaders.val is not None and (st.epoch % config.val_every == 0 or finished):
            numbers = validate(st.raw, loaders.val, amp=amp, ddp=ddp)
            row.update({f"val_{k}": v for k, v in numbers.items()})
        row["seconds"] = round(stats.seconds, 3)
        row["images_per_second"] = (round(stats.images / stats.seconds, 2) if stats.seconds > 0
                                    else None)
        row["time"] = datetime.now(UTC).isoformat(timespec="seconds")
        history.append(row)
        improved = _update_best(st, row)
        log.info("epoch %d/%d step %d: %s", st.epoch, config.epochs, st.step,
                 ", ".join(f"{k} {v:.4f}" for k, v in row.items()
                           if isinstance(v, float) and (k.startswith(("train_", "val_")))))
        if ddp.is_main:
            with open(paths.metrics, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            stopped_early = bool(config.max_steps and st.step >= config.max_steps
                                 and st.epoch < config.epochs)
            _save(paths, st, row, meta, finished=finished, stopped_early=stopped_early,
                  also_best=improved or not paths.best.exists())

    ddp.barrier()  # every rank returns after rank 0 has written the last files
    return TrainResult(
        out_dir=paths.out_dir, config_path=paths.config, last_checkpoint=paths.last,
        best_checkpoint=paths.best, epochs=st.epoch, steps=st.step,
        finished=finished_at(st.epoch, st.step), history=history, best=st.best,
        seconds=time.perf_counter() - t_start,
        steps_per_second=trained_steps / train_seconds if train_seconds > 0 else 0.0,
        world_size=ddp.world_size, device=str(ddp.device))


def _update_best(st: _State, row: dict) -> bool:
    """Record ``row``'s epoch as the best if its score (val MAE, else train loss) is lower."""
    score = row.get("val_mae") if st.best["metric"] == "val_mae" else row["train_loss"]
    improved = score is not None and (st.best["value"] is None or score < st.best["value"])
    if improved:
        st.best = {"metric": st.best["metric"], "value": score, "epoch": st.epoch}
    return improved


def _save(paths: _Paths, st: _State, row: dict, meta: dict, *, finished: bool,
          stopped_early: bool, also_best: bool) -> None:
    state = {
        "model": st.raw.state_dict(), "optimizer": st.optimizer.state_dict(),
        "scaler": st.scaler.state_dict(), "epoch": st.epoch, "step": st.step,
        "finished": finished, "stopped_by": "max_steps" if stopped_early else None,
        "config": meta["config"], "model_config": meta["model_config"],
        "releases": meta["releases"], "metrics": row, "best": st.best, "run": meta["run"],
    }
    write_checkpoint(state, paths.last, *([paths.best] if also_best else []))


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
    except BlursetError as e:  # a refused request or bad input; anything else is a bug
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
