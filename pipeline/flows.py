"""Prefect flows: typed parameters → a few stage calls → an artifact; each returns a dataclass.

One Prefect task per batch of images, never per image; retries only around I/O. Catalog writes
happen in the flow, one transaction per batch, so a run killed halfway keeps every finished batch
and a re-run continues. The stages they call know nothing of Prefect.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from sqlalchemy.exc import SQLAlchemyError
from tqdm import tqdm

from blurset.errors import BlursetError, ServiceError
from blurset.names import slug, validate_name
from blurset.pipeline.catalog import Catalog
from blurset.pipeline.release import ReleaseInfo, ReleaseSpec, build_release
from blurset.pipeline.stages.dedup import run as dedup_stage
from blurset.pipeline.stages.ingest import (
    DEFAULT_MAX_PIXELS,
    BatchResult,
    Store,
    bind_source,
    ingest_batch,
    items_to_ingest,
    quarantine_orphans,
    storage_full,
)
from blurset.pipeline.stages.prelabel import Prelabeller, make_prelabeller
from blurset.pipeline.stages.sources import SourceItem, SourceRoot, open_source, scan_source
from blurset.pipeline.store import ObjectStore
from blurset.pipeline.workspace import Workspace

if TYPE_CHECKING:  # Label Studio's SDK takes seconds to import: only the annotate flows need it
    from blurset.annotation.client import Client
    from blurset.pipeline.stages.labelling import PrelabelReport, PullReport, PushReport

__all__ = ["DedupSummary", "IngestSummary", "dedup_flow", "ingest_flow", "prelabel_flow",
           "pull_flow", "push_flow", "release_flow"]


@dataclass(frozen=True)
class IngestSummary:
    source: str
    kind: str
    found: int  # images in the folder
    new_or_changed: int  # of those, not ingested before with the same bytes
    ingested: int  # paths stored now
    quarantined_now: int
    quarantined_total: int  # of this source
    catalog_images: int  # all sources
    catalog_paths: int

    skipped: dict[str, str] = field(default_factory=dict)  # path -> why it is not ingested
    missing: list[str] = field(default_factory=list)  # in the catalog, gone from the folder

    @property
    def unchanged(self) -> int:
        return self.found - self.new_or_changed


@dataclass(frozen=True)
class DedupSummary:
    reference: str
    reference_images: int
    candidate_images: int
    duplicates: int  # pairs judged duplicate
    rejected_lookalikes: int  # pairs the verification turned down
    excluded_paths: int
    excluded_as_reference_duplicates: int
    by_method: dict[str, int]  # duplicate pairs per method
    uncertain: int = 0  # pairs the pixels cannot decide (neither excluded nor rejected)
    uncertain_open: int = 0  # of those, the ones whose candidate is still kept: a person's
    # decision changes what is kept (the others' candidate is a verified duplicate already)
    decided: int = 0  # findings whose verdict a person's decision set
    index: str = "flat"  # the search's index
    search_exact: bool = True  # False: the block index beyond its exact radius (pairs may be missed)
    verify: str = "all"  # "first": each candidate's pairs verified until its first duplicate
    pairs_proposed: int = 0  # pairs the search found between distinct contents
    pairs_verified: int = 0  # of those, the pairs verified (all of them unless verify="first")

    @classmethod
    def of(cls, summary: dict) -> DedupSummary:
        return cls(**{f.name: summary[f.name] for f in fields(cls)})


class _Bar:
    """A tqdm bar made at its first use, so a run refused before any work shows none."""

    def __init__(self, show: bool, **kwargs) -> None:
        self._show, self._kwargs, self._bar = show, kwargs, None

    @property
    def bar(self) -> tqdm:
        if self._bar is None:
            self._bar = tqdm(disable=not self._show, **self._kwargs)
        return self._bar

    def update(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


@task(name="ingest-batch", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def ingest_batch_task(root: SourceRoot, items: list[SourceItem], objects: Store,
                      quarantine: Store, max_pixels: int) -> BatchResult:
    try:
        return ingest_batch(root, items, objects, quarantine, max_pixels)
    except OSError as e:
        where = objects.root.parent if isinstance(objects, ObjectStore) else objects.url
        if (full := storage_full(e, where)) is not None:
            raise full from e
        raise


@flow(name="ingest", task_runner=ThreadPoolTaskRunner(max_workers=2))
def ingest_flow(workspace: Path, kind: str, name: str, path: str | Path, *, batch_size: int = 64,
                max_pixels: int = DEFAULT_MAX_PIXELS, catalog_url: str | None = None,
                objects_url: str | None = None, show_progress: bool = True) -> IngestSummary:
    """Ingest the folder (or fsspec URL) at ``path`` (layout ``kind``) as source ``name``."""
    logger = get_run_logger()
    validate_name(name, "source name")
    ws = Workspace.open(workspace, catalog_url, objects_url=objects_url)
    root = open_source(path)
    # LayoutError before anything is written; the workspace is never its own source
    scan = scan_source(kind, root, exclude=[ws.root])
    objects, quarantine = ws.objects, ws.quarantine_store
    for store in (objects, quarantine):  # a killed run's partial files
        store.remove_stale_temps()
    catalog = ws.catalog()
    try:
        # SourceConflictError / SourceRootMismatch: nothing written
        if (recorded := bind_source(catalog, name, kind, root, scan)) is not None:
            logger.info("%s: recorded at %s; ingesting the same files from %s", name, recorded,
                        root)
        known = catalog.known_signatures(name)
        todo = items_to_ingest(catalog, name, root, scan.items, max_pixels)
        orphans = [o for o in scan.orphan_masks if o.rel_path not in known]
        missing = sorted(known.keys() - scan.paths())
        for sk in scan.skipped:
            logger.info("%s: skipped %s: %s", name, sk.rel_path, sk.reason)
        logger.info("%s: %d images found, %d new or changed, %d already ingested",
                    name, len(scan.items), len(todo), len(scan.items) - len(todo))
        if orphans:
            res = quarantine_orphans(root, orphans, quarantine)
            catalog.record_batch(name, res.images, res.paths, res.masks, res.quarantined)
        batches = _batches(todo, batch_size)
        futures = [ingest_batch_task.submit(root, batch, objects, quarantine, max_pixels)
                   for batch in batches]
        new_paths = new_bad = 0
        failed: list[BaseException] = []
        with tqdm(total=len(todo), desc=f"ingest {name}", unit="img",
                  disable=not show_progress) as bar:
            for batch, fut in zip(batches, futures, strict=True):
                try:
                    res = fut.result()
                except Exception as e:  # noqa: BLE001 - re-raised below, after the other batches
                    failed.append(e)
                    continue
                # one transaction per batch: every finished batch is kept
                try:
                    catalog.record_batch(name, res.images, res.paths, res.masks,
                                         res.quarantined)
                except (OSError, SQLAlchemyError) as e:
                    if (full := storage_full(e, ws.catalog_url)) is not None:
                        raise full from e
                    raise
                new_paths += len(res.paths)
                new_bad += len(res.quarantined)
                bar.update(len(batch))
        if failed:  # the CLI shows an expected error in one line: the log says it at info
            logger.log(logging.INFO if isinstance(failed[0], BlursetError) else logging.ERROR,
                       "%s: %d of %d batches failed; the other batches are stored, a re-run "
                       "does the rest", name, len(failed), len(batches))
            raise failed[0]
        counts = catalog.counts()
        summary = IngestSummary(
            source=name, kind=kind, found=len(scan.items), new_or_changed=len(todo),
            ingested=new_paths, quarantined_now=new_bad + len(orphans),
            quarantined_total=len(catalog.quarantined(name)),
            catalog_images=counts["images"], catalog_paths=counts["paths"],
            skipped={sk.rel_path: sk.reason for sk in scan.skipped}, missing=missing)
    finally:
        catalog.close()
    create_table_artifact(key=f"ingest-{slug(name)}", table=[
        {k: (len(v) if isinstance(v, dict | list) else v) for k, v in asdict(summary).items()}],
                          description=f"blurset ingest of {name} ({kind}) from {root}")
    return summary


def _task_runner():
    """The task runner of the flow run in progress (None outside one)."""
    from prefect.context import FlowRunContext
    ctx = FlowRunContext.get()
    return ctx.task_runner if ctx is not None else None


@task(name="stage-piece", cache_policy=NO_CACHE, persist_result=False)
def piece_task(fn: Callable, payload: bytes) -> Any:
    """One piece of a stage's work (a search shard, a verification chunk, a release shard) as a
    task run of its own. ``payload``: its arguments, pickled, so that Prefect does not walk
    numpy arrays and thousands of pairs looking for futures."""
    return fn(*pickle.loads(payload))


class TaskRunExecutor(Executor):
    """The ``concurrent.futures`` face the stages take (``executor=``), over the task runner of
    the flow run in progress: each call is a Prefect task run named after its function
    (``flat-shard``, ``verify-packed``, ``write-planned-shard``…), with its state in Prefect's
    UI; on a Dask runner it runs on the cluster. Its futures are running once submitted (a
    piece that has started is not cancelled: it ends alone)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        if kwargs:
            raise TypeError("TaskRunExecutor.submit takes positional arguments only")
        done: Future = Future()
        done.set_running_or_notify_cancel()
        name = fn.__name__.strip("_").replace("_", "-")
        piece = piece_task.with_options(name=name).submit(
            fn, pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL))

        def settle(finished) -> None:
            try:
                done.set_result(finished.result())
            except BaseException as e:  # noqa: BLE001 - the piece's own error, raised by result()
                done.set_exception(e)

        piece.add_done_callback(settle)
        return done


