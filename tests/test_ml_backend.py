"""The ML backend: its protocol served over HTTP (unit level, the `lbp` pre-labeller), and a real
Label Studio (see conftest) asking it for predictions, connected by the API and by the CLI."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import free_port, jpeg_bytes, photo
from test_prelabel import MODEL, checkpoints  # noqa: F401 (a tiny trained DPN, module fixture)

from blurset.annotation.client import TaskSpec, connect, local_file_url
from blurset.annotation.config import BLUR_TYPE, BLUR_TYPE_HINT, BRUSH, LABEL_CONFIG
from blurset.annotation.ml_backend import (
    Backend,
    BackendError,
    BackendProcess,
    RequestError,
    image_path,
    make_server,
)
from blurset.annotation.process import health
from blurset.pipeline.cli.labelstudio import backend_title
from blurset.pipeline.cli.main import cli
from blurset.pipeline.stages.prelabel import make_prelabeller, prediction_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LBP = "lbp-blur-map@blurset"
NO_BLUR_TYPE_CONFIG = f"""<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="{BRUSH}" toName="image"><Label value="Blurred"/></BrushLabels>
</View>"""


@pytest.fixture(scope="module")
def predictor():
    return make_prelabeller("lbp")


def serve(predictor, root: Path):
    server = make_server(Backend(predictor, root), "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def backend(predictor, tmp_path):
    """A backend on a free port serving ``tmp_path/root``, with two photos under ``imgs/``."""
    root = tmp_path / "root"
    (root / "imgs").mkdir(parents=True)
    for i in range(2):
        (root / "imgs" / f"p{i}.jpg").write_bytes(jpeg_bytes(photo(i, (160, 120))))
    (tmp_path / "outside.jpg").write_bytes(jpeg_bytes(photo(3, (64, 48))))
    server, url = serve(predictor, root)
    yield url, root
    server.shutdown()
    server.server_close()


def call(url: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def task(task_id: int, rel: str) -> dict:
    return {"id": task_id, "data": {"image": local_file_url(rel)}}


def test_health_setup_webhook_and_unknown_endpoints(backend):
    url, _ = backend
    assert call(url, "/health") == (200, {"status": "UP", "model_class": "HandcraftedPrelabeller",
                                          "model_version": LBP})
    assert health(url)["model_version"] == LBP
    assert call(url, "/setup", {"project": "1.1700000000", "schema": LABEL_CONFIG}) == \
        (200, {"model_version": LBP})
    assert call(url, "/webhook", {"action": "ANNOTATION_CREATED"}) == (200, {})
    assert call(url, "/train", {})[0] == 404 and call(url, "/metrics")[0] == 404


def test_setup_refuses_a_config_without_the_brush_and_says_what_to_add(backend):
    url, _ = backend
    config = '<View><Image name="image" value="$image"/><Choices name="x" toName="image">' \
             '<Choice value="a"/></Choices></View>'
    status, body = call(url, "/setup", {"schema": config})
    assert status == 400 and f'<BrushLabels name="{BRUSH}" toName="image">' in body["error"]
    assert call(url, "/setup", {"schema": "<View"})[0] == 400


def test_predict_answers_one_prediction_per_task_as_the_prelabeller_does(backend, predictor):
    url, root = backend
    status, body = call(url, "/predict", {"tasks": [task(7, "imgs/p0.jpg"), task(8, "imgs/p1.jpg")],
                                          "project": "1.1700000000", "label_config": LABEL_CONFIG,
                                          "params": {"login": None, "password": None,
                                                     "context": None}})
    assert status == 200 and body["model_version"] == LBP
    direct = predictor.predict([root / "imgs/p0.jpg", root / "imgs/p1.jpg"])
    assert len(body["results"]) == 2
    for got, want in zip(body["results"], direct, strict=True):
        assert set(got) == {"result", "score", "model_version"}
        assert got["model_version"] == LBP and got["score"] == pytest.approx(want["score"])
        # the guessed blur type is a hint in its own control, never the annotator's answer
        assert {r["from_name"] for r in got["result"]} == {BRUSH, BLUR_TYPE_HINT}
        assert BLUR_TYPE not in {r["from_name"] for r in got["result"]}
        np.testing.assert_array_equal(prediction_mask(got), prediction_mask(want))
        assert prediction_mask(got).shape == (120, 160)

    # a project without the blur-type choices gets the mask alone
    _, body = call(url, "/predict", {"tasks": [task(9, "imgs/p0.jpg")],
                                     "label_config": NO_BLUR_TYPE_CONFIG})
    assert [r["from_name"] for r in body["results"][0]["result"]] == [BRUSH]


@pytest.mark.integration
def test_a_dpn_checkpoint_predicts_through_the_backend(checkpoints, tmp_path):  # noqa: F811
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(photo(2, (96, 80))))
    dpn = make_prelabeller(str(checkpoints["best"]))
    server, url = serve(dpn, tmp_path)
    try:
        assert call(url, "/health")[1]["model_class"] == "DpnPrelabeller"
        assert call(url, "/setup", {"schema": LABEL_CONFIG}) == (200, {"model_version": MODEL})
        status, body = call(url, "/predict", {"tasks": [task(1, "a.jpg")],
                                              "label_config": LABEL_CONFIG})
    finally:
        server.shutdown()
        server.server_close()
    assert status == 200 and body["results"][0]["model_version"] == MODEL
    (want,) = dpn.predict([tmp_path / "a.jpg"])
    np.testing.assert_array_equal(prediction_mask(body["results"][0]), prediction_mask(want))
    assert prediction_mask(want).shape == (80, 96)


@pytest.mark.parametrize("image, message", [
    ("/data/local-files/?d=../outside.jpg", "outside the document root"),
    ("/data/local-files/?d=imgs/../../outside.jpg", "outside the document root"),
    ("/data/local-files/?d=/etc/hostname", "outside the document root"),
    ("/data/local-files/?d=imgs/missing.jpg", "is not a file under the document root"),
    ("/data/local-files/", "has no ?d="),
    ("/data/upload/1/p0.jpg", "not a Label Studio local-files URL"),
    ("https://example.com/p0.jpg", "not a Label Studio local-files URL"),
    ("s3://objects/blur/ab/p0.jpg",
     ("is on a remote object store and this ML backend serves a workspace whose objects are "
      "local files")),
])
def test_images_outside_the_document_root_are_refused(backend, image, message):
    url, root = backend
    with pytest.raises(RequestError, match=message.replace("?", r"\?")):
        image_path(image, root)
    status, body = call(url, "/predict", {"tasks": [task(1, "imgs/p0.jpg"),
                                                    {"id": 2, "data": {"image": image}}]})
    assert status == 400 and body["error"].startswith("task 2: ") and message in body["error"]


def test_absolute_local_files_urls_resolve_like_relative_ones(backend):
    _, root = backend
    assert image_path("http://127.0.0.1:8080/data/local-files/?d=imgs/p1.jpg", root) == \
        (root / "imgs" / "p1.jpg").resolve()
    assert image_path("/data/local-files/?d=imgs%2Fp0.jpg", root) == (root / "imgs/p0.jpg").resolve()


def test_bad_requests_get_an_error_not_a_crash(backend):
    url, _ = backend
    assert call(url, "/predict", {"tasks": []})[0] == 400
    assert call(url, "/predict", {"tasks": [{"id": 3, "data": {}}]}) == \
        (400, {"error": "task 3 has no data.image URL"})
    req = urllib.request.Request(url + "/predict", data=b"not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    e.value.close()
    assert e.value.code == 400
    assert call(url, "/health")[0] == 200  # still serving


def test_up_refuses_a_port_where_another_backend_answers(backend, tmp_path):
    url, _ = backend
    proc = BackendProcess(tmp_path / "state", url)
    with pytest.raises(BackendError, match="not started by this workspace"):
        proc.up(["false"], "lbp", timeout=5)
    assert proc.recorded() is None and proc.down() is False


def import_one_image(client, tmp_path: Path, document_root: Path, project: str) -> tuple[int, int]:
    folder = tmp_path / "imgs"
    folder.mkdir()
    path = folder / "p.jpg"
    path.write_bytes(jpeg_bytes(photo(1, (160, 120))))
    project_id = client.project(project)
    client.ensure_local_storage(project_id, str(folder))
    rel = str(path.relative_to(document_root))
    (task_id,) = client.import_tasks(project_id, [TaskSpec("img-p", local_file_url(rel), "test",
                                                           "p.jpg")])
    return project_id, task_id


@pytest.mark.integration
def test_label_studio_gets_predictions_from_the_backend(
        label_studio, predictor, tmp_path, request):
    client = connect()
    request.addfinalizer(client.close)
    server, url = serve(predictor, label_studio.document_root)
    request.addfinalizer(server.server_close)
    request.addfinalizer(server.shutdown)
    project_id, task_id = import_one_image(client, tmp_path, label_studio.document_root, "ml live")

    title = backend_title(LBP)
    ml_id = client.connect_ml_backend(project_id, url, title)
    assert client.connect_ml_backend(project_id, url, title) == ml_id  # reused, not doubled
    (ml,) = client.ml_backends(project_id)
    assert (ml["id"], ml["title"], ml["is_interactive"], ml["url"]) == (ml_id, title, True, url)
    client.use_ml_backend_predictions(project_id, title)
    p = client.sdk.projects.get(id=project_id)
    assert (p.show_collab_predictions, p.evaluate_predictions_automatically, p.model_version) == \
        (True, True, title)

    # the Data Manager's "Retrieve predictions": Label Studio calls /predict and stores the answer
    client.retrieve_predictions(project_id, [task_id])
    (pred,) = client.predictions(task_id)
    assert pred["model_version"] == LBP
    (want,) = predictor.predict([tmp_path / "imgs" / "p.jpg"])
    np.testing.assert_array_equal(prediction_mask(pred), prediction_mask(want))
    client.retrieve_predictions(project_id, [task_id])  # already holds this model_version
    assert len(client.predictions(task_id)) == 1

    # interactive pre-annotation (what the labelling UI asks for): the answer, not stored
    r = client._http.post(f"/api/ml/{ml_id}/interactive-annotating", json={"task": task_id})
    r.raise_for_status()
    data = r.json()["data"]
    assert data["model_version"] == LBP and data["result"] == want["result"]


@pytest.mark.integration
def test_cli_up_is_idempotent_connects_the_project_and_down_stops_it(
        label_studio, tmp_path, request):
    client = connect()
    request.addfinalizer(client.close)
    ws = tmp_path / "ws"
    port = free_port()
    runner = CliRunner()
    args = ["-w", str(ws), "labelstudio", "ml-backend"]
    request.addfinalizer(lambda: runner.invoke(cli, [*args, "down"]))
    project_id, task_id = import_one_image(client, tmp_path, label_studio.document_root, "ml cli")

    up = [*args, "up", "--checkpoint", "lbp", "--port", str(port), "--project", "ml cli",
          "--storage", str(tmp_path / "imgs")]  # the project's local storage
    first = runner.invoke(cli, up)
    assert first.exit_code == 0, first.output
    assert f"ML backend for {LBP} is up at http://127.0.0.1:{port}" in first.output
    pid = json.loads((ws / "ml-backend" / "blurset-ml-backend.json").read_text())["pid"]
    again = runner.invoke(cli, up)
    assert again.exit_code == 0, again.output
    assert "already running" in again.output
    assert json.loads((ws / "ml-backend" / "blurset-ml-backend.json").read_text())["pid"] == pid
    (ml,) = client.ml_backends(project_id)
    assert ml["title"] == backend_title(LBP)
    assert client.sdk.projects.get(id=project_id).model_version == backend_title(LBP)

    # opening the task (what the labelling stream does) predicts it through the backend
    client._http.get(f"/api/tasks/{task_id}").raise_for_status()
    assert [p["model_version"] for p in client.predictions(task_id)] == [LBP]

    other = runner.invoke(cli, [*args, "up", "--checkpoint", "laplacian", "--port", str(port)])
    assert other.exit_code != 0 and "stop it with" in other.output
    status = runner.invoke(cli, [*args, "status"])
    assert status.exit_code == 0 and f"model_version: {LBP}" in status.output
    down = runner.invoke(cli, [*args, "down"])
    assert down.exit_code == 0 and "ML backend stopped" in down.output
    assert health(f"http://127.0.0.1:{port}") is None
    assert "no ML backend" in runner.invoke(cli, [*args, "down"]).output

    # another model on another port takes over the same connection (Label Studio asks only
    # a project's first ML backend)
    port2 = free_port()
    moved = runner.invoke(cli, [*args, "up", "--checkpoint", "laplacian", "--port", str(port2),
                                "--project", "ml cli", "--storage", str(tmp_path / "imgs")])
    assert moved.exit_code == 0, moved.output
    (ml2,) = client.ml_backends(project_id)
    title2 = backend_title("laplacian-blur-map@blurset")
    assert (ml2["id"], ml2["url"], ml2["title"]) == (ml["id"], f"http://127.0.0.1:{port2}", title2)
    assert client.sdk.projects.get(id=project_id).model_version == title2
    assert "ML backend stopped" in runner.invoke(cli, [*args, "down"]).output
