"""The bundled sample: layouts, masks, truth consistent with the files, determinism, bad files."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps, UnidentifiedImageError

from blurset.pipeline.demo import sample as S
from blurset.pipeline.demo import transforms as T

MASK_SUFFIX = ".png"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> S.SampleInfo:
    return S.write_sample(tmp_path_factory.mktemp("demo") / "sample", seed=0)


@pytest.fixture(scope="module")
def truth(demo: S.SampleInfo) -> dict[str, Any]:
    return json.loads(demo.truth.read_text(encoding="utf-8"))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _candidate_files(root: Path) -> set[str]:
    """Every file an ingest would consider an image (saliency masks are not)."""
    found = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or rel.startswith(("cuhk/", f"{S.HIDDEN_MASK_DIR}/")):
            continue
        if rel == "truth.json":
            continue
        if rel.startswith(S.DUT_MASK_DIR) or (
            rel.startswith(S.MSRA_DIR) and path.suffix == MASK_SUFFIX
        ):
            continue
        found.add(rel)
    return found


def _mask_values(path: Path) -> tuple[Image.Image, np.ndarray]:
    with Image.open(path) as image:
        image.load()
        return image.copy(), np.asarray(image)


# ---------------------------------------------------------------------------------- arguments


def test_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=re.escape(str(tmp_path))):
        S.write_sample(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_unknown_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown sample size 'huge'.*demo"):
        S.write_sample(tmp_path / "s", size="huge")


# ------------------------------------------------------------------------------------- layouts


def test_cuhk_layout(demo: S.SampleInfo) -> None:
    images = sorted((demo.cuhk / "image").iterdir())
    gts = sorted((demo.cuhk / "gt").iterdir())
    assert len(images) == demo.references == 20
    assert {p.stem for p in images} == {p.stem for p in gts}
    assert all(re.fullmatch(r"(motion|out_of_focus)\d{4}\.(jpg|JPG)", p.name) for p in images)
    assert any(p.suffix == ".JPG" for p in images)
    assert {p.name[:6] for p in images} == {"motion", "out_of"}
    assert all(p.suffix == ".png" for p in gts)


def test_cuhk_masks_are_binary_and_fit_their_image(demo: S.SampleInfo) -> None:
    modes = set()
    for image_path in (demo.cuhk / "image").iterdir():
        mask, values = _mask_values(demo.cuhk / "gt" / f"{image_path.stem}.png")
        modes.add(mask.mode)
        with Image.open(image_path) as image:
            assert mask.size == image.size
        assert set(np.unique(values)) <= {0, 255}
        if mask.mode == "RGBA":  # as the real CUHK RGBA masks: R = G = B, opaque
            assert (values[..., 3] == 255).all()
            assert (values[..., 0] == values[..., 1]).all() and (
                values[..., 1] == values[..., 2]
            ).all()
        else:
            assert mask.mode == "L"
    assert modes == {"L", "RGBA"}


def _blur_ratios(pairs: list[tuple[Path, Path]]) -> tuple[list[float], list[float]]:
    """Per (image, mask) pair, inside / outside the blurred region (away from its border): the
    ratios of mean absolute Laplacian and of Laplacian variance. Pairs with too few pixels on
    either side are skipped."""
    energy_ratios, variance_ratios = [], []
    for image_path, mask_path in pairs:
        grey = np.asarray(Image.open(image_path).convert("L"), np.float32)
        blurred = np.asarray(Image.open(mask_path).convert("L"))
        inner = cv2.erode((blurred > 127).astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
        outer = cv2.erode((blurred <= 127).astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
        if inner.sum() < 500 or outer.sum() < 500:
            continue
        laplacian = cv2.Laplacian(grey, cv2.CV_32F)
        energy = np.abs(laplacian)
        energy_ratios.append(float(energy[inner].mean() / energy[outer].mean()))
        variance_ratios.append(float(laplacian[inner].var() / laplacian[outer].var()))
    return energy_ratios, variance_ratios


def test_cuhk_blurred_region_is_blurrier(demo: S.SampleInfo) -> None:
    """Laplacian energy is lower where the mask says blurred, for nearly every reference."""
    pairs = [(p, demo.cuhk / "gt" / f"{p.stem}.png") for p in (demo.cuhk / "image").iterdir()]
    ratios, _ = _blur_ratios(pairs)
    assert len(ratios) >= 10
    assert np.mean(np.asarray(ratios) < 0.8) >= 0.8


def test_msra_layout_and_saliency_masks(demo: S.SampleInfo, truth: dict[str, Any]) -> None:
    folder = demo.root / S.MSRA_DIR
    jpgs = sorted(folder.glob("*.jpg"))
    assert jpgs and all(re.fullmatch(r"\d+", p.stem) for p in jpgs)
    wrong_size = {b["path"] for b in truth["bad_files"] if b["reason"] == "mask size"}
    assert len(wrong_size) == 1
    for mask_path in folder.glob("*.png"):
        image_path = mask_path.with_suffix(".jpg")
        assert image_path.exists()
        mask, values = _mask_values(mask_path)
        assert mask.mode == "L" and set(np.unique(values)) == {0, 255}
        if image_path.stat().st_size == 0 or b"<html" in image_path.read_bytes()[:100]:
            continue
        with Image.open(image_path) as image:
            same = image.size == mask.size
        rel = mask_path.relative_to(demo.root).as_posix()
        assert same != (rel in wrong_size)


def test_dut_layout_and_saliency_masks(demo: S.SampleInfo) -> None:
    images = demo.root / S.DUT_IMAGE_DIR
    masks = sorted((demo.root / S.DUT_MASK_DIR).glob("*.png"))
    assert 0 < len(masks) < len(list(images.glob("*.jpg")))
    for mask_path in masks:
        mask, values = _mask_values(mask_path)
        assert mask.mode == "L" and set(np.unique(values)) == {0, 255}
        with Image.open(images / f"{mask_path.stem}.jpg") as image:
            assert image.size == mask.size


def test_extra_has_a_nested_folder(demo: S.SampleInfo) -> None:
    nested = [p for p in demo.extra.rglob("*") if p.is_file() and p.parent != demo.extra]
    assert nested


# --------------------------------------------------------------------------------------- truth


def test_truth_names_exactly_the_files_on_disk(demo: S.SampleInfo, truth: dict[str, Any]) -> None:
    listed = [image["path"] for image in truth["images"]]
    assert len(listed) == len(set(listed)) == demo.candidates
    assert set(listed) == _candidate_files(demo.root)
    cuhk_files = {p.relative_to(demo.root).as_posix() for p in demo.cuhk.rglob("*") if p.is_file()}
    assert cuhk_files == {r["path"] for r in truth["references"]} | {
        r["mask"] for r in truth["references"]
    }
    for path in S.iter_truth_paths(truth):
        assert (demo.root / path).is_file(), path
    assert set(truth["sources"]) == {"cuhk", "msra10k", "dut-omron", "extra"}
    for name, source in truth["sources"].items():
        assert (demo.root / source["root"]).is_dir() and source["root"] == name


def test_planted_pairs_cover_every_transform(demo: S.SampleInfo, truth: dict[str, Any]) -> None:
    photo_of = {i["path"]: i["photo"] for i in truth["images"]}
    photo_of |= {r["path"]: r["photo"] for r in truth["references"]}
    references = {r["path"] for r in truth["references"]}
    pairs = truth["planted_pairs"]
    assert len(pairs) == demo.planted_pairs
    assert {p["transform"] for p in pairs} == set(T.TRANSFORMS)
    assert {p["candidate"].split("/")[0] for p in pairs} == {"msra10k", "dut-omron"}
    for pair in pairs:
        assert pair["reference"] in references
        assert photo_of[pair["candidate"]] == photo_of[pair["reference"]]
        steps = pair["steps"]
        assert steps == [pair["transform"]] or (pair["transform"] == "combo" and len(steps) >= 2)
    # every photo is distinct apart from the planted relations
    photos = [i["photo"] for i in truth["images"] if i["role"] in ("distinct", "crop_pair", "flat")]
    photos += [r["photo"] for r in truth["references"]]
    assert len(photos) == len(set(photos))


def test_candidate_pairs_and_exact_duplicate(demo: S.SampleInfo, truth: dict[str, Any]) -> None:
    assert len(truth["candidate_pairs"]) == demo.candidate_pairs >= 1
    for pair in truth["candidate_pairs"]:
        assert pair["candidate"].startswith("dut-omron/")
        assert pair["reference"].startswith("msra10k/")
    (dup,) = truth["exact_duplicates"]
    assert dup["a"] != dup["b"]
    assert (demo.root / dup["a"]).read_bytes() == (demo.root / dup["b"]).read_bytes()


def test_must_not_match_pairs(truth: dict[str, Any]) -> None:
    photo_of = {i["path"]: i["photo"] for i in truth["images"]}
    crops = [p for p in truth["must_not_match"] if p["why"].startswith("crops")]
    flats = [p for p in truth["must_not_match"] if p["why"].startswith("flats")]
    assert len(crops) == 1 and len(flats) >= 1
    name_a, box_a = T.parse_crop_name(photo_of[crops[0]["a"]])
    name_b, box_b = T.parse_crop_name(photo_of[crops[0]["b"]])
    assert name_a == name_b and box_a.intersection(box_b) == 0
    for pair in flats:
        assert photo_of[pair["a"]] != photo_of[pair["b"]]


# --------------------------------------------------------------------------------- hidden masks


def test_every_distinct_candidate_has_a_hidden_mask(
    demo: S.SampleInfo, truth: dict[str, Any]
) -> None:
    assert truth["version"] == S.TRUTH_VERSION >= 2
    hidden = {h["image"]: h for h in truth["hidden_masks"]}
    assert len(hidden) == len(truth["hidden_masks"]) == demo.hidden_masks
    role = {i["path"]: i["role"] for i in truth["images"]}
    distinct = {path for path, r in role.items() if r == "distinct"}
    assert {p.split("/")[0] for p in distinct} == {"msra10k", "dut-omron"}
    (dup,) = truth["exact_duplicates"]
    assert set(hidden) == distinct | {dup["b"]}  # the byte-identical copy shares its mask
    assert hidden[dup["b"]]["mask"] != hidden[dup["a"]]["mask"]
    assert (demo.root / hidden[dup["b"]]["mask"]).read_bytes() == (
        demo.root / hidden[dup["a"]]["mask"]
    ).read_bytes()
    assert {h["blur_type"] for h in hidden.values()} == {"defocus", "motion"}
    shapes = {f"{m.stem}.png" for m in S._load_masks()}
    for image, entry in hidden.items():
        stem = image.rsplit(".", 1)[0]
        assert entry["mask"] == f"{S.HIDDEN_MASK_DIR}/{stem}.png"
        assert entry["mask_shape"] in shapes
        expected = "motion" if entry["mask_shape"].startswith("motion") else "defocus"
        assert entry["blur_type"] == expected
        assert entry["kernel"]["type"] == {"motion": "motion", "defocus": "disk"}[expected]


def test_hidden_masks_live_outside_every_source(demo: S.SampleInfo, truth: dict[str, Any]) -> None:
    on_disk = {
        p.relative_to(demo.root).as_posix()
        for p in (demo.root / S.HIDDEN_MASK_DIR).rglob("*")
        if p.is_file()
    }
    assert on_disk == {h["mask"] for h in truth["hidden_masks"]}
    roots = {source["root"] for source in truth["sources"].values()}
    assert S.HIDDEN_MASK_DIR not in roots
    assert not any(m.startswith(f"{root}/") for m in on_disk for root in roots)


def test_hidden_masks_are_binary_and_fit_their_image(
    demo: S.SampleInfo, truth: dict[str, Any]
) -> None:
    for entry in truth["hidden_masks"]:
        mask, values = _mask_values(demo.root / entry["mask"])
        assert mask.mode == "L"
        assert set(np.unique(values)) == {0, 255}  # some blurred, some sharp
        with Image.open(demo.root / entry["image"]) as image:
            assert image.size == mask.size


def test_hidden_blurred_region_is_blurrier(demo: S.SampleInfo, truth: dict[str, Any]) -> None:
    """Laplacian energy and variance are lower where the hidden mask says blurred."""
    pairs = [(demo.root / h["image"], demo.root / h["mask"]) for h in truth["hidden_masks"]]
    energy, variance = _blur_ratios(pairs)
    assert len(energy) >= 10
    assert np.mean(np.asarray(energy) < 0.8) >= 0.8
    assert np.mean(np.asarray(variance) < 1.0) >= 0.9
    assert np.mean(np.log(variance)) < np.log(0.5)  # on average well under half


def test_candidate_copies_are_of_blur_composites(truth: dict[str, Any]) -> None:
    hidden = {h["image"] for h in truth["hidden_masks"]}
    assert truth["candidate_pairs"]
    assert all(pair["reference"] in hidden for pair in truth["candidate_pairs"])


# ------------------------------------------------------------------------------------ bad files


def _bad(truth: dict[str, Any], reason: str) -> dict[str, Any]:
    (entry,) = [b for b in truth["bad_files"] if b["reason"] == reason]
    return entry


def test_bad_files_are_what_they_claim(demo: S.SampleInfo, truth: dict[str, Any]) -> None:
    root = demo.root
    truncated = root / _bad(truth, "truncated")["path"]
    with Image.open(truncated) as image, pytest.raises(OSError, match="truncated"):
        image.load()
    with pytest.raises(UnidentifiedImageError):
        Image.open(root / _bad(truth, "not an image")["path"])
    empty = root / _bad(truth, "empty")["path"]
    assert empty.stat().st_size == 0
    with pytest.raises(UnidentifiedImageError):
        Image.open(empty)
    bomb = root / _bad(truth, "pixel limit")["path"]
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)
    assert demo.bad_files == sum(b["expect"] == "quarantine" for b in truth["bad_files"]) == 5


def test_bomb_is_a_valid_png_when_allowed() -> None:
    with Image.open(io.BytesIO(S._bomb_png(64, 48))) as image:
        image.load()
        assert image.size == (64, 48) and image.mode == "1"
        assert np.asarray(image).max() == 0


@pytest.mark.parametrize(
    ("reason", "mode"),
    [
        ("16-bit", "I;16"),
        ("palette", "P"),
        ("alpha", "RGBA"),
        ("grayscale", "L"),
        ("cmyk", "CMYK"),
        ("exif", "RGB"),
        ("nested", "RGB"),
    ],
)
def test_odd_but_valid_files_decode(
    demo: S.SampleInfo, truth: dict[str, Any], reason: str, mode: str
) -> None:
    entry = _bad(truth, reason)
    assert entry["expect"] == "ingest"
    with Image.open(demo.root / entry["path"]) as image:
        assert image.mode == mode
        upright = ImageOps.exif_transpose(image)
        assert upright.size == (entry["width"], entry["height"])
        if reason == "exif":
            assert image.getexif()[0x0112] == 6
            assert image.size == (entry["height"], entry["width"])  # stored sideways


def test_exif_file_turns_upright_into_the_photo(demo: S.SampleInfo, truth: dict[str, Any]) -> None:
    entry = _bad(truth, "exif")
    photo_name = {i["path"]: i["photo"] for i in truth["images"]}[entry["path"]]
    photo, box = T.parse_crop_name(photo_name)
    original = np.asarray(dict(T.photo_pool())[photo].crop(box.pil()), np.float32)
    with Image.open(demo.root / entry["path"]) as image:
        upright = np.asarray(ImageOps.exif_transpose(image).convert("RGB"), np.float32)
    assert np.abs(upright - original).mean() < 6  # JPEG noise only


# ---------------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files(demo: S.SampleInfo, tmp_path: Path) -> None:
    again = S.write_sample(tmp_path / "again", seed=0)
    first, second = _files(demo.root), _files(again.root)
    assert first.keys() == second.keys()
    differing = [k for k in first if first[k] != second[k]]
    assert not differing


def test_other_seed_gives_another_sample(demo: S.SampleInfo, tmp_path: Path) -> None:
    other = S.write_sample(tmp_path / "other", seed=1)
    digest = {hashlib.sha256(b).hexdigest() for b in _files(demo.root / "cuhk").values()}
    other_digest = {hashlib.sha256(b).hexdigest() for b in _files(other.root / "cuhk").values()}
    assert digest != other_digest


# ---------------------------------------------------------------------------------------- bench


@pytest.mark.integration  # the bench-size sample
def test_bench_applies_every_transform_to_every_reference(tmp_path: Path) -> None:
    info = S.write_sample(tmp_path / "bench", size="bench", seed=0)
    truth = json.loads(info.truth.read_text(encoding="utf-8"))
    assert info.references >= 40
    seen = {(p["reference"], p["transform"]) for p in truth["planted_pairs"]}
    assert len(seen) == len(truth["planted_pairs"]) == info.references * len(T.TRANSFORMS)
    sources = {p["candidate"].split("/")[0] for p in truth["planted_pairs"]}
    assert sources == {"msra10k", "dut-omron"}
    assert {image["path"] for image in truth["images"]} == _candidate_files(info.root)