def _dask_executor() -> Executor | None:
    """A :class:`TaskRunExecutor` if the flow's task runner is a
    ``prefect_dask.DaskTaskRunner`` (each piece a task run on its cluster); else None."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        return None
    return TaskRunExecutor() if isinstance(_task_runner(), DaskTaskRunner) else None


@task(name="find-duplicates", cache_policy=NO_CACHE)
def dedup_task(catalog_url: str, reference: str, threshold: int | None,
               show_progress: bool, index: str = "auto",
               verify: str = "all") -> dedup_stage.DedupOutcome:
    catalog = Catalog(catalog_url)
    steps = _Bar(show_progress, desc="dedup (search, then verify pairs)", unit="step")

    def progress(done: int, total: int) -> None:
        if steps.bar.total != total:  # the verification phase adds its pairs to the total
            steps.bar.total = total
        steps.update(done - steps.bar.n)

    try:
        return dedup_stage.run_dedup(catalog, reference, threshold, progress,
                                     executor=_dask_executor(), index=index, verify=verify)
    finally:
        steps.close()
        catalog.close()


@flow(name="dedup")
def dedup_flow(workspace: Path, reference: str, *, threshold: int | None = None,
               catalog_url: str | None = None, objects_url: str | None = None,
               index: str = "auto", verify: str = "all",
               show_progress: bool = True) -> DedupSummary:
    """Check every candidate against the reference source and the other candidates; on a Dask
    task runner, the pairs are verified on its cluster. ``index``: the search's (``auto``,
    ``flat``: exact, ``blocks``: exact within 5 bits). ``verify``: ``all`` pairs found, or
    each candidate's until its ``first`` duplicate (the same paths excluded, faster)."""
    ws = Workspace.open(workspace, catalog_url, objects_url=objects_url)
    outcome = dedup_task(ws.catalog_url, reference, threshold, show_progress, index, verify)
    catalog = ws.catalog()
    try:
        catalog.replace_findings(reference, threshold, {"threshold": threshold, "index": index,
                                                             "verify": verify},
                                 outcome.summary,
                                 outcome.findings, outcome.exclusions)
        in_quarantine = len(catalog.quarantined())
    finally:
        catalog.close()
    summary = DedupSummary.of(outcome.summary)
    rows = [{"method": m, "duplicates": n} for m, n in summary.by_method.items()]
    rows.append({"method": "rejected by verification", "duplicates": summary.rejected_lookalikes})
    create_table_artifact(key="dedup-summary", table=rows,
                          description=f"blurset dedup against {reference}: "
                                      f"{summary.excluded_paths} paths excluded, "
                                      f"{in_quarantine} files in quarantine")
    return summary


