"""The root of every error blurset raises on purpose.

The command line turns a :class:`BlursetError` into one ``Error: …`` line and exit code 1 (``-v``
adds the traceback); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class BlursetError(Exception):
    """An expected failure: bad input, a missing file, a server that is down. The message says
    what went wrong, where, and what to do."""


class InputError(BlursetError, ValueError):
    """A value the user gave (option, name, path, file content) is not acceptable."""


class NotFoundError(BlursetError, LookupError):
    """Something the user named (source, project, release, checkpoint, file) does not exist."""


class ConflictError(BlursetError):
    """The request contradicts what is stored (an existing version, a name bound elsewhere)."""


class ServiceError(BlursetError):
    """A service blurset talks to (Label Studio, the ML backend, a storage URL) failed."""
