"""The demo: the bundled sample through every stage built so far, with a summary a newcomer can read."""

from __future__ import annotations

import json
from pathlib import Path

import click

from blurset.pipeline.workspace import Workspace

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
    from blurset.pipeline.demo.sample import write_sample
    from blurset.pipeline.flows import dedup_flow, ingest_flow
    from blurset.pipeline.stages.dedup.run import contact_sheet

    steps = 11 if annotate else 5
    sample_dir = demo_dir / "sample"
    if not (sample_dir / "truth.json").exists():
        click.echo(f"[1/{steps}] writing the bundled sample to {sample_dir}")
        write_sample(sample_dir, size="demo")
    else:
        click.echo(f"[1/{steps}] reusing the sample in {sample_dir}")
    click.echo(f"[2/{steps}] ingesting four sources (Prefect flow 'ingest', one task per batch)")
    for kind, name in SAMPLE_SOURCES:
        s = ingest_flow(ws.root, kind, name, sample_dir / name, catalog_url=ws.catalog_url)
        click.echo(f"      {name:<10} {s.found:>3} images, {s.ingested:>3} ingested now, "
                   f"{s.quarantined_total} in quarantine")
    click.echo(f"[3/{steps}] dedup against the CUHK-style reference (Prefect flow 'dedup')")
    s = dedup_flow(ws.root, "cuhk", catalog_url=ws.catalog_url)
    catalog = ws.catalog()
    found = catalog.findings("duplicate")
    truth = json.loads((sample_dir / "truth.json").read_text())
    score = score_against_truth(truth, found)
    sheet = contact_sheet(catalog, ws.objects, found, demo_dir / "duplicates.png")
    click.echo(f"      {s.duplicates} duplicate pairs ({', '.join(f'{k}: {v}' for k, v in s.by_method.items())}), "
               f"{s.rejected_lookalikes} look-alikes rejected by verification, "
               f"{s.excluded_paths} candidate paths excluded")
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
    result["releases"] = _releases(ws, DEMO_RELEASES[:1], 5, steps)
    if annotate:
        result["dpn"] = _train(demo_dir, ws, 6, steps)
        result["annotation"] = _annotate(demo_dir, ws, catalog, sample_dir, steps,
                                         DEMO_PRELABELLER)
        result["releases"] |= _releases(ws, DEMO_RELEASES[1:], 10, steps)
        result["crosscheck"] = _crosscheck(demo_dir, ws, result["dpn"], steps)
        _summary(demo_dir, ws, result)
    catalog.close()
    return result


DEMO_PROJECT = "blurset demo"
# the shipped DPN (docs/pretrained.md); the DPN the demo trains on its sample is for the crosscheck
DEMO_PRELABELLER = "pretrained"


def _annotate(demo_dir: Path, ws: Workspace, catalog, sample_dir: Path, steps: int,
              checkpoint: str) -> dict:
    from blurset.annotation.client import connect
    from blurset.annotation.server import LocalServer
    from blurset.pipeline.demo.simulate import simulate
    from blurset.pipeline.flows import pull_flow, push_flow
    from blurset.pipeline.stages.labelling import status

    server = LocalServer.for_workspace(ws.root)
    click.echo(f"[7/{steps}] starting Label Studio at {server.conn.url} (own virtualenv, data in "
               f"{server.data_dir})")
    server.up(log=lambda m: click.echo(f"      {m}"))
    click.echo(f"[8/{steps}] pushing the images that passed dedup, pre-labelled by {checkpoint} "
               "(the shipped DPN; Prefect flow 'annotate-push')")
    r = push_flow(ws.root, DEMO_PROJECT, prelabel=checkpoint, catalog_url=ws.catalog_url)
    click.echo(f"      {r.pushed} tasks pushed now ({r.with_prelabel} with pre-labels)")
    with connect(server.conn) as client:
        sim = simulate(catalog, client, r.project_id, sample_dir)
    click.echo(f"      SIMULATED annotator (not a person: the sample's hidden truth, perturbed) "
               f"submitted {sim.annotations} annotations ({sim.rejected} rejections, "
               f"{sim.second_opinions} second opinions)")
    click.echo(f"[9/{steps}] pulling the annotations back (Prefect flow 'annotate-pull')")
    p = pull_flow(ws.root, DEMO_PROJECT, export_dir=demo_dir / "masks",
                  catalog_url=ws.catalog_url)
    st = status(catalog, server.conn.url, r.project_id, ws.objects.read)
    click.echo(f"      {st.pushed} tasks: {st.annotated} annotated, {st.rejected} rejected, "
               f"{st.pending} pending; mean agreement (IoU) of double-annotated tasks: "
               f"{st.mean_agreement_iou}")
    click.echo(f"      work saved: {st.prelabelled_annotated} annotated tasks started from "
               f"a DPN pre-label; mean IoU pre-label → final mask {st.mean_prelabel_iou}, "
               f"accepted unchanged: {st.prelabel_accepted_share}")
    click.echo(f"      blur type: the annotator chose the model's hint on {st.hint_agreement_share} "
               f"of {st.hint_compared} annotated tasks that had one (the hint is never the answer)")
    for prob in p.problems:
        click.echo(f"      problem: {prob}")
    click.echo(f"      masks:    {(demo_dir / 'masks').resolve()}  (255 = blurred)")
    click.echo(f"      snapshot: {p.snapshot}")
    click.echo(f"      project:  {r.url}  (user {server.username}, password {server.password})")
    click.echo(f"      stop Label Studio with: blurset -w {ws.root} labelstudio down")
    return {"push": r, "pull": p, "status": st}


