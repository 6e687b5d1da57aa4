"""blurset as a user gets it: a built wheel, installed (not editable) into a fresh virtualenv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(REPO)], check=True, capture_output=True, text=True)
    (whl,) = out.glob("blurset-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding the wheel; the dependencies come from this venv's site-packages through
    a path entry (its ``.pth`` files, among them the editable install of the source tree, are not
    processed, so only the wheel provides ``blurset``)."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    py = root / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    (site / "zz_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return root


def run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLURSET_")}
    env.update(PREFECT_HOME=str(cwd / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", PYTHONSAFEPATH="1")
    return subprocess.run([str(venv / "bin" / "python"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900, check=False)


def test_wheel_installs_one_blurset_namespace_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.startswith("blurset-")}
    assert top == {"blurset"}
    for data in ("blurset/dataset_cards/template.md", "blurset/configs/dpn-small.yaml",
                 "blurset/configs/dpn-paper.yaml"):
        assert data in names
    assert any(n.startswith("blurset/pipeline/demo/sample_data/cuhk_masks/") for n in names)


def test_the_installed_wheel_runs_ingest_dedup_release_and_evaluate(venv, tmp_path):
    probe = run(venv, "-c", "import importlib.util as u, blurset.pipeline, blurset.model, "
                "blurset.annotation; print([u.find_spec(n) for n in ('pipeline', 'model', "
                "'annotation')]); print(blurset.pipeline.__file__)", cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines()[0] == "[None, None, None]"
    assert str(venv) in probe.stdout.splitlines()[1]
    version = run(venv, "-m", "blurset", "--version", cwd=tmp_path)
    assert version.returncode == 0 and "0.1.0" in version.stdout

    steps = [
        ["sample", "s"],
        ["-w", "ws", "ingest", "--kind", "cuhk", "--name", "cuhk", "s/cuhk"],
        ["-w", "ws", "ingest", "--kind", "msra10k", "--name", "msra", "s/msra10k"],
        ["-w", "ws", "dedup", "--reference", "cuhk"],
        ["-w", "ws", "release", "build", "cuhk-s", "1.0.0", "--from-source", "cuhk"],
        ["-w", "ws", "release", "verify", "ws/releases/cuhk-s/1.0.0"],
        ["-w", "ws", "evaluate", "--checkpoint", "pretrained", "--release", "cuhk-s@1.0.0",
         "--split", "test", "--out", "ev", "--json", "ev.json"],
    ]
    out = []
    for step in steps:
        r = run(venv, "-m", "blurset", *step, cwd=tmp_path)
        assert r.returncode == 0, f"blurset {' '.join(step)}:\n{r.stdout}\n{r.stderr}"
        out.append(r.stdout)
    assert "OK" in out[5]
    assert (tmp_path / "ws" / "releases" / "cuhk-s" / "1.0.0" / "README.md").is_file()  # the card
    numbers = json.loads((tmp_path / "ev.json").read_text())
    assert 0.0 <= numbers["mae"] <= 1.0 and 0.0 <= numbers["max_f"] <= 1.0
    assert {"laplacian", "lbp"} <= set(numbers["others"])  # the baselines scored beside it
