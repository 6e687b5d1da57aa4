"""Model-assisted pre-labelling against a real Label Studio (see conftest) and a tiny trained DPN:
push with a checkpoint, add a newer model's predictions, measure the work saved at pull time."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from test_labelstudio import blob, small_workspace
from test_train import write_release

from blurset.annotation import rle
from blurset.annotation.client import connect
from blurset.annotation.config import (
    BLUR_TYPE,
    BLUR_TYPE_HINT,
    BLUR_TYPES,
    BRUSH,
    brush_result,
    choice_result,
)
from blurset.pipeline.catalog import Catalog
from blurset.pipeline.cli.main import cli
from blurset.pipeline.stages.labelling import (
    PushOptionError,
    add_prelabels,
    compare_with_prelabel,
    pull,
    push,
    rank_candidates,
    status,
)
from blurset.pipeline.stages.prelabel import (
    PrelabelError,
    guess_blur_type,
    make_prelabeller,
    prediction_mask,
    prelabel_from_mask,
)

TINY = {"model": {"variant": "deb+bl", "width": 0.125}, "input_size": 64, "batch_size": 4,
        "epochs": 1, "augment": {"rotations": False, "rescales": []}, "seed": 0}
MODEL = "dpn:best@toy@1.0.0"
NEWER = "dpn:newer@toy@1.0.0"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny DPN trained for one epoch on a synthetic release, and a copy standing for a newer
    model (another file stem, so another model_version)."""
    from blurset.model.config import TrainConfig
    from blurset.model.data import resolve_release
    from blurset.model.train import main as train_main
    base = tmp_path_factory.mktemp("prelabel-model")
    write_release(base / "releases", "toy", "1.0.0")
    r = train_main(TrainConfig.from_dict(TINY), train=resolve_release("toy@1.0.0", base / "releases"),
                   val=None, out_dir=base / "run")
    best = base / "run" / "checkpoints" / "best.pt"
    if not best.exists():
        best = Path(r.last_checkpoint)
    newer = base / "newer.pt"
    shutil.copyfile(best, newer)
    garbage = base / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    return {"best": best, "newer": newer, "garbage": garbage, "missing": base / "nope.pt"}


def predictions_by_task(client, project_id: int) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for p in client.project_predictions(project_id):
        out.setdefault(p["task"], []).append(p)
    return out


@pytest.mark.integration
def test_push_with_a_checkpoint_predicts_mask_score_and_blur_type(
        label_studio, checkpoints, tmp_path, request, monkeypatch):
    from blurset.model import train as model_train
    ws, gts = small_workspace(tmp_path)
    catalog, client = ws.catalog(), connect()
    request.addfinalizer(client.close)
    loads = []
    real_load = model_train.load_checkpoint
    monkeypatch.setattr(model_train, "load_checkpoint",
                        lambda *a, **k: loads.append(a) or real_load(*a, **k))
    r = push(catalog, client, ws, "pre push", batch_size=2, prelabel=str(checkpoints["best"]))
    assert (r.pushed, r.with_prelabel) == (4, 4) and len(loads) == 1  # loaded once, 2 batches
    ref = push(catalog, client, ws, "pre push", sources=["cuhk"], prelabel=str(checkpoints["best"]))
    assert ref.with_prelabel == 2

    tasks = {t["task_id"]: t for t in catalog.tasks(client.conn.url, r.project_id)}
    preds = predictions_by_task(client, r.project_id)
    assert set(preds) == set(tasks)
    for task_id, t in tasks.items():
        (p,) = preds[task_id]
        img = catalog.image(t["image_id"])
        if t["source"] == "cuhk":  # a known mask stays the pre-label
            assert p["model_version"] == t["prelabel"] == "ground-truth:cuhk"
            np.testing.assert_array_equal(prediction_mask(p), gts[t["rel_path"]])
            continue
        assert p["model_version"] == t["prelabel"] == MODEL
        assert 0.0 <= p["score"] <= 1.0
        brush = [x for x in p["result"] if x["from_name"] == BRUSH]
        choice = [x for x in p["result"] if x["from_name"] == BLUR_TYPE_HINT]
        assert len(brush) == 1 and len(choice) == 1  # the guess is a hint ...
        assert not [x for x in p["result"] if x["from_name"] == BLUR_TYPE]  # ... never the answer
        assert choice[0]["value"]["choices"][0] in BLUR_TYPES
        assert (brush[0]["original_width"], brush[0]["original_height"]) == (img["width"], img["height"])
        assert prediction_mask(p).shape == (img["height"], img["width"])


