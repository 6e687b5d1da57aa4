"""Prefect flows: thin wrappers that fan the stages out in batches and keep retries on I/O.

One Prefect task per batch of images, never per image. Catalog writes happen in the flow, one
transaction per batch, so a run killed halfway keeps every finished batch and a re-run continues.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from blurset.names import slug as _slug
from blurset.pipeline.stages.dedup import run as findings_stage
from blurset.pipeline.stages.ingest import (
    DEFAULT_MAX_PIXELS,
    BatchResult,
    ingest_batch,
    item_signature,
    quarantine_orphans,
)
from blurset.pipeline.stages.sources import scan_source
from blurset.pipeline.workspace import Workspace


@task(name="ingest-batch", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def ingest_batch_task(root: str, items: list, objects_root: str, quarantine_root: str,
                      max_pixels: int) -> BatchResult:
    return ingest_batch(Path(root), items, Path(objects_root), Path(quarantine_root), max_pixels)


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _write(catalog, source: str, res: BatchResult) -> None:
    catalog.record_batch(source, res.images, res.paths, res.masks, res.quarantined)


@flow(name="ingest", task_runner=ThreadPoolTaskRunner(max_workers=2))
def ingest_flow(workspace: str, kind: str, name: str, path: str, batch_size: int = 64,
                max_pixels: int = DEFAULT_MAX_PIXELS, show_progress: bool = True) -> dict:
    """Ingest the folder at ``path`` (layout ``kind``) as source ``name``."""
    logger = get_run_logger()
    ws = Workspace.open(workspace)
    catalog = ws.catalog()
    root = Path(path).resolve()
    scan = scan_source(kind, root)  # LayoutError: clear message, nothing written yet
    catalog.register_source(name, kind, str(root))

    known = catalog.known_signatures(name)
    todo = [it for it in scan.items if known.get(it.rel_path) != item_signature(root, it)]
    orphans = [o for o in scan.orphan_masks if o.rel_path not in known]
    logger.info("%s: %d images found, %d new or changed, %d already ingested",
                name, len(scan.items), len(todo), len(scan.items) - len(todo))

    if orphans:
        _write(catalog, name, quarantine_orphans(root, orphans, ws.quarantine_store.root))
    batches = _batches(todo, batch_size)
    futures = [ingest_batch_task.submit(str(root), batch, str(ws.objects.root),
                                        str(ws.quarantine_store.root), max_pixels)
               for batch in batches]
    new_images = new_bad = 0
    failed: list[BaseException] = []
    with tqdm(total=len(todo), desc=f"ingest {name}", unit="img", disable=not show_progress) as bar:
        for batch, fut in zip(batches, futures, strict=True):
            try:
                res = fut.result()
            except Exception as e:  # noqa: BLE001 - re-raised below, after the other batches
                failed.append(e)
                continue
            _write(catalog, name, res)  # one transaction per batch: every finished batch is kept
            new_images += len(res.paths)
            new_bad += len(res.quarantined)
            bar.update(len(batch))
    if failed:
        catalog.close()
        logger.error("%s: %d of %d batches failed; the other batches are stored, a re-run "
                     "does the rest", name, len(failed), len(batches))
        raise failed[0]
    counts = catalog.counts()
    summary = {"source": name, "kind": kind, "found": len(scan.items), "new_or_changed": len(todo),
               "ingested": new_images, "quarantined_now": new_bad + len(orphans),
               "quarantined_total": len(catalog.quarantined(name)),
               "catalog_images": counts["images"], "catalog_paths": counts["paths"]}
    create_table_artifact(key=f"ingest-{_slug(name)}", table=[summary],
                          description=f"blurset ingest of {name} ({kind}) from {root}")
    catalog.close()
    return summary


@task(name="find-duplicates", cache_policy=NO_CACHE)
def dedup_task(catalog_url: str, reference: str, threshold: int | None,
               show_progress: bool) -> findings_stage.DedupOutcome:
    from blurset.pipeline.catalog import Catalog
    catalog = Catalog(catalog_url)
    bar = tqdm(desc="dedup (search, then verify pairs)", unit="step", disable=not show_progress)

    def progress(done: int, total: int) -> None:
        if bar.total != total:  # the verification phase adds its pairs to the total
            bar.total = total
        bar.update(done - bar.n)

    try:
        return findings_stage.run_dedup(catalog, reference, threshold, progress)
    finally:
        bar.close()
        catalog.close()


@flow(name="dedup")
def dedup_flow(workspace: str, reference: str, threshold: int | None = None,
               show_progress: bool = True) -> dict:
    """Check every candidate against the reference source and the other candidates."""
    ws = Workspace.open(workspace)
    catalog = ws.catalog()
    outcome = dedup_task(ws.catalog_url, reference, threshold, show_progress)
    catalog.replace_findings(reference, threshold, {"threshold": threshold}, outcome.summary,
                             outcome.findings, outcome.exclusions)
    rows = [{"method": m, "duplicates": n} for m, n in outcome.summary["by_method"].items()]
    rows.append({"method": "rejected by verification", "duplicates": outcome.summary["rejected_lookalikes"]})
    create_table_artifact(key="dedup-summary", table=rows,
                          description=f"blurset dedup against {reference}: "
                                      f"{outcome.summary['excluded_paths']} paths excluded, "
                                      f"{len(catalog.quarantined())} files in quarantine")
    catalog.close()
    return outcome.summary


def _transient(task, task_run, state) -> bool:
    """Retry a Label Studio task only when the server may come back (not on a refused token)."""
    from blurset.annotation.client import AuthError
    from blurset.pipeline.stages.labelling import LabellingError
    from blurset.pipeline.stages.prelabel import PrelabelError
    try:
        state.result()
    except (AuthError, LabellingError, PrelabelError):
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return False


@task(name="annotate-push", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE,
      retry_condition_fn=_transient)
def push_task(workspace: str, project: str, sources: list[str] | None, limit: int | None,
              batch_size: int, show_progress: bool, prelabel: str | None, rank: bool = False,
              min_blur: float = 0.02, max_blur: float = 0.98) -> dict:
    from dataclasses import asdict

    from blurset.annotation.client import connect
    from blurset.pipeline.stages.labelling import push
    ws = Workspace.open(workspace)
    catalog, client = ws.catalog(), connect()
    try:
        with tqdm(desc=f"push {project}", unit="task", disable=not show_progress) as bar:
            return asdict(push(catalog, client, ws, project, sources, limit, batch_size, bar.update,
                               prelabel, rank, min_blur, max_blur))
    finally:
        client.close()
        catalog.close()


@flow(name="annotate-push")
def push_flow(workspace: str, project: str, sources: list[str] | None = None,
              limit: int | None = None, batch_size: int = 100, show_progress: bool = True,
              prelabel: str | None = None, rank: bool = False, min_blur: float = 0.02,
              max_blur: float = 0.98) -> dict:
    """Import a task (with a pre-label where a mask is known) for every image not yet pushed.

    The retries are safe: a push reconciles with the project's tasks before importing.
    ``rank``: most informative candidates first, hopeless ones left out (labelling.push).
    """
    report = push_task(workspace, project, sources, limit, batch_size, show_progress, prelabel,
                       rank, min_blur, max_blur)
    create_table_artifact(key=f"push-{_slug(project)}", table=[
        {k: v for k, v in report.items() if not isinstance(v, list)}],
        description=f"blurset annotate push to {report['url']}")
    return report


@task(name="annotate-pull", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE,
      retry_condition_fn=_transient)
def pull_task(workspace: str, project: str, export_dir: str | None) -> dict:
    from dataclasses import asdict

    from blurset.annotation.client import connect
    from blurset.pipeline.stages.labelling import pull
    ws = Workspace.open(workspace)
    catalog, client = ws.catalog(), connect()
    try:
        return asdict(pull(catalog, client, ws, project, Path(export_dir) if export_dir else None))
    finally:
        client.close()
        catalog.close()


@flow(name="annotate-pull")
def pull_flow(workspace: str, project: str, export_dir: str | None = None) -> dict:
    """Export every annotation, keep the snapshot, store the masks and link them in the catalog."""
    report = pull_task(workspace, project, export_dir)
    create_table_artifact(key=f"pull-{_slug(project)}", table=[
        {k: (len(v) if isinstance(v, list) else v) for k, v in report.items()}],
        description=f"blurset annotate pull of {project}")
    return report


@task(name="annotate-prelabel-batch", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE,
      retry_condition_fn=_transient)
def prelabel_batch_task(client, workspace: str, labeller, project_id: int, batch: list[dict]
                        ) -> int:
    """Predict one batch and add its predictions (one request). A retry after a lost answer
    may add a batch twice; a later run skips tasks that already hold this model_version."""
    from blurset.pipeline.stages.labelling import prelabel_batch
    return prelabel_batch(client, Workspace.open(workspace), labeller, project_id, batch)


@flow(name="annotate-prelabel")
def prelabel_flow(workspace: str, project: str, checkpoint: str, batch_size: int = 32,
                  show_progress: bool = True) -> dict:
    """Add a prediction of a (newer) model to every task nobody has annotated yet.

    The model is loaded once, here; each batch is one Prefect task, retried on I/O only.
    """
    from dataclasses import asdict

    from blurset.annotation.client import connect
    from blurset.pipeline.stages.labelling import plan_prelabels
    from blurset.pipeline.stages.prelabel import make_prelabeller
    labeller = make_prelabeller(checkpoint)  # a bad checkpoint stops here, nothing asked yet
    ws = Workspace.open(workspace)
    catalog, client = ws.catalog(), connect()
    try:
        report, todo = plan_prelabels(catalog, client, project, labeller.model_version)
        with tqdm(total=len(todo), desc=f"prelabel {project}", unit="task",
                  disable=not show_progress) as bar:
            for batch in _batches(todo, batch_size):
                report.added += prelabel_batch_task(client, workspace, labeller,
                                                    report.project_id, batch)
                catalog.set_missing_prelabels(client.conn.url, report.project_id,
                                              [t["task_id"] for t in batch],
                                              labeller.model_version)  # one write per batch
                bar.update(len(batch))
    finally:
        client.close()
        catalog.close()
    out = asdict(report)
    create_table_artifact(key=f"prelabel-{_slug(project)}", table=[out],
                          description=f"blurset annotate prelabel of {project} with "
                                      f"{report.model_version}")
    return out


@task(name="release-build", cache_policy=NO_CACHE)
def release_task(workspace: str, name: str, version: str, from_sources: list[str] | None,
                 projects: list[str] | None, split: str, split_file, shard_bytes: int,
                 license: str, out_root: str | None, show_progress: bool) -> dict:
    from dataclasses import asdict

    from blurset.pipeline.release import ReleaseSpec, build_release
    ws = Workspace.open(workspace)
    catalog = ws.catalog()
    try:
        with tqdm(desc=f"release {name} {version}", unit="img", disable=not show_progress) as bar:
            spec = ReleaseSpec(name, version, from_sources=from_sources, projects=projects,
                               split=split, split_file=split_file, shard_bytes=shard_bytes,
                               license=license, out_root=out_root)
            info = build_release(ws, catalog, spec, progress=bar.update)
    finally:
        catalog.close()
    out = asdict(info)
    out["path"] = str(info.path)
    return out


@flow(name="release-build")
def release_flow(workspace: str, name: str, version: str, from_sources: list[str] | None = None,
                 projects: list[str] | None = None, split: str = "train=0.8,test=0.2",
                 split_file=None, shard_bytes: int = 256 * 2**20, license: str = "other",
                 out_root: str | None = None, show_progress: bool = True) -> dict:
    """Build ``releases/NAME/VERSION`` (written aside, renamed into place when complete).

    No retries: a failed build leaves nothing behind, and the user re-runs it after a fix.
    """
    info = release_task(workspace, name, version, from_sources, projects, split, split_file,
                        shard_bytes, license, out_root, show_progress)
    create_table_artifact(key=f"release-{_slug(name)}", table=[
        {"name": info["name"], "version": info["version"], "rows": info["rows"],
         "parent": info["parent"], "path": info["path"],
         **{f"split_{k}": v for k, v in info["splits"].items()},
         **{f"dropped_{k}": v for k, v in info["dropped"].items()}}],
        description=f"blurset release {name} {version}")
    return info
