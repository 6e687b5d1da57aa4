"""Annotation stages: push images that passed dedup to Label Studio, pull the masks people painted,
add a newer model's pre-labels, report a project's status, review where annotators disagree. Plain functions over the catalog and a
:class:`blurset.annotation.client.Client`; ``blurset.pipeline.flows`` wraps them."""

from blurset.pipeline.stages.labelling.errors import (
    DocumentRootError,
    LabellingError,
    NothingToPush,
    PushOptionError,
    UnknownProject,
)
from blurset.pipeline.stages.labelling.predictions import (
    PrelabelReport,
    add_prelabels,
    plan_prelabels,
    prelabel_batch,
)
from blurset.pipeline.stages.labelling.project import ProjectRef, write_snapshot
from blurset.pipeline.stages.labelling.pull import (
    ACCEPTED_IOU,
    PullReport,
    compare_with_prelabel,
    export_masks,
    pull,
)
from blurset.pipeline.stages.labelling.push import (
    PushReport,
    Ranked,
    default_push_sources,
    push,
    rank_candidates,
)
from blurset.pipeline.stages.labelling.review import (
    Agreement,
    PairComparison,
    ReviewReport,
    compare_pairs,
    resolve,
    review,
)
from blurset.pipeline.stages.labelling.status import PrelabelStats, ProjectStatus, status

__all__ = [
    "ACCEPTED_IOU", "Agreement", "DocumentRootError", "LabellingError", "NothingToPush",
    "PairComparison", "PrelabelReport", "PrelabelStats", "ProjectRef", "ProjectStatus",
    "PullReport", "PushOptionError", "PushReport", "Ranked", "ReviewReport", "UnknownProject",
    "add_prelabels", "compare_pairs", "compare_with_prelabel", "default_push_sources",
    "export_masks", "plan_prelabels", "prelabel_batch", "pull", "push", "rank_candidates",
    "resolve", "review", "status", "write_snapshot",
]
