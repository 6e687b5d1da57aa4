"""Release stage on a real workspace (the bundled sample, ingested and deduped; SQLite catalog):
Parquet shards, manifest, dataset card, verify, diff, publish (local folder and S3 on moto)."""

from __future__ import annotations

import hashlib
import importlib
import io
import itertools
import json
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import free_port
from PIL import Image

from blurset.model.release_format import SCHEMA
from blurset.pipeline import release as R
from blurset.pipeline.catalog import Catalog, MaskRow
from blurset.pipeline.demo.sample import SOURCES, write_sample
from blurset.pipeline.demo.simulate import hidden_truth
from blurset.pipeline.stages.dedup.run import run_dedup
from blurset.pipeline.stages.ingest import encode_png, ingest_batch
from blurset.pipeline.stages.sources import scan_source
from blurset.pipeline.workspace import Workspace

SPLITS = Path(__file__).resolve().parents[2] / "shared" / "data" / "cuhk_splits"
KIM = str(SPLITS / "kim_pg2018_{split}_list.txt")
SERVER = "http://label-studio.test"


# --------------------------------------------------------------------------------------------
# Fixtures: the demo sample ingested and deduped once, copied for every test that changes it


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("release-base")
    sample = root / "sample"
    write_sample(sample)
    ws = Workspace.open(root / "ws")
    catalog = ws.catalog()
    for name, kind in SOURCES.items():
        src = sample / name
        catalog.register_source(name, kind, str(src))
        res = ingest_batch(src, scan_source(kind, src).items, ws.objects.root,
                           ws.quarantine_store.root)
        catalog.record_batch(name, res.images, res.paths, res.masks, res.quarantined)
    out = run_dedup(catalog, "cuhk")
    catalog.replace_findings("cuhk", None, {}, out.summary, out.findings, out.exclusions)
    catalog.close()
    return sample, ws.root


@dataclass
class Env:
    ws: Workspace
    catalog: Catalog
    sample: Path


@pytest.fixture
def env(base, tmp_path) -> Env:
    sample, ws_root = base
    shutil.copytree(ws_root, tmp_path / "ws")
    ws = Workspace.open(tmp_path / "ws")
    catalog = ws.catalog()
    yield Env(ws, catalog, sample)
    catalog.close()


@pytest.fixture(scope="module")
def cuhk_release(base, tmp_path_factory) -> Path:
    """A CUHK release built straight from ingest with the published 800/200 split (read only)."""
    _sample, ws_root = base
    root = tmp_path_factory.mktemp("cuhk-release")
    shutil.copytree(ws_root, root / "ws")
    ws = Workspace.open(root / "ws")
    catalog = ws.catalog()
    info = R.build_release(ws, catalog, R.ReleaseSpec("cuhk", "1.0.0", from_sources=["cuhk"],
                                                      split_file=KIM))
    catalog.close()
    return info.path


_ids = itertools.count(1000)


def fake_pull(env: Env, project: str, items: list[dict], project_id: int = 7) -> None:
    """Tasks and their annotations written the way ``blurset.pipeline.stages.labelling.pull`` writes them.

    Each item: image_id, source, rel_path, and either ``reject`` or ``masks`` [(annotator, mask)]
    (the last one is current), with optional ``blur_type``, ``hint`` (the model's guess) and
    ``prelabel``.
    """
    catalog, ws = env.catalog, env.ws
    rows = []
    for it in items:
        it["task_id"] = next(_ids)
        rows.append({"server": SERVER, "project": project, "project_id": project_id,
                     "task_id": it["task_id"], "image_id": it["image_id"],
                     "source": it["source"], "rel_path": it["rel_path"],
                     "prelabel": it.get("prelabel")})
    catalog.record_tasks(rows)
    updates, ann_rows, mask_rows = [], [], []
    sources_of = {}
    for it in items:
        sources_of[it["image_id"]] = (it["source"], it["rel_path"])
        subs = [(who, None) for who in it.get("reject_by", ["person-one"])] if "reject" in it \
            else it["masks"]
        last = None
        for who, mask in subs:
            aid = next(_ids)
            row = {"annotation_id": aid, "task_id": it["task_id"], "image_id": it["image_id"],
                   "annotator": who, "created_at": None, "updated_at": None, "lead_time": 10.0,
                   "blur_type": it.get("blur_type"), "rejected": it.get("reject"),
                   "mask_object": None, "blur_degree": None, "problem": None,
                   "snapshot": "export-test.json"}
            if mask is not None:
                row["mask_object"] = ws.objects.put(encode_png(mask), ".png")
                row["blur_degree"] = float(mask.mean() / 255.0)
            ann_rows.append(row)
            last = (aid, row, mask)
        aid, row, mask = last
        update = {"task_id": it["task_id"], "current_annotation_id": aid,
                  "blur_type": it.get("blur_type"), "blur_type_hint": it.get("hint"),
                  "annotators": json.dumps(sorted({who for who, _ in subs})),
                  "agreement_iou": it.get("agreement_iou")}
        if "reject" in it:
            update["status"] = "rejected"
        else:
            update["status"] = "annotated"
            mask_rows.append(MaskRow(image_id=it["image_id"], rel_path=it["rel_path"],
                                     kind="blur", origin=f"annotation:{project}#{aid}",
                                     object_path=row["mask_object"],
                                     original_id=hashlib.sha256(encode_png(mask)).hexdigest(),
                                     inverted=False, blur_degree=row["blur_degree"]))
        updates.append(update)
    catalog.record_pull(SERVER, project_id, updates, ann_rows, mask_rows, sources_of)


