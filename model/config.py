"""Training configuration: one YAML file ↔ one frozen :class:`TrainConfig`.

Every key is optional (defaults below); an unknown key is an error naming the valid ones. Example
(``configs/dpn-small.yaml``)::

    model: {variant: deb+bl, width: 0.25}   # DPNConfig fields (model/dpn.py)
    input_size: 128
    batch_size: 8
    epochs: 4
    lr: 1.0e-4
    optimizer: adam
    augment: {rotations: true, rescales: [64, 32], hflip: false}
    seed: 0

:meth:`TrainConfig.resolved` is the complete config (every default filled in, the model's too)
that training writes beside its outputs as ``config.yaml`` and stores in every checkpoint;
``load_config`` reads it back unchanged.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from blurset.errors import InputError, NotFoundError
from blurset.model.data import Augment
from blurset.model.losses import DEFAULT_BOUNDARY_WEIGHT

__all__ = ["ConfigError", "ConfigNotFoundError", "TrainConfig", "load_config"]

OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "poly", "cosine")


class ConfigError(InputError):
    """A training config is invalid; the message names the key, the value and what is valid."""


class ConfigNotFoundError(NotFoundError, FileNotFoundError):
    """The training config file the user named does not exist (nor is it a bundled one)."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train a DPN. Releases are not part of it: they are arguments of ``train.main``."""

    model: dict = field(default_factory=lambda: {"variant": "deb+bl"})  # DPNConfig.from_dict
    input_size: int = 352  # square side; a multiple of 16 (the DPN's coarsest stride)
    batch_size: int = 8  # per process (torchrun: per GPU)
    epochs: int = 30
    lr: float = 1e-4
    weight_decay: float = 0.0
    optimizer: str = "adam"  # adam | sgd
    momentum: float = 0.9  # sgd only
    lr_schedule: str = "constant"  # constant | poly (power 0.9) | cosine, over all steps
    boundary_weight: float | None = None  # None: 1.0 for the deb+bl variant, else 0.0
    scale_weights: tuple[float, ...] | None = None  # per output scale; None: dpn_loss default
    flat_sharp_weight: float = 1.0  # BCE weight of sharp-labelled pixels without texture
    augment: Augment = field(default_factory=Augment)
    seed: int = 0
    num_workers: int = 0  # DataLoader worker processes (per process); decoding is cheap here
    val_every: int = 1  # validate every N epochs (and after the last)
    max_steps: int | None = None  # stop after this many optimizer steps (quick runs)
    backbone_weights: str | None = None  # torchvision VGG-16 state dict (.pth); None = random
    amp: str | bool = "auto"  # auto = mixed precision on CUDA, never on CPU

    def __post_init__(self) -> None:
        errors = _check(self)
        if errors:
            raise ConfigError("invalid training config:\n  " + "\n  ".join(errors))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> TrainConfig:
        """A config from a mapping (YAML); strings such as ``1e-4`` become numbers."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping of keys, got {type(data).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        if unknown := [k for k in data if k not in valid]:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid "
                              f"keys: {', '.join(valid)}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            kwargs[key] = _coerce(key, value, where)
        return cls(**kwargs)

    def dpn_config(self):
        """The model's :class:`blurset.model.dpn.DPNConfig`."""
        from blurset.model.dpn import DPNConfig
        try:
            return DPNConfig.from_dict(dict(self.model))
        except (TypeError, ValueError, KeyError) as e:
            raise ConfigError(f"model: {e}") from e

    @property
    def effective_boundary_weight(self) -> float:
        if self.boundary_weight is not None:
            return float(self.boundary_weight)
        return DEFAULT_BOUNDARY_WEIGHT if self.dpn_config().boundary_loss else 0.0

    def resolved(self) -> dict[str, Any]:
        """Every key with its value, the model's full config included (plain YAML types)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "model":
                value = self.dpn_config().to_dict()
            elif f.name == "augment":
                value = value.to_dict()
            elif f.name == "boundary_weight":
                value = self.effective_boundary_weight
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The config as given (``model`` as written, ``boundary_weight`` maybe null)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Augment):
                value = value.to_dict()
            elif isinstance(value, dict):
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def with_overrides(self, items: Sequence[str]) -> TrainConfig:
        """``["epochs=1", "augment.hflip=true", "model.width=0.5"]`` applied (values are YAML)."""
        data = self.to_dict()
        for item in items:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. epochs=1)")
            *parents, leaf = key.strip().split(".")
            target = data
            for part in parents:
                if not isinstance(target.get(part), dict):
                    raise ConfigError(f"override {item!r}: {part} is not a mapping (dotted keys "
                                      "reach into model.* and augment.*)")
                target = target[part]
            target[leaf] = yaml.safe_load(raw)
        config = TrainConfig.from_dict(data, where="overrides")
        config.dpn_config()
        return config


_INT = ("input_size", "batch_size", "epochs", "seed", "num_workers", "val_every", "max_steps")
_FLOAT = ("lr", "weight_decay", "momentum", "boundary_weight", "flat_sharp_weight")


def _coerce(key: str, value: Any, where: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}: {key} = {value!r} is not {expected}")
    if key in _INT:
        if value is None and key == "max_steps":
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if key in _FLOAT:
        if value is None and key == "boundary_weight":
            return None
        if isinstance(value, bool):
            raise bad("a number")
        try:
            return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except (TypeError, ValueError):
            raise bad("a number") from None
    if key == "scale_weights":
        if value is None:
            return None
        if not isinstance(value, list | tuple):
            raise bad("a list of numbers")
        try:
            return tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise bad("a list of numbers") from None
    if key == "model":
        if not isinstance(value, dict):
            raise bad("a mapping of DPNConfig fields (e.g. {variant: deb+bl, width: 1.0})")
        return dict(value)
    if key == "augment":
        if isinstance(value, Augment):
            return value
        if not isinstance(value, dict):
            raise bad("a mapping {rotations, rescales, hflip, rescale_mode}")
        valid = [f.name for f in dataclasses.fields(Augment)]
        if unknown := [k for k in value if k not in valid]:
            raise ConfigError(f"{where}: unknown key(s) augment.{', augment.'.join(unknown)}; "
                              f"valid keys: {', '.join(valid)}")
        if "crop" in value and (isinstance(value["crop"], bool)
                                or not isinstance(value["crop"], (int, float))):
            raise ConfigError(f"{where}: augment.crop = {value['crop']!r} is not a number in [0, 1]")
        for flag in ("rotations", "hflip"):
            if flag in value and not isinstance(value[flag], bool):
                raise ConfigError(f"{where}: augment.{flag} = {value[flag]!r} is not true/false")
        rescales = value.get("rescales", Augment().rescales)
        if rescales is None:
            rescales = []
        if not isinstance(rescales, list | tuple) or not all(
                isinstance(s, int) and not isinstance(s, bool) for s in rescales):
            raise ConfigError(f"{where}: augment.rescales = {rescales!r} is not a list of sizes "
                              "in pixels (e.g. [176, 88]) or []")
        try:
            return Augment(**{**value, "rescales": tuple(rescales)})
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
    if key in ("optimizer", "lr_schedule"):
        return str(value).lower() if isinstance(value, str) else value
    if key == "backbone_weights":
        return None if value is None else os.fspath(value)
    if key == "amp":
        return value.lower() if isinstance(value, str) else value
    return value


def _check(c: TrainConfig) -> list[str]:
    errors = []
    if not isinstance(c.input_size, int) or c.input_size < 32 or c.input_size % 16:
        errors.append(f"input_size = {c.input_size!r} must be a multiple of 16, at least 32 "
                      "(the paper: 352)")
    for key in ("batch_size", "epochs", "val_every"):
        if not isinstance(getattr(c, key), int) or getattr(c, key) < 1:
            errors.append(f"{key} = {getattr(c, key)!r} must be an integer ≥ 1")
    if not isinstance(c.num_workers, int) or c.num_workers < 0:
        errors.append(f"num_workers = {c.num_workers!r} must be an integer ≥ 0")
    if c.max_steps is not None and (not isinstance(c.max_steps, int) or c.max_steps < 1):
        errors.append(f"max_steps = {c.max_steps!r} must be an integer ≥ 1 or null")
    if not isinstance(c.lr, float | int) or not c.lr > 0:
        errors.append(f"lr = {c.lr!r} must be > 0")
    if not isinstance(c.weight_decay, float | int) or c.weight_decay < 0:
        errors.append(f"weight_decay = {c.weight_decay!r} must be ≥ 0")
    if c.optimizer not in OPTIMIZERS:
        errors.append(f"optimizer = {c.optimizer!r} must be one of {', '.join(OPTIMIZERS)}")
    if c.lr_schedule not in LR_SCHEDULES:
        errors.append(f"lr_schedule = {c.lr_schedule!r} must be one of "
                      f"{', '.join(LR_SCHEDULES)}")
    if c.boundary_weight is not None and c.boundary_weight < 0:
        errors.append(f"boundary_weight = {c.boundary_weight!r} must be ≥ 0 (or null for "
                      "the variant's default)")
    if not isinstance(c.flat_sharp_weight, float | int) or not 0 <= c.flat_sharp_weight <= 1:
        errors.append(f"flat_sharp_weight = {c.flat_sharp_weight!r} must be in [0, 1] (1: every "
                      "pixel counts the same)")
    if c.amp not in ("auto", True, False):
        errors.append(f"amp = {c.amp!r} must be auto, true or false")
    if not isinstance(c.augment, Augment):
        errors.append(f"augment = {c.augment!r} must be a mapping")
    elif bad := [s for s in c.augment.rescales if s >= c.input_size]:
        errors.append(f"augment.rescales {bad} must be smaller than input_size {c.input_size} "
                      "(the paper: [176, 88] for 352)")
    if not isinstance(c.model, dict) or not isinstance(c.model.get("variant", "deb+bl"), str):
        errors.append(f"model = {c.model!r} must be a mapping of DPNConfig fields")
    if c.backbone_weights is not None and not Path(c.backbone_weights).is_file():
        errors.append(f"backbone_weights = {c.backbone_weights!r}: no such file (give the path "
                      "of torchvision's VGG-16 ImageNet state dict, or null for random init)")
    return errors


def bundled_configs() -> dict[str, Path]:
    """The training configs shipped with blurset, by name (``dpn-small``, ``dpn-paper``)."""
    folder = resources.files("blurset.configs")
    return {Path(e.name).stem: Path(str(e)) for e in folder.iterdir() if e.name.endswith(".yaml")}


def config_path(spec: str | os.PathLike) -> Path:
    """A config file's path: an existing file, else the name of a bundled config."""
    path = Path(spec)
    if path.is_file():
        return path
    bundled = bundled_configs()
    name = path.name.removesuffix(".yaml")
    if name in bundled and len(path.parts) <= 2:
        return bundled[name]
    return path


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a YAML training config (a file, or the name of a bundled one such as ``dpn-small``);
    errors name the file, the key and the valid choices."""
    path = config_path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigNotFoundError(f"training config {path} does not exist; give a YAML file or "
                                  f"a bundled config ({', '.join(bundled_configs())})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    config = TrainConfig.from_dict(data or {}, where=str(path))
    try:
        config.dpn_config()  # a bad model block fails here, naming the file
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e.__cause__
    return config
