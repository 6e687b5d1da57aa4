"""The labelling view in a real browser (headless Chromium through Selenium, see tests/browser.py)
against a real Label Studio started by blurset (conftest): what a person sees and does, and what
``annotate pull`` and ``status`` make of it.

Each test checks one of issue 14's problems where only a browser shows it: strokes that vanish
(label not selected, out of sight), the model's hint taken as the answer, a mask that hides the
image, a wide image cut off at the default zoom, and ML-backend pre-labels that status missed.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from browser import wait_for
from conftest import ingest_into, jpeg_bytes, photo
from PIL import Image

from blurset.annotation.client import connect
from blurset.annotation.config import BLURRED, MASK_COLOUR
from blurset.annotation.ml_backend import Backend, make_server
from blurset.pipeline.cli.labelstudio import backend_title
from blurset.pipeline.stages.labelling import pull, push, status
from blurset.pipeline.stages.prelabel import make_prelabeller, prediction_mask
from blurset.pipeline.workspace import Workspace

pytestmark = pytest.mark.integration

WIDE = (900, 300)  # wider than Label Studio's default 750 px image width
ANSWER = "Blur type (your answer"
HINT = "Model's guess"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "labelling-view.png"


def workspace(tmp_path: Path) -> Workspace:
    """A folder source with a wide photo and a narrow one."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "wide.jpg").write_bytes(jpeg_bytes(photo(0, WIDE)))
    (folder / "narrow.jpg").write_bytes(jpeg_bytes(photo(1, (300, 400))))
    return ingest_into(tmp_path / "ws", "photos", "folder", folder)


def pushed(tmp_path: Path, request: pytest.FixtureRequest, project: str, prelabel: str | None):
    """A workspace pushed to a new project; returns (ws, catalog, client, project id, tasks by
    path)."""
    ws = workspace(tmp_path)
    catalog, client = ws.catalog(), connect()
    request.addfinalizer(client.close)
    r = push(catalog, client, ws, project, sources=["photos"], prelabel=prelabel)
    tasks = {t["rel_path"]: t for t in catalog.tasks(client.conn.url, r.project_id)}
    return ws, catalog, client, r.project_id, tasks


def page_pixels(view) -> np.ndarray:
    """The page as the browser drew it, RGB, in CSS pixels (device scale factor 1)."""
    return np.asarray(Image.open(io.BytesIO(view.driver.get_screenshot_as_png())).convert("RGB"))


def drawn_image(view, pixels: np.ndarray) -> np.ndarray:
    box = view.image_box()
    return pixels[box["y"]:box["y"] + box["height"], box["x"]:box["x"] + box["width"]]


def visible_at(view, x: float, y: float) -> bool:
    """Whether the point (page CSS pixels) shows the image's stage, not something over it."""
    return bool(view.driver.execute_script(
        "const e = document.elementFromPoint(arguments[0], arguments[1]);"
        "return !!e && !!e.closest('.konvajs-content');", x, y))


def test_the_view_shows_label_hint_and_whole_image_under_a_translucent_mask(
        labelling_browser, tmp_path, request):
    view = labelling_browser
    _ws, _catalog, client, project_id, tasks = pushed(tmp_path, request, "view look", "lbp")
    wide = tasks["wide.jpg"]
    (pred,) = client.predictions(wide["task_id"])
    hint = next(r["value"]["choices"][0] for r in pred["result"]
                if r["from_name"] == "blur_type_hint")
    other = "defocus" if hint == "motion" else "motion"
    view.open_task(project_id, wide["task_id"])
    shot = view.screenshot(tmp_path / "labelling-view.png")

    # 1. the brush label is selected when the task opens, and sits above the image
    assert view.label_selected(BLURRED)
    assert view.label_above_image(BLURRED)
    page = view.driver.find_element("tag name", "body").text
    assert "Hotkeys:" in page and "Ctrl+Z undo" in page

    # 5. the whole wide image is visible at the default zoom, its ratio kept
    box = view.image_box()
    assert box["width"] / box["height"] == pytest.approx(WIDE[0] / WIDE[1], rel=0.02)
    for fy in (0.1, 0.3, 0.5, 0.7, 0.9):  # the left and right edges, not under a control
        y = box["y"] + fy * box["height"]
        for x in (box["x"] + 3, box["x"] + box["width"] - 3):
            assert visible_at(view, x, y), f"the image at ({x}, {y:.0f}) is hidden or cut off"
    assert box["x"] >= 0 and box["x"] + box["width"] <= view.driver.execute_script(
        "return window.innerWidth")

    # 4. the mask is translucent: under it the image still shows (its pixels follow the photo)
    mask = prediction_mask(pred)
    drawn = drawn_image(view, page_pixels(view)).astype(float)
    small = np.asarray(Image.fromarray(mask).resize((box["width"], box["height"]),
                                                    Image.Resampling.NEAREST)) > 127
    inner = small & np.roll(small, 4, 0) & np.roll(small, -4, 0) & np.roll(small, 4, 1) & \
        np.roll(small, -4, 1)  # away from the region's (anti-aliased) border
    assert inner.sum() > 500, "the pre-label covers too little of the image to judge"
    original = np.asarray(photo(0, WIDE).resize((box["width"], box["height"]))).astype(float)
    grey = drawn[..., 1][inner]  # the green channel: the red mask adds almost none
    assert np.corrcoef(grey, original[..., 1][inner])[0, 1] > 0.5
    colour = np.array([int(MASK_COLOUR[i:i + 2], 16) for i in (1, 3, 5)], float)
    assert np.abs(drawn[inner] - colour).mean() > 30  # not the label's colour laid on opaque

    # 2. the model's guess is ticked as a hint; the answer is not, and the hint cannot be changed
    assert view.is_checked(HINT, hint) and not view.is_checked(HINT, other)
    assert not view.is_checked(ANSWER, "defocus") and not view.is_checked(ANSWER, "motion")
    view.choose(HINT, other)
    assert view.is_checked(HINT, hint) and not view.is_checked(HINT, other)
    if os.environ.get("BLURSET_UPDATE_DOCS_SCREENSHOT"):
        shutil.copyfile(shot, DOCS_SCREENSHOT)