def path_row(env: Env, source: str, rel_path: str) -> dict:
    return next(p for p in env.catalog.paths_of(source) if p["rel_path"] == rel_path)


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as m:
        return np.asarray(m.convert("L"))


def kim_split() -> dict[str, str]:
    out = {}
    for split in ("train", "test"):
        for line in (SPLITS / f"kim_pg2018_{split}_list.txt").read_text().splitlines():
            if line.strip():
                out[line.strip().strip("'").casefold()] = split
    return out


def rows_of(path: Path) -> list[dict]:
    import pyarrow.parquet as pq
    out = []
    for f in sorted((path / "data").glob("*.parquet")):
        out += pq.read_table(f).to_pylist()
    return out


def front_matter(card: str) -> dict:
    m = re.match(r"^---\n(.*?)\n---\n", card, re.DOTALL)
    assert m, card[:200]
    return yaml.safe_load(m.group(1))


# --------------------------------------------------------------------------------------------
# Units: versions, splits


def test_versions_are_semantic_and_ordered():
    ordered = ["0.1.0", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta", "1.0.0-rc.1", "1.0.0",
               "1.0.1", "1.2.0", "1.10.0", "2.0.0"]
    shuffled = [ordered[i] for i in np.random.default_rng(0).permutation(len(ordered))]
    assert sorted(shuffled, key=R.version_key) == ordered
    for bad in ["1.0", "v1.0.0", "01.0.0", "1.0.0+build", "latest", ""]:
        with pytest.raises(R.ReleaseError, match="not a semantic version"):
            R.validate_version(bad)


def test_split_spec_is_validated():
    assert R.parse_split("train=0.8, test=0.2") == {"train": 0.8, "test": 0.2}
    assert R.parse_split({"train": 0.7, "val": 0.1, "test": 0.2})["val"] == 0.1
    with pytest.raises(R.ReleaseError, match="sum to 0.9"):
        R.parse_split("train=0.7,test=0.2")
    with pytest.raises(R.ReleaseError, match="NAME=FRACTION"):
        R.parse_split("train:0.8,test=0.2")
    with pytest.raises(R.ReleaseError, match="split name"):
        R.parse_split("train/x=0.8,test=0.2")


def test_split_files_in_every_published_format(tmp_path):
    names, files = R.read_split_file(KIM, ["train", "test"])
    assert Counter(names.values()) == {"train": 800, "test": 200}
    assert names["out_of_focus0016.jpg"] == "train" and names["motion0001.jpg"] == "test"
    assert set(files) == {str(SPLITS / "kim_pg2018_train_list.txt"),
                          str(SPLITS / "kim_pg2018_test_list.txt")}
    btb, _ = R.read_split_file({"test": SPLITS / "btbnet_cuhk_te100_split.txt"}, ["test"])
    assert len(btb) == 100 and btb["out_of_focus0037.jpg"] == "test"
    two_col = tmp_path / "split.csv"
    two_col.write_text("# name,split\nimage/a.jpg,train\nb.JPG test\n")
    assert R.read_split_file(two_col, [])[0] == {"a.jpg": "train", "b.jpg": "test"}
    clash = tmp_path / "clash.txt"
    clash.write_text("a.jpg train\na.jpg test\n")
    with pytest.raises(R.ReleaseError, match="listed in both train and test"):
        R.read_split_file(clash, [])
    with pytest.raises(R.ReleaseError, match="does not exist"):
        R.read_split_file(str(tmp_path / "none_{split}.txt"), ["train"])


def test_hash_splits_are_stratified_stable_and_sticky():
    rows = [(hashlib.sha256(str(i).encode()).hexdigest(), "motion" if i % 3 else "defocus")
            for i in range(500)]
    ratios = {"train": 0.8, "test": 0.2}
    a = R.assign_splits(rows, ratios)
    assert a == R.assign_splits(list(reversed(rows)), ratios)  # order of the input is irrelevant
    for blur_type in ("motion", "defocus"):
        ids = [i for i, b in rows if b == blur_type]
        n_test = sum(a[i] == "test" for i in ids)
        assert n_test == round(0.2 * len(ids))
    # a later version with 100 more images: every earlier image keeps its split
    more = rows + [(hashlib.sha256(f"new{i}".encode()).hexdigest(), "motion") for i in range(100)]
    b = R.assign_splits(more, ratios, inherited=a)
    assert all(b[i] == a[i] for i in a)
    motion = [i for i, t in more if t == "motion"]
    assert abs(sum(b[i] == "test" for i in motion) - 0.2 * len(motion)) <= 1
    # a published split wins over everything, and leaves the ratios to the others
    fixed = {rows[0][0]: "test" if a[rows[0][0]] == "train" else "train"}
    c = R.assign_splits(rows, ratios, fixed=fixed, inherited=a)
    assert c[rows[0][0]] == fixed[rows[0][0]]


# --------------------------------------------------------------------------------------------
# Building


