"""Annotation of objects on S3: a real Label Studio server (see conftest) reads them from a real
S3 API (moto's server, see conftest) through an S3 import storage, and presigns their URLs."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_push_refused_with_server_down, jpeg_bytes, photo, png_bytes
from PIL import Image

from blurset.annotation.client import connect
from blurset.pipeline.cli.main import cli
from blurset.pipeline.stages.dedup.run import run_dedup
from blurset.pipeline.stages.ingest import ingest_batch
from blurset.pipeline.stages.labelling import push
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


def test_the_ml_backend_refuses_s3_images_in_one_line(label_studio, s3, tmp_path, request):
    """Label Studio sends the backend the tasks of a project on S3; the backend, which reads
    local files only, answers each with a 400 naming the object and what is unsupported."""
    import threading

    from blurset.annotation.ml_backend import Backend, RequestError, make_server
    from blurset.pipeline.stages.prelabel import make_prelabeller

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
    backend = Recording(make_prelabeller("lbp"), label_studio.document_root)
    server = make_server(backend, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    request.addfinalizer(server.server_close)
    request.addfinalizer(server.shutdown)
    client.connect_ml_backend(r.project_id, f"http://127.0.0.1:{server.server_address[1]}",
                              "blurset lbp")
    client.retrieve_predictions(r.project_id, [t["id"]])
    assert errors, "Label Studio never asked the backend"
    for e in errors:
        assert len(e.splitlines()) == 1
        assert e == (f"task {t['id']}: image {t['data']['image']} is on a remote object store, "
                     "which the ML backend does not support yet (it reads local files only); "
                     "pre-label with `blurset annotate push --prelabel` or `annotate prelabel` "
                     "instead")
    assert client.predictions(t["id"]) == []
