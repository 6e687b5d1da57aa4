"""Model verbs: ``train``, ``evaluate``, ``crosscheck``, ``predict``, ``blur-degree``,
``dof-magnify``. torch is imported inside the commands, so the other verbs start without it."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import click

from blurset.pipeline.cli.context import Ctx, pass_ctx


def _load(checkpoint: str):
    from blurset.model.train import load_checkpoint
    model, meta = load_checkpoint(checkpoint)
    return model, meta, int(meta.get("config", {}).get("input_size", 352))


def _train(config_path: str, train: str, val: str | None, out: Path, resume: bool,
           sets: tuple[str, ...], backbone_weights: str | None, root: Path):
    from blurset.model.config import load_config
    from blurset.model.data import resolve_release
    from blurset.model.train import main as train_main
    config = load_config(config_path)
    overrides = list(sets) + ([f"backbone_weights={backbone_weights}"] if backbone_weights else [])
    if overrides:
        config = config.with_overrides(overrides)
    train_ref = resolve_release(train, root)
    val_ref = resolve_release(val, root) if val else None
    return train_main(config, train=train_ref, val=val_ref, out_dir=out, resume=resume)


def _print_result(r) -> None:
    last = r.history[-1] if r.history else {}
    shown = {k: v for k, v in last.items() if isinstance(v, (int, float))}
    click.echo(f"trained {r.epochs} epochs, {r.steps} steps in {r.seconds:.0f} s on {r.device} "
               f"(world size {r.world_size}); best {r.best}")
    click.echo("last epoch: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
    click.echo(f"checkpoints: {r.best_checkpoint} (best), {r.last_checkpoint} (last); "
               f"config: {r.config_path}")


@click.command()
@click.option("--train", "train", required=True, metavar="NAME@VERSION[:SPLIT]",
              help="Training release (or a release folder); split defaults to train.")
@click.option("--val", metavar="NAME@VERSION[:SPLIT]",
              help="Validation release; split defaults to val, else test.")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Training config (YAML), e.g. configs/dpn-small.yaml.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: config.yaml, metrics.jsonl, checkpoints/ (refused if it holds a run).")
@click.option("--resume", is_flag=True, help="Continue the run in --out.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set epochs=2 --set model.width=0.5.")
@click.option("--backbone-weights", type=click.Path(exists=True, dir_okay=False),
              help="torchvision VGG-16 state dict (local file) for an ImageNet start (width 1.0).")
@click.option("--releases-root", type=click.Path(file_okay=False),
              help="Folder of NAME/VERSION releases (default: WORKSPACE/releases).")
@pass_ctx
def train(c: Ctx, train: str, val: str | None, config_path: str, out: str, resume: bool,
          sets: tuple[str, ...], backbone_weights: str | None, releases_root: str | None) -> None:
    """Train the DPN on a release (one process; several GPUs: torchrun -m blurset.model.train)."""
    r = _train(config_path, train, val, Path(out), resume, sets, backbone_weights,
               c.releases_root(releases_root))
    _print_result(r)


@click.command()
@click.option("--checkpoint", metavar="FILE|pretrained",
              help="A DPN checkpoint to score on --release.")
@click.option("--release", "release_spec", metavar="NAME@VERSION[:SPLIT]",
              help="Release to score on (with --checkpoint).")
@click.option("--split", help="Split of the release (default: test if it has one, else all).")
@click.option("--pred-dir", type=click.Path(exists=True, file_okay=False),
              help="Blur maps of any method (matched to --gt-dir by file stem).")
@click.option("--gt-dir", type=click.Path(exists=True, file_okay=False),
              help="Ground-truth masks (255 = blurred).")
@click.option("--invert-gt", is_flag=True, help="The masks mark sharp regions (255 = in focus).")
@click.option("--invert-pred", is_flag=True, help="The maps mark sharp regions (high = in focus).")
@click.option("--allow-extra-preds", is_flag=True,
              help="With --pred-dir: maps without a mask are left out instead of refused.")
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="With --checkpoint: also score the handcrafted maps (laplacian, lbp).")
@click.option("--name", default=None, help="Method name in the report (default DPN / pred-dir name).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Report folder: metrics.json, table.txt, PR / F curves as CSV and PNG.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write the numbers (mae, max_f, mean_f, ap, auc, s_measure, weighted_f) here.")
@click.option("--force", is_flag=True, help="Replace an existing report in --out.")
@click.option("--bootstrap", type=click.IntRange(min=0), default=0, metavar="ROUNDS",
              help="With --checkpoint and the baselines: draw the images again ROUNDS times "
                   "(e.g. 2000) and give 95% intervals of the DPN's lead over each map.")
@click.option("--releases-root", type=click.Path(file_okay=False))
@pass_ctx
def evaluate(c: Ctx, checkpoint: str | None, release_spec: str | None, split: str | None,
             pred_dir: str | None, gt_dir: str | None, invert_gt: bool, invert_pred: bool,
             allow_extra_preds: bool, baselines: bool, name: str | None, out: str | None, json_path: str | None,
             force: bool, bootstrap: int, releases_root: str | None) -> None:
    """Score blur maps: a checkpoint on a release, or any method's maps against masks."""
    from blurset.model.evaluate import compare_methods, format_comparison, format_table
    if bool(checkpoint) == bool(pred_dir):
        raise click.UsageError("give either --checkpoint with --release, or --pred-dir with --gt-dir")
    if bootstrap and not (checkpoint and baselines):
        raise click.UsageError("--bootstrap compares the DPN with the handcrafted maps: give it "
                               "with --checkpoint and without --no-baselines")
    if checkpoint:
        if not release_spec:
            raise click.UsageError("--checkpoint needs --release NAME@VERSION")
        results = _score_checkpoint(c, checkpoint, release_spec, split, baselines,
                                    name or "DPN", releases_root)
    else:
        if not gt_dir:
            raise click.UsageError("--pred-dir needs --gt-dir")
        from blurset.model.evaluate import evaluate_dirs
        label = name or Path(pred_dir).name
        r = evaluate_dirs(pred_dir, gt_dir, invert_gt=invert_gt, invert_pred=invert_pred,
                          name=label, allow_extra_preds=allow_extra_preds)
        results = {label: r}
    paths = _write(results, out, force) if out else {}
    click.echo(format_table(results))
    comparison = None
    if bootstrap:
        comparison = compare_methods(results, rounds=bootstrap)
        first = next(iter(results))
        click.echo(format_comparison(comparison, first, bootstrap,
                                     results[first].metrics["n_images"]))
    if json_path:
        _write_json(results, paths, Path(json_path), comparison)
        click.echo(f"numbers: {json_path}")
    if out:
        click.echo(f"report: {Path(out).resolve()} (metrics.json, table.txt, pr_curve.png, "
                   "f_curve.png and their CSV)")


