"""Flows on a Dask cluster (``--dask-address``): dedup's verification through an executor gives
the same verdicts; ingest, dedup and release build of the bundled sample on a real
``distributed.LocalCluster`` leave the same catalog and the same release as a local run; a
release's shards written one task each on the cluster are the same files; the option's refusals
are one line."""

from __future__ import annotations

import io
import json
import re
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prefect_server import clean_env

from blurset.pipeline.stages import dedup
from blurset.pipeline.stages.dedup import HashRecord, find_duplicates
from blurset.pipeline.stages.dedup.search import BlockIndex
from blurset.pipeline.stages.hashing import hash_opened

SOURCES = (("cuhk", "cuhk"), ("msra10k", "msra10k"), ("dut-omron", "dut-omron"),
           ("folder", "extra"))


def jpeg_record(key: str, image: Image.Image, quality: int) -> HashRecord:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as im:
        return HashRecord(key, hash_opened(im))


@pytest.fixture(scope="module")
def look_alikes() -> list[HashRecord]:
    """Smooth random colour fields (the search pairs many; the verification rejects them) and a
    re-encoded, slightly resized copy of every fourth one (duplicates)."""
    rng = np.random.default_rng(3)
    records = []
    for i in range(160):
        field = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(
            (96, 72), Image.Resampling.BICUBIC)
        records.append(jpeg_record(f"field-{i}", field, 90))
        if i % 4 == 0:
            records.append(jpeg_record(f"field-{i}~copy", field.resize((90, 68)), 70))
    return records