def test_cuhk_release_straight_from_ingest_honours_the_published_split(cuhk_release, base):
    sample, _ = base
    rows = rows_of(cuhk_release)
    assert len(rows) == 20
    kim = kim_split()
    for r in rows:
        assert r["split"] == kim[Path(r["source_path"]).name.casefold()], r["source_path"]
        assert r["source"] == "cuhk" and r["annotators"] == [] and r["annotation_ids"] == []
        assert r["blur_type"] == ("motion" if "motion" in r["source_path"] else "defocus")
        original = (sample / "cuhk" / r["source_path"]).read_bytes()
        assert r["image"]["bytes"] == original and r["id"] == hashlib.sha256(original).hexdigest()
        gt = read_mask(sample / "cuhk" / "gt" / Path(r["source_path"]).with_suffix(".png").name)
        mask = np.asarray(Image.open(io.BytesIO(r["mask"]["bytes"])))
        np.testing.assert_array_equal(mask, np.where(gt >= 128, 255, 0))
        assert r["blur_degree"] == pytest.approx(mask.mean() / 255)
        assert (r["width"], r["height"]) == (mask.shape[1], mask.shape[0])
    assert [r["id"] for r in rows if r["split"] == "train"] == sorted(
        r["id"] for r in rows if r["split"] == "train")
    manifest = json.loads((cuhk_release / "manifest.json").read_text())
    assert manifest["parent"] is None and manifest["rows"] == 20
    assert manifest["counts"]["split_assigned_by"] == {"split_file": 20, "parent": 0, "ratios": 0}
    assert manifest["selection"]["split_file_matched"] == 20
    assert sorted(s["path"] for s in manifest["shards"]) == sorted(
        f"data/{p.name}" for p in (cuhk_release / "data").iterdir())
    catalog = Workspace.open(cuhk_release.parents[2]).catalog()
    (row,) = catalog.releases("cuhk")
    assert row["version"] == "1.0.0" and row["rows"] == 20 and row["path"] == str(cuhk_release)
    assert row["manifest_sha256"] == hashlib.sha256(
        (cuhk_release / "manifest.json").read_bytes()).hexdigest()
    catalog.close()
    assert R.verify_release(cuhk_release).ok


def annotated_scenario(env: Env) -> dict:
    """Annotations of the distinct candidates (hidden truth as the people's masks), plus one
    rejected, one without a blur type, one annotated before dedup excluded it, two annotators."""
    truth = hidden_truth(env.sample)
    cands = env.catalog.push_candidates(["msra10k", "dut-omron"], SERVER, 7)
    with_truth = [c for c in cands if f"{c['source']}/{c['rel_path']}" in truth]
    assert len(with_truth) >= 8
    items = []
    for k, c in enumerate(with_truth):
        h = truth[f"{c['source']}/{c['rel_path']}"]
        mask = read_mask(h["mask"])
        item = {"image_id": c["image_id"], "source": c["source"], "rel_path": c["rel_path"],
                "blur_type": h["blur_type"], "masks": [("person-one", mask)], "truth": mask}
        if k == 0:
            item = {**item, "reject": "no blur"}
            item.pop("masks")
        elif k == 1:
            item["blur_type"] = None  # nobody chose a blur type: it cannot be released
        elif k == 2:
            other = np.roll(mask, 3, axis=1)
            item["masks"] = [("person-two", other), ("person-one", mask)]
            item["agreement_iou"] = 0.9
        items.append(item)
    excluded = next(p for p in env.catalog.excluded_paths()
                    if p["excluded"].startswith("duplicate of reference"))
    dup = path_row(env, excluded["source"], excluded["rel_path"])
    img = env.catalog.image(dup["image_id"])
    items.append({"image_id": dup["image_id"], "source": excluded["source"],
                  "rel_path": excluded["rel_path"], "blur_type": "defocus",
                  "masks": [("person-one", np.full((img["height"], img["width"]), 255, np.uint8))]})
    fake_pull(env, "szu-bd", items)
    return {"items": items, "rejected": items[0], "no_type": items[1], "two": items[2],
            "dup": items[-1], "released": items[2:-1]}


def test_release_from_annotated_images(env):
    sc = annotated_scenario(env)
    info = R.build_release(env.ws, env.catalog, R.ReleaseSpec(
        "szu-bd", "1.0.0", projects=["szu-bd"], split="train=0.5,test=0.5", shard_bytes=40_000))
    assert info.path == env.ws.root / "releases" / "szu-bd" / "1.0.0"
    rows = {r["id"]: r for r in rows_of(info.path)}
    expected = {it["image_id"]: it for it in sc["released"]}
    assert set(rows) == set(expected)
    assert info.dropped == {"duplicate": 1, "no blur type": 1}
    manifest = json.loads((info.path / "manifest.json").read_text())
    assert manifest["counts"]["dropped"] == {"duplicate": 1, "no blur type": 1}
    assert manifest["counts"]["candidates"] == len(sc["items"]) - 1  # the rejected one had no mask
    for image_id, it in expected.items():
        r = rows[image_id]
        mask = np.asarray(Image.open(io.BytesIO(r["mask"]["bytes"])))
        np.testing.assert_array_equal(mask, it["truth"])  # the current (last) annotation
        assert r["blur_type"] == it["blur_type"] and r["source_path"] == it["rel_path"]
        assert r["annotators"] == sorted({who for who, _ in it["masks"]})
        assert len(r["annotation_ids"]) == len(it["masks"])
        assert r["blur_degree"] == pytest.approx(it["truth"].mean() / 255)
    for blur_type in ("motion", "defocus"):  # split 50/50 within each blur type
        n = Counter(r["split"] for r in rows.values() if r["blur_type"] == blur_type)
        assert abs(n["train"] - n["test"]) <= 1, (blur_type, n)
    assert len(info.shards) > 2  # 40 kB shards: several per split
    for s in info.shards:
        assert re.fullmatch(rf"data/{s.split}-\d{{5}}-of-\d{{5}}\.parquet", s.path)
        n = int(s.path[-13:-8])
        assert sum(1 for t in info.shards if t.split == s.split) == n
    card = (info.path / "README.md").read_text()
    assert "mean pairwise IoU 0.9 over the 1 image(s)" in card
    assert "| cuhk |" in card and "dropped as duplicates: 1." in card
    assert R.verify_release(info.path).ok


