"""Shared fixtures: real files built here, a real SQLite catalog, one Prefect test harness."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def pytest_configure(config: pytest.Config) -> None:
    # Property tests run the same examples every time (CI must not turn red by luck); set
    # HYPOTHESIS_PROFILE=explore to search new examples.
    from hypothesis import settings
    settings.register_profile("repeatable", derandomize=True)
    settings.register_profile("explore", derandomize=False)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
    # Prefect reads its settings when first imported: point it inside the test session.
    root = Path(config.rootpath) / ".pytest_cache" / "prefect-home"
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(root))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.pop("BLURSET_WORKSPACE", None)
    os.environ.pop("BLURSET_CATALOG_URL", None)


# Fixtures that start a real component: a test using one is an integration test, marked or not.
INTEGRATION_FIXTURES = {"prefect_harness", "label_studio", "labelling_browser"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the item, so a fixture's teardown knows the test failed
    (the browser tests keep a screenshot then)."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny models: they gain nothing from a second, and on
    shared cores OpenMP's spinning threads made the same run take 1 s or 100 s. Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def photo(index: int = 0, size: tuple[int, int] | None = None) -> Image.Image:
    """A real photo shipped by scikit-image (deterministic)."""
    import skimage.data as d
    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"]
    arr = getattr(d, names[index % len(names)])()
    im = Image.fromarray(arr).convert("RGB")
    return im.resize(size, Image.Resampling.LANCZOS) if size else im


def blob(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """An h × w 0/255 mask, 255 in the rectangle [y0:y1, x0:x1] (a painted region)."""
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 255
    return m


def jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=kw.pop("quality", 90), **kw)
    return buf.getvalue()


def png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def png_with_claimed_size(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header claims width×height (a decompression bomb's header)."""
    data = bytearray(png_bytes(Image.new("L", (8, 8), 0)))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def exif_rotated_jpeg(im: Image.Image) -> bytes:
    """Pixels stored sideways with EXIF orientation 6, so viewers show ``im`` upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(im.transpose(Image.Transpose.ROTATE_90), exif=exif)


@pytest.fixture
def bad_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A `folder` source with every kind of bad or odd input; returns (root, expected outcome)."""
    root = tmp_path / "odd"
    root.mkdir()
    base = photo(1, (400, 300))
    good = jpeg_bytes(base)
    files: dict[str, bytes] = {
        "ok.jpg": good,
        "truncated.jpg": good[: len(good) // 2],
        "empty.jpg": b"",
        "text.jpg": b"this is not a jpeg, just text\n" * 20,
        "bomb.png": png_with_claimed_size(30000, 30000),
        "corrupt.png": png_bytes(base)[:60] + b"\x00" * 400,
        "gray16.png": png_bytes(Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)),
        "cmyk.jpg": jpeg_bytes(base.convert("CMYK")),
        "palette.png": png_bytes(base.convert("P", palette=Image.Palette.ADAPTIVE)),
        "alpha.png": png_bytes(base.convert("RGBA")),
        "gray.jpg": jpeg_bytes(base.convert("L")),
        "rotated.jpg": exif_rotated_jpeg(photo(2, (400, 300))),
        "nested/deeper/copy.JPG": good,
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    expected = {
        "truncated.jpg": "truncated", "empty.jpg": "empty", "text.jpg": "not an image",
        "bomb.png": "pixel limit", "corrupt.png": "corrupt",
    }
    return root, expected


def ingest_into(ws_root: Path, name: str, kind: str, folder: Path):
    """A workspace at ``ws_root`` with ``folder`` ingested as source ``name`` of ``kind``, in one
    batch and without Prefect (the stage functions the ingest flow calls)."""
    from blurset.pipeline.stages.ingest import ingest_batch
    from blurset.pipeline.stages.sources import scan_source
    from blurset.pipeline.workspace import Workspace

    ws = Workspace.open(ws_root)
    catalog = ws.catalog()
    try:
        catalog.register_source(name, kind, str(folder))
        res = ingest_batch(folder, scan_source(kind, folder).items, ws.objects.root,
                           ws.quarantine_store.root)
        catalog.record_batch(name, res.images, res.paths, res.masks, res.quarantined)
    finally:
        catalog.close()
    return ws


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(monkeypatch):
    """A real S3 API (moto's server) on a free port, with buckets ``sources`` and ``objects``;
    AWS_ENDPOINT_URL points every s3:// URL at it. Yields s3fs's file system on it."""
    import urllib.request

    import s3fs
    from moto.server import ThreadedMotoServer
    port = free_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # moto keeps its buckets in the process, across servers: start empty
    urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{port}/moto-api/reset", method="POST"), timeout=10).close()
    s3fs.S3FileSystem.clear_instance_cache()  # an instance of another test holds another port
    try:
        fs = s3fs.S3FileSystem()
        for bucket in ("sources", "objects"):
            fs.mkdir(bucket)
        yield fs
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio server, started once per session from the repo's own virtualenv.

    Its local-files document root is the session's temp folder, so every test's workspace
    (under tmp_path) can be served. Installs the server's virtualenv on first use (~1 min).
    """
    from blurset.annotation.server import Connection, LocalServer
    base = tmp_path_factory.getbasetemp().resolve()
    conn = Connection(f"http://127.0.0.1:{free_port()}", "blurset-test-token-4f1d2c9e8b7a6")
    server = LocalServer(data_dir=base / "label-studio-data", document_root=base, conn=conn)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LABEL_STUDIO_URL", conn.url)
        mp.setenv("LABEL_STUDIO_API_KEY", conn.api_key)
        mp.setenv("BLURSET_LABEL_STUDIO_DOCUMENT_ROOT", str(base))
        server.up(timeout=400, log=lambda m: None)
        try:
            yield server
        finally:
            server.down()


@pytest.fixture
def labelling_browser(label_studio, tmp_path, request):
    """Label Studio's labelling view in headless Chromium, logged in as the server's admin.

    Installs Debian's chromium and chromium-driver through apt if missing, and skips, saying
    why, where that is impossible. On failure the page is kept as a screenshot (path printed).
    """
    from browser import LabellingView, browser_or_skip, keep_screenshot_on_failure, start_chromium
    browser_or_skip()
    driver = start_chromium(tmp_path / "chromium-profile")
    view = LabellingView(driver, label_studio.conn.url)
    try:
        view.login(label_studio.username, label_studio.password)
        yield view
    finally:
        keep_screenshot_on_failure(request, driver, tmp_path)
        driver.quit()


def assert_push_refused_with_server_down(runner, ws, project: str, monkeypatch) -> None:
    """A push to a Label Studio that is not there: one error line, the catalog unchanged."""
    from blurset.pipeline.cli.main import cli
    before = ws.catalog().counts()
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("LABEL_STUDIO_URL", url)
    r = runner.invoke(cli, ["-w", str(ws.root), "annotate", "push", "--project", project])
    assert r.exit_code == 1 and f"cannot reach Label Studio at {url}" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert ws.catalog().counts() == before
