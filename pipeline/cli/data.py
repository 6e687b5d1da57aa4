"""Data verbs: ``sample``, ``synth``, ``ingest``, ``dedup`` (and ``dedup decide``), ``dups``,
``quarantine``, ``status``."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click

from blurset.pipeline.cli.context import Ctx, pass_ctx
from blurset.pipeline.stages.ingest import DEFAULT_MAX_PIXELS
from blurset.pipeline.stages.sources import ADAPTERS


@click.command()
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", type=click.Choice(["demo", "bench"]), default="demo", show_default=True)
@click.option("--seed", default=0, show_default=True)
def sample(dest: Path, size: str, seed: int) -> None:
    """Write the bundled sample (CUHK-, MSRA10K-, DUT-OMRON-style folders) to DEST."""
    from blurset.pipeline.demo.sample import write_sample
    info = write_sample(dest, size=size, seed=seed)
    click.echo(f"sample written to {dest.resolve()} (truth: {info.truth})")


@click.command()
@click.option("--photos", "photos", required=True, multiple=True,
              type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Folder of sharp photographs (recursive). Repeatable.")
@click.option("--masks", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="CUHK-named blur masks (motion*.png, out_of_focus*.png; 255 = blurred).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write (CUHK layout: image/, gt/, synth.json); refused if it has images.")
@click.option("--n", "n", default=1000, show_default=True, help="Composites to write.")
@click.option("--seed", default=0, show_default=True)
@click.option("--size", default=320, show_default=True, help="Long side of each composite (px).")
def synth(photos: tuple[Path, ...], masks: Path, out: Path, n: int, seed: int, size: int) -> None:
    """Blur sharp photos inside real mask shapes: a CUHK-layout source to ingest (--kind cuhk)."""
    from blurset.pipeline.stages.synth import write_synth
    with click.progressbar(length=n, label="synth") as bar:
        r = write_synth(photos, masks, out, n=n, seed=seed, size=size,
                        progress=lambda done, total: bar.update(1))
    click.echo(f"{r.images} composites ({r.motion} motion, {r.defocus} defocus) from {r.photos} "
               f"photos (fingerprint {r.photo_fingerprint[:16]}) and {r.masks} mask shapes in "
               f"{r.out_dir.resolve()}; ingest with: blurset ingest {r.out_dir} --kind cuhk "
               f"--name NAME")


class PathOrURL(click.ParamType):
    """A URL such as ``s3://bucket/prefix`` (passed on as given), else a folder that must exist
    (checked, and named in the error, as ``click.Path`` does)."""

    name = "path"

    def __init__(self) -> None:
        self._folder = click.Path(exists=True, file_okay=False, path_type=Path)

    def convert(self, value, param, ctx):
        if isinstance(value, str) and "://" in value:
            return value
        return self._folder.convert(value, param, ctx)


@click.command()
@click.option("--kind", required=True, type=click.Choice(sorted(ADAPTERS)), help="Folder layout.")
@click.option("--name", required=True, help="Source name in the catalog, e.g. cuhk or msra10k.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1),
              help="Images per Prefect task.")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True,
              type=click.IntRange(min=1),
              help="Images with more pixels are quarantined (decompression bombs).")
@click.argument("path", type=PathOrURL())
@pass_ctx
def ingest(c: Ctx, kind: str, name: str, batch_size: int, max_pixels: int,
           path: Path | str) -> None:
    """Ingest the images of a dataset folder (or an s3://… URL) into the workspace."""
    from blurset.names import validate_name
    from blurset.pipeline.stages.sources import scan_source
    validate_name(name, "source name")
    scan_source(kind, path)  # a wrong layout is one line, before Prefect starts
    s = c.flows.ingest_flow(c.ws.root, kind, name, path, batch_size=batch_size,
                            max_pixels=max_pixels, catalog_url=c.ws.catalog_url)
    click.echo(f"{name}: {s.found} images found, {s.ingested} ingested now, "
               f"{s.unchanged} unchanged, {s.quarantined_now} quarantined now "
               f"({s.quarantined_total} in quarantine for this source). "
               f"Catalog: {s.catalog_images} images under {s.catalog_paths} paths.")
    _report_skipped(s.skipped, s.missing)


def _report_skipped(skipped: dict[str, str], missing: list[str], shown: int = 20) -> None:
    """Every entry of the folder that was not ingested, and every catalog path gone from it."""
    if skipped:
        click.echo(f"{len(skipped)} skipped (not images of this layout):", err=True)
        for rel, why in list(skipped.items())[:shown]:
            click.echo(f"  skipped {rel}: {why}", err=True)
        if len(skipped) > shown:
            click.echo(f"  … and {len(skipped) - shown} more (-v lists them all)", err=True)
    if missing:
        click.echo(f"{len(missing)} path(s) ingested earlier are no longer in the folder (kept "
                   f"in the catalog): {', '.join(missing[:shown])}"
                   + (" …" if len(missing) > shown else ""), err=True)


@click.group(invoke_without_command=True)
@click.option("--reference", help="Name of the reference source (e.g. cuhk); required to run.")
@click.option("--threshold", type=click.IntRange(0, 32), default=None,
              help="Hamming distance (0-32 bits of the 64-bit hash) for hash candidates "
                   "(default: the method's own).")
@click.option("--index", type=click.Choice(["auto", "flat", "blocks"]), default="auto",
              show_default=True,
              help="The search's index: flat (exhaustive, exact), blocks (exact within 5 bits, "
                   "misses some pairs farther apart; about 170x faster at 10^6 images), auto "
                   "(flat up to 10^5 images, blocks above).")
@click.option("--verify", "verify", type=click.Choice(["all", "first"]), default="all",
              show_default=True,
              help="Which pairs found are verified: all, or each candidate's until its first "
                   "duplicate (the same paths excluded, far faster on pools of similar images; "
                   "`blurset dups` then lists one duplicate per excluded path, not every pair).")
@pass_ctx
@click.pass_context
def dedup(ctx: click.Context, c: Ctx, reference: str | None, threshold: int | None,
          index: str, verify: str) -> None:
    """Find candidates that duplicate the reference source or each other; exclude them.

    `dedup decide` records a person's decision on a pair instead (applied by every later run).
    """
    if ctx.invoked_subcommand is not None:
        return
    if reference is None:
        raise click.UsageError("Missing option '--reference' (or give a subcommand: decide).")
    s = c.flows.dedup_flow(c.ws.root, reference, threshold=threshold,
                           catalog_url=c.ws.catalog_url, index=index, verify=verify)
    methods = ", ".join(f"{k}: {v}" for k, v in s.by_method.items()) or "none"
    click.echo(f"dedup against {reference}: {s.candidate_images} candidate images checked "
               f"against {s.reference_images} reference images; {s.duplicates} duplicate pairs "
               f"({methods}), {s.rejected_lookalikes} look-alikes rejected by verification, "
               f"{s.uncertain} uncertain pairs, {s.uncertain_open} of them left to a person "
               f"(`blurset dups --uncertain`; the others' candidate is a duplicate already), "
               f"{s.decided} set by people's decisions; {s.excluded_paths} candidate paths "
               f"excluded.")
    if s.pairs_verified < s.pairs_proposed:
        click.echo(f"note: {s.pairs_verified} of the {s.pairs_proposed} pairs found were "
                   f"verified (--verify first: each candidate up to its first duplicate)",
                   err=True)
    if not s.search_exact:
        click.echo("note: the search used the block index, exact within 5 bits only: pairs "
                   "6 or more bits apart may be missed (--index flat for the exhaustive search)",
                   err=True)


@dedup.command(name="decide")
@click.argument("candidate", required=False)
@click.argument("reference", required=False)
@click.argument("decision", required=False, type=click.Choice(["duplicate", "distinct"]))
@click.option("--csv", "csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Decisions in bulk: candidate,reference,decision columns, or the "
                   "`blurset dups --uncertain` report with a decision column added.")
@pass_ctx
def decide(c: Ctx, candidate: str | None, reference: str | None, decision: str | None,
           csv_file: Path | None) -> None:
    """Record that CANDIDATE and REFERENCE (SOURCE/PATH as `blurset dups` prints them) are a
    duplicate or distinct; the next `blurset dedup --reference …` run applies it."""
    from blurset.pipeline.stages.dedup.run import Decision, read_decisions_csv, record_decisions
    given = [candidate, reference, decision]
    if csv_file is None and None in given:
        raise click.UsageError("give CANDIDATE REFERENCE duplicate|distinct, or --csv FILE")
    if csv_file is not None and any(v is not None for v in given):
        raise click.UsageError("give either CANDIDATE REFERENCE DECISION or --csv FILE, not both")
    decisions = (read_decisions_csv(csv_file) if csv_file is not None
                 else [Decision(str(candidate), str(reference), str(decision))])
    n = record_decisions(c.ws.catalog(), decisions)
    click.echo(f"{n} decision(s) recorded; run `blurset dedup --reference …` to apply them.")


@click.command()
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv",
              show_default=True)
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a contact sheet PNG of the pairs.")
@click.option("--rejected", "which", flag_value="rejected",
              help="List the look-alikes that verification rejected instead.")
