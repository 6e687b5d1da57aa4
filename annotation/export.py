"""Reading Label Studio's raw JSON export: tasks, their annotations, brush masks decoded exactly.

The SDK's ``decode_from_annotation`` returns ``{}`` on raw export results, so brush results are
decoded here from ``value.rle`` with ``blurset.annotation.rle``. Several brush results on one annotation
(several strokes, or several labels) are united.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from blurset.annotation import rle
from blurset.annotation.config import BLUR_TYPE, BRUSH, REJECT
from blurset.errors import InputError


class MaskProblem(InputError):
    """An annotation whose mask cannot be used as is; the message says why."""


@dataclass(frozen=True)
class ExportedAnnotation:
    id: int
    task_id: int
    completed_by: int | None
    created_at: str | None
    updated_at: str | None
    lead_time: float | None
    was_cancelled: bool
    brush: list[dict]  # the brush result items, raw
    blur_type: str | None  # the annotator's blur_type choice, as submitted
    reject: str | None

    def mask(self, height: int, width: int) -> np.ndarray:
        """The union of the brush strokes as uint8 0/255 (255 = blurred) of the image's size."""
        if self.reject is None and not self.brush:
            raise MaskProblem("empty mask: nothing painted and the image was not rejected")
        out = np.zeros((height, width), np.uint8)
        for item in self.brush:
            h, w = item.get("original_height"), item.get("original_width")
            if (h, w) != (height, width):
                raise MaskProblem(f"mask size {w}×{h} differs from the image ({width}×{height})")
            value = item.get("value") or {}
            if value.get("format") != "rle" or "rle" not in value:
                raise MaskProblem(f"brush result in format {value.get('format')!r}, expected 'rle'")
            try:
                out |= rle.decode(value["rle"], height, width)
            except rle.RleError as e:
                raise MaskProblem(f"undecodable brush RLE: {e}") from None
        if self.reject is None and not out.any():
            raise MaskProblem("empty mask: the brush strokes cover no pixel")
        return out


@dataclass(frozen=True)
class ExportedTask:
    id: int
    image_id: str | None
    data: dict
    annotations: list[ExportedAnnotation] = field(default_factory=list)

    def submitted(self) -> list[ExportedAnnotation]:
        """Annotations actually submitted (skips are not), most recent last."""
        subs = [a for a in self.annotations if not a.was_cancelled]
        return sorted(subs, key=lambda a: (a.updated_at or a.created_at or "", a.id))


def choice_of(result: list[dict], name: str) -> str | None:
    """The first choice of the Choices control ``name`` in a result list, or None."""
    for item in result:
        if item.get("from_name") == name and item.get("type") == "choices":
            choices = (item.get("value") or {}).get("choices") or []
            if choices:
                return str(choices[0])
    return None


def parse_export(raw: bytes | str) -> list[ExportedTask]:
    """Parse Label Studio's JSON export (a list of tasks with their annotations)."""
    data = json.loads(raw)
    if not isinstance(data, list):
        raise TypeError("a Label Studio JSON export is a list of tasks; got "
                         f"{type(data).__name__}")
    tasks = []
    for t in data:
        anns = []
        for a in t.get("annotations") or []:
            result = a.get("result") or []
            completed_by = a.get("completed_by")
            if isinstance(completed_by, dict):
                completed_by = completed_by.get("id")
            anns.append(ExportedAnnotation(
                id=int(a["id"]), task_id=int(t["id"]), completed_by=completed_by,
                created_at=a.get("created_at"), updated_at=a.get("updated_at"),
                lead_time=a.get("lead_time"), was_cancelled=bool(a.get("was_cancelled")),
                brush=[r for r in result if r.get("from_name") == BRUSH
                       and r.get("type") == "brushlabels"],
                blur_type=choice_of(result, BLUR_TYPE), reject=choice_of(result, REJECT)))
        data_ = t.get("data") or {}
        tasks.append(ExportedTask(id=int(t["id"]), image_id=data_.get("id"), data=data_,
                                  annotations=anns))
    return tasks


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two blur masks of one shape (1.0 when neither marks a pixel).

    The one rule for every mask blurset compares (annotations, pre-labels, stored PNGs): uint8
    0/255 masks, a pixel is blurred when > 127; a bool mask counts True as blurred.
    """
    if a.shape != b.shape:
        raise ValueError(f"masks of different shapes {a.shape} and {b.shape} have no IoU; "
                         "compare masks of one image")
    x, y = _blurred(a), _blurred(b)
    union = np.logical_or(x, y).sum()
    return 1.0 if union == 0 else float(np.logical_and(x, y).sum() / union)


def _blurred(mask: np.ndarray) -> np.ndarray:
    return mask if mask.dtype == np.bool_ else mask > 127


def mean_pairwise_iou(masks: list[np.ndarray]) -> float | None:
    """Agreement of several annotators: mean IoU over every pair (None for fewer than two)."""
    if len(masks) < 2:
        return None
    vals = [mask_iou(masks[i], masks[j]) for i in range(len(masks)) for j in range(i + 1, len(masks))]
    return float(np.mean(vals))