class CountingExecutor(Executor):
    """A thread pool that counts the tasks it is given, by function."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(2)
        self.calls: dict[str, int] = {}

    def submit(self, fn, /, *args, **kwargs):
        self.calls[fn.__name__] = self.calls.get(fn.__name__, 0) + 1
        return self.pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait=True, **kwargs):
        self.pool.shutdown(wait)


def test_verification_through_an_executor_gives_the_same_verdicts(look_alikes, monkeypatch):
    local = find_duplicates(look_alikes[:20], look_alikes[20:], workers=1)
    verdicts = {m.verdict for m in local}
    assert {"duplicate", "rejected"} <= verdicts, "the set no longer has both verdicts"
    monkeypatch.setattr(dedup, "_CHUNK", 7)  # many chunks, each carrying its own thumbs
    monkeypatch.setattr(dedup.search, "_SHARD", 16)  # and many search shards
    executor = CountingExecutor()
    with executor:
        remote = find_duplicates(look_alikes[:20], look_alikes[20:], executor=executor,
                                 index="flat")
    assert remote == local
    assert executor.calls["_verify_packed"] == -(-len(local) // 7)
    n_ref, n_cand = 20, len(look_alikes) - 20  # references, then candidates, as query shards
    assert executor.calls["_flat_shard"] == -(-n_ref // 16) + -(-n_cand // 16)
    with CountingExecutor() as executor:  # block-index shards and first-duplicate rounds
        first = find_duplicates(look_alikes[:20], look_alikes[20:], executor=executor,
                                index="blocks", verify_pairs="first")
    assert first == find_duplicates(look_alikes[:20], look_alikes[20:], workers=1,
                                    index="blocks", verify_pairs="first")
    assert executor.calls["_block_shard"] == -(-n_ref // 16) + -(-n_cand // 16)


def test_a_worker_builds_the_block_index_once_per_database(monkeypatch):
    rng = np.random.default_rng(5)
    database = rng.integers(0, 2**63, 300, dtype=np.uint64)
    # query image i (also database row i, so never its own hit) is 2 bits from row i + 1
    queries = np.roll(database, -1)[:, None] ^ np.uint64(0b101)
    built = []
    monkeypatch.setattr(dedup.search, "BlockIndex",  # counts builds; this module's BlockIndex
                        lambda db: built.append(len(db)) or BlockIndex(db))  # is the real one
    monkeypatch.setattr(dedup.search, "_WORKER_INDEX", {})
    first = dedup.search._block_shard(queries[:100], database, 4, 0, 0)
    second = dedup.search._block_shard(queries[100:], database, 4, 100, 0)
    assert built == [300]  # the second shard reuses the index
    assert len(first[0]) == 100 and len(second[0]) == 200
    assert (first[0] == 2).all() and (first[3] == first[1] + 1).all()
    assert (second[3] == (second[1] + 101) % 300).all()  # shard-local queries, global rows
    dedup.search._block_shard(queries[:10], database[:50], 4, 0, 0)
    assert built == [300, 50] and len(dedup.search._WORKER_INDEX) == 1


def test_a_packed_chunk_carries_only_the_thumbs_it_needs(look_alikes):
    matches = find_duplicates([], look_alikes, workers=1)
    assert len(matches) > 10
    thumbs = np.arange(len(look_alikes) * 4, dtype=np.uint8).reshape(len(look_alikes), 2, 2)
    hit = dedup.search._Hit(distance=3, query=17, variant=0, target=5)
    sub, chromas, jobs = dedup._packed_chunk(thumbs, [f"c{i}" for i in range(len(thumbs))],
                                             [(5, 17, [hit])])
    assert sub.shape[0] == 2 and chromas == ["c5", "c17"]
    (earlier, later, (moved,)), = jobs
    assert (earlier, later, moved.target, moved.query) == (0, 1, 0, 1)
    assert (sub[moved.target] == thumbs[5]).all() and (sub[moved.query] == thumbs[17]).all()


def blurset(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blurset.pipeline.cli.main", *args], cwd=cwd,
                          env=env, capture_output=True, check=False, text=True, timeout=600)


def test_an_unreachable_scheduler_is_one_error_line(tmp_path):
    """(given as $BLURSET_DASK_ADDRESS)"""
    from prefect_server import free_port
    r = blurset("-w", str(tmp_path / "ws"), "dedup", "--reference", "cuhk", cwd=tmp_path,
                env=clean_env(BLURSET_DASK_ADDRESS=f"tcp://127.0.0.1:{free_port()}"))
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: cannot reach the Dask scheduler"), lines
    assert "dask scheduler" in lines[0]


def test_a_malformed_address_is_refused(tmp_path):
    r = blurset("-w", str(tmp_path / "ws"), "--dask-address", "127.0.0.1", "dedup",
                "--reference", "cuhk", cwd=tmp_path, env=clean_env())
    assert r.returncode == 1 and "not a scheduler address" in r.stderr, r.stderr


def test_missing_prefect_dask_says_what_to_install(monkeypatch):
    from blurset.pipeline.cli import context
    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # import fails as if not installed
    with pytest.raises(context.DaskError, match=re.escape("pip install 'blurset[dask]'")):
        context.dask_task_runner("tcp://127.0.0.1:8786")


# --- on a real cluster ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                      dashboard_address=None, host="127.0.0.1") as c, Client(c) as client:
        yield c.scheduler_address, client


def pipeline_run(root: Path, sample: Path, *global_args: str) -> dict[str, float]:
    """The README's pipeline through the CLI (its own workspace, Prefect home in it); the
    seconds of each command."""
    env = clean_env()
    seconds: dict[str, float] = {}
    commands = [*(["ingest", "--kind", kind, "--name", name, str(sample / name)]
                  for kind, name in SOURCES),
                ["dedup", "--reference", "cuhk"],
                ["release", "build", "sample", "1.0.0", "--from-source", "cuhk",
                 "--from-source", "msra10k", "--from-source", "dut-omron"]]
    for command in commands:
        start = time.perf_counter()
        r = blurset("-w", str(root), *global_args, *command, cwd=root.parent, env=env)
        seconds[" ".join(command[:2] if command[0] != "ingest" else command[:5:4])] = \
            time.perf_counter() - start
        assert r.returncode == 0, (command, r.stdout, r.stderr)
    return seconds


TIMESTAMPS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+00:00|Z)?")
# ids and times; a release's manifest checksum (its manifest holds its creation time)
IGNORED = {"created_at", "updated_at", "id", "run_id", "manifest_sha256"}


def catalog_dump(root: Path) -> dict[str, list[tuple]]:
    """Every table of the workspace's catalog, rows sorted, without ids and timestamps, the
    workspace's own path written WS."""
    db = sqlite3.connect(root / "catalog.sqlite")
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out = {}
        for table in tables:
            cursor = db.execute(f"SELECT * FROM {table}")  # the names come from the schema
            keep = [i for i, d in enumerate(cursor.description) if d[0] not in IGNORED]
            rows = [tuple(_normal(row[i], root) for i in keep) for row in cursor]
            out[table] = sorted(rows, key=repr)
        return out
    finally:
        db.close()


