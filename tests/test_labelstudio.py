"""Annotation against a real Label Studio server (started once per session, see conftest)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import (
    assert_push_refused_with_server_down,
    blob,
    free_port,
    jpeg_bytes,
    photo,
    png_bytes,
)
from PIL import Image

from blurset.annotation import rle
from blurset.annotation.client import AuthError, Client, Unreachable, connect
from blurset.annotation.config import BLUR_TYPE, REJECT, brush_result, choice_result
from blurset.annotation.export import mask_iou as mask_iou_of
from blurset.annotation.server import Connection
from blurset.errors import NotFoundError
from blurset.pipeline.catalog import Catalog
from blurset.pipeline.cli.main import cli
from blurset.pipeline.stages.dedup.run import run_dedup
from blurset.pipeline.stages.ingest import ingest_batch
from blurset.pipeline.stages.labelling import pull, push, status
from blurset.pipeline.stages.sources import scan_source
from blurset.pipeline.workspace import Workspace

pytestmark = pytest.mark.integration  # every test talks to a real Label Studio server


def ingest(ws: Workspace, kind: str, name: str, root: Path) -> None:
    catalog = ws.catalog()
    catalog.register_source(name, kind, str(root))
    res = ingest_batch(root, scan_source(kind, root).items, ws.objects.root, ws.quarantine_store.root)
    catalog.record_batch(name, res.images, res.paths, res.masks, res.quarantined)


def small_workspace(tmp_path: Path) -> tuple[Workspace, dict[str, np.ndarray]]:
    """A CUHK-style reference (2 images with GT) and 4 distinct candidates, deduped."""
    cuhk = tmp_path / "cuhk"
    (cuhk / "image").mkdir(parents=True)
    (cuhk / "gt").mkdir()
    gts = {}
    for i, stem in enumerate(["motion0001", "out_of_focus0002"]):
        (cuhk / "image" / f"{stem}.jpg").write_bytes(jpeg_bytes(photo(i, (320, 240))))
        m = np.zeros((240, 320), np.uint8)
        m[20 + 30 * i:150, 40:260 - 20 * i] = 255
        (cuhk / "gt" / f"{stem}.png").write_bytes(png_bytes(Image.fromarray(m)))
        gts[f"image/{stem}.jpg"] = m
    cand = tmp_path / "cand"
    cand.mkdir()
    for i in range(4):
        (cand / f"c{i}.jpg").write_bytes(jpeg_bytes(photo(2 + i, (300, 200))))
    ws = Workspace.open(tmp_path / "ws")
    ingest(ws, "cuhk", "cuhk", cuhk)
    ingest(ws, "folder", "cand", cand)
    catalog = ws.catalog()
    out = run_dedup(catalog, "cuhk")
    catalog.replace_findings("cuhk", None, {}, out.summary, out.findings, out.exclusions)
    return ws, gts


def export_json(client: Client, project_id: int) -> list[dict]:
    return json.loads(client.export(project_id))


def test_push_is_idempotent_and_prelabels_round_trip(label_studio, tmp_path, request):
    ws, gts = small_workspace(tmp_path)
    catalog, client = ws.catalog(), connect()
    request.addfinalizer(client.close)
    r = push(catalog, client, ws, "blur idempotent")
    assert (r.pushed, r.with_prelabel) == (4, 0)
    again = push(catalog, client, ws, "blur idempotent")
    assert again.pushed == 0 and again.selected == 0
    assert sum(len(v) for v in client.tasks_by_image(r.project_id).values()) == 4

    ref = push(catalog, client, ws, "blur idempotent", sources=["cuhk"])
    assert (ref.pushed, ref.with_prelabel) == (2, 2)
    tasks = {t["data"]["source_path"]: t for t in export_json(client, r.project_id)}
    assert len(tasks) == 6
    for rel, gt in gts.items():
        t = tasks[rel]
        assert t["data"]["source"] == "cuhk" and len(t["data"]["id"]) == 64
        (pred,) = client.predictions(t["id"])
        assert pred["model_version"] == "ground-truth:cuhk"
        (res,) = pred["result"]
        got = rle.decode(res["value"]["rle"], res["original_height"], res["original_width"])
        np.testing.assert_array_equal(got, gt)
    # the image is served by Label Studio from the object store, named as what it is
    import httpx
    url = tasks["c0.jpg"]["data"]["image"]
    resp = httpx.get(label_studio.conn.url + url,
                     headers={"Authorization": f"Token {label_studio.conn.api_key}"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
    assert resp.content == (tmp_path / "cand" / "c0.jpg").read_bytes()


def test_a_push_that_crashed_after_import_is_reconciled(label_studio, tmp_path, request, monkeypatch):
    ws, _ = small_workspace(tmp_path)
    catalog, client = ws.catalog(), connect()
    request.addfinalizer(client.close)
    real = Catalog.record_tasks

    def crash(self, rows):
        raise RuntimeError("killed between import and catalog write")

    monkeypatch.setattr(Catalog, "record_tasks", crash)
    with pytest.raises(RuntimeError):
        push(catalog, client, ws, "blur crash", batch_size=2)
    monkeypatch.setattr(Catalog, "record_tasks", real)
    r = push(catalog, client, ws, "blur crash", batch_size=2)
    assert r.reconciled == 2 and r.pushed == 2
    by_image = client.tasks_by_image(r.project_id)
    assert len(by_image) == 4 and all(len(ids) == 1 for ids in by_image.values())
    assert len(catalog.tasks(client.conn.url, r.project_id)) == 4


def test_pull_annotators_rejection_faults_and_export(label_studio, tmp_path, request):
    ws, _ = small_workspace(tmp_path)
    catalog, client = ws.catalog(), connect()
    request.addfinalizer(client.close)
    r = push(catalog, client, ws, "blur pull")
    tasks = {t["rel_path"]: t for t in catalog.tasks(client.conn.url, r.project_id)}
    u1 = client.ensure_user("person-one@blurset.local")
    u2 = client.ensure_user("person-two@blurset.local")
    h, w = 200, 300
    m1, m2 = blob(h, w, 10, 120, 20, 200), blob(h, w, 15, 125, 25, 210)
    a = tasks["c0.jpg"]["task_id"]
    client.annotate(a, [brush_result(rle.encode(m1), w, h), choice_result(BLUR_TYPE, "defocus")], u1)
    client.annotate(a, [brush_result(rle.encode(m2), w, h), choice_result(BLUR_TYPE, "motion")], u2)
    client.annotate(tasks["c1.jpg"]["task_id"], [choice_result(REJECT, "unusable")], u1)
    client.annotate(tasks["c2.jpg"]["task_id"], [brush_result(rle.encode(blob(100, 150, 0, 50, 0, 50)), 150, 100)], u1)
    client.annotate(tasks["c2.jpg"]["task_id"], [choice_result(BLUR_TYPE, "defocus")], u2)
    client.delete_task(tasks["c3.jpg"]["task_id"])

    out = tmp_path / "masks"
    rep = pull(catalog, client, ws, "blur pull", export_dir=out)
    assert (rep.annotated, rep.rejected, rep.pending) == (1, 1, 1)
    assert any("c2.jpg" in p and "mask size 150×100 differs" in p for p in rep.problems)
    assert any("c2.jpg" in p and "empty mask" in p for p in rep.problems)
    assert any("c3.jpg" in p and "deleted" in p for p in rep.problems)
    assert Path(rep.snapshot).is_file() and json.loads(Path(rep.snapshot).read_text())

    after = {t["rel_path"]: t for t in catalog.tasks(client.conn.url, r.project_id)}
    t0 = after["c0.jpg"]
    assert t0["status"] == "annotated" and t0["blur_type"] == "motion"  # most recent wins
    assert json.loads(t0["annotators"]) == ["person-one@blurset.local", "person-two@blurset.local"]
    inter = np.logical_and(m1 > 0, m2 > 0).sum()
    union = np.logical_or(m1 > 0, m2 > 0).sum()
    assert t0["agreement_iou"] == pytest.approx(inter / union)
    assert after["c1.jpg"]["status"] == "rejected"
    assert after["c3.jpg"]["status"] == "deleted"
    exported = np.asarray(Image.open(out / "cand" / "c0.png"))
    np.testing.assert_array_equal(exported, m2)
    assert sorted(p.name for p in (out / "cand").iterdir()) == ["c0.png"]

    st = status(catalog, client.conn.url, r.project_id)
    assert st.pushed == 4 and st.annotated == 1 and st.rejected == 1 and st.deleted == 1

    # a second pull changes nothing but adds a snapshot; earlier snapshots are kept
    rep2 = pull(catalog, client, ws, "blur pull")
    assert rep2.snapshot != rep.snapshot and Path(rep.snapshot).exists()
    assert (rep2.annotated, rep2.rejected) == (1, 1)


def test_server_down_and_wrong_token_are_clear_errors(label_studio, tmp_path):
    down = Connection(f"http://127.0.0.1:{free_port()}", "x")
    with pytest.raises(Unreachable, match=f"cannot reach Label Studio at {down.url}"):
        connect(down, retries=0)
    with pytest.raises(AuthError, match="refused the API key"):
        connect(Connection(label_studio.conn.url, "not-the-token"))


def test_cli_push_pull_status_and_server_down(label_studio, prefect_harness, tmp_path, monkeypatch):
    ws, _ = small_workspace(tmp_path)
    runner = CliRunner()
    r = runner.invoke(cli, ["-w", str(ws.root), "annotate", "push", "--project", "blur cli"])
    assert r.exit_code == 0, r.output
    assert "4 tasks pushed now" in r.output
    r = runner.invoke(cli, ["-w", str(ws.root), "annotate", "pull", "--project", "blur cli"])
    assert r.exit_code == 0 and "4 tasks, 0 annotated, 0 rejected, 4 pending" in r.output, r.output
    r = runner.invoke(cli, ["-w", str(ws.root), "annotate", "status", "--project", "blur cli"])
    assert r.exit_code == 0 and "pushed: 4" in r.output

    assert_push_refused_with_server_down(runner, ws, "blur cli", monkeypatch)


def test_up_twice_is_harmless_and_down_stops_only_its_own(label_studio, tmp_path):
    from blurset.annotation.server import LocalServer
    st = label_studio.up(log=lambda m: None)  # already running: no second server
    assert st["answering"] and st["token_ok"] and st["pid"]
    other = LocalServer(tmp_path / "other-data", tmp_path, label_studio.conn)
    assert other.down() is False  # this workspace started nothing: the running server stays
    assert label_studio.status()["answering"]


def test_overlap_review_resolve_and_agreement_per_annotator_and_pair(label_studio, tmp_path,
                                                                      request):
    from blurset.pipeline.stages.labelling import PushOptionError, resolve, review
    ws, _ = small_workspace(tmp_path)
    catalog, client = ws.catalog(), connect()
    request.addfinalizer(client.close)
    with pytest.raises(PushOptionError, match="--overlap 1.5"):
        push(catalog, client, ws, "blur overlap", overlap=1.5)
    r = push(catalog, client, ws, "blur overlap", overlap=0.5)
    assert (r.pushed, r.double_tasks) == (4, 2)  # Label Studio asks two people for half
    assert sorted(client.overlaps(r.project_id).values()) == [1, 1, 2, 2]
    p = client.sdk.projects.get(id=r.project_id)
    assert (p.maximum_annotations, p.overlap_cohort_percentage) == (2, 50)

    tasks = {t["rel_path"]: t["task_id"] for t in catalog.tasks(client.conn.url, r.project_id)}
    ann, bob, cy = (client.ensure_user(f"{n}@blurset.local") for n in ("ann", "bob", "cy"))
    h, w = 200, 300
    left, right = blob(h, w, 10, 190, 10, 160), blob(h, w, 10, 190, 140, 290)
    near = blob(h, w, 12, 190, 14, 160)

    def paint(task: str, mask: np.ndarray, blur_type: str, user: int) -> int:
        return client.annotate(tasks[task], [brush_result(rle.encode(mask), w, h),
                                             choice_result(BLUR_TYPE, blur_type)], user)

    first = paint("c0.jpg", left, "defocus", ann)  # ann and bob disagree on c0 ...
    paint("c0.jpg", right, "motion", bob)
    paint("c1.jpg", left, "defocus", ann)  # ... and agree on c1
    paint("c1.jpg", near, "defocus", bob)
    paint("c2.jpg", left, "motion", ann)  # ann and cy: one paints what the other rejects
    client.annotate(tasks["c2.jpg"], [choice_result(REJECT, "no blur")], cy)
    pull(catalog, client, ws, "blur overlap")

    st = status(catalog, client.conn.url, r.project_id, ws.objects.read)
    pair = st.agreement_by_pair["ann@blurset.local + bob@blurset.local"]
    iou_c0 = mask_iou_of(left, right)
    assert pair.pairs == 2 and pair.same_blur_type_share == 0.5
    assert pair.mean_iou == pytest.approx((iou_c0 + mask_iou_of(left, near)) / 2, abs=1e-4)
    assert st.agreement_by_pair["ann@blurset.local + cy@blurset.local"].mean_iou == 0.0
    assert st.agreement_by_annotator["ann@blurset.local"].pairs == 3
    assert st.agreement_by_annotator["cy@blurset.local"].pairs == 1

    sheet = tmp_path / "review.png"
    rep = review(catalog, ws.objects.read, client.conn.url, r.project_id, "blur overlap", 0.8,
                 sheet)
    assert rep.compared_tasks == 3
    assert sorted(p.where for p in rep.disagreements) == ["cand/c0.jpg", "cand/c2.jpg"]
    with Image.open(sheet) as im:  # one row per pair: the image and both masks over it
        assert im.height > 2 * 200 and im.width > 3 * 300
    assert review(catalog, ws.objects.read, client.conn.url, r.project_id, "blur overlap",
                  0.1).disagreements[0].where == "cand/c2.jpg"  # a rejection disagrees anyway

    # the release takes ann's annotation of c0, not the most recent (bob's)
    assert {t["rel_path"]: t["blur_type"] for t in catalog.tasks(
        client.conn.url, r.project_id)}["c0.jpg"] == "motion"
    with pytest.raises(NotFoundError, match="no pulled annotation 999999"):
        resolve(catalog, client.conn.url, r.project_id, tasks["c0.jpg"], 999999)
    resolve(catalog, client.conn.url, r.project_id, tasks["c0.jpg"], first)
    out = tmp_path / "masks"
    pull(catalog, client, ws, "blur overlap", export_dir=out)
    t0 = {t["rel_path"]: t for t in catalog.tasks(client.conn.url, r.project_id)}["c0.jpg"]
    assert (t0["current_annotation_id"], t0["blur_type"]) == (first, "defocus")
    np.testing.assert_array_equal(np.asarray(Image.open(out / "cand" / "c0.png")), left)

    # the same through the CLI
    runner = CliRunner()
    res = runner.invoke(cli, ["-w", str(ws.root), "annotate", "review", "--project",
                              "blur overlap", "--below", "0.8"])
    assert res.exit_code == 0, res.output
    assert "2 disagreeing pairs on 2 of 3 tasks" in res.output and "contact sheet: " in res.output
    res = runner.invoke(cli, ["-w", str(ws.root), "annotate", "resolve", str(tasks["c1.jpg"]),
                              "--use", "424242"])
    assert res.exit_code != 0 and "has no pulled annotation 424242" in res.output
    res = runner.invoke(cli, ["-w", str(ws.root), "annotate", "status", "--project",
                              "blur overlap"])
    assert res.exit_code == 0, res.output
    assert "agreement_by_pair:" in res.output
    assert "  ann@blurset.local + bob@blurset.local: pairs 2" in res.output


def test_the_hint_is_never_the_answer_and_a_rejection_has_no_blur_type(label_studio, tmp_path,
                                                                       request):
    from blurset.annotation.config import BLUR_TYPE_HINT
    ws, _ = small_workspace(tmp_path)
    catalog, client = ws.catalog(), connect()
    request.addfinalizer(client.close)
    r = push(catalog, client, ws, "blur hint", prelabel="lbp")
    tasks = {t["rel_path"]: t["task_id"] for t in catalog.tasks(client.conn.url, r.project_id)}
    preds = {k: client.predictions(v)[0] for k, v in tasks.items()}
    hints = {k: next(x["value"]["choices"][0] for x in p["result"]
                     if x["from_name"] == BLUR_TYPE_HINT) for k, p in preds.items()}
    other = {"motion": "defocus", "defocus": "motion"}
    user = client.ensure_user("hint-person@blurset.local")
    # c0: the person agrees with the hint; c1: disagrees; c2: rejects (with the hint copied
    # along and a stray blur type); c3: an untouched copy of the prediction
    client.annotate(tasks["c0.jpg"], [*preds["c0.jpg"]["result"],
                                      choice_result(BLUR_TYPE, hints["c0.jpg"])], user)
    client.annotate(tasks["c1.jpg"], [*preds["c1.jpg"]["result"],
                                      choice_result(BLUR_TYPE, other[hints["c1.jpg"]])], user)
    client.annotate(tasks["c2.jpg"], [*preds["c2.jpg"]["result"], choice_result(REJECT, "unusable"),
                                      choice_result(BLUR_TYPE, "motion")], user)
    client.annotate(tasks["c3.jpg"], preds["c3.jpg"]["result"], user)
    rep = pull(catalog, client, ws, "blur hint")
    assert (rep.annotated, rep.rejected, rep.pending) == (2, 1, 1)
    after = {t["rel_path"]: t for t in catalog.tasks(client.conn.url, r.project_id)}
    assert after["c0.jpg"]["blur_type"] == hints["c0.jpg"]
    assert after["c1.jpg"]["blur_type"] == other[hints["c1.jpg"]]
    assert (after["c2.jpg"]["status"], after["c2.jpg"]["blur_type"]) == ("rejected", None)
    assert (after["c3.jpg"]["status"], after["c3.jpg"]["blur_type"]) == ("pushed", None)
    for k in ("c0.jpg", "c1.jpg", "c2.jpg"):
        assert after[k]["blur_type_hint"] == hints[k]
        assert after[k]["hint_version"] == "lbp-blur-map@blurset"
    st = status(catalog, client.conn.url, r.project_id)
    assert (st.hint_compared, st.hint_agreement_share) == (2, 0.5)
    assert st.submitted_without_choice == 1 and st.with_prelabel == 4
    assert st.prelabelled_annotated == 2  # the untouched copy is not work saved
    assert catalog.hint_agreement([after[k]["image_id"] for k in after]) == (2, 1)