def test_rejected_images_are_left_out_even_with_ground_truth(env):
    cuhk = env.catalog.paths_of("cuhk")[0]
    fake_pull(env, "review", [{"image_id": cuhk["image_id"], "source": "cuhk",
                               "rel_path": cuhk["rel_path"], "reject": "unusable"}])
    info = R.build_release(env.ws, env.catalog,
                           R.ReleaseSpec("cuhk", "1.0.0", from_sources=["cuhk"]))
    assert info.rows == 19 and info.dropped == {"rejected": 1}
    assert cuhk["image_id"] not in {r["id"] for r in rows_of(info.path)}


def test_prelabel_acceptance_is_measured_where_the_prelabel_is_known(env):
    cuhk = env.catalog.paths_of("cuhk")[:3]
    gts = [read_mask(env.ws.objects.root / env.catalog.blur_masks(p["image_id"])[0]["object_path"])
           for p in cuhk]
    items = [
        {"image_id": cuhk[0]["image_id"], "source": "cuhk", "rel_path": cuhk[0]["rel_path"],
         "prelabel": "ground-truth:cuhk", "masks": [("person-one", gts[0])]},  # accepted
        {"image_id": cuhk[1]["image_id"], "source": "cuhk", "rel_path": cuhk[1]["rel_path"],
         "prelabel": "ground-truth:cuhk", "masks": [("person-one", 255 - gts[1])]},  # repainted
        {"image_id": cuhk[2]["image_id"], "source": "cuhk", "rel_path": cuhk[2]["rel_path"],
         "prelabel": "laplacian-blur-map@blurset", "masks": [("person-two", gts[2])],
         "blur_type": "motion", "hint": "defocus"},  # the person overrode the model's guess
    ]
    fake_pull(env, "review", items)
    info = R.build_release(env.ws, env.catalog,
                           R.ReleaseSpec("review", "1.0.0", projects=["review"]))
    card = (info.path / "README.md").read_text()
    assert "Pre-labels: 3 of 3 annotated images were pushed with one" in card
    assert "1 of 2 ground-truth pre-labels kept unchanged" in card
    assert "model pre-labels: not measured" in card
    assert "Annotators (images with their submission): person-one (2), person-two (1)" in card
    assert "They chose the hinted type on 0 of the 1 annotated images that had a hint." in card

    # what `annotate pull` measures for a model pre-label lands in the next version's card
    from sqlalchemy import update

    from blurset.pipeline.catalog import annotation_tasks
    with env.catalog.engine.begin() as c:
        c.execute(update(annotation_tasks)
                  .where(annotation_tasks.c.image_id == cuhk[2]["image_id"])
                  .values(prelabel_iou=0.995, prelabel_accepted=True,
                          prelabel_version="laplacian-blur-map@blurset"))
    info = R.build_release(env.ws, env.catalog,
                           R.ReleaseSpec("review", "1.1.0", projects=["review"]))
    card = (info.path / "README.md").read_text()
    assert ("model pre-labels: 1 of 1 measured at pull were accepted unchanged (IoU ≥ 0.99 with "
            "the final mask), mean IoU 0.995") in card


def test_nothing_to_release_and_unknown_names_are_clear(env):
    with pytest.raises(R.NothingToRelease, match="no image with a blur mask"):
        R.build_release(env.ws, env.catalog, R.ReleaseSpec("x", "1.0.0", from_sources=["msra10k"]))
    with pytest.raises(R.ReleaseError, match="source.*nope.*not in the catalog"):
        R.build_release(env.ws, env.catalog, R.ReleaseSpec("x", "1.0.0", from_sources=["nope"]))
    with pytest.raises(R.ReleaseError, match="no task in the catalog"):
        R.build_release(env.ws, env.catalog, R.ReleaseSpec("x", "1.0.0", projects=["nope"]))
    with pytest.raises(R.ReleaseError, match="folder name"):
        R.build_release(env.ws, env.catalog, R.ReleaseSpec("../x", "1.0.0", from_sources=["cuhk"]))
    with pytest.raises(R.ReleaseError, match="not a semantic version"):
        R.build_release(env.ws, env.catalog, R.ReleaseSpec("x", "1.0", from_sources=["cuhk"]))
    assert not (env.ws.root / "releases" / "x").exists() or not any(
        (env.ws.root / "releases" / "x").iterdir())


# --------------------------------------------------------------------------------------------
# Reading the shards