def test_a_painted_stroke_and_chosen_blur_type_come_back_through_pull(
        labelling_browser, tmp_path, request):
    view = labelling_browser
    ws, catalog, client, project_id, tasks = pushed(tmp_path, request, "view paint", None)
    wide = tasks["wide.jpg"]
    view.open_task(project_id, wide["task_id"])
    start, end = (0.2, 0.4), (0.45, 0.6)
    view.paint(start, end)  # painting right away: the Blurred label is already selected
    view.choose(ANSWER, "defocus")
    view.submit()
    assert not view.warning()

    rep = pull(catalog, client, ws, "view paint")
    assert rep.annotated == 1, rep.problems
    (a,) = catalog.annotations_of(client.conn.url, project_id)
    assert (a["blur_type"], a["blur_type_hint"], a["rejected"]) == ("defocus", None, None)
    with Image.open(io.BytesIO(ws.objects.read(a["mask_object"]))) as m:
        mask = np.asarray(m)
    assert mask.shape == (WIDE[1], WIDE[0])
    ys, xs = np.nonzero(mask > 127)
    # the stroke's box, in image pixels, within the brush's radius (15 px wide at most, at the
    # view's scale) of the line dragged
    scale = WIDE[0] / view.image_box()["width"]
    slack = 15 * scale
    want = (start[0] * WIDE[0], end[0] * WIDE[0], start[1] * WIDE[1], end[1] * WIDE[1])
    got = (xs.min(), xs.max(), ys.min(), ys.max())
    for g, w in zip(got, want, strict=True):
        assert abs(g - w) <= slack, f"mask box {got} against the stroke {want} (±{slack:.0f})"
    t = next(t for t in catalog.tasks(client.conn.url, project_id) if t["rel_path"] == "wide.jpg")
    assert (t["status"], t["blur_type"], t["prelabel"]) == ("annotated", "defocus", None)


def test_submitting_without_a_blur_type_is_refused_and_a_rejection_has_none(
        labelling_browser, tmp_path, request):
    view = labelling_browser
    ws, catalog, client, project_id, tasks = pushed(tmp_path, request, "view refuse", "lbp")
    wide = tasks["wide.jpg"]
    view.open_task(project_id, wide["task_id"])
    view.submit()  # the pre-label untouched, its hint ticked, no answer chosen
    assert "Choose the blur type" in view.warning()
    assert client.sdk.annotations.list(id=wide["task_id"]) == []

    view.driver.refresh()  # the warning closed, the view as it opens
    view.open_task(project_id, wide["task_id"])
    view.choose("Reject", "unusable")
    view.submit()
    assert not view.warning()
    rep = pull(catalog, client, ws, "view refuse")
    assert rep.rejected == 1
    (a,) = catalog.annotations_of(client.conn.url, project_id)
    assert a["rejected"] == "unusable" and a["blur_type"] is None
    assert a["blur_type_hint"] in ("defocus", "motion") and a["hint_version"] == "lbp-blur-map@blurset"
    t = next(t for t in catalog.tasks(client.conn.url, project_id) if t["rel_path"] == "wide.jpg")
    assert (t["status"], t["blur_type"]) == ("rejected", None)


def test_an_ml_backend_prediction_appears_and_status_counts_it(
        labelling_browser, label_studio, tmp_path, request):
    view = labelling_browser
    ws, catalog, client, project_id, tasks = pushed(tmp_path, request, "view backend", None)
    predictor = make_prelabeller("lbp")
    server = make_server(Backend(predictor, label_studio.document_root,
                                 storage=[ws.objects.root]), "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        title = backend_title(predictor.model_version)
        client.connect_ml_backend(project_id, url, title)
        client.use_ml_backend_predictions(project_id, title, retrieve_automatically=False)
        narrow = tasks["narrow.jpg"]
        view.open_task(project_id, narrow["task_id"])
        wait_for(view.driver, "the ML backend's prediction in the regions list", lambda d: [
            e for e in d.find_elements("css selector", ".lsf-outliner-item, .lsf-region-item")
            if BLURRED in e.text], timeout=30)
        hint = next(v for v in ("defocus", "motion") if view.is_checked(HINT, v))
        view.choose(ANSWER, hint)  # the person agrees with the hint and keeps the mask
        view.submit()
        assert not view.warning()
    finally:
        server.shutdown()
        server.server_close()

    rep = pull(catalog, client, ws, "view backend")
    assert rep.annotated == 1, rep.problems
    st = status(catalog, client.conn.url, project_id)
    # the backend's pre-label counts like a pushed one: one task pre-labelled, and annotated
    assert st.with_prelabel == 1 and st.prelabelled_annotated == 1
    assert set(st.prelabel_by_model_version) == {predictor.model_version}
    assert st.prelabel_accepted_share == 1.0  # the mask kept, a choice made
    assert st.hint_agreement_share == 1.0 and st.hint_compared == 1