@pytest.mark.integration
def test_prelabel_adds_a_newer_model_only_to_unannotated_tasks_idempotently(
        label_studio, prefect_harness, checkpoints, tmp_path, request):
    ws, _ = small_workspace(tmp_path)
    catalog, client = ws.catalog(), connect()
    request.addfinalizer(client.close)
    r = push(catalog, client, ws, "pre newer", prelabel=str(checkpoints["best"]))
    tasks = [t["task_id"] for t in catalog.tasks(client.conn.url, r.project_id)]
    user = client.ensure_user("prelabel-person@blurset.local")
    client.annotate(tasks[0], [brush_result(rle.encode(blob(200, 300, 0, 50, 0, 80)), 300, 200)], user)
    before = predictions_by_task(client, r.project_id)

    rep = add_prelabels(catalog, client, ws, "pre newer", str(checkpoints["newer"]), batch_size=2)
    assert (rep.model_version, rep.tasks, rep.added) == (NEWER, 4, 3)
    assert (rep.skipped_annotated, rep.skipped_same_model) == (1, 0)
    after = predictions_by_task(client, r.project_id)
    assert after[tasks[0]] == before[tasks[0]]  # the annotated task is left alone
    for t in tasks[1:]:
        assert sorted(p["model_version"] for p in after[t]) == [MODEL, NEWER]
        old = next(p for p in after[t] if p["model_version"] == MODEL)
        assert old == before[t][0]  # the older prediction is untouched
    assert client.project_counts(r.project_id)["annotations"] == 1
    assert {t["prelabel"] for t in catalog.tasks(client.conn.url, r.project_id)} == {MODEL}

    # the flow, through the CLI: a re-run adds nothing
    out = CliRunner().invoke(cli, ["-w", str(ws.root), "annotate", "prelabel", "--project",
                                   "pre newer", "--checkpoint", str(checkpoints["newer"])])
    assert out.exit_code == 0, out.output
    assert "0 predictions of dpn:newer@toy@1.0.0 added" in out.output
    assert "1 annotated, 3 already holding this model_version" in out.output
    assert predictions_by_task(client, r.project_id) == after


@pytest.mark.integration
def test_pull_measures_the_work_saved_and_status_reports_it(
        label_studio, prefect_harness, checkpoints, tmp_path, request):
    ws, _ = small_workspace(tmp_path)
    catalog, client = ws.catalog(), connect()
    request.addfinalizer(client.close)
    r = push(catalog, client, ws, "pre saved", prelabel="lbp")  # never an empty mask
    tasks = {t["rel_path"]: t["task_id"] for t in catalog.tasks(client.conn.url, r.project_id)}
    preds = predictions_by_task(client, r.project_id)
    user = client.ensure_user("prelabel-person@blurset.local")
    same = preds[tasks["c0.jpg"]][0]
    # accepted as it was: the mask kept, and the annotator chose a blur type
    client.annotate(tasks["c0.jpg"], [*same["result"], choice_result(BLUR_TYPE, "defocus")], user)
    # an untouched copy of the pre-label, submitted without a choice: not work saved
    client.annotate(tasks["c3.jpg"], preds[tasks["c3.jpg"]][0]["result"], user)
    moved = 255 - prediction_mask(preds[tasks["c1.jpg"]][0])  # painted the other way round
    client.annotate(tasks["c1.jpg"], [brush_result(rle.encode(moved), 300, 200),
                                      choice_result(BLUR_TYPE, "motion")], user)

    rep = pull(catalog, client, ws, "pre saved")
    assert (rep.annotated, rep.pending) == (2, 2)  # the untouched copy is still to do
    assert any("c3.jpg" in p and "no blur type" in p for p in rep.problems)
    assert any(p.name.startswith("predictions-") for p in Path(rep.snapshot).parent.iterdir())
    after = {t["rel_path"]: t for t in catalog.tasks(client.conn.url, r.project_id)}
    assert after["c0.jpg"]["prelabel_iou"] == pytest.approx(1.0)
    assert after["c0.jpg"]["prelabel_accepted"] is True
    assert after["c0.jpg"]["prelabel_version"] == "lbp-blur-map@blurset"
    assert after["c1.jpg"]["prelabel_iou"] < 0.99 and after["c1.jpg"]["prelabel_accepted"] is False
    assert after["c2.jpg"]["prelabel_iou"] is None  # not annotated: nothing measured
    assert after["c3.jpg"]["prelabel_iou"] is None and after["c3.jpg"]["status"] == "pushed"

    st = status(catalog, client.conn.url, r.project_id)
    expected_iou = (1.0 + after["c1.jpg"]["prelabel_iou"]) / 2
    assert st.prelabelled_annotated == 2 and st.prelabel_accepted_share == 0.5
    assert st.submitted_without_choice == 1 and st.with_prelabel == 4
    assert st.mean_prelabel_iou == pytest.approx(expected_iou, abs=1e-4)
    assert set(st.prelabel_by_model_version) == {"lbp-blur-map@blurset"}
    out = CliRunner().invoke(cli, ["-w", str(ws.root), "annotate", "status", "--project", "pre saved"])
    assert out.exit_code == 0, out.output
    assert "prelabelled_annotated: 2" in out.output and "prelabel_accepted_share: 0.5" in out.output
    assert "lbp-blur-map@blurset: prelabelled_annotated 2" in out.output


