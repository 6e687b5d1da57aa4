"""blurset.pipeline: the workspace and its catalog, the stages, and the Prefect flows over them.

``Workspace`` and ``Catalog`` hold the state; the flows (``ingest_flow`` … ``release_flow``) run
the stages under Prefect and return dataclasses. The flows are imported on first use: importing
Prefect takes seconds, and ``import blurset.pipeline`` has no side effects.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from blurset.pipeline.catalog import Catalog
from blurset.pipeline.workspace import Workspace

if TYPE_CHECKING:
    from blurset.pipeline.flows import (
        dedup_flow,
        ingest_flow,
        prelabel_flow,
        pull_flow,
        push_flow,
        release_flow,
    )

__all__ = ["Catalog", "Workspace", "dedup_flow", "ingest_flow", "prelabel_flow", "pull_flow",
           "push_flow", "release_flow"]
_FLOWS = frozenset(__all__) - {"Catalog", "Workspace"}


def __getattr__(name: str) -> Any:
    if name in _FLOWS:
        return getattr(import_module("blurset.pipeline.flows"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
