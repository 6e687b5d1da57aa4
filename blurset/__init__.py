"""blurset: build blur-detection datasets end to end.

The code lives in three subpackages: :mod:`blurset.pipeline` (workspace, catalog, stages, flows,
releases, CLI), :mod:`blurset.annotation` (Label Studio) and :mod:`blurset.model` (the DPN).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("blurset")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
