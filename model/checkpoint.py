"""Training checkpoints: written atomically, carrying their provenance, loaded back as a DPN.

A checkpoint is a dict with ``format`` = :data:`CHECKPOINT_FORMAT`: the weights, optimizer and AMP
scaler states, epoch and step, the resolved training config and DPNConfig, the train and val
releases (name, version, split, fingerprint, every shard's sha256), the epoch's metrics, the best
so far, the run (world size, device, AMP, torch version), the blurset version and the time.
:func:`load_checkpoint` rebuilds the model from it alone. The name ``pretrained`` (the DPN shipped
as package data, ``blurset.model.weights``, docs/pretrained.md) is accepted wherever a checkpoint
path is: this module is the one place that resolves it.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import io
import os
import pickle
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from blurset.errors import ConflictError, InputError, NotFoundError
from blurset.fileio import atomic_write
from blurset.model.dpn import DPN, DPNConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "PRETRAINED",
    "RESUMABLE_KEYS",
    "CheckpointError",
    "CheckpointNotFoundError",
    "RunExistsError",
    "blurset_version",
    "checkpoint_path",
    "load_checkpoint",
    "read_checkpoint",
    "resume_problems",
    "run_state",
    "write_checkpoint",
]

CHECKPOINT_FORMAT = "blurset-checkpoint/1"
RESUMABLE_KEYS = ("epochs", "max_steps", "num_workers", "val_every")  # may change on resume
WEIGHT_KEYS = ("model", "optimizer", "scaler")  # what load_checkpoint's metadata leaves out
PRETRAINED = "pretrained"  # the checkpoint shipped as package data


class CheckpointError(InputError):
    """A file is not a blurset checkpoint, or cannot continue this run; the message says why."""


class CheckpointNotFoundError(NotFoundError, FileNotFoundError):
    """A checkpoint file (or the run to resume) does not exist."""


class RunExistsError(ConflictError, FileExistsError):
    """The output folder already holds a run, and resuming it was not asked for."""


def blurset_version() -> str:
    try:
        return importlib.metadata.version("blurset")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def write_checkpoint(state: dict[str, Any], *paths: Path) -> None:
    """``state`` (stamped with the format, the blurset version and the time) saved to each path,
    each written atomically (a crash leaves the old file or the new one)."""
    state = {"format": CHECKPOINT_FORMAT, **state, "blurset_version": blurset_version(),
             "created": datetime.now(UTC).isoformat(timespec="seconds")}
    buf = io.BytesIO()
    torch.save(state, buf)
    for path in paths:
        atomic_write(path, buf.getbuffer())


def checkpoint_path(spec: str | os.PathLike) -> Path:
    """A checkpoint's file: ``pretrained`` is the one shipped in ``blurset.model.weights``,
    anything else a path (not checked here: :func:`read_checkpoint` says when it is missing)."""
    if os.fspath(spec) == PRETRAINED:
        path = Path(str(resources.files("blurset.model.weights") / "pretrained.pt"))
        if not path.is_file():
            raise CheckpointNotFoundError(
                f"the shipped checkpoint {path} is missing from this installation: reinstall "
                "blurset, or rebuild it with `make pretrained`")
        return path
    return Path(spec)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict in ``path`` (tensors on the CPU), checked to be a blurset one;
    ``pretrained`` names the shipped checkpoint."""
    path = checkpoint_path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist") from None
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
    """A checkpoint written by training → (DPN in eval mode, metadata).

    The model is rebuilt from the stored ``model_config`` alone; the metadata is every key but
    the weights (``config``, ``model_config``, ``releases``, ``metrics``, ``best``, ``epoch``,
    ``step``, ``run``, ``blurset_version``, ``created``...). Raises :class:`CheckpointError` for a
    file that is not one.
    """
    path = checkpoint_path(path)
    ckpt = read_checkpoint(path)
    try:
        model = DPN(DPNConfig.from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its weights do not fit its model_config: {e}") from None
    model.to(map_location).eval()
    return model, {k: v for k, v in ckpt.items() if k not in WEIGHT_KEYS}


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _release_key(r: dict | None) -> tuple | None:
    return None if r is None else (r["name"], r["version"], r["split"], r["fingerprint"])


def _show_release(r: dict | None) -> str:
    if r is None:
        return "none"
    return f"{r['name']}@{r['version']}:{r['split']} (fingerprint {r['fingerprint'][:12]})"


def resume_problems(ckpt: dict, config: dict, train: dict, val: dict | None) -> list[str]:
    """What differs between a checkpoint's run and the run asked for now (resolved config,
    release provenance), ignoring :data:`RESUMABLE_KEYS`; empty when it may be resumed."""
    from blurset.model.config import TrainConfig

    old, new = _flatten(ckpt.get("config") or {}), _flatten(config)
    # a run's resolved config holds every key of its day: a key missing was added since, and
    # the run had its default (a new key's default leaves training as it was)
    for f in dataclasses.fields(TrainConfig):
        if f.default is not dataclasses.MISSING:
            old.setdefault(f.name, f.default)
    problems = [f"{k}: {old.get(k)!r} in the run, {new.get(k)!r} now"
                for k in sorted(set(old) | set(new))
                if k.split(".")[0] not in RESUMABLE_KEYS and old.get(k) != new.get(k)]
    releases = ckpt.get("releases") or {}
    for role, now in (("train", train), ("val", val)):
        then = releases.get(role)
        if _release_key(then) != _release_key(now):
            problems.append(f"{role} release: {_show_release(then)} in the run, "
                            f"{_show_release(now)} now")
    return problems


def run_state(out_dir: Path) -> str:
    """A phrase saying what run ``out_dir`` holds, for refusal messages."""
    last = out_dir / "checkpoints" / "last.pt"
    if not last.is_file():
        return "an unfinished run (no checkpoint yet)"
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        done = "finished" if ckpt.get("finished") else "unfinished"
        return f"a {done} run (epoch {ckpt.get('epoch')}, step {ckpt.get('step')})"
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError):
        return "a run (its last.pt is unreadable)"
