"""Fault injection (issue 11): ``blurset`` run in a subprocess, killed with SIGKILL at a chosen
point, then run again: the re-run ends in the state of a run never killed, with no litter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_hostile import write_cuhk

from blurset.fileio import remove_stale_temps, tmp_prefix
from blurset.pipeline import release as R
from blurset.pipeline.workspace import Workspace

pytestmark = pytest.mark.integration  # each run starts Prefect in a subprocess

# Runs the CLI with one function replaced by a version that kills the process (SIGKILL: no
# cleanup, no finally) at its Nth call, after doing what the real one does up to that point.
DRIVER = textwrap.dedent('''
    import os, signal, sys, tempfile
    point, nth = os.environ["KILL_AT"], int(os.environ["KILL_NTH"])
    calls = [0]

    def due():
        calls[0] += 1
        return calls[0] >= nth

    if point == "object":  # an object's temporary file written, not yet renamed
        from blurset import fileio
        from blurset.pipeline import store
        real = store.atomic_write
        def killing(path, data, **kw):
            if due():
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, _ = tempfile.mkstemp(dir=path.parent, prefix=fileio.tmp_prefix(),
                                         suffix=path.suffix)
                os.write(fd, data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            return real(path, data, **kw)
        store.atomic_write = killing
    elif point == "card":  # every shard written in the temporary release folder
        from blurset.pipeline.release import build
        real = build._write_card_and_manifest
        def killing(*a, **kw):
            if due():
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **kw)
        build._write_card_and_manifest = killing
    elif point == "import":  # Label Studio holds the batch's tasks, the catalog does not yet
        from blurset.annotation.client import Client
        real = Client.import_tasks
        def killing(self, *a, **kw):
            ids = real(self, *a, **kw)
            if due():
                os.kill(os.getpid(), signal.SIGKILL)
            return ids
        Client.import_tasks = killing
    from blurset.pipeline.cli.main import main
    sys.argv = ["blurset", *sys.argv[1:]]
    main()
''')


def blurset(tmp_path: Path, *args: str, kill_at: str | None = None, nth: int = 1
            ) -> subprocess.CompletedProcess:
    """Run the CLI in its own session; after it ends, whatever it left running (Prefect's
    server) is stopped too."""
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "KILL_AT": kill_at or "", "KILL_NTH": str(nth),  # (Label Studio's too)
           "PREFECT_HOME": str(tmp_path / "prefect-home")}
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as fo, err.open("w") as fe:  # files, not pipes: an orphan may hold them
        p = subprocess.Popen([sys.executable, str(driver), *args], env=env, stdout=fo,
                             stderr=fe, start_new_session=True)
        survivors = False
        try:
            p.wait(timeout=300)
            survivors = _session_alive(p.pid, wait=20.0)
        finally:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # only this run's session
            except ProcessLookupError:
                pass
            p.wait()
    result = subprocess.CompletedProcess(p.args, p.returncode, out.read_text(), err.read_text())
    result.survivors = survivors  # a process of the run (Prefect's server) outlived it
    return result


def _session_alive(pgid: int, wait: float) -> bool:
    """Whether a process of group ``pgid`` is still running after ``wait`` seconds."""
    import time
    deadline = time.monotonic() + wait
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.2)


def litter(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".tmp-*"))


def test_remove_stale_temps_keeps_the_files_of_live_processes(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "ab").mkdir()
    stale = tmp_path / "ab" / f".tmp-{dead}-x.jpg"
    stale.write_bytes(b"half")
    mine = tmp_path / "ab" / f"{tmp_prefix()}y.jpg"
    mine.write_bytes(b"being written")
    folder = tmp_path / f".tmp-{dead}-1.0.0-abc"
    (folder / "data").mkdir(parents=True)
    assert remove_stale_temps(tmp_path, depth=1) == 2
    assert not stale.exists() and not folder.exists() and mine.exists()


def test_ingest_killed_mid_object_then_rerun(tmp_path):
    src = write_cuhk(tmp_path / "src", n=6)
    ws = tmp_path / "ws"
    args = ["-w", str(ws), "ingest", "--kind", "cuhk", "--name", "c", str(src),
            "--batch-size", "1"]
    killed = blurset(tmp_path, *args, kill_at="object", nth=5)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not killed.survivors, "Prefect's server outlived the killed command"
    assert litter(ws / "objects"), "the kill point left no temporary file"
    again = blurset(tmp_path, *args)
    assert again.returncode == 0, again.stderr
    assert litter(ws) == []
    catalog = Workspace.open(ws).catalog()
    counts = catalog.counts()
    catalog.close()
    assert counts["images"] == 6 and counts["paths"] == 6
    objects = [p for p in (ws / "objects").rglob("*") if p.is_file()]
    assert len(objects) == 12  # 6 images and their 6 masks, each once
    import hashlib
    for p in objects:
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name.split(".")[0]


def test_release_build_killed_before_its_manifest_then_rerun(tmp_path):
    src = write_cuhk(tmp_path / "src", n=4)
    ws = tmp_path / "ws"
    assert blurset(tmp_path, "-w", str(ws), "ingest", "--kind", "cuhk", "--name", "c",
                   str(src)).returncode == 0
    args = ["-w", str(ws), "release", "build", "r", "1.0.0", "--from-source", "c"]
    killed = blurset(tmp_path, *args, kill_at="card")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert litter(ws / "releases"), "the kill point left no temporary folder"
    assert R.list_releases(ws / "releases") == []
    again = blurset(tmp_path, *args)
    assert again.returncode == 0, again.stderr
    assert litter(ws) == []
    release = ws / "releases" / "r" / "1.0.0"
    assert R.verify_release(release).ok
    assert json.loads((release / "manifest.json").read_text())["rows"] == 4


def test_two_commands_starting_at_once_on_a_new_workspace(tmp_path):
    """Both would migrate Prefect's new database when their servers start; one lost (alembic:
    'expected to match one row') with a 60-line traceback."""
    ws = tmp_path / "ws"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    runs = []
    for name in ("a", "b"):
        src = write_cuhk(tmp_path / f"src-{name}", n=2)
        err = (tmp_path / f"stderr-{name}.txt").open("w")
        runs.append((subprocess.Popen(
            [sys.executable, "-m", "blurset", "-w", str(ws), "ingest", "--kind", "cuhk",
             "--name", name, str(src)], env=env, stdout=err, stderr=err,
            start_new_session=True), err, name))
    for p, err, name in runs:
        try:
            p.wait(timeout=300)
        finally:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
            err.close()
        text = (tmp_path / f"stderr-{name}.txt").read_text()
        assert p.returncode == 0 and "Traceback" not in text, text
    catalog = Workspace.open(ws).catalog()
    assert catalog.counts()["paths"] == 4
    catalog.close()


def test_push_killed_between_import_and_catalog_then_rerun(label_studio, tmp_path):
    """The dangerous window: tasks exist in Label Studio, the catalog does not know them."""
    from blurset.annotation.client import connect
    from blurset.pipeline.stages.dedup.run import run_dedup
    src = write_cuhk(tmp_path / "src", n=6)
    ws = tmp_path / "ws"
    assert blurset(tmp_path, "-w", str(ws), "ingest", "--kind", "cuhk", "--name", "c",
                   str(src)).returncode == 0
    catalog = Workspace.open(ws).catalog()
    out = run_dedup(catalog, "c")
    catalog.replace_findings("c", None, {}, out.summary, out.findings, out.exclusions)
    catalog.close()
    args = ["-w", str(ws), "annotate", "push", "--project", f"faults {tmp_path.name}",
            "--source", "c", "--batch-size", "2"]
    killed = blurset(tmp_path, *args, kill_at="import", nth=2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = blurset(tmp_path, *args)
    assert again.returncode == 0, again.stderr
    with connect() as client:
        project_id = client.find_project(f"faults {tmp_path.name}")
        by_image = client.tasks_by_image(project_id)
    assert len(by_image) == 6 and all(len(ids) == 1 for ids in by_image.values()), by_image
    catalog = Workspace.open(ws).catalog()
    assert len(catalog.tasks(label_studio.conn.url, project_id)) == 6
    catalog.close()
    assert litter(ws) == []