@pytest.mark.integration
@pytest.mark.parametrize("which", ["missing", "garbage"])
def test_a_bad_checkpoint_is_a_clear_error_and_changes_nothing(
        label_studio, prefect_harness, checkpoints, tmp_path, request, which):
    ws, _ = small_workspace(tmp_path)
    catalog, client = ws.catalog(), connect()
    request.addfinalizer(client.close)
    bad = str(checkpoints[which])
    project = f"pre bad {which}"
    message = "neither one of laplacian, lbp nor an existing" if which == "missing" else \
        "is not a blurset checkpoint"
    with pytest.raises(PrelabelError, match=message):
        push(catalog, client, ws, project, prelabel=bad)
    before = catalog.counts()
    runner = CliRunner()
    out = runner.invoke(cli, ["-w", str(ws.root), "annotate", "push", "--project", project,
                              "--prelabel", bad])
    assert out.exit_code == 1 and bad in out.output and message in out.output, out.output
    assert client.find_project(project) is None
    assert catalog.counts() == before and catalog.task_projects() == []

    push(catalog, client, ws, project)
    pid = client.find_project(project)
    out = runner.invoke(cli, ["-w", str(ws.root), "annotate", "prelabel", "--project", project,
                              "--checkpoint", bad])
    assert out.exit_code == 1 and message in out.output, out.output
    assert predictions_by_task(client, pid) == {}
    if which == "garbage":  # then a good model names itself as the tasks' pre-label
        rep = add_prelabels(catalog, client, ws, project, str(checkpoints["best"]))
        assert rep.added == 4
        assert {t["prelabel"] for t in catalog.tasks(client.conn.url, pid)} == {MODEL}


def test_blur_type_rule_tells_motion_from_defocus_on_an_isotropic_texture():
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.uniform(0, 255, (160, 200)).astype(np.float32), (0, 0), 1.0)
    mask = np.zeros((160, 200), np.uint8)
    mask[:, 100:] = 255
    line = np.zeros((15, 15), np.float32)
    line[7, :] = 1 / 15  # a horizontal motion kernel
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11)).astype(np.float32)
    for kernel, expected in ((line, "motion"), (disk / disk.sum(), "defocus")):
        blurred = cv2.filter2D(texture, -1, kernel)
        image = np.where(mask > 0, blurred, texture).clip(0, 255).astype(np.uint8)
        assert guess_blur_type(image, mask) == expected
    assert guess_blur_type(texture.astype(np.uint8), np.zeros_like(mask)) is None


def test_compare_with_prelabel_picks_the_prediction_the_annotation_started_from():
    m = blob(20, 30, 0, 10, 0, 30)
    pred = {"id": 7, "model_version": "a", "created_at": "2026-01-01T00:00:00Z",
            "result": [brush_result(rle.encode(m), 30, 20)]}
    later = dict(pred, id=8, model_version="b", created_at="2026-01-03T00:00:00Z",
                 result=[brush_result(rle.encode(255 - m), 30, 20)])
    ann = {"created_at": "2026-01-02T00:00:00Z", "result": pred["result"]}
    got = compare_with_prelabel(m, ann, [pred, later])  # b came after the annotation
    assert got == {"prelabel_version": "a", "prelabel_iou": 1.0, "prelabel_accepted": True}
    got = compare_with_prelabel(m, dict(ann, parent_prediction=8), [pred, later])
    assert got["prelabel_version"] == "b" and got["prelabel_iou"] == 0.0
    assert not got["prelabel_accepted"]
    assert compare_with_prelabel(m, ann, [later])["prelabel_iou"] is None


