"""A SIMULATED annotator, for the demo and the tests only: it submits masks through the Label
Studio API as people would, taken from the sample's hidden ground truth and slightly perturbed.

Nothing here is used on real data; every annotation it makes is by a user whose e-mail starts with
``simulated-annotator``, so it can never be mistaken for a person's work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from blurset.annotation import rle
from blurset.annotation.client import Client
from blurset.annotation.config import BLUR_TYPE, REJECT, brush_result, choice_result
from blurset.pipeline.catalog import Catalog

SIMULATED = ("simulated-annotator-1@blurset.local", "simulated-annotator-2@blurset.local")


@dataclass(frozen=True)
class SimulationReport:
    annotations: int
    rejected: int
    second_opinions: int


def perturb(mask: np.ndarray, rng: np.random.Generator, max_px: int = 3) -> np.ndarray:
    """A person's version of a true mask: the border moved by a few pixels, shifted slightly."""
    k = int(rng.integers(1, max_px + 1))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    out = cv2.dilate(mask, kernel) if rng.random() < 0.5 else cv2.erode(mask, kernel)
    dx, dy = (int(v) for v in rng.integers(-2, 3, size=2))
    out = np.roll(out, (dy, dx), axis=(0, 1))
    if not out.any():  # erosion may wipe a thin region out: keep the truth then
        out = mask.copy()
    return np.where(out > 127, 255, 0).astype(np.uint8)


def hidden_truth(sample_dir: Path) -> dict[str, dict]:
    """``source/rel_path`` → {"mask": Path, "blur_type": …} from the sample's truth.json."""
    truth = json.loads((sample_dir / "truth.json").read_text())
    return {h["image"]: {"mask": sample_dir / h["mask"], "blur_type": h["blur_type"]}
            for h in truth.get("hidden_masks", [])}


def simulate(catalog: Catalog, client: Client, project_id: int, sample_dir: Path,
             seed: int = 0, second_opinion_every: int = 4) -> SimulationReport:
    """Annotate every unannotated task of the project as the simulated annotator(s)."""
    rng = np.random.default_rng(seed)
    truth = hidden_truth(sample_dir)
    users = [client.ensure_user(email, "Simulated", f"Annotator {i + 1}")
             for i, email in enumerate(SIMULATED)]
    done = set(client.tasks_with_annotations(project_id))
    n = rejected = second = 0
    for i, t in enumerate(catalog.tasks(client.conn.url, project_id)):
        if t["task_id"] in done or t["status"] == "deleted":
            continue
        hidden = truth.get(f"{t['source']}/{t['rel_path']}")
        if hidden is None:  # no blur painted in the sample: a person would reject it
            client.annotate(t["task_id"], [choice_result(REJECT, "no blur")], users[0], 4.0)
            rejected += 1
            n += 1
            continue
        with Image.open(hidden["mask"]) as m:
            true = np.asarray(m.convert("L"))
        h, w = true.shape
        annotators = users if (second_opinion_every and i % second_opinion_every == 0) else users[:1]
        for user in annotators:
            mask = perturb(true, rng)
            result = [brush_result(rle.encode(mask), w, h),
                      choice_result(BLUR_TYPE, hidden["blur_type"])]
            client.annotate(t["task_id"], result, user, float(rng.uniform(20, 90)))
            n += 1
        second += len(annotators) - 1
    return SimulationReport(n, rejected, second)
