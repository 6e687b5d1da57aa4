"""The `blurset` command line. Each verb calls one flow or one report; settings enter here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from blurset.pipeline.catalog import SourceConflictError
from blurset.pipeline.cli.context import Ctx, pass_ctx, prefect_env, releases_root  # noqa: F401
from blurset.pipeline.stages.ingest import DEFAULT_MAX_PIXELS
from blurset.pipeline.stages.sources import ADAPTERS, LayoutError, scan_source


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="blurset", prog_name="blurset")
@click.option("--workspace", "-w", type=click.Path(file_okay=False),
              help="Workspace folder (catalog, objects, quarantine). Default: $BLURSET_WORKSPACE or ./workspace")
@click.option("--catalog-url", help="SQLAlchemy URL of the catalog (default: SQLite in the workspace).")
@click.option("--verbose", "-v", is_flag=True, help="Show Prefect's run logs.")
@click.pass_context
def cli(ctx: click.Context, workspace: str | None, catalog_url: str | None, verbose: bool) -> None:
    """blurset: build blur-detection datasets (ingest → dedup → annotate → release → train)."""
    ctx.obj = Ctx(workspace, catalog_url, verbose)


@cli.command()
@click.option("--kind", required=True, type=click.Choice(sorted(ADAPTERS)), help="Folder layout.")
@click.option("--name", required=True, help="Source name in the catalog, e.g. cuhk or msra10k.")
@click.option("--batch-size", default=64, show_default=True, help="Images per Prefect task.")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Images with more pixels are quarantined (decompression bombs).")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@pass_ctx
def ingest(c: Ctx, kind: str, name: str, batch_size: int, max_pixels: int, path: str) -> None:
    """Ingest the images of a dataset folder into the workspace."""
    root = Path(path).resolve()
    try:
        scan_source(kind, root)  # layout errors before anything is written
        src = c.ws.catalog().source(name)
        if src and (src["kind"], src["root"]) != (kind, str(root)):
            raise SourceConflictError(
                f"source {name!r} was ingested as kind {src['kind']} from {src['root']}; "
                f"now asked for kind {kind} from {root}. Use another --name for another folder.")
    except (LayoutError, SourceConflictError) as e:
        raise click.ClickException(str(e)) from None
    from blurset.pipeline.flows import ingest_flow
    s = ingest_flow(str(c.ws.root), kind, name, str(root), batch_size, max_pixels)
    click.echo(f"{name}: {s['found']} images found, {s['ingested']} ingested now, "
               f"{s['found'] - s['new_or_changed']} unchanged, {s['quarantined_now']} quarantined now "
               f"({s['quarantined_total']} in quarantine for this source). "
               f"Catalog: {s['catalog_images']} images under {s['catalog_paths']} paths.")


@cli.command()
@click.option("--reference", required=True, help="Name of the reference source (e.g. cuhk).")
@click.option("--threshold", type=int, default=None,
              help="Hamming distance for hash candidates (default: the method's own).")
@pass_ctx
def dedup(c: Ctx, reference: str, threshold: int | None) -> None:
    """Find candidates that duplicate the reference source or each other; exclude them."""
    from blurset.pipeline.stages.dedup.run import UnknownSourceError
    ws = c.ws
    names = [s["name"] for s in ws.catalog().list_sources()]
    if reference not in names:
        raise click.ClickException(UnknownSourceError(
            f"reference source {reference!r} is not in the catalog; ingested sources: "
            f"{', '.join(names) or 'none'}").args[0])
    from blurset.pipeline.flows import dedup_flow
    s = dedup_flow(str(ws.root), reference, threshold)
    click.echo(f"dedup against {reference}: {s['candidate_images']} candidate images checked against "
               f"{s['reference_images']} reference images; {s['duplicates']} duplicate pairs "
               f"({', '.join(f'{k}: {v}' for k, v in s['by_method'].items()) or 'none'}), "
               f"{s['rejected_lookalikes']} look-alikes rejected by verification; "
               f"{s['excluded_paths']} candidate paths excluded.")


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--sheet", type=click.Path(dir_okay=False), help="Also write a contact sheet PNG of the pairs.")
@click.option("--rejected", is_flag=True, help="List the look-alikes that verification rejected instead.")
@pass_ctx
def dups(c: Ctx, fmt: str, sheet: str | None, rejected: bool) -> None:
    """Print the duplicate pairs found by the last dedup run."""
    from blurset.pipeline.stages.dedup.run import contact_sheet, report
    catalog = c.ws.catalog()
    found = catalog.findings("rejected" if rejected else "duplicate")
    click.echo(report(found, fmt), nl=False)
    if sheet:
        out = contact_sheet(catalog, c.ws.objects, found, Path(sheet))
        click.echo(f"contact sheet: {out.resolve()}", err=True)


@cli.command(name="quarantine")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--source", help="Only this source.")
@pass_ctx
def quarantine_cmd(c: Ctx, fmt: str, source: str | None) -> None:
    """List the files that were quarantined, with the reason."""
    rows = [{"source": q["source"], "path": q["rel_path"], "reason": q["reason"]}
            for q in c.ws.catalog().quarantined(source)]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    import csv
    w = csv.DictWriter(sys.stdout, fieldnames=["source", "path", "reason"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)


@cli.command()
@pass_ctx
def status(c: Ctx) -> None:
    """Counts in the catalog."""
    catalog = c.ws.catalog()
    click.echo(f"workspace: {c.ws.root}")
    for k, v in catalog.counts().items():
        click.echo(f"  {k}: {v}")
    for name, n in sorted(catalog.path_counts().items()):
        click.echo(f"  source {name}: {n} paths")


@cli.command()
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--size", type=click.Choice(["demo", "bench"]), default="demo", show_default=True)
@click.option("--seed", default=0, show_default=True)
def sample(dest: str, size: str, seed: int) -> None:
    """Write the bundled sample (CUHK-, MSRA10K-, DUT-OMRON-style folders) to DEST."""
    from blurset.pipeline.demo.sample import write_sample
    try:
        info = write_sample(Path(dest), size=size, seed=seed)
    except FileExistsError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"sample written to {Path(dest).resolve()} (truth: {info.truth})")


@cli.command()
@click.option("--dir", "demo_dir", default="demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo's sample and workspace.")
@click.option("--no-annotate", is_flag=True, help="Skip Label Studio (dedup, then the CUHK-style release only).")
@click.pass_context
def demo(ctx: click.Context, demo_dir: str, no_annotate: bool) -> None:
    """The pipeline on the bundled sample: sample → ingest → dedup → Label Studio → pull → releases."""
    from blurset.annotation.client import LabelStudioError
    from blurset.annotation.server import ServerError
    from blurset.pipeline.demo.run import run_demo
    c: Ctx = ctx.obj
    if c._workspace_arg is None:
        c._workspace_arg = str(Path(demo_dir) / "workspace")
    try:
        run_demo(Path(demo_dir), c.ws, annotate=not no_annotate)
    except (ServerError, LabelStudioError) as e:
        raise click.ClickException(str(e)) from None


@cli.group()
def labelstudio() -> None:
    """Run a local Label Studio (own virtualenv, data in the workspace)."""


def _server(c: Ctx):
    from blurset.annotation.server import LocalServer
    return LocalServer.for_workspace(c.ws.root)


@labelstudio.command()
@click.option("--timeout", default=240.0, show_default=True, help="Seconds to wait for it to answer.")
@pass_ctx
def up(c: Ctx, timeout: float) -> None:
    """Start Label Studio at $LABEL_STUDIO_URL with $LABEL_STUDIO_API_KEY (harmless if running)."""
    from blurset.annotation.server import ServerError
    try:
        st = _server(c).up(timeout=timeout, log=lambda m: click.echo(m, err=True))
    except ServerError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"Label Studio is up at {st['url']} (data: {st['data_dir']}, log: {st['log']})")


@labelstudio.command()
@pass_ctx
def down(c: Ctx) -> None:
    """Stop the Label Studio this workspace started (nothing else)."""
    stopped = _server(c).down()
    click.echo("Label Studio stopped" if stopped else "no Label Studio started by this workspace is running")


@labelstudio.command(name="status")
@pass_ctx
def ls_status(c: Ctx) -> None:
    """Is it running, does it accept the token."""
    st = _server(c).status()
    for k, v in st.items():
        click.echo(f"{k}: {v}")
    if not st["answering"]:
        sys.exit(1)


@cli.group()
def annotate() -> None:
    """Send images to Label Studio and bring the painted masks back."""


def _connect():
    from blurset.annotation.client import LabelStudioError, connect
    try:
        return connect()
    except LabelStudioError as e:
        raise click.ClickException(str(e)) from None


def _run_flow(fn, *args):
    from blurset.annotation.client import LabelStudioError
    from blurset.pipeline.stages.labelling import LabellingError
    from blurset.pipeline.stages.prelabel import PrelabelError
    try:
        return fn(*args)
    except (LabelStudioError, LabellingError, PrelabelError) as e:
        raise click.ClickException(str(e)) from None


def _check_prelabeller(spec: str | None) -> None:
    """A missing checkpoint file is refused before Prefect or Label Studio is asked anything
    (an unreadable one is refused when the flow loads it, also before anything is sent)."""
    from blurset.pipeline.stages.prelabel import HANDCRAFTED
    if spec is not None and spec not in HANDCRAFTED and not Path(spec).is_file():
        raise click.ClickException(f"pre-labeller {spec!r} is neither one of "
                                   f"{', '.join(HANDCRAFTED)} nor an existing DPN checkpoint file")


@annotate.command()
@click.option("--project", required=True, help="Label Studio project title (created if needed).")
@click.option("--source", "sources", multiple=True,
              help="Push only these sources (default: all but the dedup reference).")
@click.option("--limit", type=int, help="Push at most this many new images.")
@click.option("--batch-size", default=100, show_default=True, help="Tasks per import request.")
@click.option("--prelabel", metavar="laplacian|lbp|CHECKPOINT",
              help="Pre-label images with no known mask: a handcrafted blur map by name, or a "
                   "DPN checkpoint file (its map thresholded at 0.5, and a guessed blur type).")
@click.option("--rank", is_flag=True,
              help="Pre-label every candidate first; push the most uncertain first and leave out "
                   "images with almost no blur or blurred all over (needs --prelabel).")
@click.option("--min-blur", default=0.02, show_default=True,
              help="With --rank: leave out images whose pre-label marks less than this share.")
@click.option("--max-blur", default=0.98, show_default=True,
              help="With --rank: leave out images whose pre-label marks more than this share.")
@pass_ctx
def push(c: Ctx, project: str, sources: tuple[str, ...], limit: int | None, batch_size: int,
         prelabel: str | None, rank: bool, min_blur: float, max_blur: float) -> None:
    """Create tasks for the images that passed dedup (with pre-labels where a mask is known)."""
    ws = c.ws
    _check_prelabeller(prelabel)
    _connect().close()  # a clear error before any flow starts
    from blurset.pipeline.flows import push_flow
    if rank and prelabel is None:
        raise click.UsageError("--rank needs --prelabel CHECKPOINT (or laplacian|lbp)")
    r = _run_flow(push_flow, str(ws.root), project, list(sources) or None, limit, batch_size,
                  True, prelabel, rank, min_blur, max_blur)
    click.echo(f"{project}: {r['pushed']} tasks pushed now ({r['with_prelabel']} with pre-labels), "
               f"{r['selected'] - r['pushed']} left, {r['reconciled']} reconciled from an earlier "
               f"run. Open {r['url']}")
    if r["ranked"]:
        click.echo(f"ranked by the pre-labels, most uncertain first; left out: "
                   f"{r['skipped_no_blur']} with almost no blur (< {min_blur}), "
                   f"{r['skipped_all_blurred']} blurred all over (> {max_blur})")
    if r["duplicate_tasks_in_label_studio"]:
        click.echo(f"warning: Label Studio holds duplicate tasks {r['duplicate_tasks_in_label_studio']} "
                   "(created outside blurset?); the oldest task of each image is used", err=True)


@annotate.command()
@click.option("--project", required=True)
@click.option("--export", "export_dir", type=click.Path(file_okay=False),
              help="Also write every current mask as DIR/<source>/<source_path>.png.")
@pass_ctx
def pull(c: Ctx, project: str, export_dir: str | None) -> None:
    """Export all annotations (snapshot kept), decode the masks, store them in the catalog."""
    ws = c.ws
    _connect().close()
    from blurset.pipeline.flows import pull_flow
    r = _run_flow(pull_flow, str(ws.root), project, export_dir)
    click.echo(f"{project}: {r['tasks']} tasks, {r['annotated']} annotated, {r['rejected']} rejected, "
               f"{r['pending']} pending; {r['masks_stored']} current masks stored; "
               f"snapshot {r['snapshot']}" + (f"; {r['exported']} masks written to {export_dir}"
                                              if export_dir else ""))
    for p in r["problems"]:
        click.echo(f"problem: {p}", err=True)


@annotate.command()
@click.option("--project", required=True)
@click.option("--checkpoint", required=True, metavar="CHECKPOINT|laplacian|lbp",
              help="The (newer) model whose predictions to add.")
@click.option("--batch-size", default=32, show_default=True, help="Images per Prefect task.")
@pass_ctx
def prelabel(c: Ctx, project: str, checkpoint: str, batch_size: int) -> None:
    """Add this model's prediction to every task nobody has annotated yet (re-runs add nothing)."""
    ws = c.ws
    _check_prelabeller(checkpoint)
    _connect().close()
    from blurset.pipeline.flows import prelabel_flow
    r = _run_flow(prelabel_flow, str(ws.root), project, checkpoint, batch_size, True)
    click.echo(f"{project}: {r['added']} predictions of {r['model_version']} added; skipped "
               f"{r['skipped_annotated']} annotated, {r['skipped_same_model']} already holding "
               f"this model_version, {r['skipped_deleted']} deleted (of {r['tasks']} tasks)")