def _normal(value, root: Path):
    if isinstance(value, str):
        return TIMESTAMPS.sub("T", value.replace(str(root), "WS"))
    return value


def release_files(root: Path) -> dict[str, bytes]:
    """Every file of the release, the card and the manifest without timestamps or the
    workspace's path (the card's checksum in the manifest left out with them)."""
    base = root / "releases" / "sample" / "1.0.0"
    files = {}
    for path in sorted(p for p in base.rglob("*") if p.is_file()):
        rel = str(path.relative_to(base))
        if rel == "manifest.json.sha256":
            continue  # the checksum of the manifest, whose creation time differs
        data = path.read_bytes()
        if rel in ("README.md", "manifest.json"):
            data = _normal(data.decode(), root).encode()
        if rel == "manifest.json":
            manifest = json.loads(data)
            for entry in manifest["files"]:
                if entry["path"] == "README.md":
                    del entry["sha256"]
            data = json.dumps(manifest, sort_keys=True).encode()
        files[rel] = data
    return files


@pytest.mark.integration
def test_the_sample_on_a_dask_cluster_equals_a_local_run(tmp_path, cluster):
    address, client = cluster
    sample = tmp_path / "sample"
    subprocess.run([sys.executable, "-m", "blurset.pipeline.cli.main", "sample", str(sample)],
                   check=True, capture_output=True, env=clean_env())
    local = pipeline_run(tmp_path / "local", sample)
    on_dask = pipeline_run(tmp_path / "dask", sample, "--dask-address", address)

    print("seconds local:", json.dumps(local), "dask:", json.dumps(on_dask),
          f"ratio (dask/local, total): {sum(on_dask.values()) / sum(local.values()):.2f}")
    local_catalog, dask_catalog = catalog_dump(tmp_path / "local"), catalog_dump(tmp_path / "dask")
    assert len(local_catalog["images"]) > 50 and local_catalog["duplicate_findings"]
    assert [r for r in local_catalog["image_paths"] if r[-1]], "no path was excluded"
    assert dask_catalog == local_catalog
    local_release = release_files(tmp_path / "local")
    assert any(name.endswith(".parquet") for name in local_release)
    assert release_files(tmp_path / "dask") == local_release
    # the work ran on the cluster, each piece a Prefect task run: hashing batches, search
    # shards, verification chunks, the release's shards
    ran = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert {"ingest_batch_task", "piece_task"} <= set(ran), ran
    # with no server configured, each command kept Prefect in its workspace
    prefect_db = tmp_path / "dask" / ".prefect" / "prefect.db"
    assert prefect_db.is_file()
    db = sqlite3.connect(prefect_db)
    try:
        runs = [(name, state) for name, state in db.execute("SELECT name, state_type FROM task_run")]
    finally:
        db.close()
    kinds = {name.rsplit("-", 1)[0] for name, _ in runs}
    assert {"flat-shard", "verify-packed", "write-planned-shard"} <= kinds, sorted(kinds)
    pieces = [state for name, state in runs
              if name.rsplit("-", 1)[0] in ("flat-shard", "verify-packed", "write-planned-shard")]
    assert set(pieces) == {"COMPLETED"}, pieces


