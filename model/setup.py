"""What a training run sets up before its first step: processes and device, seeds, data loaders,
optimizer and learning-rate schedule.

Under torchrun (``WORLD_SIZE`` > 1) the process group is initialised here (NCCL on CUDA, gloo on
CPU); each rank reads its share of the training order and of the validation images.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from blurset.errors import InputError
from blurset.model.config import ConfigError, TrainConfig
from blurset.model.data import GroupedSampler, ReleaseDataset, ReleaseRef

__all__ = [
    "Distributed",
    "Loaders",
    "build_loaders",
    "build_optimizer",
    "default_splits",
    "epoch_seed",
    "init_distributed",
    "lr_factor",
    "seed_all",
    "use_amp",
]


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run (world size 1 without torchrun)."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool  # initialised here, so destroyed by close()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over every rank, in place."""
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


def init_distributed() -> Distributed:
    """The device, and the process group when torchrun started several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world <= 1:
        return Distributed(0, 1, torch.device("cuda" if cuda else "cpu"), False)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    return Distributed(dist.get_rank(), dist.get_world_size(), device, owns)


def use_amp(config: TrainConfig, device: torch.device) -> bool:
    """Mixed precision: on CUDA unless the config says ``amp: false``."""
    if config.amp is True and device.type != "cuda":
        raise ConfigError("amp: true needs CUDA, and this process has none; use amp: auto")
    return device.type == "cuda" and config.amp in ("auto", True)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of one epoch on one rank: the same whether the run was resumed or not."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0]
               % 2**63)


def seed_all(seed: int) -> None:
    """Seed ``random``, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_splits(train: ReleaseRef, val: ReleaseRef | None
                   ) -> tuple[ReleaseRef, ReleaseRef | None]:
    """Train on ``train`` unless a split is named; validate on ``val``, else ``test``."""
    train = train.with_split(train.split or "train")
    if val is not None and not val.split:
        splits = val.splits()
        val = val.with_split("val" if "val" in splits else "test")
    return train, val


@dataclass(frozen=True)
class Loaders:
    train: DataLoader
    sampler: GroupedSampler  # reordered every epoch (set_epoch)
    generator: torch.Generator  # the workers' seeds, reseeded every epoch
    val: DataLoader | None  # this rank's share of the validation images
    train_samples: int  # samples per epoch, every rank together


def build_loaders(config: TrainConfig, train: ReleaseRef, val: ReleaseRef | None,
                  ddp: Distributed) -> Loaders:
    """Data loaders over the releases' splits (as :func:`default_splits` named them)."""
    train_ds = ReleaseDataset(train, input_size=config.input_size, augment=config.augment)
    if len(train_ds) == 0:
        raise InputError(f"split {train.split!r} of {train.name}@{train.version} has no rows; "
                          "train on a split that has some")
    sampler = GroupedSampler(train_ds.groups, shuffle=True, seed=config.seed,
                             num_replicas=ddp.world_size, rank=ddp.rank)
    generator = torch.Generator()
    pin = ddp.device.type == "cuda"
    # Workers start from a fork server, not a fork of this process: a fork inherits whatever
    # threads and exit handlers the caller runs (Prefect's, for one), and such workers died.
    context = "forkserver" if config.num_workers > 0 else None
    train_loader = DataLoader(train_ds, batch_size=config.batch_size, sampler=sampler,
                              num_workers=config.num_workers, pin_memory=pin, drop_last=False,
                              generator=generator, multiprocessing_context=context)
    val_loader = None
    if val is not None:
        val_ds = ReleaseDataset(val, input_size=config.input_size, augment=None)
        mine = Subset(val_ds, range(ddp.rank, len(val_ds), ddp.world_size))
        val_loader = DataLoader(mine, batch_size=config.batch_size, shuffle=False,
                                num_workers=config.num_workers, pin_memory=pin,
                                multiprocessing_context=context)
    return Loaders(train_loader, sampler, generator, val_loader, len(train_ds))


def build_optimizer(config: TrainConfig, params: Iterable[torch.nn.Parameter]
                    ) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(schedule: str, step: int, total: int) -> float:
    """The learning rate's factor at ``step`` of ``total``: constant, poly (power 0.9), cosine."""
    if schedule == "constant" or total <= 0:
        return 1.0
    t = min(step / total, 1.0)
    if schedule == "poly":
        return (1.0 - t) ** 0.9
    return 0.5 * (1.0 + math.cos(math.pi * t))  # cosine
