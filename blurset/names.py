"""Names users give: the folder-name rule every source and release name passes
(:func:`validate_name`), the rule for project titles (:func:`validate_title`), and :func:`slug`,
which turns a title into a safe file or key name."""

from __future__ import annotations

import re

from blurset.errors import InputError

_OTHER = re.compile(r"[^a-z0-9]+")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
MAX_TITLE = 200


class InvalidName(InputError):
    """A source, release or project name that cannot be used; the message gives the rule."""


def validate_name(name: object, what: str = "name") -> str:
    """A source or release name: one folder name of 1-100 letters, digits, '.', '_' and '-',
    starting with a letter or digit, without '..' (so it never leaves the folder it names)."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise InvalidName(f"{what} {name!r} must be a folder name of letters, digits, '.', '_' "
                         "and '-', starting with a letter or digit, without '..' "
                         "(e.g. cuhk or szu-bd)")
    return name


def validate_title(title: object, what: str = "project") -> str:
    """A Label Studio project title: 1-200 printable characters, not blank. Files of a project
    go under :func:`slug` of its title, never under the title itself."""
    if (not isinstance(title, str) or not title.strip() or len(title) > MAX_TITLE
            or not title.isprintable()):
        raise InvalidName(f"{what} title {title!r} must be 1-{MAX_TITLE} printable characters, "
                         "not blank")
    return title


def slug(name: str, empty: str = "unnamed") -> str:
    """``"Blur Pull #2"`` → ``"blur-pull-2"``; ``empty`` when nothing is left.

    Fits a folder name and a Prefect artifact key (lower-case letters, digits and dashes only).
    """
    return _OTHER.sub("-", name.lower()).strip("-") or empty
