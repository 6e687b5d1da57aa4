"""The one rule that turns a user's name (a project, a source, a release) into a safe file or key
name: lower-case ASCII letters and digits, every other run of characters one ``-``."""

from __future__ import annotations

import re

_OTHER = re.compile(r"[^a-z0-9]+")


def slug(name: str, empty: str = "unnamed") -> str:
    """``"Blur Pull #2"`` → ``"blur-pull-2"``; ``empty`` when nothing is left.

    Fits a folder name and a Prefect artifact key (lower-case letters, digits and dashes only).
    """
    return _OTHER.sub("-", name.lower()).strip("-") or empty