def _score_checkpoint(c: Ctx, checkpoint: str, spec: str, split: str | None, baselines: bool,
                      name: str, releases_root: str | None, whole: bool = False) -> dict:
    from tqdm import tqdm

    from blurset.model.crosscheck import default_split, score_on_release
    from blurset.model.data import resolve_release
    from blurset.model.evaluate import BASELINES
    ref = resolve_release(spec, c.releases_root(releases_root))  # its shards verified first
    model, _meta, size = _load(checkpoint)
    split = split or (ref.split if whole else default_split(ref))
    rows = sum(n for s, n in ref.splits().items() if split in (None, s))
    with tqdm(total=rows, desc=f"score {ref.name}@{ref.version}:{split or 'all'}",
              unit="img") as bar:
        return score_on_release(ref, split, model=model, input_size=size, model_name=name,
                                baselines=BASELINES if baselines else (), progress=bar.update)


def _write(results: dict, out: str, force: bool) -> dict:
    from blurset.model.crosscheck import write_scores
    return write_scores(results, out, force=force)


def _write_json(results: dict, paths: dict, path: Path, comparison: dict | None = None) -> None:
    """The first method's numbers at the top level (``mae``, ``max_f``, …), the others under
    ``others``, the curves' CSV paths under ``curves``, the bootstrap's intervals (the first
    method minus each other one) under ``bootstrap``."""
    from blurset.model.evaluate import SUMMARY_KEYS
    data = {name: {k: r.metrics[k] for k in SUMMARY_KEYS if k in r.metrics}
            for name, r in results.items()}
    first = next(iter(data))
    body: dict = {"method": first, **data[first]}
    if len(data) > 1:
        body["others"] = {k: v for k, v in data.items() if k != first}
    if paths:
        body["curves"] = {k: str(v) for k, v in paths.items() if str(v).endswith(".csv")}
    if comparison:
        body["bootstrap"] = comparison
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


@click.command()
@click.option("--train", "train_spec", metavar="NAME@VERSION",
              help="Release to train on (its train split); or give --checkpoint.")
@click.option("--checkpoint", metavar="FILE|pretrained",
              help="Use this trained DPN instead of training one.")
