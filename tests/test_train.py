"""blurset.model.data / model.config / model.train on a tiny release built here with pyarrow alone
(the release contract of DESIGN.md, not pipeline/releases.py), and real DPN training runs."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image, ImageFilter

from blurset.model.checkpoint import CheckpointError, load_checkpoint
from blurset.model.config import ConfigError, TrainConfig, load_config
from blurset.model.data import (
    Augment,
    GroupedSampler,
    ReleaseDataset,
    ReleaseNotFoundError,
    ReleaseSpecError,
    resolve_release,
)
from blurset.model.loop import add_batch, validation_numbers
from blurset.model.metrics import BlurMetrics, ClassicMetrics
from blurset.model.train import main

REPO = Path(__file__).resolve().parent.parent
_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema([
    ("id", pa.string()), ("image", _IMAGE), ("mask", _IMAGE), ("width", pa.int32()),
    ("height", pa.int32()), ("blur_type", pa.string()), ("source", pa.string()),
    ("source_path", pa.string()), ("split", pa.string()), ("phash", pa.string()),
    ("annotators", pa.list_(pa.string())), ("annotation_ids", pa.list_(pa.int64())),
    ("blur_degree", pa.float64()),
])


def _synthetic(i: int, size: tuple[int, int] = (96, 72)) -> tuple[bytes, bytes]:
    """A textured photo-like image whose left part (a different width per image) is
    Gaussian-blurred; the mask is 255 there."""
    rng = np.random.default_rng(i)
    w, h = size
    coarse = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR), np.int16)
    noise = rng.integers(-60, 60, (h, w, 3))
    stripes = (40 * np.sin(np.arange(w) * (0.6 + 0.1 * (i % 4))))[None, :, None]
    im = Image.fromarray(np.clip(base + noise + stripes, 0, 255).astype(np.uint8))
    cut = w * (3 + i % 4) // 10
    blurred = im.filter(ImageFilter.GaussianBlur(3))
    im.paste(blurred.crop((0, 0, cut, h)), (0, 0))
    mask = np.zeros((h, w), np.uint8)
    mask[:, :cut] = 255
    ib, mb = io.BytesIO(), io.BytesIO()
    im.save(ib, format="JPEG", quality=92)
    Image.fromarray(mask).save(mb, format="PNG")
    return ib.getvalue(), mb.getvalue()


def write_release(root: Path, name: str = "toy", version: str = "1.0.0",
                  splits: dict[str, int] | None = None) -> Path:
    """``root/name/version`` with one shard per split (row groups of 3 rows) and a manifest."""
    folder = root / name / version
    (folder / "data").mkdir(parents=True)
    shards, k = [], 0
    for split, n in (splits or {"train": 8, "test": 4}).items():
        rows = []
        for _ in range(n):
            image, mask = _synthetic(k)
            k += 1
            m = np.asarray(Image.open(io.BytesIO(mask)))
            rows.append({"id": hashlib.sha256(image).hexdigest(),
                         "image": {"bytes": image, "path": f"img{k}.jpg"},
                         "mask": {"bytes": mask, "path": f"img{k}.png"},
                         "width": 96, "height": 72, "blur_type": "defocus", "source": "toy",
                         "source_path": f"img{k}.jpg", "split": split, "phash": "0" * 16,
                         "annotators": [], "annotation_ids": [],
                         "blur_degree": float(m.mean() / 255)})
        rows.sort(key=lambda r: r["id"])
        rel = f"data/{split}-00000-of-00001.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), folder / rel, row_group_size=3)
        data = (folder / rel).read_bytes()
        shards.append({"path": rel, "split": split, "rows": n, "bytes": len(data),
                       "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"format": "blurset-release/1", "name": name, "version": version,
                "parent": None, "rows": sum(s["rows"] for s in shards),
                "schema": {"columns": [{"name": f.name, "type": str(f.type)} for f in SCHEMA],
                           "mask_polarity": "255 = blurred, 0 = sharp"},
                "shards": shards, "files": []}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def releases(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("releases")
    write_release(root)
    return root


@pytest.fixture(scope="session")
def toy(releases):
    return resolve_release("toy@1.0.0", releases)


def tiny_config(**changes) -> TrainConfig:
    base = {"model": {"variant": "deb+bl", "width": 0.125}, "input_size": 64, "batch_size": 4,
            "epochs": 2, "lr": 1e-3, "num_workers": 0, "seed": 3,
            "augment": {"rotations": True, "rescales": [32], "hflip": True}}
    return TrainConfig.from_dict({**base, **changes})


# --------------------------------------------------------------------------------------------
# Releases and data


def test_resolve_release_by_spec_and_path(releases, toy):
    assert (toy.name, toy.version, toy.split) == ("toy", "1.0.0", None)
    assert toy.splits() == {"test": 4, "train": 8}
    by_path = resolve_release(toy.path)
    assert by_path.fingerprint == toy.fingerprint and len(toy.fingerprint) == 64
    test = resolve_release(f"{toy.path}:test")
    assert test.split == "test" and resolve_release("toy@1.0.0:test", releases).split == "test"
    prov = test.provenance()
    assert prov["rows"] == 4 and [s["file"] for s in prov["shards"]] == [
        "data/test-00000-of-00001.parquet"]
    manifest = json.loads((toy.path / "manifest.json").read_text())
    assert prov["shards"][0]["sha256"] == manifest["shards"][1]["sha256"]


def test_resolve_release_errors(releases, tmp_path, monkeypatch):
    with pytest.raises(ReleaseNotFoundError, match=r"no release named 'nope'.*releases there: toy"):
        resolve_release("nope@1.0.0", releases)
    with pytest.raises(ReleaseNotFoundError, match=r"no version 2\.0\.0.*versions: 1\.0\.0"):
        resolve_release("toy@2.0.0", releases)
    with pytest.raises(ReleaseSpecError, match=r"not NAME@VERSION\[:SPLIT\]"):
        resolve_release("toy", releases)
    with pytest.raises(ReleaseSpecError, match=r"no split 'val'; its splits: test \(4 rows\)"):
        resolve_release("toy@1.0.0:val", releases)
    (tmp_path / "half" / "1.0.0").mkdir(parents=True)
    with pytest.raises(ReleaseNotFoundError, match="has no manifest.json"):
        resolve_release("half@1.0.0", tmp_path)
    with pytest.raises(ReleaseNotFoundError, match="has no manifest.json"):
        resolve_release(tmp_path / "half" / "1.0.0")
    monkeypatch.setenv("BLURSET_RELEASES", str(releases))  # the default root
    assert resolve_release("toy@1.0.0").path == (releases / "toy" / "1.0.0").resolve()


def test_dataset_samples_and_augmentation(toy):
    plain = ReleaseDataset(toy, "train", input_size=64)
    aug = ReleaseDataset(toy, "train", input_size=64, augment=Augment(rescales=(32, 16)))
    assert len(plain) == plain.rows == 8
    assert len(aug) == 8 * 6  # itself, 3 rotations, 2 rescales
    x, y, row_id = plain[0]
    assert x.shape == (3, 64, 64) and y.shape == (1, 64, 64) and len(row_id) == 64
    assert x.dtype == y.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert float(y.min()) == 0.0 and float(y.max()) == 1.0  # mask in [0, 1], both kinds present
    # the mask marks the blurred (left) columns, and the left of the image has less detail
    assert float(y[0, :, :5].mean()) == 1.0 and float(y[0, :, -5:].mean()) == 0.0
    detail = x.diff(dim=2).abs()
    assert float(detail[:, :, :16].mean()) < float(detail[:, :, -16:].mean())
    v = len(aug.variants)
    for k in (1, 2, 3):  # rotation variant k = the base sample turned k quarter turns
        xr, yr, rid = aug[2 * v + k]
        x0, y0, _ = aug[2 * v]
        assert rid == plain[2][2]
        assert torch.allclose(xr, torch.rot90(x0, k, dims=(1, 2)))
        assert torch.equal(yr, torch.rot90(y0, k, dims=(1, 2)))
    xs, ys, _ = aug[2 * v + 4]  # rescaled to 32, tiled 2×2
    assert torch.equal(xs[:, :32, :32], xs[:, 32:, 32:]) and torch.equal(ys[:, :32], ys[:, 32:])
    assert not torch.equal(xs, aug[2 * v][0])


def test_random_crops_keep_image_and_mask_aligned(toy):
    plain = ReleaseDataset(toy, "train", input_size=64)
    torch.manual_seed(0)
    cropped = ReleaseDataset(toy, "train", input_size=64,
                             augment=Augment(rotations=False, rescales=(), crop=0.5))
    assert len(cropped) == 8
    x0, _, _ = plain[1]
    seen = []
    for _ in range(4):
        x, y, _ = cropped[1]
        seen.append(x)
        assert x.shape == (3, 64, 64) and 0 <= float(y.min()) and float(y.max()) <= 1
        # the blurred part is the left one in every crop that holds both parts
        if 0.05 < float(y.mean()) < 0.95:
            assert float(y[0, :, :3].mean()) > float(y[0, :, -3:].mean())
    assert not all(torch.equal(seen[0], s) for s in seen[1:])  # a new crop every time
    assert not torch.equal(seen[0], x0)
    with pytest.raises(ValueError, match="augment.crop"):
        Augment(crop=1.5)
    with pytest.raises(ConfigError, match="augment.crop"):
        TrainConfig.from_dict({"augment": {"crop": "big"}})


def test_grouped_sampler_orders_and_splits(toy):
    ds = ReleaseDataset(toy, "train", input_size=32, augment=Augment(rescales=()))
    groups = ds.groups
    assert [len(g) for g in groups] == [12, 12, 8]  # row groups of 3, 3, 2 rows × 4 variants
    ranks = [list(GroupedSampler(groups, seed=1, num_replicas=3, rank=r)) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1  # every rank the same count
    assert sorted({i for r in ranks for i in r}) == list(range(32))  # together: everything
    s = GroupedSampler(groups, seed=1)
    first = s.order()
    assert sorted(first) == list(range(32)) and s.order() == first
    s.set_epoch(1)
    assert s.order() != first
    group_of = {i: k for k, g in enumerate(groups) for i in g}
    assert sum(group_of[a] != group_of[b] for a, b in itertools.pairwise(first)) == 2


@pytest.mark.integration  # starts DataLoader worker processes
def test_grouped_sampler_feeds_dataloader_workers(toy):
    ds = ReleaseDataset(toy, "train", input_size=32, augment=Augment(rescales=()))
    s = GroupedSampler(ds.groups, seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=s, num_workers=2,
                                         multiprocessing_context="forkserver")
    ids = [i for _, _, batch in loader for i in batch]
    assert len(ids) == 32 and len(set(ids)) == 8


def _validation_numbers(prob: torch.Tensor, mask: torch.Tensor) -> dict:
    """What the training loop records for one batch, summed as ranks add theirs up."""
    half = prob.shape[0] // 2
    ranks = [ClassicMetrics(), ClassicMetrics()]
    add_batch(ranks[0], prob[:half], mask[:half])
    add_batch(ranks[1], prob[half:], mask[half:])
    return validation_numbers(ClassicMetrics.from_sums(ranks[0].sums + ranks[1].sums))


def test_validation_metrics_match_model_metrics():
    gen = torch.Generator().manual_seed(0)
    prob = torch.rand(3, 1, 24, 20, generator=gen)
    mask = (torch.rand(3, 1, 24, 20, generator=gen) > 0.6).float()
    mask[1] = 0  # an image without blur
    prob[2] = 0.5  # a constant map
    ours = _validation_numbers(prob, mask)
    ref = BlurMetrics()
    for p, g in zip(prob[:, 0].numpy(), mask[:, 0].numpy(), strict=True):
        ref.step(p, g)
    got = ref.results()
    assert ours["mae"] == pytest.approx(got["mae"], abs=1e-9)
    assert ours["max_f"] == pytest.approx(got["max_f"], abs=1e-9)
    assert ours["mean_f"] == pytest.approx(got["mean_f"], abs=1e-9)
    assert (ours["images"], ours["empty_masks"]) == (3, 1)


# --------------------------------------------------------------------------------------------
# Config


def test_config_load_errors_and_round_trip(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'learning_rate'; valid keys: .*lr"):
        load_config(bad)
    bad.write_text("augment: {rotate: true}\n")
    with pytest.raises(ConfigError, match=r"augment\.rotate; valid keys: rotations"):
        load_config(bad)
    bad.write_text("model: {variant: resnet}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: model: .*resnet.*valid variants"):
        load_config(bad)
    bad.write_text("input_size: 100\n")
    with pytest.raises(ConfigError, match="input_size = 100 must be a multiple of 16"):
        load_config(bad)
    good = tmp_path / "good.yaml"
    good.write_text("model: {variant: deb, width: 0.25}\nlr: 1e-4\ninput_size: 128\n"
                    "augment: {rescales: [64, 32]}\n")
    config = load_config(good)
    assert config.lr == 1e-4 and config.effective_boundary_weight == 0.0
    resolved = config.resolved()
    assert resolved["model"]["width"] == 0.25 and resolved["augment"]["rescales"] == [64, 32]
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(resolved))
    assert load_config(again).resolved() == resolved
    assert config.with_overrides(["epochs=1", "augment.hflip=true"]).augment.hflip is True
    for name in ("dpn-small.yaml", "dpn-paper.yaml"):
        if (REPO / "configs" / name).is_file():
            load_config(REPO / "configs" / name)


# --------------------------------------------------------------------------------------------
# Training


@pytest.fixture(scope="module")
def two_epochs(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "two"
    val = toy.with_split("test")
    result = main(tiny_config(), train=toy, val=val, out_dir=out, progress=False)
    return out, result


@pytest.mark.integration
def test_run_writes_outputs_with_provenance(two_epochs, toy):
    out, result = two_epochs
    assert result.epochs == 2 and result.finished and result.world_size == 1
    assert result.steps == 2 * 10  # 8 rows × 5 variants / batch 4
    assert {p.name for p in out.iterdir()} == {"config.yaml", "metrics.jsonl", "checkpoints"}
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"last.pt", "best.pt"}
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and lines == result.history
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["val_mae"] <= 1 for r in lines)
    assert load_config(out / "config.yaml").resolved() == tiny_config().resolved()
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 20 and ckpt["finished"]
    assert ckpt["config"] == tiny_config().resolved()
    assert ckpt["model_config"]["width"] == 0.125
    assert ckpt["releases"]["train"]["fingerprint"] == toy.fingerprint
    assert ckpt["releases"]["train"]["split"] == "train"
    assert ckpt["releases"]["val"]["split"] == "test"
    assert ckpt["releases"]["train"]["shards"][0]["sha256"] == toy.shards_of("train")[0].sha256
    assert ckpt["metrics"] == lines[-1] and ckpt["run"]["world_size"] == 1
    assert ckpt["blurset_version"] and ckpt["created"]
    best_epoch = min(lines, key=lambda r: r["val_mae"])["epoch"]
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == best_epoch == ckpt["best"]["epoch"]
    assert ckpt["best"]["metric"] == "val_mae"


@pytest.mark.integration
def test_load_checkpoint_reproduces_recorded_metrics(two_epochs, toy, tmp_path):
    out, _ = two_epochs
    model, meta = load_checkpoint(out / "checkpoints" / "last.pt")
    assert not model.training and "model" not in meta and meta["epoch"] == 2
    ds = ReleaseDataset(toy, "test", input_size=64)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.stack([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        prob = model.predict(x)
    again = _validation_numbers(prob, y)
    assert again["mae"] == pytest.approx(meta["metrics"]["val_mae"], abs=1e-6)
    assert again["max_f"] == pytest.approx(meta["metrics"]["val_max_f"], abs=1e-6)
    other, _ = load_checkpoint(out / "checkpoints" / "last.pt")
    with torch.no_grad():
        assert torch.equal(other.predict(x), prob)

    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="is not a blurset checkpoint"):
        load_checkpoint(tmp_path / "notes.pt")
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not a blurset checkpoint.*bare state_dict"):
        load_checkpoint(tmp_path / "bare.pt")


@pytest.mark.integration
def test_refuses_an_existing_run(two_epochs, toy):
    out, _ = two_epochs
    before = (out / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(FileExistsError, match=r"already holds a finished run \(epoch 2.*--resume"):
        main(tiny_config(), train=toy, val=toy.with_split("test"), out_dir=out, progress=False)
    assert (out / "checkpoints" / "last.pt").read_bytes() == before


@pytest.mark.integration
def test_resume_continues_exactly(two_epochs, toy, tmp_path):
    out, _ = two_epochs
    val = toy.with_split("test")
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    with pytest.raises(CheckpointError, match=r"lr: 0\.001 in the run, 0\.002 now"):
        main(tiny_config(epochs=3, lr=2e-3), train=toy, val=val, out_dir=resumed, resume=True,
             progress=False)
    with pytest.raises(CheckpointError, match="val release: toy@1.0.0:test .* none now"):
        main(tiny_config(epochs=3), train=toy, val=None, out_dir=resumed, resume=True,
             progress=False)
    same = main(tiny_config(), train=toy, val=val, out_dir=resumed, resume=True, progress=False)
    assert same.epochs == 2 and same.steps == 20 and same.steps_per_second == 0.0

    result = main(tiny_config(epochs=3), train=toy, val=val, out_dir=resumed, resume=True,
                  progress=False)
    assert result.epochs == 3 and result.steps == 30
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert yaml.safe_load((resumed / "config.yaml").read_text())["epochs"] == 3
    straight = main(tiny_config(epochs=3), train=toy, val=val, out_dir=tmp_path / "straight",
                    progress=False)
    a = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    for key, tensor in b["model"].items():
        assert torch.equal(a["model"][key], tensor), key
    assert result.history[-1]["train_loss"] == straight.history[-1]["train_loss"]


@pytest.mark.integration
def test_max_steps_without_val(toy, tmp_path):
    result = main(tiny_config(max_steps=3, augment={"rotations": False, "rescales": []}),
                  train=toy, val=None, out_dir=tmp_path / "quick", progress=False)
    assert result.steps == 3 and result.epochs == 2 and result.finished  # 2 steps an epoch
    ckpt = torch.load(tmp_path / "quick" / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["best"]["metric"] == "train_loss" and ckpt["releases"]["val"] is None
    assert "val_mae" not in ckpt["metrics"]


@pytest.mark.integration
def test_torchrun_two_processes_on_cpu(toy, tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump({**tiny_config().to_dict(), "epochs": 1}))
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "blurset.model.train", "--config", str(config), "--train", str(toy.path),
         "--val", f"{toy.path}:test", "--out", str(out), "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["epochs"] == 1
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["run"]["world_size"] == 2 and ckpt["epoch"] == 1
    assert ckpt["step"] == 5  # 40 samples, 20 a rank, batches of 4
    assert ckpt["metrics"]["val_images"] == 4  # validation split between ranks, summed
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_run_from_before_flat_sharp_weight_resumes_at_its_default():
    from blurset.model.checkpoint import resume_problems

    now = tiny_config().resolved()
    before = {k: v for k, v in now.items() if k != "flat_sharp_weight"}
    assert now["flat_sharp_weight"] == 1.0
    release = {"name": "toy", "version": "1.0.0", "split": "train", "fingerprint": "f"}
    run = {"config": before, "releases": {"train": release}}
    assert resume_problems(run, now, release, None) == []
    changed = {**now, "flat_sharp_weight": 0.2}
    assert resume_problems(run, changed, release, None) == [
        "flat_sharp_weight: 1.0 in the run, 0.2 now"]
    with pytest.raises(ConfigError, match="flat_sharp_weight"):
        TrainConfig.from_dict({"flat_sharp_weight": 2})