@click.option("--uncertain", "which", flag_value="uncertain",
              help="List the pairs left to a person instead (decide them with "
                   "`blurset dedup decide`): those whose candidate is still kept.")
@click.option("--include-moot", is_flag=True,
              help="With --uncertain: also the uncertain pairs whose candidate a verified "
                   "duplicate already excludes (no decision on them changes what is kept).")
@pass_ctx
def dups(c: Ctx, fmt: str, sheet: Path | None, which: str | None, include_moot: bool) -> None:
    """Print the duplicate pairs found by the last dedup run."""
    from blurset.pipeline.stages.dedup.run import contact_sheet, report
    if include_moot and which != "uncertain":
        raise click.UsageError("--include-moot goes with --uncertain")
    catalog = c.existing_ws.catalog()
    kind = which or "duplicate"
    found = catalog.findings(kind, open_only=kind == "uncertain" and not include_moot)
    click.echo(report(found, fmt), nl=False)
    if kind == "uncertain" and not include_moot:
        moot = len(catalog.findings(kind)) - len(found)
        if moot:
            click.echo(f"{moot} more uncertain pair(s) are moot: their candidate is excluded as "
                       "a verified duplicate already (list them with --include-moot)", err=True)
    if sheet:
        out = contact_sheet(catalog, c.ws.objects, found, sheet, kind=kind)
        click.echo(f"contact sheet: {out.resolve()}", err=True)


@click.command(name="quarantine")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv",
              show_default=True)
@click.option("--source", help="Only this source.")
@pass_ctx
def quarantine(c: Ctx, fmt: str, source: str | None) -> None:
    """List the files that were quarantined, with the reason."""
    rows = [{"source": q["source"], "path": q["rel_path"], "reason": q["reason"]}
            for q in c.existing_ws.catalog().quarantined(source)]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    w = csv.DictWriter(sys.stdout, fieldnames=["source", "path", "reason"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)


@click.command()
@pass_ctx
def status(c: Ctx) -> None:
    """Counts in the catalog."""
    catalog = c.existing_ws.catalog()
    click.echo(f"workspace: {c.ws.root}")
    for k, v in catalog.counts().items():
        click.echo(f"  {k}: {v}")
    for name, n in sorted(catalog.path_counts().items()):
        click.echo(f"  source {name}: {n} paths")


def register(cli: click.Group) -> None:
    for command in (sample, synth, ingest, dedup, dups, quarantine, status):
        cli.add_command(command)