@annotate.command(name="status")
@click.option("--project", required=True)
@pass_ctx
def annotate_status(c: Ctx, project: str) -> None:
    """Counts of pushed, annotated, rejected and pending tasks (as of the last pull)."""
    from dataclasses import asdict

    from blurset.annotation.server import Connection
    from blurset.pipeline.stages.labelling import status as ann_status
    catalog = c.ws.catalog()
    server = Connection.from_env().url
    rows = [t for t in catalog.task_projects() if t["project"] == project and t["server"] == server]
    if not rows:
        raise click.ClickException(f"no tasks of project {project!r} at {server} in the catalog; "
                                   "run `blurset annotate push` first")
    for k, v in asdict(ann_status(catalog, server, rows[0]["project_id"])).items():
        if isinstance(v, dict):  # work saved, per model_version of the pre-label
            for version, stats in v.items():
                click.echo(f"  {version}: " + ", ".join(f"{sk} {sv}" for sk, sv in stats.items()))
        else:
            click.echo(f"{k}: {v}")


@cli.group()
def release() -> None:
    """Versioned Parquet releases with dataset cards: build, verify, diff, list, publish."""


def _split_file(values: tuple[str, ...]):
    """``--split-file F`` (``NAME SPLIT`` lines, or a path with ``{split}``) or one
    ``--split-file SPLIT=LIST`` per split."""
    if not values:
        return None
    pairs = [v.split("=", 1) for v in values]
    if all(len(p) == 2 and "/" not in p[0] for p in pairs):
        return {k: v for k, v in pairs}
    if len(values) > 1:
        raise click.BadParameter("give one file, or SPLIT=LIST for every split "
                                 f"(got {list(values)})", param_hint="--split-file")
    return values[0]