@click.option("--test", "test_spec", required=True, metavar="NAME@VERSION[:SPLIT]",
              help="Release to test on: all of it (nothing of it was trained on), or :SPLIT.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="Training config (needed with --train).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Config overrides.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder: train/ (the run), report/ (table, metrics.json, PR curves).")
@click.option("--releases-root", type=click.Path(file_okay=False))
@pass_ctx
def crosscheck(c: Ctx, train_spec: str | None, checkpoint: str | None, test_spec: str,
               config_path: str | None, sets: tuple[str, ...], out: str,
               releases_root: str | None) -> None:
    """Cross-dataset check (DPN paper 6.2): train on A, score DPN and baselines on B."""
    from blurset.model.evaluate import format_table
    if bool(train_spec) == bool(checkpoint):
        raise click.UsageError("give --train NAME@VERSION (with --config) or --checkpoint C")
    out_dir = Path(out)
    if train_spec:
        if not config_path:
            raise click.UsageError("--train needs --config")
        run = out_dir / "train"
        resume = (run / "checkpoints" / "last.pt").exists()
        r = _train(config_path, train_spec, None, run, resume, sets, None,
                   c.releases_root(releases_root))
        _print_result(r)
        checkpoint = str(r.best_checkpoint)
    results = _score_checkpoint(c, checkpoint, test_spec, None, True, "DPN", releases_root,
                                whole=True)
    paths = _write(results, str(out_dir / "report"), force=True)
    click.echo(format_table(results))
    click.echo(f"report: {paths['table'].parent.resolve()} (table.txt, metrics.json, "
               "pr_curve.png, f_curve.png)")


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--checkpoint", required=True, metavar="FILE|pretrained",
              help="A DPN checkpoint, or pretrained (the shipped DPN).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the blur maps (<stem>.png, 255 = blurred).")
def predict(images: tuple[str, ...], checkpoint: str, out: str) -> None:
    """Blur maps of IMAGES as 8-bit PNG at each image's size."""
    from tqdm import tqdm

    from blurset.errors import InputError
    from blurset.model.apply import map_to_png, output_name, predict_maps, read_rgb
    targets: dict[Path, str] = {}
    for path in images:  # refused before anything is written: no map overwrites another
        if (target := output_name(path, Path(out))) in targets:
            raise InputError(f"{targets[target]} and {path} would both be written to {target}; "
                             "rename one, or predict them into different --out folders")
        targets[target] = path
    model, _, size = _load(checkpoint)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in tqdm(images, desc="predict", unit="img", disable=len(images) < 2):
        blur_map = predict_maps(model, [read_rgb(path)], input_size=size)[0]
        map_to_png(blur_map).save(output_name(path, out_dir))
    click.echo(f"{len(images)} blur maps in {out_dir.resolve()}")


@click.command(name="blur-degree")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--checkpoint", required=True, metavar="FILE|pretrained",
              help="A DPN checkpoint, or pretrained (the shipped DPN).")
@click.option("--threshold", default=0.6, show_default=True, type=click.FloatRange(0, 1),
              help="S above this flags the frame as camera shake (blurred all over).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False),
              help="Write the CSV here instead of to stdout.")
def blur_degree_cmd(images: tuple[str, ...], checkpoint: str, threshold: float,
                    csv_path: str | None) -> None:
    """Blur degree S (mean of the blur map) of each image, and a camera-shake flag (CSV)."""
    from blurset.model.apply import blur_degree, predict_maps, read_rgb
    model, _, size = _load(checkpoint)
    rows = [blur_degree(p, predict_maps(model, [read_rgb(p)], input_size=size)[0], threshold)
            for p in images]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "blur_degree", "blurred_fraction", "camera_shake"])
    for r in rows:
        w.writerow([r.path, f"{r.s:.4f}", f"{r.blurred_fraction:.4f}", int(r.camera_shake)])
    if csv_path:
        Path(csv_path).write_text(buf.getvalue(), encoding="utf-8")
        click.echo(f"{len(rows)} rows in {csv_path}")
    else:
        click.echo(buf.getvalue(), nl=False)


@click.command(name="dof-magnify")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--checkpoint", required=True, metavar="FILE|pretrained",
              help="A DPN checkpoint, or pretrained (the shipped DPN).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output image file.")
@click.option("--strength", default=8.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Extra Gaussian blur (sigma in px at 512 px of the longer side).")
@click.option("--feather", default=0.02, show_default=True, type=click.FloatRange(min=0),
              help="Soft edge (sigma as a share of the longer side).")
def dof_magnify_cmd(image: str, checkpoint: str, out: str, strength: float, feather: float) -> None:
    """Depth-of-field magnification: keep the in-focus region, blur the background more."""
    from blurset.model.apply import dof_magnify, image_format, predict_maps, read_rgb, write_rgb
    image_format(out)  # a name PIL cannot write is refused before the model runs
    model, _, size = _load(checkpoint)
    rgb = read_rgb(image)
    result = dof_magnify(rgb, predict_maps(model, [rgb], input_size=size)[0],
                         strength=strength, feather=feather)
    write_rgb(result, out)
    click.echo(f"wrote {out}")


def register(group: click.Group) -> None:
    for cmd in (train, evaluate, crosscheck, predict, blur_degree_cmd, dof_magnify_cmd):
        group.add_command(cmd)
