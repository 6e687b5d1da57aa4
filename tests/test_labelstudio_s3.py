"""Annotation of objects on S3: a real Label Studio server (see conftest) reads them from a real
S3 API (moto's server, see conftest) through an S3 import storage, and presigns their URLs."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
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
from blurset.annotation.client import connect
from blurset.annotation.config import BLUR_TYPE, brush_result, choice_result
from blurset.pipeline import release as R
from blurset.pipeline.cli.main import cli
from blurset.pipeline.stages.dedup.run import run_dedup
from blurset.pipeline.stages.ingest import ingest_batch
from blurset.pipeline.stages.labelling import pull, push, review, status
from blurset.pipeline.stages.sources import scan_source
from blurset.pipeline.workspace import Workspace

pytestmark = pytest.mark.integration  # a real Label Studio and a real S3 API

OBJECTS = "s3://objects/blur"


def ingest(ws: Workspace, kind: str, name: str, root: Path) -> None:
    catalog = ws.catalog()
    catalog.register_source(name, kind, str(root))
    res = ingest_batch(root, scan_source(kind, root).items, ws.objects, ws.quarantine_store)
    catalog.record_batch(name, res.images, res.paths, res.masks, res.quarantined)
    catalog.close()


def s3_workspace(tmp_path: Path, candidates: int = 3) -> Workspace:
    """Objects on the moto bucket: a CUHK-style reference with a known mask, and candidates."""
    cuhk = tmp_path / "cuhk"
    (cuhk / "image").mkdir(parents=True)
    (cuhk / "gt").mkdir()
    (cuhk / "image" / "motion0001.jpg").write_bytes(jpeg_bytes(photo(0, (320, 240))))
    m = np.zeros((240, 320), np.uint8)
    m[20:150, 40:260] = 255
    (cuhk / "gt" / "motion0001.png").write_bytes(png_bytes(Image.fromarray(m)))
    cand = tmp_path / "cand"
    cand.mkdir()
    for i in range(candidates):
        (cand / f"c{i}.jpg").write_bytes(jpeg_bytes(photo(1 + i, (300, 200))))
    ws = Workspace.open(tmp_path / "ws", objects_url=OBJECTS)
    ingest(ws, "cuhk", "cuhk", cuhk)
    ingest(ws, "folder", "cand", cand)
    catalog = ws.catalog()
    out = run_dedup(catalog, "cuhk")
    catalog.replace_findings("cuhk", None, {}, out.summary, out.findings, out.exclusions)
    catalog.close()
    return ws


def test_push_connects_one_s3_storage_and_label_studio_presigns_the_objects(
        label_studio, s3, tmp_path, request, monkeypatch):
    ws = s3_workspace(tmp_path)
    assert not (ws.root / "objects").exists()  # nothing local: the objects are on S3
    catalog, client = ws.catalog(), connect()
    request.addfinalizer(client.close)
    r = push(catalog, client, ws, "blur on s3", sources=["cuhk", "cand"], prelabel="laplacian")
    # the reference's known mask and the candidates' pre-labels, all read through the store
    assert (r.pushed, r.with_prelabel) == (4, 4)

    storages = client.sdk.import_storage.s3.list(project=r.project_id)
    assert len(storages) == 1
    st = storages[0]
    endpoint = os.environ["AWS_ENDPOINT_URL"]  # the moto server's, as the store uses it
    assert (st.bucket, st.prefix, st.s3endpoint, st.presign) == ("objects", "blur", endpoint, True)

    # a second push of a new image adds its task, not another storage
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "e.jpg").write_bytes(jpeg_bytes(photo(5, (280, 210))))
    ingest(ws, "folder", "extra", extra)
    again = push(catalog, client, ws, "blur on s3", sources=["cuhk", "cand", "extra"])
    assert (again.pushed, again.project_id) == (1, r.project_id)
    assert len(client.sdk.import_storage.s3.list(project=r.project_id)) == 1

    tasks = json.loads(client.export(r.project_id))
    assert len(tasks) == 5
    for t in tasks:
        url = t["data"]["image"]
        assert url.startswith(f"{OBJECTS}/") and s3.isfile(url), url
        assert url == f"{OBJECTS}/{catalog.image(t['data']['id'])['object_path']}"
    preds = {p["task"]: p for p in client.project_predictions(r.project_id)}
    assert {p["model_version"] for p in preds.values()} == {"ground-truth:cuhk", "laplacian-blur-map@blurset"}

    # a browser asks Label Studio for the image; Label Studio answers with a presigned URL on
    # the S3 server, which serves the object's exact bytes
    t = next(t for t in tasks if t["data"]["source"] == "cand")
    url = t["data"]["image"]
    fileuri = base64.urlsafe_b64encode(url.encode()).decode()
    with httpx.Client(base_url=label_studio.conn.url, timeout=30,
                      headers={"Authorization": f"Token {label_studio.conn.api_key}"}) as http:
        # the task as the labelling view gets it: its s3:// URL replaced by the resolve URL
        shown = http.get(f"/api/tasks/{t['id']}/").raise_for_status().json()["data"]["image"]
        assert f"/tasks/{t['id']}/" in shown and f"fileuri={fileuri}" in shown, shown
        answer = http.get(f"/tasks/{t['id']}/presign/", params={"fileuri": fileuri})
    assert answer.status_code in (302, 303), (answer.status_code, answer.text[:300])
    presigned = answer.headers["location"]
    assert presigned.startswith(endpoint) and "Signature" in presigned, presigned
    got = httpx.get(presigned, timeout=30)
    assert got.status_code == 200
    assert got.content == s3.cat_file(url)


def test_cli_push_to_s3_objects_and_a_server_down(label_studio, prefect_harness, s3, tmp_path,
                                                  monkeypatch):
    ws = s3_workspace(tmp_path, candidates=2)
    runner = CliRunner()
    r = runner.invoke(cli, ["-w", str(ws.root), "annotate", "push", "--project", "blur s3 cli",
                            "--prelabel", "lbp"])
    assert r.exit_code == 0, r.output
    assert "2 tasks pushed now (2 with pre-labels)" in r.output

    assert_push_refused_with_server_down(runner, ws, "blur s3 cli", monkeypatch)


def test_pull_status_review_and_a_release_from_masks_on_s3(label_studio, s3, tmp_path, request):
    """People's masks pulled into an S3 workspace are stored on S3 (nothing local); status and
    review read them, and the images, from there; a release built from the project holds them."""
    ws = s3_workspace(tmp_path)
    catalog, client = ws.catalog(), connect()
    request.addfinalizer(client.close)
    request.addfinalizer(catalog.close)
    r = push(catalog, client, ws, "blur s3 pull", sources=["cand"])
    tasks = {t["rel_path"]: t["task_id"] for t in catalog.tasks(client.conn.url, r.project_id)}
    ann, bob = (client.ensure_user(f"{n}-s3@blurset.local") for n in ("ann", "bob"))
    h, w = 200, 300
    left, right = blob(h, w, 10, 190, 10, 160), blob(h, w, 10, 190, 140, 290)

    def paint(task: str, mask: np.ndarray, blur_type: str, user: int) -> int:
        return client.annotate(tasks[task], [brush_result(rle.encode(mask), w, h),
                                             choice_result(BLUR_TYPE, blur_type)], user)

    paint("c0.jpg", left, "defocus", ann)
    paint("c0.jpg", right, "motion", bob)  # the most recent: the one a release takes
    paint("c1.jpg", left, "defocus", ann)
    rep = pull(catalog, client, ws, "blur s3 pull")
    assert (rep.annotated, rep.pending) == (2, 1)
    assert not (ws.root / "objects").exists()
    anns = catalog.annotations_of(client.conn.url, r.project_id)
    assert len(anns) == 3
    for a in anns:  # each mask a PNG object on S3, as its annotator painted it
        stored = np.asarray(Image.open(io.BytesIO(s3.cat_file(f"{OBJECTS}/{a['mask_object']}"))))
        painted = right if a["annotator"].startswith("bob") else left
        np.testing.assert_array_equal(stored > 127, painted > 127)

    st = status(catalog, client.conn.url, r.project_id, ws.objects.read)
    assert (st.pushed, st.annotated) == (3, 2)
    pair = st.agreement_by_pair["ann-s3@blurset.local + bob-s3@blurset.local"]
    inter, union = np.logical_and(left, right).sum(), np.logical_or(left, right).sum()
    assert pair.pairs == 1 and pair.mean_iou == pytest.approx(inter / union, abs=1e-4)
    sheet = tmp_path / "review.png"
    rev = review(catalog, ws.objects.read, client.conn.url, r.project_id, "blur s3 pull", 0.8,
                 sheet)
    assert [d.where for d in rev.disagreements] == ["cand/c0.jpg"]
    with Image.open(sheet) as im:  # the image (read from S3) and both masks over it
        assert im.width > 3 * 300

    info = R.build_release(ws, catalog, R.ReleaseSpec("s3-annotated", "1.0.0",
                                                      projects=["blur s3 pull"],
                                                      split="train=1.0"))
    assert info.rows == 2 and R.verify_release(info.path).ok
    rows = {row["id"]: row for row in pq.read_table(info.path / "data").to_pylist()}
    by_path = {t["rel_path"]: t["image_id"] for t in catalog.tasks(client.conn.url, r.project_id)}
    for rel, want in (("c0.jpg", right), ("c1.jpg", left)):
        got = np.asarray(Image.open(io.BytesIO(rows[by_path[rel]]["mask"]["bytes"])))
        np.testing.assert_array_equal(got > 127, want > 127)


LBP = "lbp-blur-map@blurset"


def test_the_ml_backend_predicts_s3_images_through_the_store(label_studio, s3, tmp_path, request):
    """Label Studio sends the backend the task of a project on S3; the backend fetches the object
    through the workspace's store (into the cache push uses) and predicts as for a local file.
    An image on S3 outside the store's bucket and prefix is refused in one line."""
    import shutil
    import threading

    from blurset.annotation.ml_backend import Backend, RemoteObjects, RequestError, make_server
    from blurset.pipeline.stages.prelabel import make_prelabeller, prediction_mask

    errors: list[str] = []

    class Recording(Backend):
        def predict(self, body: dict) -> dict:
            try:
                return super().predict(body)
            except RequestError as e:
                errors.append(str(e))
                raise

    ws = s3_workspace(tmp_path, candidates=1)
    catalog, client = ws.catalog(), connect()
    request.addfinalizer(client.close)
    r = push(catalog, client, ws, "blur on s3 ml")
    (t,) = json.loads(client.export(r.project_id))
    image = t["data"]["image"]
    rel = image.removeprefix(f"{OBJECTS}/")
    cached = ws.root / "cache" / "objects" / rel
    shutil.rmtree(ws.root / "cache", ignore_errors=True)  # the backend fetches it itself
    predictor = make_prelabeller("lbp")
    remote = RemoteObjects(ws.objects.url, ws.local_object_paths)
    backend = Recording(predictor, label_studio.document_root, storage=[], remote=remote)
    server = make_server(backend, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    request.addfinalizer(server.server_close)
    request.addfinalizer(server.shutdown)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    client.connect_ml_backend(r.project_id, url, "blurset lbp")

    # the Data Manager's "Retrieve predictions": Label Studio calls /predict and stores the answer
    client.retrieve_predictions(r.project_id, [t["id"]])
    assert errors == []
    (pred,) = client.predictions(t["id"])
    assert pred["model_version"] == LBP
    assert cached.read_bytes() == s3.cat_file(image)  # fetched through the store, kept
    (want,) = predictor.predict([cached])
    np.testing.assert_array_equal(prediction_mask(pred), prediction_mask(want))
    assert prediction_mask(want).shape == (200, 300) and prediction_mask(want).any()

    # the same object in another bucket, or beside the prefix: refused, one line, even as
    # Label Studio's resolve URL of it
    for other in (f"s3://sources/blur/{rel}", f"s3://objects/blurred/{rel}"):
        s3.pipe_file(other, s3.cat_file(image))  # it exists: still not the workspace's
        fileuri = base64.urlsafe_b64encode(other.encode()).decode()
        for sent in (other, f"{label_studio.conn.url}/tasks/{t['id']}/resolve/?fileuri={fileuri}"):
            answer = httpx.post(f"{url}/predict", timeout=30,
                                json={"tasks": [{"id": 7, "data": {"image": sent}}]})
            assert answer.status_code == 400
            assert answer.json()["error"] == (
                f"task 7: image {other} is not in the workspace's object store {OBJECTS}; the "
                "backend reads that store's objects only")
    assert client.predictions(t["id"]) == [pred]


def test_cli_ml_backend_up_in_an_s3_workspace_predicts_its_tasks(label_studio, s3, tmp_path,
                                                                  request):
    """`labelstudio ml-backend up` in a workspace whose objects are on S3: the background backend
    reads them through the workspace's store, and opening a task predicts it."""
    ws = s3_workspace(tmp_path, candidates=1)
    catalog, client = ws.catalog(), connect()
    request.addfinalizer(client.close)
    r = push(catalog, client, ws, "blur on s3 ml cli")
    (t,) = json.loads(client.export(r.project_id))
    runner = CliRunner()
    args = ["-w", str(ws.root), "labelstudio", "ml-backend"]
    request.addfinalizer(lambda: runner.invoke(cli, [*args, "down"]))
    port = free_port()
    up = runner.invoke(cli, [*args, "up", "--checkpoint", "lbp", "--port", str(port),
                             "--project", "blur on s3 ml cli"])
    assert up.exit_code == 0, up.output
    assert f"ML backend for {LBP} is up at http://127.0.0.1:{port}" in up.output

    # opening the task (what the labelling stream does) predicts it through the backend
    client._http.get(f"/api/tasks/{t['id']}").raise_for_status()
    assert [p["model_version"] for p in client.predictions(t["id"])] == [LBP]
    rel = t["data"]["image"].removeprefix(f"{OBJECTS}/")
    assert (ws.root / "cache" / "objects" / rel).is_file()
    assert "ML backend stopped" in runner.invoke(cli, [*args, "down"]).output