DEMO_RELEASES = [("cuhk-sample", "1.0.0", {"from_sources": ["cuhk"]}),
                 ("szubd-sample", "1.0.0", {"projects": [DEMO_PROJECT]})]


def _releases(ws: Workspace, wanted, step: int, steps: int) -> dict:
    """Build (or reuse) the sample releases in ``wanted`` and verify them."""
    from blurset.model.release_format import MANIFEST
    from blurset.pipeline.flows import release_flow
    from blurset.pipeline.release import ReleaseSpec, verify_release

    click.echo(f"[{step}/{steps}] release {', '.join(f'{n} {v}' for n, v, _ in wanted)} (Prefect "
               "flow 'release-build'): Parquet shards, manifest, dataset card")
    out = {}
    for name, version, what in wanted:
        path = ws.root / "releases" / name / version
        if (path / MANIFEST).exists():
            click.echo(f"      {name} {version}: exists (a published version is immutable), reused")
        else:
            r = release_flow(ws.root, ReleaseSpec(name, version, **what),
                             catalog_url=ws.catalog_url)
            splits = ", ".join(f"{k} {v}" for k, v in r.splits.items())
            click.echo(f"      {name} {version}: {r.rows} images ({splits})")
        rep = verify_release(path)
        state = "verified" if rep.ok else f"FAILED verification: {rep.problems[:3]}"
        click.echo(f"        {state}: {rep.files} files, {rep.rows} rows")
        click.echo(f"        {path.resolve()}  (card: README.md)")
        out[name] = {"path": str(path), "ok": rep.ok, "rows": rep.rows}
    return out


DEMO_CONFIG = "dpn-small"  # bundled with blurset (configs/dpn-small.yaml)


def _train(demo_dir: Path, ws: Workspace, step: int, steps: int) -> dict:
    """Train (or reuse) a small DPN on cuhk-sample."""
    from blurset.model.config import load_config
    from blurset.model.data import resolve_release
    from blurset.model.train import main as train_main

    run = demo_dir / "dpn"
    config = load_config(DEMO_CONFIG)
    resume = (run / "checkpoints" / "last.pt").exists()
    click.echo(f"[{step}/{steps}] training a small DPN on cuhk-sample 1.0.0 ({DEMO_CONFIG}: "
               f"width {config.model.get('width')}, input {config.input_size}², at most "
               f"{config.max_steps} steps; CPU)" + (" — reusing the run" if resume else ""))
    r = train_main(config, train=resolve_release("cuhk-sample@1.0.0", ws.root / "releases"),
                   val=None, out_dir=run, resume=resume)
    click.echo(f"      {r.epochs} epochs, {r.steps} steps; checkpoint {r.last_checkpoint.resolve()}")
    return {"checkpoint": str(r.last_checkpoint), "input_size": config.input_size}


def _crosscheck(demo_dir: Path, ws: Workspace, dpn: dict, steps: int) -> dict:
    """DPN and the handcrafted maps on all of szubd-sample (never trained on)."""
    from blurset.model.crosscheck import score_on_release, write_scores
    from blurset.model.data import resolve_release
    from blurset.model.evaluate import format_table
    from blurset.model.train import load_checkpoint

    click.echo(f"[{steps}/{steps}] cross-dataset check: DPN (trained on cuhk-sample) and the "
               "handcrafted maps on all of szubd-sample 1.0.0")
    model, _ = load_checkpoint(dpn["checkpoint"])
    test = resolve_release("szubd-sample@1.0.0", ws.root / "releases")
    from tqdm import tqdm
    with tqdm(total=sum(test.splits().values()), desc="score szubd-sample", unit="img") as bar:
        results = score_on_release(test, None, model=model, input_size=dpn["input_size"],
                                   progress=bar.update)
    paths = write_scores(results, demo_dir / "crosscheck", force=True)
    for line in format_table(results).splitlines():
        click.echo(f"      {line}")
    m = results["DPN"].metrics
    beats = all(m["mae"] < results[b].metrics["mae"] and m["max_f"] > results[b].metrics["max_f"]
                for b in results if b != "DPN")
    click.echo("      DPN beats both handcrafted baselines on MAE and max F" if beats else
               "      DPN does NOT beat both handcrafted baselines on MAE and max F here")
    return {"beats_baselines": beats, "table": str(paths["table"]),
            "pr_curve": str(paths["pr_curve.png"]),
            "metrics": {k: {x: v.metrics[x] for x in ("mae", "max_f")} for k, v in results.items()}}


def _summary(demo_dir: Path, ws: Workspace, result: dict) -> None:
    click.echo("summary: where to look")
    rows = [("duplicate pairs (contact sheet)", result["sheet"]),
            ("releases", str(ws.root / "releases")),
            ("masks pulled from Label Studio", str(demo_dir / "masks")),
            ("DPN checkpoint", result["dpn"]["checkpoint"]),
            ("cross-dataset table", result["crosscheck"]["table"]),
            ("PR curves (all methods)", result["crosscheck"]["pr_curve"])]
    for label, path in rows:
        click.echo(f"      {label:<32} {Path(path).resolve()}")
    click.echo(f"      Label Studio keeps running: blurset -w {ws.root} labelstudio down")
