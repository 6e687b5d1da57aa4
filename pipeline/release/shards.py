"""Writing a release's Parquet shards: rows sorted by id, no timestamps (same inputs, same bytes),
images and masks copied from the object store straight into Arrow buffers, each shard hashed
while it is written."""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from blurset.model.release_format import IMAGE, SCHEMA, shard_path
from blurset.pipeline.release.errors import ReleaseError
from blurset.pipeline.release.select import Candidate
from blurset.pipeline.stages.ingest import DECODE_ERRORS, exif_orientation
from blurset.pipeline.workspace import Workspace

DEFAULT_SHARD_BYTES = 256 * 2**20
ROW_GROUP_ROWS = 64  # images per row group, or fewer when they reach ROW_GROUP_BYTES
ROW_GROUP_BYTES = 8 * 2**20
_BYTES_COLUMNS = ("image.bytes", "mask.bytes")  # already compressed (JPEG, PNG): stored as is


def _leaf_columns(schema: pa.Schema) -> list[str]:
    out = []
    for f in schema:
        if pa.types.is_struct(f.type):
            out += [f"{f.name}.{c.name}" for c in f.type]
        elif pa.types.is_list(f.type):
            out.append(f"{f.name}.list.element")
        else:
            out.append(f.name)
    return out


_SMALL = [c for c in _leaf_columns(SCHEMA) if c not in _BYTES_COLUMNS]
_WRITER_OPTIONS: dict[str, Any] = {
    # Images and masks are compressed already (JPEG, PNG), and the other columns are a few dozen
    # bytes a row: no compression (it would cost time and save nothing); bytes columns have no
    # dictionary and no statistics.
    "compression": "NONE",
    "use_dictionary": ["blur_type", "source", "split", "annotators.list.element"],
    "write_statistics": [c for c in _SMALL if not c.endswith(".path")],
    "write_page_index": False,
    "sorting_columns": [pq.SortingColumn(0)],  # rows sorted by id
}


@dataclass(frozen=True)
class ShardInfo:
    """A written shard, as the manifest lists it."""

    path: str  # relative to the release folder
    split: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class WrittenShards:
    """What :func:`write_shards` wrote."""

    shards: list[ShardInfo]
    index: dict[str, tuple[str, str]]  # image id → (split, sha256 of the mask bytes)
    degrees: dict[str, float]  # image id → blur degree