@release.command(name="build")
@click.argument("name")
@click.argument("version")
@click.option("--from-source", "sources", multiple=True,
              help="Take the ground-truth blur masks of this source (e.g. cuhk). Repeatable.")
@click.option("--project", "projects", multiple=True,
              help="Take the annotated tasks of this Label Studio project. Repeatable.")
@click.option("--split", default="train=0.8,test=0.2", show_default=True,
              help="Split ratios, dealt out per blur type in a stable order.")
@click.option("--split-file", "split_files", multiple=True,
              help="A published split: one file of 'NAME SPLIT' lines, a path with '{split}' "
                   "in it, or SPLIT=LIST once per split (lists of file names).")
@click.option("--shard-mb", default=256, show_default=True, help="Target shard size in MB.")
@click.option("--license", "license_", default="other", show_default=True,
              help="License id for the card (e.g. cc-by-4.0).")
@click.option("--out", "out_root", type=click.Path(file_okay=False),
              help="Releases folder (default: WORKSPACE/releases).")
@pass_ctx
def release_build(c: Ctx, name: str, version: str, sources: tuple[str, ...],
                  projects: tuple[str, ...], split: str, split_files: tuple[str, ...],
                  shard_mb: int, license_: str, out_root: str | None) -> None:
    """Write releases/NAME/VERSION: Parquet shards, manifest.json and the dataset card."""
    from blurset.pipeline.flows import release_flow
    from blurset.pipeline.release import ReleaseError, validate_version
    ws = c.ws
    if not sources and not projects:
        raise click.UsageError("say what to release: --from-source S and/or --project P")
    try:  # the common mistakes, before a flow starts
        validate_version(version)
    except ReleaseError as e:
        raise click.ClickException(str(e)) from None
    final = releases_root(c, out_root) / name / version
    if final.exists():
        raise click.ClickException(f"release {name} {version} already exists at {final}; a "
                                   "published version is immutable: build a new version instead")
    try:
        r = release_flow(str(ws.root), name, version, list(sources) or None,
                         list(projects) or None, split, _split_file(split_files),
                         shard_mb * 2**20, license_, str(releases_root(c, out_root)))
    except (ReleaseError, FileExistsError) as e:
        raise click.ClickException(str(e)) from None
    splits = ", ".join(f"{k} {v}" for k, v in r["splits"].items())
    dropped = ", ".join(f"{k} {v}" for k, v in r["dropped"].items() if v) or "none"
    click.echo(f"{name} {version}: {r['rows']} images ({splits}) in {len(r['shards'])} shards; "
               f"parent {r['parent'] or '-'}; left out: {dropped}")
    click.echo(f"  {r['path']}")


