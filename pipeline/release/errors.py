"""The errors of the release stage."""

from __future__ import annotations

from typing import TYPE_CHECKING

from blurset.errors import BlursetError, ConflictError, InputError

if TYPE_CHECKING:
    from blurset.pipeline.release.verify import VerifyReport


class ReleaseError(InputError):
    """A release cannot be built or published as asked; the message says why and what to do."""


class ReleaseExistsError(ConflictError, FileExistsError):
    """The release version is already built or published there: a published version is never
    replaced (a ``FileExistsError`` too, for callers that catch that)."""


class NothingToRelease(ReleaseError):
    """The selection holds no image with a blur mask."""


class ReleaseVerificationError(BlursetError, RuntimeError):
    """``verify_release`` found problems; ``.report`` lists them file by file."""

    def __init__(self, report: VerifyReport):
        self.report = report
        lines = [f"  {p.file}: {p.message}" for p in report.problems[:20]]
        more = len(report.problems) - len(lines)
        super().__init__(f"release {report.path} failed verification "
                         f"({len(report.problems)} problem(s)):\n" + "\n".join(lines)
                         + (f"\n  … and {more} more" if more > 0 else ""))