def _transient(task, task_run, state) -> bool:
    """Retry a Label Studio task only when the service may come back: not on a refused token,
    not on bad input (retrying it cannot help)."""
    from blurset.annotation.client import AuthError
    try:
        state.result()
    except AuthError:
        return False
    except ServiceError:
        return True
    except BlursetError:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return False


@task(name="annotate-push", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE,
      retry_condition_fn=_transient)
def push_task(ws: Workspace, project: str, sources: list[str] | None, limit: int | None,
              batch_size: int, prelabel: str | None, rank: bool, min_blur: float,
              max_blur: float, show_progress: bool, overlap: float | None = None) -> PushReport:
    from blurset.annotation.client import connect
    from blurset.pipeline.stages.labelling import push
    catalog, client = ws.catalog(), connect()
    tasks = _Bar(show_progress, desc=f"push {project}", unit="task")
    try:
        return push(catalog, client, ws, project, sources, limit, batch_size, tasks.update,
                    prelabel=prelabel, rank=rank, min_blur=min_blur, max_blur=max_blur,
                    overlap=overlap)
    finally:
        tasks.close()
        client.close()
        catalog.close()


@flow(name="annotate-push")
def push_flow(workspace: Path, project: str, *, sources: list[str] | None = None,
              limit: int | None = None, batch_size: int = 100, prelabel: str | None = None,
              rank: bool = False, min_blur: float = 0.02, max_blur: float = 0.98,
              catalog_url: str | None = None, objects_url: str | None = None,
              show_progress: bool = True, overlap: float | None = None) -> PushReport:
    """Import a task (with a pre-label where a mask is known, or from ``prelabel``) for every
    image not yet pushed; ``rank``: most informative first, hopeless ones left out;
    ``overlap``: the share of tasks two people label.

    The retries are safe: a push reconciles with the project's tasks before importing.
    """
    ws = Workspace.open(workspace, catalog_url, objects_url=objects_url)
    report = push_task(ws, project, sources, limit, batch_size, prelabel, rank, min_blur,
                       max_blur, show_progress, overlap)
    create_table_artifact(key=f"push-{slug(project)}", table=[
        {k: v for k, v in asdict(report).items() if not isinstance(v, list)}],
        description=f"blurset annotate push to {report.url}")
    return report


