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


def run_demo(demo_dir: Path, ws: Workspace, annotate: bool = True) -> dict:
    from pipeline.findings import contact_sheet
    from pipeline.flows import dedup_flow, ingest_flow
    from pipeline.sample import write_sample

    steps = 10 if annotate else 5
    sample_dir = demo_dir / "sample"
    if not (sample_dir / "truth.json").exists():
        click.echo(f"[1/{steps}] writing the bundled sample to {sample_dir}")
        write_sample(sample_dir, size="demo")
    else:
        click.echo(f"[1/{steps}] reusing the sample in {sample_dir}")
    click.echo(f"[2/{steps}] ingesting four sources (Prefect flow 'ingest', one task per batch)")
    for kind, name in SAMPLE_SOURCES:
        s = ingest_flow(str(ws.root), kind, name, str(sample_dir / name))
        click.echo(f"      {name:<10} {s['found']:>3} images, {s['ingested']:>3} ingested now, "
                   f"{s['quarantined_total']} in quarantine")
    click.echo(f"[3/{steps}] dedup against the CUHK-style reference (Prefect flow 'dedup')")
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
    click.echo(f"[4/{steps}] where to look")
    click.echo(f"      quarantine ({len(catalog.quarantined())} files):")
    for q in catalog.quarantined():
        click.echo(f"        {q['source']}/{q['rel_path']}: {q['reason']}")
    click.echo(f"      duplicate pairs: blurset -w {ws.root} dups --format csv")
    click.echo(f"      contact sheet:   {sheet.resolve()}")
    click.echo(f"      catalog:         {ws.catalog_url}")
    result = {"dedup": s, "truth": score, "sheet": str(sheet)}
    if annotate:
        result["annotation"] = _annotate(demo_dir, ws, catalog, sample_dir, steps)
    result["releases"] = _releases(ws, 8 if annotate else 5, steps, with_annotations=annotate)
    catalog.close()
    if annotate:
        result["dpn"] = _dpn(demo_dir, ws, steps)
    return result


DEMO_PROJECT = "blurset demo"


def _annotate(demo_dir: Path, ws: Workspace, catalog, sample_dir: Path, steps: int) -> dict:
    from annotation.client import connect
    from annotation.server import LocalServer
    from pipeline.flows import pull_flow, push_flow
    from pipeline.labelling import status
    from pipeline.simulate import simulate

    server = LocalServer.for_workspace(ws.root)
    click.echo(f"[5/{steps}] starting Label Studio at {server.conn.url} (own virtualenv, data in "
               f"{server.data_dir})")
    server.up(log=lambda m: click.echo(f"      {m}"))
    click.echo(f"[6/{steps}] pushing the images that passed dedup, pre-labelled by the LBP "
               "blur map (Prefect flow 'annotate-push')")
    r = push_flow(str(ws.root), DEMO_PROJECT, prelabel="lbp")
    click.echo(f"      {r['pushed']} tasks pushed now ({r['with_prelabel']} with pre-labels)")
    with connect(server.conn) as client:
        sim = simulate(catalog, client, r["project_id"], sample_dir)
    click.echo(f"      SIMULATED annotator (not a person: the sample's hidden truth, perturbed) "
               f"submitted {sim.annotations} annotations ({sim.rejected} rejections, "
               f"{sim.second_opinions} second opinions)")
    click.echo(f"[7/{steps}] pulling the annotations back (Prefect flow 'annotate-pull')")
    p = pull_flow(str(ws.root), DEMO_PROJECT, str(demo_dir / "masks"))
    st = status(catalog, server.conn.url, r["project_id"])
    click.echo(f"      {st['pushed']} tasks: {st['annotated']} annotated, {st['rejected']} rejected, "
               f"{st['pending']} pending; mean agreement (IoU) of double-annotated tasks: "
               f"{st['mean_agreement_iou']}")
    for prob in p["problems"]:
        click.echo(f"      problem: {prob}")
    click.echo(f"      masks:    {(demo_dir / 'masks').resolve()}  (255 = blurred)")
    click.echo(f"      snapshot: {p['snapshot']}")
    click.echo(f"      project:  {r['url']}  (user {server.username}, password {server.password})")
    click.echo(f"      stop Label Studio with: blurset -w {ws.root} labelstudio down")
    return {"push": r, "pull": p, "status": st}


