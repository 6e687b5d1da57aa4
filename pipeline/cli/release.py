"""Release verbs: ``release build``, ``verify``, ``diff``, ``list``, ``publish``."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click

from blurset.pipeline.cli.context import Ctx, pass_ctx


@click.group()
def release() -> None:
    """Versioned Parquet releases with dataset cards: build, verify, diff, list, publish."""


def _split_file(values: tuple[str, ...]) -> str | dict[str, str] | None:
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
@click.option("--shard-mb", default=256, show_default=True, type=click.IntRange(min=1),
              help="Target shard size in MB.")
@click.option("--license", "license_", default="other", show_default=True,
              help="License id for the card (e.g. cc-by-4.0).")
@click.option("--out", "out_root", type=click.Path(file_okay=False, path_type=Path),
              help="Releases folder (default: WORKSPACE/releases).")
@pass_ctx
def build(c: Ctx, name: str, version: str, sources: tuple[str, ...], projects: tuple[str, ...],
          split: str, split_files: tuple[str, ...], shard_mb: int, license_: str,
          out_root: Path | None) -> None:
    """Write releases/NAME/VERSION: Parquet shards, manifest.json and the dataset card."""
    from blurset.pipeline.release import ReleaseSpec
    if not sources and not projects:
        raise click.UsageError("say what to release: --from-source S and/or --project P")
    spec = ReleaseSpec(name, version, from_sources=list(sources) or None,
                       projects=list(projects) or None, split=split,
                       split_file=_split_file(split_files), shard_bytes=shard_mb * 2**20,
                       license=license_, out_root=c.releases_root(out_root))  # checks it, at once
    r = c.flows.release_flow(c.ws.root, spec, catalog_url=c.ws.catalog_url)
    splits = ", ".join(f"{k} {v}" for k, v in r.splits.items())
    dropped = ", ".join(f"{k} {v}" for k, v in r.dropped.items() if v) or "none"
    click.echo(f"{name} {version}: {r.rows} images ({splits}) in {len(r.shards)} shards; "
               f"parent {r.parent or '-'}; left out: {dropped}")
    click.echo(f"  {r.path}")


@release.command(name="verify")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
def verify(path: str) -> None:
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
def diff(a: str, b: str, fmt: str) -> None:
    """Images added, removed, and whose mask or split changed from release A to release B."""
    from blurset.pipeline.release import diff_releases
    d = diff_releases(a, b)
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
@click.option("--root", type=click.Path(file_okay=False, path_type=Path),
              help="Releases folder (default: WORKSPACE/releases).")
@pass_ctx
def list_(c: Ctx, root: Path | None) -> None:
    """Every complete release, by name and version."""
    from blurset.pipeline.release import list_releases
    where = Path(root) if root else c.existing_ws.root / "releases"  # creates no workspace
    found = list_releases(where)
    if not found:
        click.echo(f"no releases in {where}")
    for r in found:
        splits = ", ".join(f"{k} {v}" for k, v in r.splits.items())
        click.echo(f"{r.name:<20} {r.version:<10} {r.rows:>7} images ({splits}) "
                   f"parent {r.parent or '-'}  {r.path}")


def _storage_options(options: tuple[str, ...]) -> dict:
    """``KEY=VALUE`` fsspec options; ``endpoint_url`` goes under ``client_kwargs`` (S3)."""
    storage: dict = {}
    for o in options:
        if "=" not in o:
            raise click.BadParameter(f"{o!r} is not KEY=VALUE", param_hint="--storage-option")
        k, v = o.split("=", 1)
        if k == "endpoint_url":
            storage.setdefault("client_kwargs", {})["endpoint_url"] = v
        else:
            storage[k] = v
    return storage


@release.command(name="publish")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.argument("url")
@click.option("--storage-option", "options", multiple=True, metavar="KEY=VALUE",
              help="fsspec storage option, e.g. endpoint_url=http://127.0.0.1:5000 for S3 "
                   "(client_kwargs).")
def publish(path: str, url: str, options: tuple[str, ...]) -> None:
    """Verify PATH, then copy it to URL/NAME/VERSION (a folder or s3://bucket/prefix)."""
    from blurset.pipeline.release import publish_release
    dest = publish_release(path, url, storage_options=_storage_options(options))
    click.echo(f"published {path} -> {dest}")


def register(cli: click.Group) -> None:
    cli.add_command(release)