@task(name="annotate-pull", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE,
      retry_condition_fn=_transient)
def pull_task(ws: Workspace, project: str, export_dir: Path | None) -> PullReport:
    from blurset.annotation.client import connect
    from blurset.pipeline.stages.labelling import pull
    catalog, client = ws.catalog(), connect()
    try:
        return pull(catalog, client, ws, project, export_dir)
    finally:
        client.close()
        catalog.close()


@flow(name="annotate-pull")
def pull_flow(workspace: Path, project: str, *, export_dir: Path | None = None,
              catalog_url: str | None = None, objects_url: str | None = None) -> PullReport:
    """Export every annotation, keep the snapshot, store the masks and link them in the catalog;
    with ``export_dir``, also write every current mask there."""
    ws = Workspace.open(workspace, catalog_url, objects_url=objects_url)
    report = pull_task(ws, project, Path(export_dir) if export_dir else None)
    create_table_artifact(key=f"pull-{slug(project)}", table=[
        {k: (len(v) if isinstance(v, list) else v) for k, v in asdict(report).items()}],
        description=f"blurset annotate pull of {project}")
    return report


@task(name="annotate-prelabel-batch", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE,
      retry_condition_fn=_transient)
def prelabel_batch_task(client: Client, ws: Workspace, labeller: Prelabeller, project_id: int,
                        batch: list[dict]) -> int:
    """Predict one batch and add its predictions (one request). A retry after a lost answer
    may add a batch twice; a later run skips tasks that already hold this model_version."""
    from blurset.pipeline.stages.labelling import prelabel_batch
    return prelabel_batch(client, ws, labeller, project_id, batch)


