"""Objects and sources on fsspec URLs: a team's workspaces on one catalog and one object store.

Unit tests use fsspec's in-memory file system; the integration tests a real S3 API (moto's
server): ingest from s3://, objects in s3://, dedup, release build and verify, and two workspaces
that build each other's ingests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from blurset.errors import NotFoundError
from blurset.pipeline import release as R
from blurset.pipeline.catalog import Catalog, SourceConflictError
from blurset.pipeline.demo.sample import write_sample
from blurset.pipeline.stages.dedup.run import run_dedup
from blurset.pipeline.stages.ingest import (
    REBIND_SAMPLE,
    SourceRootMismatch,
    bind_source,
    ingest_batch,
    items_to_ingest,
    quarantine_orphans,
)
from blurset.pipeline.stages.sources import open_source, scan_source
from blurset.pipeline.store import (
    ObjectStore,
    RemoteObjectStore,
    RemoteStoreUnsupported,
    open_store,
)
from blurset.pipeline.workspace import Workspace

KINDS = {"cuhk": "cuhk", "msra10k": "msra10k", "dut-omron": "dut-omron", "extra": "folder"}


def ingest(ws: Workspace, kind: str, name: str, location) -> dict:
    """What the ingest flow does, without Prefect: scan, bind, ingest what is new, record."""
    root = open_source(location)
    scan = scan_source(kind, root, exclude=[ws.root])
    catalog = ws.catalog()
    try:
        recorded = bind_source(catalog, name, kind, root, scan)
        todo = items_to_ingest(catalog, name, root, scan.items, 10_000_000)
        known = catalog.known_signatures(name)
        orphans = [o for o in scan.orphan_masks if o.rel_path not in known]
        if orphans:
            res = quarantine_orphans(root, orphans, ws.quarantine_store)
            catalog.record_batch(name, res.images, res.paths, res.masks, res.quarantined)
        res = ingest_batch(root, todo, ws.objects, ws.quarantine_store, 10_000_000)
        catalog.record_batch(name, res.images, res.paths, res.masks, res.quarantined)
    finally:
        catalog.close()
    return {"recorded_root": recorded, "todo": len(todo), "images": len(res.images),
            "quarantined": {q.rel_path: q.reason for q in res.quarantined}}


def upload(fs, folder: Path, url: str) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            fs.pipe_file(f"{url}/{p.relative_to(folder).as_posix()}", p.read_bytes())


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample") / "sample"
    write_sample(root)
    return root


# --------------------------------------------------------------------------------------------
# Unit: fsspec's memory file system


@pytest.fixture
def memory():
    fs = fsspec.filesystem("memory")
    yield fs
    fs.rm("/", recursive=True) if fs.ls("/") else None


def test_a_remote_store_puts_an_object_once_and_reads_it_back(memory, monkeypatch, tmp_path):
    store = open_store("memory://objects/blur/")
    assert store == RemoteObjectStore("memory://objects/blur")
    rel = store.put(b"\xff\xd8 bytes", ".jpg")
    assert rel.endswith(".jpg") and store.exists(rel) and store.read(rel) == b"\xff\xd8 bytes"
    writes = []
    monkeypatch.setattr(type(store.fs), "pipe_file",
                        lambda self, *a, **k: writes.append(a), raising=True)
    assert store.put(b"\xff\xd8 bytes", ".jpg") == rel and writes == []  # never rewritten
    with pytest.raises(NotFoundError, match="missing from the object store memory://objects"):
        store.read("ab/abcd.jpg")
    with pytest.raises(RemoteStoreUnsupported, match="does not support a remote store yet"):
        _ = store.root
    local = store.local([rel, rel], tmp_path / "cache")
    assert isinstance(local, ObjectStore) and local.read(rel) == b"\xff\xd8 bytes"
    assert (local.root / rel).stat().st_mode & 0o222 == 0  # read-only, as the local store's
    monkeypatch.setattr(type(store.fs), "cat", lambda *a, **k: pytest.fail("fetched again"))
    assert store.local([rel], tmp_path / "cache").read(rel) == b"\xff\xd8 bytes"  # cached
    # local paths and file:// URLs stay local stores
    assert open_store(f"file://{tmp_path}/o") == ObjectStore(tmp_path / "o")
    assert open_store(str(tmp_path / "x" / ".." / "o")) == ObjectStore(tmp_path / "o")


@pytest.mark.parametrize("name", list(KINDS))
def test_a_remote_source_scans_as_the_same_folder_does(sample, memory, name):
    upload(memory, sample / name, f"memory://src/{name}")
    local = scan_source(KINDS[name], sample / name)
    remote = scan_source(KINDS[name], f"memory://src/{name}")
    assert remote.items == local.items and remote.orphan_masks == local.orphan_masks
    assert remote.skipped == local.skipped
    assert local.items  # the sample holds images of every kind


def test_a_remote_source_with_the_wrong_layout_or_nothing_is_refused(sample, memory):
    from blurset.pipeline.stages.sources import LayoutError
    upload(memory, sample / "extra", "memory://src/extra")
    with pytest.raises(LayoutError, match="memory://src/extra does not look like a cuhk source"
                                          r".*missing folder memory://src/extra/image\)"):
        scan_source("cuhk", "memory://src/extra")
    with pytest.raises(LayoutError, match="holds no files"):
        scan_source("folder", "memory://src/nothing")


def test_ingest_from_a_remote_source_into_a_remote_store_matches_a_local_ingest(
        sample, memory, tmp_path):
    upload(memory, sample / "extra", "memory://src/extra")
    here = Workspace.open(tmp_path / "local")
    there = Workspace.open(tmp_path / "remote", objects_url="memory://objects")
    a = ingest(here, "folder", "extra", sample / "extra")
    b = ingest(there, "folder", "extra", "memory://src/extra")
    assert a["quarantined"] == b["quarantined"] and a["quarantined"]  # same rules, same reasons
    assert a["images"] == b["images"] > 0
    ca, cb = here.catalog(), there.catalog()
    try:
        rows_a = {r["rel_path"]: r["image_id"] for r in ca.paths_of("extra")}
        rows_b = {r["rel_path"]: r["image_id"] for r in cb.paths_of("extra")}
        assert rows_a == rows_b
        for r in cb.paths_of("extra"):
            obj = cb.image(r["image_id"])["object_path"]
            assert there.objects.read(obj) == here.objects.read(obj)
        assert not (tmp_path / "remote" / "objects").exists()
        # a second run reads nothing: the signatures (size and ETag) are the same
        assert ingest(there, "folder", "extra", "memory://src/extra")["todo"] == 0
        other = (sample / "extra" / "IMG_0042.JPG").read_bytes()
        memory.pipe_file("memory://src/extra/gray.jpg", other)
        assert ingest(there, "folder", "extra", "memory://src/extra")["todo"] == 1
    finally:
        ca.close()
        cb.close()


# --------------------------------------------------------------------------------------------
# A source bound to another root


def test_the_same_files_under_another_root_are_accepted_and_other_files_refused(sample, tmp_path,
                                                                               memory):
    ws = Workspace.open(tmp_path / "ws")
    mine = tmp_path / "mine" / "cuhk"
    shutil.copytree(sample / "cuhk", mine)
    first = ingest(ws, "cuhk", "cuhk", mine)
    assert first["recorded_root"] is None and first["images"] == 20
    # a teammate's mount of the same files (other mtimes), and the same files on S3
    theirs = tmp_path / "theirs" / "cuhk"
    shutil.copytree(sample / "cuhk", theirs, copy_function=shutil.copy)
    again = ingest(ws, "cuhk", "cuhk", theirs)
    assert again["recorded_root"] == str(mine)
    assert again["images"] == 20 and not again["quarantined"]  # re-read (other signatures)
    upload(memory, sample / "cuhk", "memory://src/cuhk")
    assert ingest(ws, "cuhk", "cuhk", "memory://src/cuhk")["recorded_root"] == str(mine)
    catalog = ws.catalog()
    try:
        assert catalog.source("cuhk")["root"] == str(mine)  # the first root stays recorded
        assert catalog.counts()["images"] == 20
        ids = {r["rel_path"]: r["image_id"] for r in catalog.paths_of("cuhk")}
    finally:
        catalog.close()

    def refused(change, match):
        other = tmp_path / f"other-{match[:5]}" / "cuhk"
        shutil.copytree(sample / "cuhk", other)
        change(other)
        with pytest.raises(SourceRootMismatch, match=match):
            ingest(ws, "cuhk", "cuhk", other)

    first_image = min(ids)
    refused(lambda o: (o / first_image).unlink(), "1 of its 20 images are not there")
    refused(lambda o: (o / first_image).write_bytes((o / first_image).read_bytes() + b"\0"),
            "bytes there")
    # same size, other bytes: the sample of files read catches it (here 20 files, every
    # 20 // REBIND_SAMPLE-th is read)
    step = 20 // REBIND_SAMPLE

    def flip(o: Path) -> None:
        p = o / sorted(ids)[step]
        data = bytearray(p.read_bytes())
        data[-3] ^= 0xFF
        p.write_bytes(bytes(data))
    refused(flip, "other content there")
    with pytest.raises(SourceConflictError, match="kind cuhk"):
        ingest(ws, "folder", "cuhk", theirs)
    catalog = ws.catalog()
    try:
        assert {r["rel_path"]: r["image_id"] for r in catalog.paths_of("cuhk")} == ids
    finally:
        catalog.close()


# --------------------------------------------------------------------------------------------
# Integration: S3 on moto's server


def release_ids(path: Path) -> list[str]:
    return sorted(pq.read_table(path / "data", columns=["id"]).column("id").to_pylist())


@pytest.mark.integration
def test_ingest_dedup_release_build_and_verify_from_s3(sample, s3, tmp_path):
    for name in ("cuhk", "msra10k"):
        upload(s3, sample / name, f"s3://sources/{name}")
    ws = Workspace.open(tmp_path / "ws", objects_url="s3://objects/blur")
    for name in ("cuhk", "msra10k"):
        out = ingest(ws, KINDS[name], name, f"s3://sources/{name}")
        assert out["images"] > 0
    stored = s3.find("objects/blur")
    catalog = ws.catalog()
    try:
        assert len(stored) >= catalog.counts()["images"]
        for r in catalog.paths_of("cuhk"):
            objs = [catalog.image(r["image_id"])["object_path"],
                    *(m["object_path"] for m in catalog.blur_masks(r["image_id"]))]
            assert len(objs) == 2 and all(f"objects/blur/{o}" in stored for o in objs)
        assert not (tmp_path / "ws" / "objects").exists()
        dedup = run_dedup(catalog, "cuhk")
        catalog.replace_findings("cuhk", None, {}, dedup.summary, dedup.findings,
                                 dedup.exclusions)
        assert dedup.findings  # the sample plants copies of references among the candidates
        info = R.build_release(ws, catalog, R.ReleaseSpec("cuhk", "1.0.0", from_sources=["cuhk"]))
    finally:
        catalog.close()
    assert info.rows == 20 and R.verify_release(info.path).ok
    # the release holds the bytes in S3, fetched once into the workspace's cache
    table = pq.read_table(info.path / "data")
    for row in table.select(["id", "image"]).to_pylist()[:3]:
        assert any(s3.cat_file(p) == row["image"]["bytes"] for p in stored if row["id"] in p)
    assert (tmp_path / "ws" / "cache" / "objects").is_dir()
    # an object gone from the store (and the cache) is named, and no release is left behind
    first = table.column("id")[0].as_py()
    gone = next(p for p in stored if p.split("/")[-1].startswith(first))
    s3.rm(gone)
    shutil.rmtree(tmp_path / "ws" / "cache")
    catalog = ws.catalog()
    try:
        with pytest.raises(R.ReleaseError, match=f"{gone.split('/')[-1]} is missing from the "
                                                 "object store s3://objects/blur; re-ingest"):
            R.build_release(ws, catalog, R.ReleaseSpec("cuhk", "1.0.1", from_sources=["cuhk"]))
    finally:
        catalog.close()
    assert not (tmp_path / "ws" / "releases" / "cuhk" / "1.0.1").exists()


@pytest.mark.integration
def test_two_workspaces_on_one_catalog_and_one_store_build_each_others_ingests(sample, s3,
                                                                             tmp_path):
    # the CUHK sample split in two sources; one teammate ingests from S3, the other from a folder
    halves = {"a": tmp_path / "a" / "cuhk", "b": tmp_path / "b" / "cuhk"}
    images = sorted((sample / "cuhk" / "image").iterdir())
    for i, img in enumerate(images):
        half = halves["a" if i % 2 else "b"]
        for sub, p in (("image", img), ("gt", sample / "cuhk" / "gt" / f"{img.stem}.png")):
            (half / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, half / sub / p.name)
    upload(s3, halves["a"], "s3://sources/cuhk-a")
    team = f"sqlite:///{tmp_path / 'team.sqlite'}"
    alice = Workspace.open(tmp_path / "alice", team, objects_url="s3://objects/team")
    bob = Workspace.open(tmp_path / "bob", team, objects_url="s3://objects/team")
    assert ingest(alice, "cuhk", "cuhk-a", "s3://sources/cuhk-a")["images"] == 10
    assert ingest(bob, "cuhk", "cuhk-b", halves["b"])["images"] == 10
    # each builds the other's source; the second time neither gives the URLs: remembered
    built = {}
    for who, source in (("alice", "cuhk-b"), ("bob", "cuhk-a")):
        ws = Workspace.open(tmp_path / who)
        assert (ws.catalog_url, ws.objects_url) == (team, "s3://objects/team")
        catalog = ws.catalog()
        try:
            info = R.build_release(ws, catalog, R.ReleaseSpec(source, "1.0.0",
                                                              from_sources=[source]))
        finally:
            catalog.close()
        assert info.rows == 10 and R.verify_release(info.path).ok
        built[source] = release_ids(info.path)
    catalog = Catalog(team)
    try:
        for source, ids in built.items():
            assert ids == sorted({r["image_id"] for r in catalog.paths_of(source)})
        assert {r["name"] for r in catalog.releases()} == {"cuhk-a", "cuhk-b"}
    finally:
        catalog.close()
    # Bob re-ingests Alice's source from his own copy of the same files: accepted, nothing new
    shutil.copytree(halves["a"], tmp_path / "bob-mount" / "cuhk")
    again = ingest(Workspace.open(tmp_path / "bob"), "cuhk", "cuhk-a",
                   tmp_path / "bob-mount" / "cuhk")
    assert again["recorded_root"] == "s3://sources/cuhk-a" and not again["quarantined"]
    catalog = Catalog(team)
    try:
        assert catalog.counts()["images"] == 20  # the same images: nothing new
        assert catalog.source("cuhk-a")["root"] == "s3://sources/cuhk-a"
    finally:
        catalog.close()
    # forgetting nothing but giving another catalog is refused, naming the remembered one
    from blurset.pipeline.workspace import WorkspaceUrlConflict
    with pytest.raises(WorkspaceUrlConflict, match="team.sqlite"):
        Workspace.open(tmp_path / "bob", f"sqlite:///{tmp_path / 'solo.sqlite'}")


@pytest.mark.integration
def test_the_flows_ingest_from_s3_into_s3_and_build_the_release(prefect_harness, sample, s3,
                                                                 tmp_path):
    from blurset.pipeline import flows
    upload(s3, sample / "cuhk", "s3://sources/cuhk")
    ws = tmp_path / "ws"
    first = flows.ingest_flow(ws, "cuhk", "cuhk", "s3://sources/cuhk", batch_size=8,
                              objects_url="s3://objects/blur", show_progress=False)
    assert (first.found, first.ingested, first.quarantined_now) == (20, 20, 0)
    again = flows.ingest_flow(ws, "cuhk", "cuhk", "s3://sources/cuhk", show_progress=False)
    assert again.new_or_changed == 0  # the remembered store, and the same ETags
    assert len(s3.find("objects/blur")) == 40 and not (ws / "objects").exists()  # images, masks
    info = flows.release_flow(ws, R.ReleaseSpec("cuhk", "1.0.0", from_sources=["cuhk"]),
                              show_progress=False)
    assert info.rows == 20 and R.verify_release(info.path).ok
