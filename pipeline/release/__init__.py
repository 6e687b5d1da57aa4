"""Release stage: the images with a blur mask, split, written as Parquet shards with a manifest
and a dataset card; verified, compared and published (no Prefect, no click here).

The format is ``blurset.model.release_format``; ``docs/release-format.md`` describes it.
"""

from blurset.pipeline.release.build import ReleaseInfo, ReleaseSpec, build_release
from blurset.pipeline.release.diff import ReleaseDiff, diff_releases
from blurset.pipeline.release.errors import (
    NothingToRelease,
    ReleaseError,
    ReleaseExistsError,
    ReleaseVerificationError,
)
from blurset.pipeline.release.publish import publish_release
from blurset.pipeline.release.select import Candidate, Selection, select_images
from blurset.pipeline.release.splits import (
    DEFAULT_SPLIT,
    assign_splits,
    parse_split,
    read_split_file,
)
from blurset.pipeline.release.verify import Problem, VerifyReport, verify_release
from blurset.pipeline.release.versions import (
    ReleaseSummary,
    list_releases,
    validate_version,
    version_key,
)

__all__ = [
    "DEFAULT_SPLIT",
    "Candidate",
    "NothingToRelease",
    "Problem",
    "ReleaseDiff",
    "ReleaseError",
    "ReleaseExistsError",
    "ReleaseInfo",
    "ReleaseSpec",
    "ReleaseSummary",
    "ReleaseVerificationError",
    "Selection",
    "VerifyReport",
    "assign_splits",
    "build_release",
    "diff_releases",
    "list_releases",
    "parse_split",
    "publish_release",
    "read_split_file",
    "select_images",
    "validate_version",
    "verify_release",
    "version_key",
]