def test_an_older_catalog_gets_the_new_columns_when_opened(tmp_path):
    db = tmp_path / "old.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE annotation_tasks (server VARCHAR NOT NULL, project_id INTEGER NOT "
                "NULL, task_id INTEGER NOT NULL, project VARCHAR NOT NULL, image_id VARCHAR(64) "
                "NOT NULL, source VARCHAR NOT NULL, rel_path TEXT NOT NULL, prelabel VARCHAR, "
                "status VARCHAR NOT NULL, current_annotation_id INTEGER, blur_type VARCHAR, "
                "annotators TEXT, agreement_iou FLOAT, pushed_at VARCHAR NOT NULL, updated_at "
                "VARCHAR NOT NULL, PRIMARY KEY (server, project_id, task_id))")
    con.execute("INSERT INTO annotation_tasks VALUES ('s', 1, 1, 'p', 'i', 'src', 'r', NULL, "
                "'pushed', NULL, NULL, NULL, NULL, 't', 't')")
    con.commit()
    con.close()
    catalog = Catalog(f"sqlite:///{db}")
    (row,) = catalog.tasks("s", 1)
    assert row["status"] == "pushed"
    assert row["prelabel_iou"] is None and row["prelabel_accepted"] is None
    catalog.close()
    Catalog(f"sqlite:///{db}").close()  # opening again adds nothing, fails on nothing


def _pred(share: float, score: float, size: int = 20) -> dict:
    mask = np.zeros((size, size), np.uint8)
    mask.flat[: round(share * size * size)] = 255
    return prelabel_from_mask(mask, "m", score)


def test_rank_candidates_skips_the_hopeless_and_puts_the_uncertain_first():
    preds = {"none": _pred(0.0, 0.9), "tiny": _pred(0.01, 0.2), "all": _pred(1.0, 0.1),
             "sure": _pred(0.5, 0.9), "unsure": _pred(0.3, 0.2), "mid": _pred(0.6, 0.5)}
    keep, low, high = rank_candidates(preds, min_blur=0.02, max_blur=0.98)
    assert [r.image_id for r in keep] == ["unsure", "mid", "sure"]
    assert {r.image_id for r in low} == {"none", "tiny"} and [r.image_id for r in high] == ["all"]
    assert keep[0].uncertainty == pytest.approx(0.8) and keep[0].blur_degree == pytest.approx(0.3)
    with pytest.raises(PushOptionError, match="min_blur < max_blur"):
        rank_candidates(preds, 0.5, 0.4)


@pytest.mark.integration
def test_push_with_rank_leaves_out_the_hopeless_and_pushes_the_uncertain_first(
        label_studio, tmp_path, request):
    """Ranking works for any pre-labeller; LBP's Otsu masks give four distinct blur degrees on
    the four candidate photos, which the test needs."""
    ws, _ = small_workspace(tmp_path)
    catalog, client = ws.catalog(), connect()
    request.addfinalizer(client.close)
    rows = catalog.push_candidates(["cand"], client.conn.url, -1)
    preds = dict(zip([r["image_id"] for r in rows],
                     make_prelabeller("lbp").predict([ws.objects.root / r["object_path"]
                                                      for r in rows]), strict=True))
    degrees = sorted(float(prediction_mask(p).mean() / 255) for p in preds.values())
    assert len(rows) == 4 and len(set(degrees)) == 4, degrees
    # thresholds that cut the lowest and the highest predicted degree off
    lo, hi = (degrees[0] + degrees[1]) / 2, (degrees[-2] + degrees[-1]) / 2
    r = push(catalog, client, ws, "ranked", sources=["cand"], prelabel="lbp", rank=True,
             min_blur=lo, max_blur=hi, batch_size=1)
    assert r.ranked and (r.skipped_no_blur, r.skipped_all_blurred) == (1, 1) and r.pushed == 2
    pushed = sorted(catalog.tasks(client.conn.url, r.project_id), key=lambda t: t["task_id"])
    expected, _, _ = rank_candidates(preds, lo, hi)
    assert [t["image_id"] for t in pushed] == [x.image_id for x in expected]  # in ranked order
    assert expected[0].uncertainty >= expected[1].uncertainty
    # the two left out stay candidates: a push without ranking takes them
    assert push(catalog, client, ws, "ranked", sources=["cand"]).pushed == 2
    with pytest.raises(PushOptionError, match="needs a pre-labeller"):
        push(catalog, client, ws, "ranked", rank=True)