DEMO_RELEASES = [("cuhk-sample", "1.0.0", {"from_sources": ["cuhk"]}),
                 ("szubd-sample", "1.0.0", {"projects": [DEMO_PROJECT]})]


def _releases(ws: Workspace, step: int, steps: int, with_annotations: bool) -> dict:
    """Build (or reuse) the two sample releases and verify them."""
    from pipeline.flows import release_flow
    from pipeline.releases import verify_release

    wanted = DEMO_RELEASES if with_annotations else DEMO_RELEASES[:1]
    click.echo(f"[{step}/{steps}] releases (Prefect flow 'release-build'): Parquet shards, "
               "manifest, dataset card")
    out = {}
    for name, version, what in wanted:
        path = ws.root / "releases" / name / version
        if (path / "manifest.json").exists():
            click.echo(f"      {name} {version}: exists (a published version is immutable), reused")
        else:
            r = release_flow(str(ws.root), name, version, **what)
            splits = ", ".join(f"{k} {v}" for k, v in r["splits"].items())
            click.echo(f"      {name} {version}: {r['rows']} images ({splits})")
        rep = verify_release(path)
        state = "verified" if rep.ok else f"FAILED verification: {rep.problems[:3]}"
        click.echo(f"        {state}: {rep.files} files, {rep.rows} rows")
        click.echo(f"        {path.resolve()}  (card: README.md)")
        out[name] = {"path": str(path), "ok": rep.ok, "rows": rep.rows}
    click.echo(f"      list them: blurset -w {ws.root} release list")
    return out


DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "dpn-small.yaml"


def _dpn(demo_dir: Path, ws: Workspace, steps: int) -> dict:
    """Train a small DPN on cuhk-sample, then the cross-dataset check on szubd-sample."""
    from model.config import load_config
    from model.crosscheck import score_on_release, write_scores
    from model.data import resolve_release
    from model.evaluate import format_table
    from model.train import load_checkpoint
    from model.train import main as train_main

    root = ws.root / "releases"
    run = demo_dir / "dpn"
    config = load_config(DEMO_CONFIG)
    resume = (run / "checkpoints" / "last.pt").exists()
    click.echo(f"[{steps - 1}/{steps}] training a small DPN on cuhk-sample 1.0.0 ({DEMO_CONFIG.name}: "
               f"width {config.model.get('width')}, input {config.input_size}², at most "
               f"{config.max_steps} steps; CPU)" + (" — resuming/reusing the run" if resume else ""))
    r = train_main(config, train=resolve_release("cuhk-sample@1.0.0", root), val=None,
                   out_dir=run, resume=resume)
    click.echo(f"      {r.epochs} epochs, {r.steps} steps, {r.seconds:.0f} s; "
               f"checkpoint {r.last_checkpoint.resolve()}")
    click.echo(f"[{steps}/{steps}] cross-dataset check: DPN and the handcrafted maps on all of "
               "szubd-sample 1.0.0 (never trained on)")
    model, _ = load_checkpoint(r.last_checkpoint)
    test = resolve_release("szubd-sample@1.0.0", root)
    results = score_on_release(test, None, model=model, input_size=config.input_size)
    paths = write_scores(results, demo_dir / "crosscheck", force=True)
    for line in format_table(results).splitlines():
        click.echo(f"      {line}")
    dpn = results["DPN"].metrics
    beats = all(dpn["mae"] < results[b].metrics["mae"] and dpn["max_f"] > results[b].metrics["max_f"]
                for b in results if b != "DPN")
    click.echo("      DPN beats both handcrafted baselines on MAE and max F" if beats else
               "      DPN does NOT beat both handcrafted baselines on MAE and max F here")
    click.echo(f"      table:    {paths['table'].resolve()}")
    click.echo(f"      PR curve: {paths['pr_curve.png'].resolve()}")
    return {"checkpoint": str(r.last_checkpoint), "beats_baselines": beats,
            "metrics": {k: {m: v.metrics[m] for m in ("mae", "max_f")} for k, v in results.items()}}
