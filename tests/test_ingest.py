"""Ingest stage on real files with a real SQLite catalog (no Prefect: the stage is plain Python)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from conftest import jpeg_bytes, photo, png_bytes
from PIL import Image

from blurset.pipeline.catalog import Catalog
from blurset.pipeline.stages.hashing import ImageHashes
from blurset.pipeline.stages.ingest import ingest_batch, items_to_ingest
from blurset.pipeline.stages.sources import LayoutError, scan_source
from blurset.pipeline.store import ObjectStore


def ingest_all(root: Path, kind: str, ws: Path, name: str = "src", max_pixels: int = 100_000_000):
    scan = scan_source(kind, root)
    catalog = Catalog(f"sqlite:///{ws / 'catalog.sqlite'}")
    catalog.register_source(name, kind, str(root))
    todo = items_to_ingest(catalog, name, root, scan.items, max_pixels)
    res = ingest_batch(root, todo, ws / "objects", ws / "quarantine", max_pixels)
    catalog.record_batch(name, res.images, res.paths, res.masks, res.quarantined)
    return catalog, res, todo


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def test_every_bad_input_is_quarantined_with_its_reason(bad_folder, tmp_path):
    root, expected = bad_folder
    catalog, _res, _ = ingest_all(root, "folder", tmp_path / "ws", max_pixels=50_000_000)
    reasons = {q["rel_path"]: q["reason"] for q in catalog.quarantined()}
    assert set(reasons) == set(expected), reasons
    for rel, keyword in expected.items():
        assert keyword in reasons[rel].lower(), (rel, reasons[rel])
    ingested = {p["rel_path"] for p in catalog.paths_of("src")}
    assert ingested == {"ok.jpg", "gray16.png", "cmyk.jpg", "palette.png", "alpha.png", "gray.jpg",
                        "rotated.jpg", "nested/deeper/copy.JPG"}
    # nothing lost: the bad bytes are kept in the quarantine store under their sha256
    for q in catalog.quarantined():
        data = (root / q["rel_path"]).read_bytes()
        if data:
            assert (tmp_path / "ws" / "quarantine" / q["object_path"]).read_bytes() == data


def test_odd_formats_decode_to_the_same_picture(bad_folder, tmp_path):
    root, _ = bad_folder
    catalog, _, _ = ingest_all(root, "folder", tmp_path / "ws")
    rows = {p["rel_path"]: catalog.image(p["image_id"]) for p in catalog.paths_of("src")}
    ref = rows["ok.jpg"]["phash"]
    for rel in ("gray16.png", "cmyk.jpg", "palette.png", "alpha.png", "gray.jpg"):
        assert (rows[rel]["width"], rows[rel]["height"]) == (400, 300)
        assert hamming(rows[rel]["phash"], ref) <= 6, rel
    assert rows["gray16.png"]["mode"].startswith("I")


def test_exif_orientation_is_applied_for_hashing_and_size_but_bytes_kept(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    from conftest import exif_rotated_jpeg
    upright = photo(2, (400, 300))
    (root / "upright.jpg").write_bytes(jpeg_bytes(upright))
    rotated_bytes = exif_rotated_jpeg(upright)
    (root / "rotated.jpg").write_bytes(rotated_bytes)
    catalog, _, _ = ingest_all(root, "folder", tmp_path / "ws")
    rows = {p["rel_path"]: catalog.image(p["image_id"]) for p in catalog.paths_of("src")}
    assert (rows["rotated.jpg"]["width"], rows["rotated.jpg"]["height"]) == (400, 300)
    assert rows["rotated.jpg"]["exif_orientation"] == 6
    assert hamming(rows["rotated.jpg"]["phash"], rows["upright.jpg"]["phash"]) <= 6
    stored = (tmp_path / "ws" / "objects" / rows["rotated.jpg"]["object_path"]).read_bytes()
    assert stored == rotated_bytes
    assert rows["rotated.jpg"]["id"] == hashlib.sha256(rotated_bytes).hexdigest()
    thumb = ImageHashes.from_stored(int(rows["rotated.jpg"]["phash"], 16), rows["rotated.jpg"]["thumb"])
    assert thumb.phash == int(rows["rotated.jpg"]["phash"], 16)


def test_rerun_changes_nothing_and_exact_copies_are_stored_once(bad_folder, tmp_path):
    root, _ = bad_folder
    ws = tmp_path / "ws"
    catalog, _res, _todo = ingest_all(root, "folder", ws)
    before = catalog.counts()
    objects = sorted(p for p in (ws / "objects").rglob("*") if p.is_file())
    mtimes = [p.stat().st_mtime_ns for p in objects]
    catalog2, _res2, todo2 = ingest_all(root, "folder", ws)
    assert todo2 == [] and catalog2.counts() == before
    assert [p.stat().st_mtime_ns for p in objects] == mtimes
    # ok.jpg and nested/deeper/copy.JPG are the same bytes: one object, two paths
    paths = {p["rel_path"]: p["image_id"] for p in catalog.paths_of("src")}
    assert paths["ok.jpg"] == paths["nested/deeper/copy.JPG"]
    assert before["images"] == before["paths"] - 1


def test_a_changed_file_is_reingested_and_the_old_object_kept(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.jpg").write_bytes(jpeg_bytes(photo(0, (320, 240))))
    ws = tmp_path / "ws"
    catalog, _, _ = ingest_all(root, "folder", ws)
    old = catalog.paths_of("src")[0]["image_id"]
    (root / "a.jpg").write_bytes(jpeg_bytes(photo(3, (320, 240))))
    catalog, _, todo = ingest_all(root, "folder", ws)
    assert len(todo) == 1
    new = catalog.paths_of("src")[0]["image_id"]
    assert new != old
    assert catalog.image(old) is not None and ObjectStore(ws / "objects").exists(catalog.image(old)["object_path"])


def cuhk_folder(tmp_path: Path) -> Path:
    root = tmp_path / "cuhk"
    (root / "image").mkdir(parents=True)
    (root / "gt").mkdir()
    mask = np.zeros((300, 400), np.uint8)
    mask[50:200, 100:300] = 255
    (root / "image" / "motion0001.jpg").write_bytes(jpeg_bytes(photo(0, (400, 300))))
    (root / "gt" / "motion0001.png").write_bytes(png_bytes(Image.fromarray(mask)))
    (root / "image" / "out_of_focus0002.JPG").write_bytes(jpeg_bytes(photo(1, (400, 300))))
    rgba = Image.fromarray(mask).convert("RGBA")  # 16 real CUHK masks are RGBA
    (root / "gt" / "out_of_focus0002.png").write_bytes(png_bytes(rgba))
    (root / "image" / "out_of_focus0003.jpg").write_bytes(jpeg_bytes(photo(2, (400, 300))))
    (root / "gt" / "out_of_focus0003.png").write_bytes(png_bytes(Image.fromarray(mask[:200, :300])))
    (root / "gt" / "motion0999.png").write_bytes(png_bytes(Image.fromarray(mask)))
    return root


def test_cuhk_masks_blur_type_and_mask_checks(tmp_path):
    root = cuhk_folder(tmp_path)
    ws = tmp_path / "ws"
    catalog, _res, _ = ingest_all(root, "cuhk", ws, name="cuhk")
    paths = {p["rel_path"]: p for p in catalog.paths_of("cuhk")}
    assert {k: v["blur_type"] for k, v in paths.items()} == {
        "image/motion0001.jpg": "motion", "image/out_of_focus0002.JPG": "defocus",
        "image/out_of_focus0003.jpg": "defocus"}
    for rel in ("image/motion0001.jpg", "image/out_of_focus0002.JPG"):
        (m,) = catalog.blur_masks(paths[rel]["image_id"])
        arr = np.asarray(Image.open(ws / "objects" / m["object_path"]))
        assert arr.dtype == np.uint8 and arr.ndim == 2 and set(np.unique(arr)) == {0, 255}
        assert m["blur_degree"] == pytest.approx(150 * 200 / (300 * 400))
    assert catalog.blur_masks(paths["image/out_of_focus0003.jpg"]["image_id"]) == []
    reasons = {q["rel_path"]: q["reason"] for q in catalog.quarantined()}
    assert "mask size 300×200 differs" in reasons["gt/out_of_focus0003.png"]
    assert set(reasons) == {"gt/out_of_focus0003.png"}  # orphan masks are reported by the flow


def test_msra_saliency_masks_are_provenance_never_images(tmp_path):
    root = tmp_path / "msra" / "MSRA10K_Imgs_GT" / "Imgs"
    root.mkdir(parents=True)
    for i in range(3):
        (root / f"{i}.jpg").write_bytes(jpeg_bytes(photo(i, (300, 200))))
        (root / f"{i}.png").write_bytes(png_bytes(Image.new("L", (300, 200), 255)))
    catalog, _, _ = ingest_all(tmp_path / "msra", "msra10k", tmp_path / "ws", name="msra")
    paths = catalog.paths_of("msra")
    assert [p["rel_path"] for p in paths] == [f"MSRA10K_Imgs_GT/Imgs/{i}.jpg" for i in range(3)]
    for p in paths:
        assert catalog.blur_masks(p["image_id"]) == []
        (s,) = catalog.saliency_masks(p["image_id"])
        assert s["origin"] == "provenance"


@pytest.mark.parametrize("kind", ["cuhk", "msra10k", "dut-omron"])
def test_wrong_layout_is_a_clear_error(tmp_path, kind):
    (tmp_path / "x.jpg").write_bytes(jpeg_bytes(photo(0, (64, 64))))
    with pytest.raises(LayoutError, match=f"does not look like a {kind} source: expected"):
        scan_source(kind, tmp_path)