def sha256_file(path: Path, chunk: int = 4 * 2**20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def object_sizes(ws: Workspace, rows: Sequence[Candidate]) -> dict[str, int]:
    """{image id: bytes of its image and mask objects}; every object must be in the store."""
    sizes = {}
    for c in rows:
        try:
            sizes[c.image_id] = ((ws.objects.root / c.object_path).stat().st_size
                                 + (ws.objects.root / c.mask_object).stat().st_size)
        except FileNotFoundError as e:
            raise ReleaseError(f"object {e.filename} of image {c.source}/{c.source_path} is "
                               f"missing from the object store {ws.objects.root}; re-ingest "
                               "the source to restore it") from None
    return sizes


def _plan_shards(rows: Sequence[tuple[Candidate, int]], shard_bytes: int) -> list[list[Candidate]]:
    shards: list[list[Candidate]] = [[]]
    size = 0
    for cand, nbytes in rows:
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(cand)
        size += nbytes
    return shards


def _row_groups(rows: Sequence[Candidate], sizes: Mapping[str, int],
                max_rows: int) -> Iterator[list[Candidate]]:
    group: list[Candidate] = []
    size = 0
    for cand in rows:
        if group and (len(group) >= max_rows or size + sizes[cand.image_id] > ROW_GROUP_BYTES):
            yield group
            group, size = [], 0
        group.append(cand)
        size += sizes[cand.image_id]
    if group:
        yield group


def _blur_degree(cand: Candidate, mask: bytes | memoryview) -> float:
    if cand.blur_degree is not None:
        return float(cand.blur_degree)
    with Image.open(io.BytesIO(mask)) as im:
        return float(np.asarray(im.convert("L"), dtype=np.float64).mean() / 255.0)


def image_header(data: bytes | memoryview) -> tuple[int, tuple[int, int]]:
    """(EXIF orientation 1-8, 1 when absent; stored size) of image bytes, read from the header
    without decoding pixels. Raises the decoder's error (OSError, ValueError, …) when the header
    cannot be read."""
    with Image.open(io.BytesIO(data)) as im:
        return exif_orientation(im), im.size


def _orientation(rel: str, data: memoryview) -> int:
    try:
        return image_header(data)[0]
    except DECODE_ERRORS as e:
        raise ReleaseError(f"object {rel}: its image header cannot be read for the EXIF "
                           f"orientation ({e}); nothing was released. Quarantine or remove the "
                           "image from its source, re-ingest, and build again") from None


def _check_object(rel: str, data: memoryview) -> None:
    """An object's bytes must hash to its name (the store is content-addressed): a corrupt one
    never enters an immutable release."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != posixpath.basename(rel).split(".", 1)[0]:
        raise ReleaseError(f"object {rel} is corrupt: its bytes hash to {digest}, not to its "
                           "name; nothing was released. Copy the original file (the image or mask "
                           "its catalog row names) over it and build again")


class _GroupReader:
    """Reads a row group's image and mask objects straight into an Arrow buffer.

    Two buffers take turns (one being filled for the next row group while the other is encoded)
    and are reused: a row group is written out in full before its buffer is filled again, and
    not copying or page-faulting a fresh buffer per group is most of the speed of a shard.
    """

    def __init__(self, root: str):
        self.root = root
        self._buffers = [np.empty(0, np.uint8), np.empty(0, np.uint8)]

    def read(self, slot: int, group: Sequence[Candidate]
             ) -> tuple[pa.BinaryArray, pa.BinaryArray, list[memoryview], list[int]]:
        rels = [c.object_path for c in group] + [c.mask_object for c in group]
        buf = self._buffers[slot]
        offsets = np.zeros(len(rels) + 1, np.int64)
        pos = 0
        for i, rel in enumerate(rels):
            with open(os.path.join(self.root, rel), "rb", buffering=0) as fh:
                size = os.fstat(fh.fileno()).st_size
                if pos + size > len(buf):
                    grown = np.empty(max(pos + size, 2 * len(buf), 2**20), np.uint8)
                    grown[:pos] = buf[:pos]
                    buf = self._buffers[slot] = grown
                view = memoryview(buf)
                end = pos + size
                while pos < end and (n := fh.readinto(view[pos:end])):
                    pos += n
                if pos != end:
                    raise ReleaseError(f"object {rel} ended after {pos - int(offsets[i])} of "
                                       f"its {size} bytes while being read")
                _check_object(rel, view[int(offsets[i]):end])
            offsets[i + 1] = pos
        n, split_at = len(group), int(offsets[len(group)])
        if pos >= 2**31:
            raise ReleaseError(f"a row group of {pos} bytes: lower row_group_rows")

        def binary(lo: int, hi: int, off: np.ndarray) -> pa.BinaryArray:
            return pa.Array.from_buffers(pa.binary(), len(off) - 1, [
                None, pa.py_buffer((off - lo).astype(np.int32)), pa.py_buffer(buf[lo:hi])])
        view = memoryview(buf)
        mask_views = [view[int(offsets[n + i]):int(offsets[n + i + 1])] for i in range(n)]
        orientations = [_orientation(rels[i], view[int(offsets[i]):int(offsets[i + 1])])
                        for i in range(n)]
        return (binary(0, split_at, offsets[:n + 1]), binary(split_at, pos, offsets[n:]),
                mask_views, orientations)


def _group_table(group: Sequence[Candidate], images_: pa.BinaryArray, masks_: pa.BinaryArray,
                 orientations: list[int], degrees: list[float], split: str) -> pa.Table:
    n = len(group)
    names = [posixpath.basename(c.source_path) for c in group]

    def struct(data: pa.BinaryArray, paths: list[str]) -> pa.StructArray:
        return pa.StructArray.from_arrays([data, pa.array(paths, pa.string())],
                                          fields=list(IMAGE))
    return pa.Table.from_arrays([
        pa.array([c.image_id for c in group], pa.string()),
        struct(images_, names),
        struct(masks_, [posixpath.splitext(name)[0] + ".png" for name in names]),
        pa.array([c.width for c in group], pa.int32()),
        pa.array([c.height for c in group], pa.int32()),
        pa.array(orientations, pa.uint8()),
        pa.array([c.blur_type for c in group], pa.string()),
        pa.array([c.source for c in group], pa.string()),
        pa.array([c.source_path for c in group], pa.string()),
        pa.array([split] * n, pa.string()),
        pa.array([c.phash for c in group], pa.string()),
        pa.array([list(c.annotators) for c in group], pa.list_(pa.string())),
        pa.array([list(c.annotation_ids) for c in group], pa.list_(pa.int64())),
        pa.array(degrees, pa.float64()),
    ], schema=SCHEMA)


_FADVISE = hasattr(os, "posix_fadvise") and sys.platform.startswith("linux")


class _FileHasher:
    """sha256 of a file that is being appended to, hashed range by range in a thread of its own
    as the ranges are complete (hashlib and pread release the GIL), so a shard is hashed while
    the next row group is encoded instead of being read back at the end."""

    def __init__(self, path: Path, pool: ThreadPoolExecutor):
        self._fd = os.open(path, os.O_RDONLY)
        self._pool = pool
        self._sha = hashlib.sha256()
        self._pos = 0
        self._buffer = bytearray(2**20)  # reused: no fresh memory to fault in per range
        self._jobs: list[Future] = []

    def upto(self, end: int) -> None:
        """Hash the bytes up to ``end`` (already written) after those asked for before."""
        self._jobs.append(self._pool.submit(self._hash, end))

    def _hash(self, end: int) -> None:
        view = memoryview(self._buffer)
        start = self._pos
        while self._pos < end:
            n = os.preadv(self._fd, [view[:min(end - self._pos, len(view))]], self._pos)
            if not n:
                raise ReleaseError(f"shard ended at {self._pos} bytes, expected {end}")
            self._sha.update(view[:n])
            self._pos += n
        if _FADVISE and end > start:
            # Linux starts writing the hashed range back now (without waiting for it), so the
            # fsync that closes the shard has little left to do.
            os.posix_fadvise(self._fd, start, end - start, os.POSIX_FADV_DONTNEED)

    def hexdigest(self) -> str:
        try:
            for job in self._jobs:
                job.result()
        finally:
            os.close(self._fd)
        return self._sha.hexdigest()


def write_shard(path: Path, rows: Sequence[Candidate], split: str, ws: Workspace,
                sizes: Mapping[str, int], row_group_rows: int = ROW_GROUP_ROWS, *,
                fsync: bool = True) -> tuple[str, dict]:
    """Write one shard (a new file); returns its sha256 and {id: (mask sha256, blur degree)}.

    Three things run at once: a thread reads the next row group's objects, this one encodes the
    current group into the file (natively, without the GIL), another hashes what is written.
    ``fsync=False`` leaves the fsync to the caller (who may overlap it with the next shard).
    """
    seen: dict[str, tuple[str, float]] = {}
    objects = _GroupReader(str(ws.objects.root))
    groups = list(_row_groups(rows, sizes, row_group_rows))
    path.open("xb").close()  # a new file, never an existing one; then written natively
    with ThreadPoolExecutor(1, thread_name_prefix="release-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="release-hash") as hashing:
        def read(k: int) -> Future:  # into the buffer whose group is written out already
            return reader.submit(objects.read, k % 2, groups[k])

        hasher = _FileHasher(path, hashing)
        try:
            with pa.OSFile(str(path), mode="w") as sink, \
                    pq.ParquetWriter(sink, SCHEMA, **_WRITER_OPTIONS) as writer:
                pending = [read(0)] if groups else []
                for k, group in enumerate(groups):
                    images_, masks_, mask_bytes, orientations = pending.pop().result()
                    if k + 1 < len(groups):
                        pending.append(read(k + 1))
                    degrees = [_blur_degree(c, m) for c, m in zip(group, mask_bytes, strict=True)]
                    for c, m, d in zip(group, mask_bytes, degrees, strict=True):
                        seen[c.image_id] = (hashlib.sha256(m).hexdigest(), d)
                    table = _group_table(group, images_, masks_, orientations, degrees, split)
                    writer.write_table(table, row_group_size=len(group))
                    hasher.upto(sink.tell())
            synced = reader.submit(fsync_file, path) if fsync else None
            hasher.upto(path.stat().st_size)
        finally:
            digest = hasher.hexdigest()
        if synced is not None:
            synced.result()
    return digest, seen


@dataclass(frozen=True)
class PlannedShard:
    """A shard to write: its path (relative to the release folder), split and rows."""

    path: str
    split: str
    rows: list[Candidate]


def plan_shards(rows: Sequence[Candidate], assigned: Mapping[str, str],
                split_names: Sequence[str], sizes: Mapping[str, int],
                shard_bytes: int) -> list[PlannedShard]:
    """Every split's shards of about ``shard_bytes``, in the order they are listed."""
    planned = []
    for s in split_names:
        split_rows = [c for c in rows if assigned[c.image_id] == s]
        if not split_rows:
            continue
        shards = _plan_shards([(c, sizes[c.image_id]) for c in split_rows], shard_bytes)
        planned += [PlannedShard(shard_path(s, i, len(shards)), s, shard_rows)
                    for i, shard_rows in enumerate(shards)]
    return planned


def _write_planned_shard(path: Path, rows: Sequence[Candidate], split: str, ws: Workspace,
                         sizes: Mapping[str, int], row_group_rows: int
                         ) -> tuple[str, int, dict]:
    """One shard written and fsync'd by an executor's worker: (sha256, bytes, seen)."""
    sha, seen = write_shard(path, rows, split, ws, sizes, row_group_rows, fsync=True)
    return sha, path.stat().st_size, seen


def _write_through(executor: Executor, folder: Path, planned: Sequence[PlannedShard],
                   ws: Workspace, sizes: Mapping[str, int], row_group_rows: int,
                   progress: Callable[[int], None] | None) -> list[tuple[str, int, dict]]:
    """Each shard written by a task of ``executor``; the results in plan order."""
    futures = [executor.submit(_write_planned_shard, folder / p.path, p.rows, p.split, ws,
                               {c.image_id: sizes[c.image_id] for c in p.rows}, row_group_rows)
               for p in planned]
    rows_of = {f: len(p.rows) for f, p in zip(futures, planned, strict=True)}
    try:
        for done in as_completed(futures):
            done.result()  # the first failure stops the build
            if progress:
                progress(rows_of[done])
    except BaseException:
        for f in futures:  # what has not started does not start; what runs is waited for
            f.cancel()     # where the executor can tell (a Dask task already running ends alone)
        wait(futures)
        raise
    return [f.result() for f in futures]


def write_shards(folder: Path, rows: Sequence[Candidate], assigned: Mapping[str, str],
                 split_names: Sequence[str], ws: Workspace, sizes: Mapping[str, int],
                 shard_bytes: int, row_group_rows: int,
                 progress: Callable[[int], None] | None = None, *,
                 executor: Executor | None = None) -> WrittenShards:
    """Every split's shards of about ``shard_bytes`` under ``folder/data`` (which must exist),
    fsync'd; ``progress`` is called with the number of rows after each shard.

    ``executor`` (a Dask cluster's, or any ``concurrent.futures`` one): each shard is written by
    a task of its own, whose process must see ``folder`` and the object store at the same paths;
    the shards are the same bytes as without it (each one's bytes depend on its rows only).
    """
    planned = plan_shards(rows, assigned, split_names, sizes, shard_bytes)
    shards: list[ShardInfo] = []
    index: dict[str, tuple[str, str]] = {}
    degrees: dict[str, float] = {}

    def record(p: PlannedShard, sha: str, nbytes: int, seen: dict) -> None:
        shards.append(ShardInfo(p.path, p.split, len(p.rows), nbytes, sha))
        for image_id, (mask_sha, degree) in seen.items():
            index[image_id] = (p.split, mask_sha)
            degrees[image_id] = degree

    if executor is not None:
        results = _write_through(executor, folder, planned, ws, sizes, row_group_rows, progress)
        for p, (sha, nbytes, seen) in zip(planned, results, strict=True):
            record(p, sha, nbytes, seen)
        return WrittenShards(shards, index, degrees)
    with ThreadPoolExecutor(1, thread_name_prefix="release-fsync") as syncing:
        synced = []  # each shard is fsync'd while the next one is written
        for p in planned:
            sha, seen = write_shard(folder / p.path, p.rows, p.split, ws, sizes, row_group_rows,
                                    fsync=False)
            synced.append(syncing.submit(fsync_file, folder / p.path))
            record(p, sha, (folder / p.path).stat().st_size, seen)
            if progress:
                progress(len(p.rows))
        for done in synced:
            done.result()
    return WrittenShards(shards, index, degrees)
