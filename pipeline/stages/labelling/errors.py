"""Why an annotation stage stops: one class per cause, all :class:`~blurset.errors.BlursetError`."""

from __future__ import annotations

from blurset.errors import BlursetError, InputError, NotFoundError


class LabellingError(BlursetError):
    """An annotation stage cannot go on; the message says why and what to do."""


class NothingToPush(LabellingError, InputError):
    """No dedup run yet, so no image has passed dedup and none may go to the annotators."""


class UnknownProject(LabellingError, NotFoundError):
    """No Label Studio project of that title (pull and pre-label need a pushed project)."""


class DocumentRootError(LabellingError, InputError):
    """The object store is not under the folder Label Studio serves local files from."""


class PushOptionError(LabellingError, InputError):
    """Push options that do not fit together (ranking without a pre-labeller, a bad blur range)."""