@release.command(name="verify")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
def release_verify(path: str) -> None:
    """Recompute every checksum and re-read every row; exit 1 on any problem."""
    from blurset.pipeline.release import verify_release
    rep = verify_release(path)
    for p in rep.problems:
        click.echo(f"FAIL {p.file}: {p.message}", err=True)
    if not rep.ok:
        click.echo(f"{path}: {len(rep.problems)} problems", err=True)
        sys.exit(1)
    click.echo(f"{path}: OK ({rep.files} files, {rep.rows} rows checked)")


@release.command(name="diff")
@click.argument("a", type=click.Path(exists=True, file_okay=False))
@click.argument("b", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
def release_diff(a: str, b: str, fmt: str) -> None:
    """Images added, removed, and whose mask or split changed from release A to release B."""
    from dataclasses import asdict

    from blurset.pipeline.release import ReleaseError, diff_releases
    try:
        d = diff_releases(a, b)
    except (ReleaseError, OSError) as e:
        raise click.ClickException(str(e)) from None
    if fmt == "json":
        click.echo(json.dumps(asdict(d), indent=2))
        return
    click.echo(f"{d.a} -> {d.b}: " + ", ".join(f"{k} {v}" for k, v in d.counts().items()))
    for i in d.added:
        click.echo(f"+ {i}")
    for i in d.removed:
        click.echo(f"- {i}")
    for i in d.mask_changed:
        click.echo(f"~ {i} mask")
    for i, s1, s2 in d.split_changed:
        click.echo(f"~ {i} split {s1} -> {s2}")


@release.command(name="list")
@click.option("--root", type=click.Path(file_okay=False),
              help="Releases folder (default: WORKSPACE/releases).")
@pass_ctx
def release_list(c: Ctx, root: str | None) -> None:
    """Every complete release, by name and version."""
    from blurset.pipeline.release import list_releases
    found = list_releases(releases_root(c, root))
    if not found:
        click.echo(f"no releases in {releases_root(c, root)}")
    for r in found:
        splits = ", ".join(f"{k} {v}" for k, v in r.splits.items())
        click.echo(f"{r.name:<20} {r.version:<10} {r.rows:>7} images ({splits}) "
                   f"parent {r.parent or '-'}  {r.path}")


@release.command(name="publish")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.argument("url")
@click.option("--storage-option", "options", multiple=True, metavar="KEY=VALUE",
              help="fsspec storage option, e.g. endpoint_url=http://127.0.0.1:5000 for S3 "
                   "(client_kwargs)." )
def release_publish(path: str, url: str, options: tuple[str, ...]) -> None:
    """Verify PATH, then copy it to URL/NAME/VERSION (a folder or s3://bucket/prefix)."""
    from blurset.pipeline.release import (
        ReleaseError,
        ReleaseVerificationError,
        publish_release,
    )
    storage: dict = {}
    for o in options:
        if "=" not in o:
            raise click.BadParameter(f"{o!r} is not KEY=VALUE", param_hint="--storage-option")
        k, v = o.split("=", 1)
        if k == "endpoint_url":
            storage.setdefault("client_kwargs", {})["endpoint_url"] = v
        else:
            storage[k] = v
    try:
        dest = publish_release(path, url, storage_options=storage)
    except (ReleaseError, ReleaseVerificationError, FileExistsError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"published {path} -> {dest}")


from blurset.pipeline.cli import (
    model as cli_model,  # the model verbs need `cli` and `pass_ctx` above
)

cli_model.register(cli)

from blurset.pipeline.cli import ml as cli_ml  # the ML backend verbs extend `labelstudio` above

cli_ml.register(labelstudio)


def main() -> None:
    cli(prog_name="blurset")


if __name__ == "__main__":
    main()