@pytest.mark.integration
def test_block_index_shards_on_the_cluster_find_the_same_pairs(look_alikes, cluster):
    """The search above 10^5 images (the block index), sharded over the workers' processes."""
    _, client = cluster
    local = find_duplicates(look_alikes[:20], look_alikes[20:], workers=1, index="blocks")
    assert len(local) > 10
    remote = find_duplicates(look_alikes[:20], look_alikes[20:], index="blocks",
                             executor=client.get_executor())
    assert remote == local
    ran = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert "block_shard" in ran, ran


# (after the sample's run: its check of the scheduler's task prefixes sees the CLI's shards)
def shard_candidates(ws) -> list:
    """24 images (noise JPEGs of different sizes) with their masks in ``ws``'s object store, as
    release candidates; half carry their blur degree, half leave it to the mask."""
    from blurset.pipeline.release.select import Candidate
    rng = np.random.default_rng(5)
    out = []
    for i in range(24):
        w, h = 40 + 7 * i, 30 + 5 * (i % 5)
        jpeg, png = io.BytesIO(), io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(jpeg, "JPEG")
        Image.fromarray(rng.integers(0, 2, (h, w), dtype=np.uint8) * 255).save(png, "PNG")
        out.append(Candidate(
            image_id=f"{i:04d}", source="synthetic", source_path=f"imgs/{i}.jpg",
            mask_object=ws.objects.put(png.getvalue(), ".png"), mask_origin="ground-truth",
            blur_type="motion" if i % 3 else "defocus", blur_degree=None if i % 2 else i / 24,
            annotators=("a",), annotation_ids=(i,), width=w, height=h, phash=f"{i:016x}",
            object_path=ws.objects.put(jpeg.getvalue(), ".jpg")))
    return out


def write_all(ws, rows, folder: Path, **kwargs):
    from blurset.pipeline.release.shards import object_sizes, write_shards
    (folder / "data").mkdir(parents=True)
    assigned = {c.image_id: ("train" if int(c.image_id) % 4 else "test") for c in rows}
    done: list[int] = []
    written = write_shards(folder, rows, assigned, ["train", "test"], ws, object_sizes(ws, rows),
                           shard_bytes=8_000, row_group_rows=2, progress=done.append, **kwargs)
    assert sum(done) == len(rows)
    return written


def test_shards_written_one_task_each_on_the_cluster_are_the_local_ones(tmp_path, cluster):
    from blurset.pipeline.release.errors import ReleaseError
    from blurset.pipeline.release.shards import sha256_file
    from blurset.pipeline.workspace import Workspace
    _address, client = cluster
    ws = Workspace.open(tmp_path / "ws")
    rows = shard_candidates(ws)
    local = write_all(ws, rows, tmp_path / "local")
    assert len(local.shards) >= 8 and {s.split for s in local.shards} == {"train", "test"}
    remote = write_all(ws, rows, tmp_path / "dask", executor=client.get_executor())
    assert remote == local  # paths, rows, bytes, sha256 in order; the index and blur degrees
    files = {p.relative_to(tmp_path / "local"): p.read_bytes()
             for p in sorted((tmp_path / "local").rglob("*.parquet"))}
    assert files == {p.relative_to(tmp_path / "dask"): p.read_bytes()
                     for p in sorted((tmp_path / "dask").rglob("*.parquet"))}
    assert [sha256_file(tmp_path / "dask" / s.path) for s in remote.shards] == \
        [s.sha256 for s in local.shards]
    # a corrupt object stops the build with the worker's error, as it does locally
    bad = ws.objects.root / rows[-1].object_path
    bad.chmod(0o644)
    bad.write_bytes(bad.read_bytes()[:-10] + bytes(10))
    with pytest.raises(ReleaseError, match="is corrupt"):
        write_all(ws, rows, tmp_path / "broken", executor=client.get_executor())