def test_datasets_decodes_image_and_mask_to_pil(cuhk_release, tmp_path):
    import datasets
    files = {s: str(cuhk_release / "data" / f"{s}-*.parquet") for s in ("train", "test")}
    ds = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf"))
    assert (ds["train"].num_rows, ds["test"].num_rows) == (16, 4)
    assert isinstance(ds["train"].features["image"], datasets.Image)
    row = ds["train"][0]
    assert isinstance(row["image"], Image.Image) and isinstance(row["mask"], Image.Image)
    assert row["mask"].mode == "L" and row["mask"].size == (row["width"], row["height"])
    assert set(np.unique(np.asarray(row["mask"]))) <= {0, 255}
    # the card's configs: the release folder loads as a Hugging Face dataset repository
    repo = datasets.load_dataset(str(cuhk_release), cache_dir=str(tmp_path / "hf2"))
    assert {k: v.num_rows for k, v in repo.items()} == {"train": 16, "test": 4}
    assert isinstance(repo["test"][0]["image"], Image.Image)


def test_pandas_pyarrow_and_duckdb_read_the_shards(cuhk_release):
    import duckdb
    import pandas as pd
    import pyarrow.dataset as pads
    manifest = json.loads((cuhk_release / "manifest.json").read_text())
    df = pd.read_parquet(cuhk_release / "data")
    assert len(df) == 20 and set(df["split"]) == {"train", "test"}
    assert isinstance(df.iloc[0]["image"]["bytes"], bytes)
    table = pads.dataset(cuhk_release / "data", format="parquet").to_table()
    assert table.num_rows == 20 and table.schema.field("mask").type.num_fields == 2
    got = duckdb.sql(f"SELECT split, count(*) AS n, sum(octet_length(image.bytes)) AS b FROM "
                     f"read_parquet('{cuhk_release}/data/*.parquet') GROUP BY split").fetchall()
    assert {s: n for s, n, _ in got} == manifest["counts"]["by_split"]
    assert all(b > 0 for _, _, b in got)


def test_card_front_matter_parses_and_its_counts_match_the_data(cuhk_release):
    import duckdb
    card = (cuhk_release / "README.md").read_text()
    meta = front_matter(card)
    assert meta["license"] == "other" and meta["task_categories"] == ["image-segmentation"]
    assert meta["size_categories"] == ["n<1K"]
    (config,) = meta["configs"]
    for df in config["data_files"]:
        assert list(cuhk_release.glob(df["path"])), df
    actual = dict(duckdb.sql(f"SELECT split, count(*) FROM read_parquet("
                             f"'{cuhk_release}/data/*.parquet') GROUP BY split").fetchall())
    info = meta["dataset_info"]
    assert {s["name"]: s["num_examples"] for s in info["splits"]} == actual
    assert [f["name"] for f in info["features"]] == SCHEMA.names
    assert {f["name"]: f.get("dtype") for f in info["features"]}["image"] == "image"
    table = duckdb.sql(f"SELECT split, blur_type, source, count(*) FROM read_parquet("
                       f"'{cuhk_release}/data/*.parquet') GROUP BY ALL").fetchall()
    rows_in_card = re.findall(r"^\| (train|test) \| (motion|defocus) \| (\w+) \| (\d+) \|$", card,
                              re.MULTILINE)
    assert sorted((s, b, src, int(n)) for s, b, src, n in rows_in_card) == sorted(table)
    assert "255 = blurred" in card and "First version" in card
    assert "| cuhk | cuhk |" in card  # provenance: the source with its root and fingerprint
    with Image.open(cuhk_release / "blur_degree.png") as im:
        assert im.format == "PNG"


def test_card_license_parameter(env):
    info = R.build_release(env.ws, env.catalog, R.ReleaseSpec(
        "cuhk", "1.0.0", from_sources=["cuhk"], license="cc-by-nc-4.0"))
    assert front_matter((info.path / "README.md").read_text())["license"] == "cc-by-nc-4.0"


# --------------------------------------------------------------------------------------------
# Immutability, determinism, crashes


def test_same_inputs_give_identical_shards(env, tmp_path):
    import pyarrow.parquet as pq
    kw = {"from_sources": ["cuhk"], "shard_bytes": 150_000, "row_group_rows": 3}
    a = R.build_release(env.ws, env.catalog,
                        R.ReleaseSpec("cuhk", "1.0.0", out_root=tmp_path / "a", **kw))
    b = R.build_release(env.ws, env.catalog,
                        R.ReleaseSpec("cuhk", "1.0.0", out_root=tmp_path / "b", **kw))
    files_a = sorted(p.relative_to(a.path) for p in a.path.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b.path) for p in b.path.rglob("*") if p.is_file())
    assert len([f for f in files_a if f.suffix == ".parquet"]) > 2
    # several row groups a shard (their read buffers are reused): every row still checks out
    assert max(pq.ParquetFile(a.path / s.path).metadata.num_row_groups for s in a.shards) > 1
    assert R.verify_release(a.path).ok
    for rel in files_a:
        if rel.name.startswith("manifest"):
            continue
        assert (a.path / rel).read_bytes() == (b.path / rel).read_bytes(), rel
    ma = json.loads((a.path / "manifest.json").read_text())
    mb = json.loads((b.path / "manifest.json").read_text())
    ma.pop("created_at"), mb.pop("created_at")
    assert ma == mb


