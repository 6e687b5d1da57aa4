"""The model verbs through `blurset` on a tiny release: train, evaluate (checkpoint and folders),
crosscheck, predict, blur-degree, dof-magnify; and the applications' properties."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image
from test_train import write_release

from blurset.model.apply import blur_degree, dof_magnify
from blurset.pipeline.cli.main import cli

TINY = {"model": {"variant": "deb+bl", "width": 0.125}, "input_size": 64, "batch_size": 4,
        "epochs": 2, "augment": {"rotations": False, "rescales": []}, "seed": 0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(*args: str) -> str:
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("model-cli")
    root = base / "releases"
    write_release(root, "toy", "1.0.0")
    write_release(root, "other", "1.0.0", {"train": 2, "test": 5})
    config = base / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    ws = base / "ws"
    out = run("-w", str(ws), "train", "--train", "toy@1.0.0", "--val", "toy@1.0.0:test",
              "--config", str(config), "--out", str(base / "run"), "--releases-root", str(root))
    return {"base": base, "root": root, "config": config, "ws": ws, "out": out,
            "ckpt": base / "run" / "checkpoints" / "best.pt"}


@pytest.mark.integration
def test_train_writes_a_checkpoint_and_refuses_to_overwrite(setup):
    assert "trained 2 epochs" in setup["out"] and setup["ckpt"].is_file()
    ckpt = torch.load(setup["ckpt"], weights_only=True)
    assert ckpt["releases"]["train"]["name"] == "toy" and ckpt["config"]["input_size"] == 64
    r = CliRunner().invoke(cli, ["-w", str(setup["ws"]), "train", "--train", "toy@1.0.0",
                                 "--config", str(setup["config"]), "--out",
                                 str(setup["base"] / "run"), "--releases-root",
                                 str(setup["root"])])
    assert r.exit_code == 1 and "already holds" in r.output
    r = CliRunner().invoke(cli, ["-w", str(setup["ws"]), "train", "--train", "nope@1.0.0",
                                 "--config", str(setup["config"]), "--out",
                                 str(setup["base"] / "run2"), "--releases-root",
                                 str(setup["root"])])
    assert r.exit_code == 1 and "no release named 'nope'" in r.output


@pytest.mark.integration
def test_evaluate_a_checkpoint_on_a_release_with_the_baselines(setup, tmp_path):
    out, js = tmp_path / "report", tmp_path / "numbers.json"
    text = run("-w", str(setup["ws"]), "evaluate", "--checkpoint", str(setup["ckpt"]),
               "--release", "other@1.0.0", "--releases-root", str(setup["root"]),
               "--out", str(out), "--json", str(js))
    for method in ("DPN", "laplacian", "lbp"):
        assert method in text
    numbers = json.loads(js.read_text())
    assert numbers["method"] == "DPN" and set(numbers["others"]) == {"laplacian", "lbp"}
    assert set(numbers["curves"]) >= {"pr_curve.csv", "f_curve.csv"}
    for m in [numbers, *numbers["others"].values()]:
        assert {"mae", "max_f", "mean_f", "ap", "auc", "s_measure", "weighted_f"} <= set(m)
        assert m["n_images"] == 5 and 0 <= m["mae"] <= 1 and 0 <= m["max_f"] <= 1
    assert (out / "pr_curve.png").stat().st_size > 1000 and (out / "table.txt").is_file()
    rows = list(csv.DictReader((out / "pr_curve.csv").open()))
    assert len(rows) == 3 * 256


@pytest.mark.integration
def test_evaluate_bootstrap_gives_intervals_of_the_dpn_lead(setup, tmp_path):
    js = tmp_path / "numbers.json"
    common = ["-w", str(setup["ws"]), "evaluate", "--checkpoint", str(setup["ckpt"]),
              "--release", "other@1.0.0", "--releases-root", str(setup["root"])]
    text = run(*common, "--json", str(js), "--bootstrap", "300")
    assert "DPN minus each method, 300 resamples of the 5 images" in text
    numbers = json.loads(js.read_text())
    boot = numbers["bootstrap"]
    assert set(boot) == {"laplacian", "lbp", "all"}
    for b in ("laplacian", "lbp"):
        other = numbers["others"][b]
        assert boot[b]["max_f_diff"] == pytest.approx(numbers["max_f"] - other["max_f"])
        assert boot[b]["mae_diff"] == pytest.approx(numbers["mae"] - other["mae"])
        assert boot[b]["max_f_diff_lo"] <= boot[b]["max_f_diff_hi"]
        assert 0 <= boot[b]["wins"] <= 1
    assert boot["all"]["wins"] <= min(boot["laplacian"]["wins"], boot["lbp"]["wins"])
    r = CliRunner().invoke(cli, [*common, "--no-baselines", "--bootstrap", "300"])
    assert r.exit_code == 2 and "--bootstrap compares the DPN with the handcrafted maps" in r.output


def test_evaluate_folders_any_method_with_inversion(tmp_path):
    gt, pred, inv = tmp_path / "gt", tmp_path / "pred", tmp_path / "inv"
    for d in (gt, pred, inv):
        d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        mask = np.zeros((40, 50), np.uint8)
        mask[:, : 10 + 10 * i] = 255
        Image.fromarray(mask).save(gt / f"im{i}.png")
        soft = np.clip(mask.astype(float) + rng.normal(0, 20, mask.shape), 0, 255)
        Image.fromarray(soft.astype(np.uint8)).resize((25, 20)).save(pred / f"im{i}.jpg")
        Image.fromarray(255 - soft.astype(np.uint8)).save(inv / f"im{i}.png")
    good = json.loads(_eval_json(tmp_path, "--pred-dir", str(pred), "--gt-dir", str(gt)))
    bad = json.loads(_eval_json(tmp_path, "--pred-dir", str(inv), "--gt-dir", str(gt)))
    fixed = json.loads(_eval_json(tmp_path, "--pred-dir", str(inv), "--gt-dir", str(gt),
                                  "--invert-pred"))
    assert good["max_f"] > 0.9 and good["mae"] < 0.15
    assert bad["mae"] > 0.7 and fixed["max_f"] > 0.9
    (pred / "im0.jpg").unlink()
    r = CliRunner().invoke(cli, ["evaluate", "--pred-dir", str(pred), "--gt-dir", str(gt)])
    assert r.exit_code == 1 and "im0" in r.output


def _eval_json(tmp_path: Path, *args: str) -> str:
    js = tmp_path / "e.json"
    run("evaluate", *args, "--json", str(js))
    return js.read_text()


@pytest.mark.integration
def test_crosscheck_with_a_checkpoint_and_with_training(setup, tmp_path):
    text = run("-w", str(setup["ws"]), "crosscheck", "--checkpoint", str(setup["ckpt"]),
               "--test", "other@1.0.0", "--out", str(tmp_path / "cc"),
               "--releases-root", str(setup["root"]))
    assert "DPN" in text and "lbp" in text
    report = tmp_path / "cc" / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics["methods"]) == {"DPN", "laplacian", "lbp"}
    assert (report / "pr_curve.png").is_file() and (report / "table.txt").is_file()

    text = run("-w", str(setup["ws"]), "crosscheck", "--train", "other@1.0.0", "--config",
               str(setup["config"]), "--set", "epochs=1", "--test", "toy@1.0.0",
               "--out", str(tmp_path / "cc2"), "--releases-root", str(setup["root"]))
    assert "trained 1 epochs" in text
    assert (tmp_path / "cc2" / "train" / "checkpoints" / "best.pt").is_file()


@pytest.mark.integration
def test_predict_blur_degree_and_dof_magnify(setup, tmp_path):
    images = []
    for i, (w, h) in enumerate([(90, 70), (64, 64)]):
        p = tmp_path / f"photo{i}.jpg"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), np.uint8)).save(p)
        images.append(p)
    run("predict", *map(str, images), "--checkpoint", str(setup["ckpt"]),
        "--out", str(tmp_path / "maps"))
    for p in images:
        with Image.open(tmp_path / "maps" / f"{p.stem}.png") as m, Image.open(p) as im:
            assert m.size == im.size and m.mode == "L"
    text = run("blur-degree", *map(str, images), "--checkpoint", str(setup["ckpt"]))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["path"] for r in rows] == [str(p) for p in images]
    assert all(0 <= float(r["blur_degree"]) <= 1 and r["camera_shake"] in "01" for r in rows)
    out = tmp_path / "dof.png"
    run("dof-magnify", str(images[0]), "--checkpoint", str(setup["ckpt"]), "--out", str(out))
    with Image.open(out) as im:
        assert im.size == (90, 70)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    r = CliRunner().invoke(cli, ["predict", str(bad), "--checkpoint", str(setup["ckpt"]),
                                 "--out", str(tmp_path / "m2")])
    assert r.exit_code == 1 and "bad.jpg" in r.output and "not a readable image" in r.output


def test_dof_magnify_keeps_the_sharp_region_and_blurs_the_rest():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (80, 120, 3), np.uint8)
    blur_map = np.zeros((80, 120), np.float32)
    blur_map[:, 60:] = 1
    out = dof_magnify(image, blur_map, strength=8, feather=0)
    assert np.array_equal(out[:, :60], image[:, :60])
    assert out[:, 70:].astype(float).std() < image[:, 70:].astype(float).std() / 2
    soft = dof_magnify(image, blur_map, strength=8, feather=0.05)
    assert not np.array_equal(soft[:, 50:60], image[:, 50:60])  # a soft edge reaches across
    with pytest.raises(ValueError, match="does not match"):
        dof_magnify(image, blur_map[:10])


def test_blur_degree_is_the_mean_of_the_map_and_flags_shake():
    m = np.full((10, 10), 0.8, np.float32)
    d = blur_degree("x.jpg", m, threshold=0.6)
    assert d.s == pytest.approx(0.8) and d.camera_shake and d.blurred_fraction == 1
    assert not blur_degree("y.jpg", m * 0.5, threshold=0.6).camera_shake
