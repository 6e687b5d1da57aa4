"""Building a release: select, split, write the shards, the card and the manifest in a temporary
folder, then rename it into place (a crash publishes nothing; a built version is never rebuilt)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from blurset.errors import NotFoundError
from blurset.fileio import (
    atomic_write,
    fsync_dir,
    make_read_only,
    remove_stale_temps,
    tmp_prefix,
)
from blurset.model.release_format import (
    CARD,
    DATA_DIR,
    FORMAT,
    HISTOGRAM,
    MANIFEST,
    MANIFEST_SUM,
    manifest_schema,
)
from blurset.pipeline.catalog import Catalog
from blurset.pipeline.release.card import (
    CardFacts,
    card_context,
    counts_table,
    default_template,
    histogram_png,
    render_card,
)
from blurset.pipeline.release.diff import diff_index, release_index
from blurset.pipeline.release.errors import NothingToRelease, ReleaseError, ReleaseExistsError
from blurset.pipeline.release.select import select_images
from blurset.pipeline.release.shards import (
    DEFAULT_SHARD_BYTES,
    ROW_GROUP_ROWS,
    ShardInfo,
    object_sizes,
    write_shards,
)
from blurset.pipeline.release.splits import (
    DEFAULT_SPLIT,
    SplitFile,
    parse_split,
    plan_splits,
)
from blurset.pipeline.release.versions import (
    existing_versions,
    validate_name,
    validate_version,
    version_key,
)
from blurset.pipeline.workspace import Workspace


@dataclass(frozen=True)
class ReleaseSpec:
    """What to release and how; checked when made (:class:`ReleaseError` says what is wrong).

    ``from_sources``: ground truth of these sources; ``projects``: current annotations of these
    Label Studio projects (neither: every source and project). ``split``: ratios such as
    ``"train=0.8,test=0.2"``; ``split_file``: a published split that wins over the ratios (see
    :func:`read_split_file`); ``inherit_splits``: images of the parent version keep their split.
    ``out_root`` defaults to ``WORKSPACE/releases``; ``template`` to the bundled card template.
    """

    name: str
    version: str
    from_sources: list[str] | None = None
    projects: list[str] | None = None
    split: str | Mapping[str, float] = DEFAULT_SPLIT
    split_file: SplitFile | None = None
    inherit_splits: bool = True
    shard_bytes: int = DEFAULT_SHARD_BYTES
    row_group_rows: int = ROW_GROUP_ROWS
    license: str = "other"
    out_root: str | os.PathLike | None = None
    template: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        validate_name(self.name)
        validate_version(self.version)
        parse_split(self.split)
        if not isinstance(self.shard_bytes, int) or self.shard_bytes <= 0:
            raise ReleaseError(f"shard_bytes={self.shard_bytes!r} must be a positive number of "
                               "bytes")
        if not isinstance(self.row_group_rows, int) or self.row_group_rows <= 0:
            raise ReleaseError(f"row_group_rows={self.row_group_rows!r} must be a positive "
                               "integer")

    @property
    def ratios(self) -> dict[str, float]:
        return parse_split(self.split)

    def root(self, ws: Workspace) -> Path:
        """The releases folder."""
        return Path(self.out_root) if self.out_root is not None else ws.root / "releases"


@dataclass(frozen=True)
class ReleaseInfo:
    """What :func:`build_release` wrote."""

    name: str
    version: str
    path: Path
    parent: str | None
    rows: int
    splits: dict[str, int]
    shards: list[ShardInfo]
    dropped: dict[str, int]
    manifest_sha256: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step (not stored)


def build_release(ws: Workspace, catalog: Catalog, spec: ReleaseSpec, *,
                  progress: Callable[[int], None] | None = None,
                  executor: Executor | None = None) -> ReleaseInfo:
    """Build ``<out_root>/<name>/<version>/`` (see ``docs/release-format.md``); refuse if it
    exists. ``progress`` is called with the number of rows after each shard. ``executor``: each
    shard written by a task of its own there (see :func:`write_shards`), the same bytes."""
    name, version = spec.name, spec.version
    out_root = spec.root(ws)
    final = out_root / name / version
    if final.exists():
        raise ReleaseExistsError(f"release {name} {version} already exists at {final}; a "
                                 "published version is immutable: build a new version instead")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    sel = select_images(catalog, spec.from_sources, spec.projects)
    if not sel.rows:
        raise NothingToRelease(
            f"no image with a blur mask in sources {sel.sources or '[]'} and projects "
            f"{sel.projects or '[]'} ({sel.candidates} candidate(s), {len(sel.dropped)} dropped); "
            "ingest a source with ground truth or pull annotations first")
    parent = next((v for v in reversed(existing_versions(out_root, name))
                   if version_key(v) < version_key(version)), None)
    parent_index = release_index(out_root / name / parent) if parent else {}
    inherited = {i: s for i, (s, _) in parent_index.items()} if spec.inherit_splits else {}
    plan = plan_splits([(c.image_id, c.blur_type, c.source_path) for c in sel.rows],
                       spec.ratios, spec.split_file, inherited)
    timings["select"] = time.perf_counter() - t0
    files = _with_local_objects(ws, sel.rows)
    timings["fetch"] = time.perf_counter() - t0 - timings["select"]
    sizes = object_sizes(files, sel.rows)

    with _staged(final) as tmp:
        t1 = time.perf_counter()
        (tmp / DATA_DIR).mkdir()
        written = write_shards(tmp, sel.rows, plan.assigned, plan.names, files, sizes,
                               spec.shard_bytes, spec.row_group_rows, progress,
                               executor=executor)
        fsync_dir(tmp / DATA_DIR)
        timings["shards"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        changelog = None
        if parent:
            d = diff_index(f"{name}@{parent}", f"{name}@{version}", parent_index, written.index)
            changelog = {"parent": parent, **d.counts(),
                         "moves": dict(Counter(f"{a}→{b}" for _, a, b in d.split_changed))}
        facts = CardFacts(name, version, spec.license, parent, sel, plan, written, changelog)
        manifest, manifest_sha = _write_card_and_manifest(tmp, catalog, ws, spec, facts,
                                                          sum(sizes.values()))
        timings["card_manifest"] = time.perf_counter() - t2
    catalog.record_release(name, version, str(final), parent, manifest_sha, len(sel.rows),
                           manifest["created_at"])
    timings["total"] = time.perf_counter() - t0
    by_split = manifest["counts"]["by_split"]
    return ReleaseInfo(name, version, final, parent, len(sel.rows),
                       {s: n for s, n in by_split.items() if n}, written.shards,
                       manifest["counts"]["dropped"], manifest_sha, timings)


def _with_local_objects(ws: Workspace, rows) -> Workspace:
    """``ws`` with the rows' image and mask objects as local files (the shard writer reads files):
    itself when its store is local, else with a local cache of a remote store (fetched once,
    kept in ``cache/objects``: objects are named by content, so a cached one is never stale)."""
    try:
        return ws.with_local_objects(p for c in rows for p in (c.object_path, c.mask_object))
    except NotFoundError as e:
        raise ReleaseError(f"{e}; re-ingest the source it came from (into this object store) to "
                           "restore it") from None


@contextmanager
def _staged(final: Path) -> Iterator[Path]:
    """A temporary folder beside ``final``, fsync'd and renamed to it when the block ends, or
    removed if it raises: a crash publishes nothing."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final.parent)  # what a killed build of this release left
    tmp = Path(tempfile.mkdtemp(prefix=f"{tmp_prefix()}{final.name}-", dir=final.parent))
    try:
        yield tmp
        make_read_only(tmp)  # a release is never changed: readable by others, read-only
        fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError as e:  # another build of this version finished first
            raise ReleaseExistsError(f"release {final.parent.name} {final.name} appeared at "
                                     f"{final} while it was being built ({e.strerror}); nothing "
                                     "was replaced: build a new version") from None
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_card_and_manifest(tmp: Path, catalog: Catalog, ws: Workspace, spec: ReleaseSpec,
                             facts: CardFacts, data_bytes: int) -> tuple[dict, str]:
    """The card, its histogram, the manifest and its checksum; (manifest, its sha256)."""
    written = facts.written
    context = card_context(catalog, ws, facts)
    hist = histogram_png(facts.selection.rows, written.degrees)
    card = render_card(Path(spec.template) if spec.template else default_template(), context)
    mode = (tmp / written.shards[0].path).stat().st_mode & 0o777  # the shards' (the umask's)
    files = [_write_new(tmp / CARD, card.encode("utf-8"), mode),
             _write_new(tmp / HISTOGRAM, hist, mode)]
    manifest = _manifest(catalog, spec, facts, files, data_bytes)
    raw = (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    _write_new(tmp / MANIFEST, raw, mode)
    manifest_sha = hashlib.sha256(raw).hexdigest()
    _write_new(tmp / MANIFEST_SUM, f"{manifest_sha}  {MANIFEST}\n".encode(), mode)
    return manifest, manifest_sha


def _write_new(path: Path, data: bytes, mode: int) -> dict:
    """Write a new file of the release; its manifest entry."""
    atomic_write(path, data, mode=mode, exclusive=True)
    return {"path": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _manifest(catalog: Catalog, spec: ReleaseSpec, facts: CardFacts, files: list[dict],
              data_bytes: int) -> dict:
    sel, plan, written = facts.selection, facts.splits, facts.written
    return {
        "format": FORMAT,
        "name": spec.name,
        "version": spec.version,
        "parent": facts.parent,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": len(sel.rows),
        "image_mask_bytes": data_bytes,
        "schema": manifest_schema(),
        "shards": [vars(s) for s in written.shards],
        "files": files,
        "selection": {
            "catalog": catalog.engine.url.render_as_string(hide_password=True),
            "from_sources": sel.sources, "projects": sel.projects,
            "split": plan.ratios, "split_files": plan.files,
            "inherit_splits": spec.inherit_splits,
            "split_file_entries": len(plan.listed), "split_file_matched": len(plan.matched),
            "split_file_unmatched_examples": sorted(plan.listed.keys() - plan.matched)[:10],
            "queries": sel.queries,
        },
        "counts": {
            "candidates": sel.candidates,
            "rows": len(sel.rows),
            "by_split": plan.counts(),
            "by_split_blur_type_source": counts_table(sel.rows, plan.assigned),
            "dropped": dict(Counter(d.why for d in sel.dropped)),
            "split_assigned_by": plan.assigned_by(),
        },
        "dropped": [asdict(d) for d in sel.dropped],
        "changelog": facts.changelog,
    }