@flow(name="annotate-prelabel")
def prelabel_flow(workspace: Path, project: str, checkpoint: str, *, batch_size: int = 32,
                  catalog_url: str | None = None, objects_url: str | None = None,
                  show_progress: bool = True) -> PrelabelReport:
    """Add a prediction of a (newer) model to every task nobody has annotated yet.

    The model is loaded once, here; each batch is one Prefect task, retried on I/O only.
    """
    from blurset.annotation.client import connect
    from blurset.pipeline.stages.labelling import plan_prelabels
    labeller = make_prelabeller(checkpoint)  # a bad checkpoint stops here, nothing asked yet
    ws = Workspace.open(workspace, catalog_url, objects_url=objects_url)
    catalog, client = ws.catalog(), connect()
    try:
        report, todo = plan_prelabels(catalog, client, project, labeller.model_version)
        with tqdm(total=len(todo), desc=f"prelabel {project}", unit="task",
                  disable=not show_progress) as bar:
            for batch in _batches(todo, batch_size):
                report.added += prelabel_batch_task(client, ws, labeller, report.project_id,
                                                    batch)
                catalog.set_missing_prelabels(client.conn.url, report.project_id,
                                              [t["task_id"] for t in batch],
                                              labeller.model_version)  # one write per batch
                bar.update(len(batch))
    finally:
        client.close()
        catalog.close()
    create_table_artifact(key=f"prelabel-{slug(project)}", table=[asdict(report)],
                          description=f"blurset annotate prelabel of {project} with "
                                      f"{report.model_version}")
    return report


def _build_release(ws: Workspace, spec: ReleaseSpec, show_progress: bool,
                   executor: Executor | None = None) -> ReleaseInfo:
    catalog = ws.catalog()
    rows = _Bar(show_progress, desc=f"release {spec.name} {spec.version}", unit="img")
    try:
        return build_release(ws, catalog, spec, progress=rows.update, executor=executor)
    finally:
        rows.close()
        catalog.close()


@task(name="release-build", cache_policy=NO_CACHE)
def release_task(ws: Workspace, spec: ReleaseSpec, show_progress: bool) -> ReleaseInfo:
    return _build_release(ws, spec, show_progress)


@flow(name="release-build")
def release_flow(workspace: Path, spec: ReleaseSpec, *, catalog_url: str | None = None,
                 objects_url: str | None = None, show_progress: bool = True) -> ReleaseInfo:
    """Build ``releases/NAME/VERSION`` (written aside, renamed into place when complete).

    Locally the build is one task. On a Dask runner the selection, card and manifest are made
    here and each shard is written by a task of its own on the cluster (whose workers must see
    the workspace and the releases folder at the same paths): the same bytes. No retries: a
    failed build leaves nothing behind, and the user re-runs it after a fix.
    """
    ws = Workspace.open(workspace, catalog_url, objects_url=objects_url)
    if (executor := _dask_executor()) is not None:
        info = _build_release(ws, spec, show_progress, executor)
    else:
        remote = not isinstance(_task_runner(), ThreadPoolTaskRunner)
        info = release_task.submit(ws, spec, show_progress and not remote).result()
    create_table_artifact(key=f"release-{slug(spec.name)}", table=[
        {"name": info.name, "version": info.version, "rows": info.rows, "parent": info.parent,
         "path": str(info.path), **{f"split_{k}": v for k, v in info.splits.items()},
         **{f"dropped_{k}": v for k, v in info.dropped.items()}}],
        description=f"blurset release {spec.name} {spec.version}")
    return info