def test_an_existing_version_is_refused_and_the_parent_is_the_highest_below(env):
    root = env.ws.root / "releases"
    first = R.build_release(env.ws, env.catalog,
                            R.ReleaseSpec("cuhk", "1.0.0", from_sources=["cuhk"]))
    with pytest.raises(R.ReleaseExistsError, match=re.escape(str(root / "cuhk" / "1.0.0"))):
        R.build_release(env.ws, env.catalog, R.ReleaseSpec("cuhk", "1.0.0", from_sources=["cuhk"]))
    assert R.verify_release(first.path).ok
    for version, parent in [("1.2.0", "1.0.0"), ("1.1.0", "1.0.0"), ("0.9.0", None)]:
        spec = R.ReleaseSpec("cuhk", version, from_sources=["cuhk"])
        assert R.build_release(env.ws, env.catalog, spec).parent == parent
    listed = R.list_releases(root)
    assert [(r.name, r.version, r.parent) for r in listed] == [
        ("cuhk", "0.9.0", None), ("cuhk", "1.0.0", None), ("cuhk", "1.1.0", "1.0.0"),
        ("cuhk", "1.2.0", "1.0.0")]
    assert all(r.rows == 20 for r in listed)


@pytest.mark.parametrize("where", ["shards.write_shard", "build.render_card"])
def test_a_crash_halfway_publishes_nothing_and_a_rerun_succeeds(env, monkeypatch, where):
    module, name = where.split(".")
    module = importlib.import_module(f"blurset.pipeline.release.{module}")
    real = getattr(module, name)
    calls = itertools.count()

    def crash(*args, **kwargs):
        if next(calls) == 1 or name == "render_card":
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, crash)
    with pytest.raises(OSError, match="No space left"):
        R.build_release(env.ws, env.catalog, R.ReleaseSpec(
            "cuhk", "1.0.0", from_sources=["cuhk"], shard_bytes=100_000))
    folder = env.ws.root / "releases" / "cuhk"
    assert list(folder.iterdir()) == []  # no release and no temporary folder left behind
    assert env.catalog.releases() == [] and R.list_releases(env.ws.root / "releases") == []
    # a build killed outright leaves its temporary folder: it is ignored, and in nobody's way
    (folder / ".tmp-1.0.0-killed" / "data").mkdir(parents=True)
    monkeypatch.setattr(module, name, real)
    info = R.build_release(env.ws, env.catalog, R.ReleaseSpec(
        "cuhk", "1.0.0", from_sources=["cuhk"], shard_bytes=100_000))
    assert info.rows == 20 and R.verify_release(info.path).ok


