"""`blurset synth`: CUHK layout, seeded determinism, and blur that really lies inside the mask."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from blurset.errors import ConflictError
from blurset.pipeline.stages.synth import (
    SynthError,
    SynthParams,
    collect_masks,
    disk_kernel,
    motion_kernel,
    synth_one,
    write_synth,
)


def _photo(seed: int, h: int = 300, w: int = 400) -> np.ndarray:
    """A sharp, textured 'photo': blocks of colour with fine noise and edges everywhere."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (w, h),
                      interpolation=cv2.INTER_NEAREST)
    texture = rng.integers(-40, 41, (h, w, 1))
    return np.clip(base.astype(int) + texture, 0, 255).astype(np.uint8)


def _mask(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    cy, cx = int(rng.integers(h // 3, 2 * h // 3)), int(rng.integers(w // 3, 2 * w // 3))
    cv2.ellipse(m, (cx, cy), (w // 4, h // 4), float(rng.uniform(0, 180)), 0, 360, 255, -1)
    return m


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    photos, masks = tmp_path / "photos" / "coll", tmp_path / "masks"
    photos.mkdir(parents=True)
    masks.mkdir()
    for i in range(3):
        Image.fromarray(_photo(i)).save(photos / f"p{i}.png")
    for i in range(3):
        Image.fromarray(_mask(240, 320, i)).save(masks / f"motion{i + 1:04d}.png")
        Image.fromarray(255 - _mask(240, 320, 10 + i)).save(masks / f"out_of_focus{i + 1:04d}.png")
    (masks / "notes.png").write_bytes(b"")  # not a CUHK name: ignored
    return photos.parent, masks


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cuhk_layout_and_manifest(inputs, tmp_path):
    photos, masks = inputs
    r = write_synth([photos], masks, tmp_path / "out", n=8, seed=3, size=96)
    images = sorted(p.name for p in (tmp_path / "out" / "image").iterdir())
    gts = sorted(p.name for p in (tmp_path / "out" / "gt").iterdir())
    assert len(images) == 8 and r.images == 8 and r.motion + r.defocus == 8
    assert all(n.startswith(("motion", "out_of_focus")) and n.endswith(".jpg") for n in images)
    assert [n[:-4] for n in images] == [n[:-4] for n in gts]
    for name in gts:
        with Image.open(tmp_path / "out" / "gt" / name) as g:
            assert g.mode == "L" and set(np.unique(np.asarray(g))) <= {0, 255}
            with Image.open(tmp_path / "out" / "image" / (name[:-4] + ".jpg")) as im:
                assert im.size == g.size and max(im.size) == 96
    manifest = json.loads(r.manifest.read_text())
    assert manifest["seed"] == 3 and manifest["photos"] == 3 and len(manifest["items"]) == 8
    assert manifest["photo_fingerprint"] == r.photo_fingerprint and len(r.photo_fingerprint) == 64


def test_blur_type_follows_the_mask_name(inputs, tmp_path):
    photos, masks = inputs
    assert {kind for _, kind in collect_masks(masks)} == {"motion", "out_of_focus"}
    r = write_synth([photos], masks, tmp_path / "out", n=6, seed=0, size=64)
    for item in r.items:
        stem = Path(item["image"]).stem
        assert item["mask_shape"].startswith(item["kind"]) and stem.startswith(item["kind"])


def test_same_seed_same_bytes_other_seed_other_bytes(inputs, tmp_path):
    photos, masks = inputs
    write_synth([photos], masks, tmp_path / "a", n=5, seed=7, size=80)
    write_synth([photos], masks, tmp_path / "b", n=5, seed=7, size=80)
    write_synth([photos], masks, tmp_path / "c", n=5, seed=8, size=80)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def _laplacian_energy(rgb: np.ndarray, region: np.ndarray) -> float:
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    lap = cv2.Laplacian(gray, cv2.CV_32F)
    return float((lap[region] ** 2).mean())


@pytest.mark.parametrize("kind", ["motion", "out_of_focus"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blur_lies_inside_the_mask(kind, seed):
    photo = _photo(seed, 480, 640)
    mask = (_mask(240, 320, seed) > 0).astype(np.uint8)
    quiet = SynthParams(noise=(0.0, 0.0), softness=(0.0, 0.0))  # the blur alone, no sensor noise
    rgb, out_mask, info = synth_one(photo, mask, kind, 320, np.random.default_rng(seed), quiet)
    assert info["kind"] == kind
    blurred = out_mask > 0
    # away from the soft boundary on both sides
    inside = cv2.erode(blurred.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    outside = cv2.erode((~blurred).astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    assert inside.any() and outside.any()
    assert _laplacian_energy(rgb, inside) < 0.5 * _laplacian_energy(rgb, outside)


def test_kernels_are_normalised():
    for r in (0.2, 1.0, 3.7, 9.0):
        k = disk_kernel(r, rim=0.5)
        assert k.sum() == pytest.approx(1.0, abs=1e-5) and k.shape[0] == k.shape[1]
    rng = np.random.default_rng(0)
    for length, curve in ((5.0, 0.0), (20.0, 0.3)):
        k = motion_kernel(length, 0.7, curve, rng)
        assert k.sum() == pytest.approx(1.0, abs=1e-5)
        assert (k > 0).sum() >= length / 2  # a path, not a point


def test_refuses_to_overwrite_and_bad_inputs(inputs, tmp_path):
    photos, masks = inputs
    write_synth([photos], masks, tmp_path / "out", n=2, seed=0, size=64)
    with pytest.raises(ConflictError, match="already holds"):
        write_synth([photos], masks, tmp_path / "out", n=2, seed=0, size=64)
    with pytest.raises(SynthError, match="no masks"):
        write_synth([photos], photos, tmp_path / "o2", n=2)
    with pytest.raises(SynthError, match="at least 1"):
        write_synth([photos], masks, tmp_path / "o3", n=0)


def test_cli_writes_a_source(inputs, tmp_path):
    from click.testing import CliRunner

    from blurset.pipeline.cli.main import cli

    photos, masks = inputs
    out = tmp_path / "cli"
    r = CliRunner().invoke(cli, ["synth", "--photos", str(photos), "--masks", str(masks),
                                 "--out", str(out), "--n", "3", "--size", "64"])
    assert r.exit_code == 0, r.output
    assert "3 composites" in r.output and len(list((out / "image").iterdir())) == 3
    again = CliRunner().invoke(cli, ["synth", "--photos", str(photos), "--masks", str(masks),
                                     "--out", str(out), "--n", "3"])
    assert again.exit_code == 1 and "already holds" in again.output
