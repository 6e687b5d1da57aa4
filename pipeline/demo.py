"""The demo: the bundled sample through every stage built so far, with a summary a newcomer can read."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.workspace import Workspace

SAMPLE_SOURCES = [("cuhk", "cuhk"), ("msra10k", "msra10k"), ("dut-omron", "dut-omron"),
                  ("folder", "extra")]  # (kind, name); the sample's folder for each is its name


def score_against_truth(truth: dict, found: list[dict]) -> dict:
    """Compare the pairs found with the sample's truth (``truth.json`` of ``blurset sample``).

    Every planted pair (copy of a reference, copy of another candidate, exact duplicate) must be
    found; a pair found is true when both files show the same photo (so copy-to-copy pairs count
    as true), false otherwise.
    """
    photo = {r["path"]: r["photo"] for r in truth["references"]}
    photo.update({i["path"]: i["photo"] for i in truth["images"] if i.get("photo")})

    def key(a: str, b: str) -> str:
        return " ~ ".join(sorted((a, b)))

    planted = {key(p["candidate"], p["reference"])
               for p in truth["planted_pairs"] + truth["candidate_pairs"]}
    planted |= {key(p["a"], p["b"]) for p in truth["exact_duplicates"]}
    got = {key(f"{f['candidate_source']}/{f['candidate_path']}",
               f"{f['reference_source']}/{f['reference_path']}") for f in found}
    false = sorted(k for k in got if len({photo.get(p) for p in k.split(" ~ ")} - {None}) != 1
                   or any(p not in photo for p in k.split(" ~ ")))
    return {"planted": len(planted), "found": len(planted & got), "missed": sorted(planted - got),
            "found_pairs": len(got), "false": false}


def run_demo(demo_dir: Path, ws: Workspace) -> dict:
    from pipeline.findings import contact_sheet
    from pipeline.flows import dedup_flow, ingest_flow
    from pipeline.sample import write_sample

    sample_dir = demo_dir / "sample"
    if not (sample_dir / "truth.json").exists():
        click.echo(f"[1/4] writing the bundled sample to {sample_dir}")
        write_sample(sample_dir, size="demo")
    else:
        click.echo(f"[1/4] reusing the sample in {sample_dir}")
    click.echo("[2/4] ingesting four sources (Prefect flow 'ingest', one task per batch)")
    for kind, name in SAMPLE_SOURCES:
        s = ingest_flow(str(ws.root), kind, name, str(sample_dir / name))
        click.echo(f"      {name:<10} {s['found']:>3} images, {s['ingested']:>3} ingested now, "
                   f"{s['quarantined_total']} in quarantine")
    click.echo("[3/4] dedup against the CUHK-style reference (Prefect flow 'dedup')")
    s = dedup_flow(str(ws.root), "cuhk")
    catalog = ws.catalog()
    found = catalog.findings("duplicate")
    truth = json.loads((sample_dir / "truth.json").read_text())
    score = score_against_truth(truth, found)
    sheet = contact_sheet(catalog, ws.objects, found, demo_dir / "duplicates.png")
    click.echo(f"      {s['duplicates']} duplicate pairs ({', '.join(f'{k}: {v}' for k, v in s['by_method'].items())}), "
               f"{s['rejected_lookalikes']} look-alikes rejected by verification, "
               f"{s['excluded_paths']} candidate paths excluded")
    click.echo(f"      against the sample's truth: {score['found']}/{score['planted']} planted pairs found, "
               f"{len(score['false'])} false pairs "
               f"({score['found_pairs']} pairs in all, copy-to-copy pairs included)")
    for m in score["missed"]:
        click.echo(f"      missed: {m}")
    for f in score["false"]:
        click.echo(f"      false pair: {f}")
    click.echo("[4/4] where to look")
    click.echo(f"      quarantine ({len(catalog.quarantined())} files):")
    for q in catalog.quarantined():
        click.echo(f"        {q['source']}/{q['rel_path']}: {q['reason']}")
    click.echo(f"      duplicate pairs: blurset -w {ws.root} dups --format csv")
    click.echo(f"      contact sheet:   {sheet.resolve()}")
    click.echo(f"      catalog:         {ws.catalog_url}")
    catalog.close()
    return {"dedup": s, "truth": score, "sheet": str(sheet)}