# --------------------------------------------------------------------------------------------
# Verify


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("target", ["shard", "README.md", "blur_degree.png", "manifest.json"])
def test_verify_finds_a_single_flipped_byte(cuhk_release, tmp_path, target):
    copy = tmp_path / "copy"
    shutil.copytree(cuhk_release, copy)
    assert R.verify_release(copy).ok
    rel = "data/train-00000-of-00001.parquet" if target == "shard" else target
    f = copy / rel
    flip(f, f.stat().st_size // 2)
    report = R.verify_release(copy)
    assert not report.ok
    assert rel in {p.file for p in report.problems}, report.problems
    with pytest.raises(R.ReleaseVerificationError, match=re.escape(rel)):
        report.raise_for_problems()


def test_verify_finds_missing_and_unlisted_files(cuhk_release, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(cuhk_release, copy)
    (copy / "data" / "test-00000-of-00001.parquet").unlink()
    (copy / "data" / "extra.parquet").write_bytes(b"PAR1")
    problems = {(p.file, p.message) for p in R.verify_release(copy).problems}
    assert ("data/test-00000-of-00001.parquet", "missing") in problems
    assert ("data/extra.parquet", "not listed in the manifest") in problems


def test_verify_rereads_rows_that_match_their_checksums(cuhk_release, tmp_path):
    """A shard rewritten with a bad mask and its checksum updated: the row check catches it."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    copy = tmp_path / "copy"
    shutil.copytree(cuhk_release, copy)
    shard = copy / "data" / "test-00000-of-00001.parquet"
    table = pq.read_table(shard)
    masks = table.column("mask").to_pylist()
    masks[0] = {"bytes": b"\x89PNG not really", "path": masks[0]["path"]}
    table = table.set_column(2, "mask", pa.array(masks, type=SCHEMA.field("mask").type))
    pq.write_table(table, shard)
    manifest = json.loads((copy / "manifest.json").read_text())
    for s in manifest["shards"]:
        if s["path"].endswith(shard.name):
            s["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
            s["bytes"] = shard.stat().st_size
    raw = json.dumps(manifest).encode()
    (copy / "manifest.json").write_bytes(raw)
    (copy / "manifest.json.sha256").write_text(f"{hashlib.sha256(raw).hexdigest()}  manifest.json\n")
    problems = R.verify_release(copy).problems
    assert any(p.file.endswith(shard.name) and "mask does not decode as PNG" in p.message
               for p in problems), problems


# --------------------------------------------------------------------------------------------
# Diff and changelog


def test_diff_finds_added_removed_mask_changed_and_split_changed(env, tmp_path):
    v1 = R.build_release(env.ws, env.catalog,
                         R.ReleaseSpec("mix", "1.0.0", from_sources=["cuhk"], split_file=KIM))
    cuhk = {p["rel_path"]: p for p in env.catalog.paths_of("cuhk")}
    removed, changed, moved = sorted(cuhk)[:3]
    # removed: people rejected it; mask changed: people repainted it
    img = env.catalog.image(cuhk[changed]["image_id"])
    repainted = np.zeros((img["height"], img["width"]), np.uint8)
    repainted[: img["height"] // 2] = 255
    fake_pull(env, "fixes", [
        {"image_id": cuhk[removed]["image_id"], "source": "cuhk", "rel_path": removed,
         "reject": "unusable"},
        {"image_id": cuhk[changed]["image_id"], "source": "cuhk", "rel_path": changed,
         "blur_type": None, "masks": [("person-one", repainted)]},
    ], project_id=9)
    # added: annotations of candidates
    sc = annotated_scenario(env)
    # split changed: a split file moving one image
    kim = kim_split()
    name = Path(moved).name.casefold()
    split_file = tmp_path / "split.txt"
    split_file.write_text("".join(f"{n} {('test' if s == 'train' else 'train') if n == name else s}\n"
                                  for n, s in kim.items()))
    v2 = R.build_release(env.ws, env.catalog, R.ReleaseSpec("mix", "2.0.0", split_file=split_file))
    assert v2.parent == "1.0.0"
    d = R.diff_releases(v1.path, v2.path)
    assert (d.a, d.b) == ("mix@1.0.0", "mix@2.0.0")
    assert d.removed == [cuhk[removed]["image_id"]]
    assert set(d.added) == {it["image_id"] for it in sc["released"]}
    assert d.mask_changed == [cuhk[changed]["image_id"]]
    assert d.split_changed == [(cuhk[moved]["image_id"], kim[name],
                                "test" if kim[name] == "train" else "train")]
    assert d.unchanged == 20 - 3
    # the changelog in the manifest and the card say the same
    manifest = json.loads((v2.path / "manifest.json").read_text())
    assert {k: manifest["changelog"][k] for k in d.counts()} == d.counts()
    card = (v2.path / "README.md").read_text()
    assert f"{len(d.added)} added, 1 removed, 1 with a changed mask, 1 moved" in card
    # the repainted CUHK image keeps its blur type from its file name and its annotator
    row = next(r for r in rows_of(v2.path) if r["id"] == cuhk[changed]["image_id"])
    assert row["annotators"] == ["person-one"]
    assert row["blur_type"] == ("motion" if "motion" in changed else "defocus")
    # every row's blur type: a CUHK image's from its file name, an annotated one's as annotated
    annotated = {it["image_id"]: it["blur_type"] for it in sc["released"]}
    for r in rows_of(v2.path):
        if r["source"] == "cuhk":
            assert r["blur_type"] == ("motion" if "motion" in r["source_path"] else "defocus")
        else:
            assert r["blur_type"] == annotated[r["id"]], r["source_path"]
    # the other CUHK images kept their split from the published list (and from the parent)
    assert R.diff_releases(v2.path, v2.path).counts() == {
        "added": 0, "removed": 0, "mask_changed": 0, "split_changed": 0, "unchanged": v2.rows}


# --------------------------------------------------------------------------------------------
# Publish


def test_publish_to_a_local_folder_and_never_over_a_published_version(cuhk_release, tmp_path):
    dest = tmp_path / "bucket"
    url = R.publish_release(cuhk_release, str(dest))
    published = dest / "cuhk" / "1.0.0"
    assert url == f"{dest}/cuhk/1.0.0"
    for f in cuhk_release.rglob("*"):
        if f.is_file():
            assert (published / f.relative_to(cuhk_release)).read_bytes() == f.read_bytes()
    assert R.verify_release(published).ok
    assert [p.name for p in (dest / "cuhk").iterdir()] == ["1.0.0"]  # no temporary folder left
    with pytest.raises(R.ReleaseExistsError, match="already published"):
        R.publish_release(cuhk_release, str(dest))
    broken = tmp_path / "broken"
    shutil.copytree(cuhk_release, broken)
    flip(broken / "README.md", 10)
    with pytest.raises(R.ReleaseVerificationError, match="README.md"):
        R.publish_release(broken, str(tmp_path / "elsewhere"))
    assert not (tmp_path / "elsewhere").exists()


@pytest.fixture
def s3(monkeypatch):
    from moto.server import ThreadedMotoServer
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        opts = {"client_kwargs": {"endpoint_url": endpoint}, "skip_instance_cache": True}
        import s3fs
        fs = s3fs.S3FileSystem(**opts)
        fs.mkdir("releases-bucket")
        yield fs, opts
    finally:
        server.stop()


@pytest.mark.integration
def test_publish_to_s3_and_never_over_a_published_version(cuhk_release, s3):
    import pyarrow.parquet as pq
    fs, opts = s3
    url = R.publish_release(cuhk_release, "s3://releases-bucket/blur", storage_options=opts)
    assert url == "s3://releases-bucket/blur/cuhk/1.0.0"
    remote = "releases-bucket/blur/cuhk/1.0.0"
    local = sorted(f.relative_to(cuhk_release).as_posix()
                   for f in cuhk_release.rglob("*") if f.is_file())
    assert sorted(p[len(remote) + 1:] for p in fs.find(remote)) == local
    for rel in local:
        assert fs.cat_file(f"{remote}/{rel}") == (cuhk_release / rel).read_bytes(), rel
    with fs.open(f"{remote}/data/test-00000-of-00001.parquet", "rb") as fh:
        assert pq.read_table(fh).num_rows == 4
    with pytest.raises(R.ReleaseExistsError,
                       match="already published at s3://releases-bucket/blur"):
        R.publish_release(cuhk_release, "s3://releases-bucket/blur", storage_options=opts)
    # an interrupted copy (no manifest: the marker written last) is completed by the next publish
    fs.rm(f"{remote}/manifest.json")
    fs.rm(f"{remote}/data/train-00000-of-00001.parquet")
    R.publish_release(cuhk_release, "s3://releases-bucket/blur", storage_options=opts)
    assert sorted(p[len(remote) + 1:] for p in fs.find(remote)) == local


# --------------------------------------------------------------------------------------------
# EXIF orientation


def _rewrite(copy: Path, table, fmt: str | None = None) -> None:
    """Every shard of ``copy`` replaced by ``table``'s rows of its split, the manifest's checksums
    (and format) updated to match."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    manifest = json.loads((copy / "manifest.json").read_text())
    for s in manifest["shards"]:
        shard = copy / s["path"]
        pq.write_table(table.filter(pc.equal(table.column("split"), s["split"])), shard)
        s["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
        s["bytes"] = shard.stat().st_size
    if fmt is not None:
        manifest["format"] = fmt
    raw = json.dumps(manifest).encode()
    (copy / "manifest.json").write_bytes(raw)
    (copy / "manifest.json.sha256").write_text(f"{hashlib.sha256(raw).hexdigest()}  manifest.json\n")


def test_an_exif_rotated_image_has_its_orientation_and_an_upright_mask(env, tmp_path):
    """The sample's IMG_0042.JPG is stored sideways with EXIF orientation 6: its row says 6, and
    width, height and mask are of the upright image, which readers get with exif_transpose."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import ImageOps

    from blurset.model.data import decode_pair
    from blurset.model.release_format import FORMAT, SCHEMAS
    p = path_row(env, "extra", "IMG_0042.JPG")
    img = env.catalog.image(p["image_id"])
    truth = np.zeros((img["height"], img["width"]), np.uint8)
    truth[:, : img["width"] // 3] = 255  # left third blurred: not symmetric under a turn
    fake_pull(env, "rot", [{"image_id": p["image_id"], "source": "extra",
                            "rel_path": "IMG_0042.JPG", "blur_type": "motion",
                            "masks": [("person-one", truth)]}])
    info = R.build_release(env.ws, env.catalog, R.ReleaseSpec("rot", "1.0.0", projects=["rot"]))
    manifest = json.loads((info.path / "manifest.json").read_text())
    assert manifest["format"] == FORMAT == "blurset-release/2"
    assert "orientation" in [c["name"] for c in manifest["schema"]["columns"]]
    (row,) = rows_of(info.path)
    assert row["orientation"] == 6
    image = Image.open(io.BytesIO(row["image"]["bytes"]))
    mask = Image.open(io.BytesIO(row["mask"]["bytes"]))
    stored = image.size
    assert stored[0] != stored[1]  # a turn shows in the size
    assert (row["width"], row["height"]) == (img["width"], img["height"]) == stored[::-1]
    assert mask.size == (row["width"], row["height"]) == ImageOps.exif_transpose(image).size
    rgb, grey = decode_pair(row["image"]["bytes"], row["mask"]["bytes"], None, row["id"])
    assert rgb.size == grey.size == mask.size  # model reading keeps applying exif_transpose
    np.testing.assert_array_equal(np.asarray(grey), truth)
    assert R.verify_release(info.path).ok
    card = (info.path / "README.md").read_text()
    assert "| `orientation` | `uint8` |" in card and "exif_transpose" in card
    assert {f["name"]: f.get("dtype") for f in front_matter(card)["dataset_info"]["features"]
            }["orientation"] == "uint8"

    table = pq.read_table(sorted((info.path / "data").glob("*.parquet")))
    # A wrong orientation (1: the image would be read sideways against its mask) is caught.
    wrong = tmp_path / "wrong"
    shutil.copytree(info.path, wrong)
    i = table.schema.get_field_index("orientation")
    _rewrite(wrong, table.set_column(i, "orientation", pa.array([1] * len(table), pa.uint8())))
    messages = [p.message for p in R.verify_release(wrong).problems]
    assert any("orientation 1, the image's EXIF orientation is 6" in m for m in messages), messages
    assert any(f"image is {stored[0]}×{stored[1]} once turned upright by orientation 1" in m
               for m in messages), messages
    # A release of the previous format (no orientation column) still verifies.
    v1 = tmp_path / "v1"
    shutil.copytree(info.path, v1)
    old = table.remove_column(i).replace_schema_metadata(SCHEMAS["blurset-release/1"].metadata)
    _rewrite(v1, old, fmt="blurset-release/1")
    assert R.verify_release(v1).ok, R.verify_release(v1).problems
    # ... but not one whose shards lack the column while its manifest says /2.
    nocol = tmp_path / "nocol"
    shutil.copytree(info.path, nocol)
    _rewrite(nocol, old)
    assert any("schema differs" in p.message for p in R.verify_release(nocol).problems)
