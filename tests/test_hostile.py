"""Hostile and careless input (issue 11): received releases, names and export paths, numeric
options, silent drops, and the one-line errors. Each test failed on main before its fix."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ingest_into, jpeg_bytes, photo, png_bytes
from PIL import Image

from blurset.pipeline import release as R
from blurset.pipeline.cli.main import cli
from blurset.pipeline.stages.sources import scan_source
from blurset.pipeline.workspace import Workspace

# --------------------------------------------------------------------------------------------
# A small CUHK-layout source, ingested, and one release of it


def write_cuhk(root: Path, n: int = 4) -> Path:
    (root / "image").mkdir(parents=True)
    (root / "gt").mkdir()
    for i in range(n):
        stem = f"{'motion' if i % 2 else 'out_of_focus'}{i:04d}"
        im = photo(i, (64, 48))
        (root / "image" / f"{stem}.jpg").write_bytes(jpeg_bytes(im))
        mask = np.zeros((48, 64), np.uint8)
        mask[: 8 + 4 * i] = 255
        (root / "gt" / f"{stem}.png").write_bytes(png_bytes(Image.fromarray(mask)))
    return root


def ingested(root: Path) -> Workspace:
    return ingest_into(root / "ws", "cuhk", "cuhk", write_cuhk(root / "cuhk"))


@pytest.fixture(scope="module")
def small_release(tmp_path_factory) -> Path:
    ws = ingested(tmp_path_factory.mktemp("hostile-release"))
    catalog = ws.catalog()
    info = R.build_release(ws, catalog, R.ReleaseSpec("small", "1.0.0", from_sources=["cuhk"],
                                                      split="train=0.5,test=0.5"))
    catalog.close()
    return info.path


def rewrite_manifest(release: Path, change) -> None:
    """Apply ``change`` to the manifest and keep it self-consistent (its checksum updated)."""
    manifest = json.loads((release / "manifest.json").read_text())
    change(manifest)
    raw = json.dumps(manifest, indent=2).encode()
    (release / "manifest.json").write_bytes(raw)
    (release / "manifest.json.sha256").write_text(
        f"{hashlib.sha256(raw).hexdigest()}  manifest.json\n")


def copy_of(release: Path, where: Path) -> Path:
    dest = where / "received" / "small" / "1.0.0"
    shutil.copytree(release, dest)
    return dest


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# --------------------------------------------------------------------------------------------
# Severe: a received release is untrusted


@pytest.fixture
def secret(tmp_path) -> Path:
    f = tmp_path / "secret.txt"
    f.write_bytes(b"the admin password\n")
    return f


def _list_secret(path: str, secret: Path):
    def change(manifest):
        data = secret.read_bytes()
        manifest["files"].append({"path": path, "bytes": len(data),
                                  "sha256": hashlib.sha256(data).hexdigest()})
    return change


@pytest.mark.parametrize("how", ["dotdot", "absolute", "dot", "symlink-file", "symlink-dir"])
def test_verify_and_publish_refuse_manifest_paths_leaving_the_release(small_release, tmp_path,
                                                                      secret, how):
    rel = copy_of(small_release, tmp_path)
    if how == "dotdot":
        listed = "../../../secret.txt"
    elif how == "absolute":
        listed = str(secret)
    elif how == "dot":
        listed = "./data/../../../../secret.txt"
    elif how == "symlink-file":
        listed = "secret.txt"
        (rel / "secret.txt").symlink_to(secret)
    else:
        listed = "outside/secret.txt"
        (rel / "outside").symlink_to(secret.parent, target_is_directory=True)
    rewrite_manifest(rel, _list_secret(listed, secret))
    report = R.verify_release(rel)
    assert not report.ok
    assert any(listed in p.message for p in report.problems), report.problems

    res = run("release", "verify", str(rel))
    assert res.exit_code == 1
    assert "OK" not in res.output and listed in res.output

    dest = tmp_path / "dest"
    res = run("release", "publish", str(rel), str(dest))
    assert res.exit_code == 1
    assert res.output.count("\n") == 1 and res.output.startswith("Error:"), res.output
    assert repr(listed) in res.output
    assert not dest.exists()
    assert {p.name for p in tmp_path.iterdir()} == {"received", "secret.txt"}


@pytest.mark.parametrize("key,value", [("name", "../../../escaped"), ("name", "/abs"),
                                       ("version", "../1.0.0"), ("version", "1.0.0/../../x")])
def test_publish_refuses_a_manifest_name_or_version_build_would_refuse(small_release, tmp_path,
                                                                      key, value):
    rel = copy_of(small_release, tmp_path)
    rewrite_manifest(rel, lambda m: m.__setitem__(key, value))
    assert any(key in p.message for p in R.verify_release(rel).problems)
    dest = tmp_path / "a" / "b" / "c" / "dest"
    res = run("release", "publish", str(rel), str(dest))
    assert res.exit_code == 1 and res.output.startswith("Error:")
    assert res.output.count("\n") == 1 and repr(value) in res.output, res.output
    assert {p.name for p in tmp_path.iterdir()} == {"received"}


def test_a_manifest_that_is_a_link_out_of_the_release_is_not_read(small_release, tmp_path):
    rel = copy_of(small_release, tmp_path)
    outside = tmp_path / "manifest.json"
    (rel / "manifest.json").rename(outside)
    (rel / "manifest.json").symlink_to(outside)
    problems = R.verify_release(rel).problems
    assert [(p.file, p.message) for p in problems] == [
        ("manifest.json", "a symbolic link: a release holds only regular files (not read)")]
    res = run("release", "publish", str(rel), str(tmp_path / "dest"))
    assert res.exit_code == 1 and not (tmp_path / "dest").exists()


def test_verify_survives_malformed_entries(small_release, tmp_path):
    rel = copy_of(small_release, tmp_path)
    rewrite_manifest(rel, lambda m: m["files"].extend([{"path": "README.md"}, "just a string",
                                                       {"path": 7, "bytes": 1, "sha256": "x"}]))
    problems = R.verify_release(rel).problems
    assert len(problems) == 3, problems
    res = run("release", "verify", str(rel))
    assert res.exit_code == 1 and "Traceback" not in res.output


def test_publish_to_an_unknown_protocol_is_one_line(small_release, tmp_path):
    res = run("release", "publish", str(small_release), "nosuchproto://x")
    assert res.exit_code == 1
    assert res.output.count("\n") == 1 and "nosuchproto" in res.output, res.output


# --------------------------------------------------------------------------------------------
# Severe: names and export paths stay inside their folders

SERVER = "http://label-studio.test"


@pytest.mark.parametrize("name", ["../../evil", "/abs", "a/b", ".hidden", "", "a..b", "x" * 101])
def test_ingest_refuses_a_source_name_that_is_not_a_folder_name(tmp_path, name):
    src = write_cuhk(tmp_path / "src", n=1)
    ws = tmp_path / "ws"
    res = run("-w", str(ws), "ingest", "--kind", "cuhk", "--name", name, str(src))
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: source name") and res.output.count("\n") == 1, res.output
    assert "Traceback" not in res.output


def test_the_name_rule_is_one_rule(tmp_path):
    from blurset.names import InvalidName, validate_name, validate_title
    for good in ("cuhk", "szu-bd", "MSRA10K", "v1.2_x"):
        assert validate_name(good) == good
        assert R.validate_version("1.0.0") and R.ReleaseSpec(good, "1.0.0")
    for bad in ("../x", "a/b", ".x", "-x", "a..b", "", None):
        with pytest.raises(InvalidName):
            validate_name(bad)
        with pytest.raises(R.ReleaseError):
            R.ReleaseSpec(bad, "1.0.0")
    assert validate_title("blur cli") == "blur cli"
    for bad in ("", "   ", "a\nb", "x" * 201):
        with pytest.raises(InvalidName):
            validate_title(bad)


@pytest.mark.parametrize("project", ["", "  ", "bad\ntitle"])
def test_annotate_verbs_refuse_a_bad_project_title_before_connecting(tmp_path, project,
                                                                    monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")  # nothing listens there
    for verb in ("push", "pull"):
        res = run("-w", str(tmp_path / "ws"), "annotate", verb, "--project", project)
        assert res.exit_code == 1 and res.output.startswith("Error: project title"), res.output


def test_release_build_refuses_a_bad_name_before_prefect_starts(tmp_path):
    res = run("-w", str(tmp_path / "ws"), "release", "build", "../evil", "2.0.0",
              "--from-source", "cuhk")
    assert res.exit_code == 1 and res.output.count("\n") == 1
    assert res.output.startswith("Error: release name '../evil'"), res.output
    assert not (tmp_path / "ws" / ".prefect").exists()


@pytest.mark.parametrize("source,rel_path", [("../../evil", "image/x.jpg"),
                                             ("cuhk", "../../../x.jpg"), ("cuhk", "/tmp/x.jpg")])
def test_pull_export_stays_under_the_export_folder(tmp_path, source, rel_path):
    """A source name or path from an older catalog cannot lead a mask out of --export."""
    from blurset.pipeline.catalog import MaskRow
    from blurset.pipeline.stages.ingest import encode_png
    from blurset.pipeline.stages.labelling.pull import export_masks
    ws = ingested(tmp_path)
    catalog = ws.catalog()
    image_id = catalog.paths_of("cuhk")[0]["image_id"]
    catalog.record_tasks([{"server": SERVER, "project": "p", "project_id": 1, "task_id": 1,
                           "image_id": image_id, "source": source, "rel_path": rel_path,
                           "prelabel": None}])
    mask = np.full((48, 64), 255, np.uint8)
    obj = ws.objects.put(encode_png(mask), ".png")
    ann = {"annotation_id": 5, "task_id": 1, "image_id": image_id, "annotator": "a",
           "created_at": None, "updated_at": None, "lead_time": 1.0, "blur_type": None,
           "rejected": None, "mask_object": obj, "blur_degree": 1.0, "problem": None,
           "snapshot": "s.json"}
    catalog.record_pull(SERVER, 1, [{"task_id": 1, "current_annotation_id": 5, "blur_type": None,
                                     "annotators": '["a"]', "agreement_iou": None,
                                     "status": "annotated"}], [ann],
                        [MaskRow(image_id=image_id, rel_path=rel_path, kind="blur",
                                 origin="annotation:p#5", object_path=obj,
                                 original_id=hashlib.sha256(encode_png(mask)).hexdigest(),
                                 inverted=False, blur_degree=1.0)],
                        {image_id: (source, rel_path)})
    out = tmp_path / "x" / "a" / "b"
    before = sorted(p for p in tmp_path.rglob("*"))
    from blurset.errors import InputError
    with pytest.raises(InputError, match="outside --export"):
        export_masks(catalog, ws, SERVER, 1, out)
    assert sorted(p for p in tmp_path.rglob("*")) == before
    catalog.close()


# --------------------------------------------------------------------------------------------
# Data lost or provenance false


@pytest.mark.parametrize("which", ["image", "mask"])
def test_release_build_refuses_a_corrupt_object_naming_it(tmp_path, which):
    ws = ingested(tmp_path)
    catalog = ws.catalog()
    sel = R.select_images(catalog, ["cuhk"], None)
    rel = sel.rows[1].object_path if which == "image" else sel.rows[1].mask_object
    obj = ws.objects.root / rel
    obj.chmod(0o644)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 1
    obj.write_bytes(bytes(data))
    with pytest.raises(R.ReleaseError, match=f"object {rel} is corrupt"):
        R.build_release(ws, catalog, R.ReleaseSpec("c", "1.0.0", from_sources=["cuhk"]))
    catalog.close()
    assert not (ws.root / "releases" / "c").exists() or not any((ws.root / "releases" / "c")
                                                                 .iterdir())
    res = run("-w", str(ws.root), "release", "build", "c", "1.0.0", "--from-source", "cuhk")
    assert res.exit_code == 1 and f"object {rel} is corrupt" in res.output
    assert "Traceback" not in res.output


# --------------------------------------------------------------------------------------------
# Nothing dropped silently


def odd_cuhk(tmp_path: Path) -> Path:
    """A CUHK source with every kind of entry that used to vanish without a word."""
    import os
    root = write_cuhk(tmp_path / "src")
    outside = tmp_path / "passwd"
    outside.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    img = root / "image"
    os.mkfifo(img / "fifo.jpg")
    (img / "loop.jpg").symlink_to(img / "loop.jpg")
    (img / "passwd.jpg").symlink_to(outside)
    (img / "inside.jpg").symlink_to(img / "motion0001.jpg")  # inside the root: followed
    (img / "noext").write_bytes(jpeg_bytes(photo(0, (64, 48))))
    (img / ".hidden.jpg").write_bytes(jpeg_bytes(photo(1, (64, 48))))
    (root / "gt" / "motion0001.bmp").write_bytes((root / "gt" / "motion0001.png").read_bytes())
    (root / "notes.txt").write_text("about this dataset\n")
    (root / "linkdir").symlink_to(tmp_path, target_is_directory=True)
    return root


def test_every_entry_of_a_source_is_ingested_or_skipped_with_a_reason(tmp_path):
    root = odd_cuhk(tmp_path)
    (root / "ws" / "objects").mkdir(parents=True)  # a workspace inside its source
    (root / "ws" / "objects" / "x.jpg").write_bytes(jpeg_bytes(photo(2, (64, 48))))
    scan = scan_source("cuhk", root, exclude=[root / "ws"])
    items = {i.rel_path for i in scan.items}
    assert items == {f"image/{s}.jpg" for s in ("out_of_focus0000", "motion0001",
                                                "out_of_focus0002", "motion0003", "inside")}
    skipped = {s.rel_path: s.reason for s in scan.skipped}
    expect = {"image/fifo.jpg": "not a regular file (FIFO)", "image/loop.jpg": "loop",
              "image/passwd.jpg": "leaving the source folder", "image/noext": "no image file "
              "extension", "image/.hidden.jpg": "hidden file", "gt/motion0001.bmp":
              "a second mask for stem 'motion0001': gt/motion0001.png is used",
              "notes.txt": "no image file extension", "linkdir": "symbolic link",
              "ws": "the workspace itself"}
    assert set(skipped) == set(expect), skipped
    for rel, words in expect.items():
        assert words in skipped[rel], (rel, skipped[rel])
    # every entry under the root, links and FIFOs included, is accounted for exactly once
    import os
    entries = set()
    for here, dirs, files in os.walk(root):
        rel = Path(here).relative_to(root)
        entries |= {(rel / f).as_posix() for f in files}
        entries |= {(rel / d).as_posix() for d in dirs if (Path(here) / d).is_symlink()
                    or d == "ws"}
        dirs[:] = [d for d in dirs if d != "ws"]
    accounted = scan.paths()
    assert entries == accounted, entries ^ accounted


def test_folder_layout_never_follows_links_out_nor_reads_its_workspace(tmp_path):
    root = odd_cuhk(tmp_path)
    (root / "ws" / "objects" / "ab").mkdir(parents=True)
    (root / "ws" / "objects" / "ab" / "x.jpg").write_bytes(jpeg_bytes(photo(2, (64, 48))))
    scan = scan_source("folder", root, exclude=[root / "ws"])
    items = {i.rel_path for i in scan.items}
    assert not any(r.startswith("ws/") for r in items)
    assert "image/passwd.jpg" not in items and "image/inside.jpg" in items
    assert {"ws", "image/passwd.jpg", "image/fifo.jpg", "linkdir"} <= {s.rel_path
                                                                      for s in scan.skipped}


def test_quarantined_for_the_pixel_limit_is_checked_again_when_the_limit_changes():
    from blurset.pipeline.stages.ingest import is_unchanged, limited_signature
    sig = "100:5"
    assert is_unchanged(sig, sig, 10)
    assert is_unchanged(limited_signature(sig, 10), sig, 10, pixel_limited=True)
    assert not is_unchanged(limited_signature(sig, 10), sig, 20, pixel_limited=True)
    assert not is_unchanged(sig, sig, 10, pixel_limited=True)  # an older row: no limit kept
    assert not is_unchanged("100:6", sig, 10)


def test_ingest_reports_skipped_missing_and_rechecks_the_pixel_limit(prefect_harness, tmp_path):
    root = odd_cuhk(tmp_path)
    big = root / "image" / "out_of_focus0009.jpg"
    big.write_bytes(jpeg_bytes(photo(3, (200, 150))))
    ws = root / "ws"  # the workspace inside its own source
    args = ["-w", str(ws), "ingest", "--kind", "cuhk", "--name", "odd", str(root)]
    res = run(*args, "--max-pixels", "10000")
    assert res.exit_code == 0, res.output
    assert "6 images found, 5 ingested now, 0 unchanged, 1 quarantined now" in res.output
    assert "skipped image/passwd.jpg: symbolic link leaving the source folder" in res.output
    assert "skipped image/fifo.jpg: not a regular file (FIFO)" in res.output
    assert not any(b"root:x:0:0" in f.read_bytes() for f in ws.rglob("*")
                   if f.is_file() and not f.is_symlink())
    res = run(*args, "--max-pixels", "10000")  # the same limit: unchanged
    assert "6 images found, 0 ingested now, 6 unchanged, 0 quarantined now" in res.output
    assert "skipped ws: the workspace itself" in res.output
    (root / "image" / "motion0003.jpg").unlink()
    res = run(*args, "--max-pixels", "100000")  # a higher limit: the big image is ingested
    # (and the mask of the deleted image is now an orphan, quarantined)
    assert "5 images found, 1 ingested now, 4 unchanged, 1 quarantined now" in res.output, res.output
    assert "no longer in the folder (kept in the catalog): image/motion0003.jpg" in res.output


# --------------------------------------------------------------------------------------------
# predict: no output overwrites another; a decompression bomb is one line


def test_predict_refuses_two_images_with_one_output_name(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    a, b = tmp_path / "a" / "ws.jpg", tmp_path / "b" / "ws.gif"
    photo(0, (32, 24)).save(a)
    photo(1, (32, 24)).save(b)
    out = tmp_path / "maps"
    res = run("predict", str(a), str(b), "--checkpoint", str(tmp_path / "none.pt"),
              "--out", str(out))
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert str(a) in res.output and str(b) in res.output and "ws.png" in res.output
    assert not out.exists()


def test_reading_a_decompression_bomb_is_a_one_line_error(tmp_path):
    from conftest import png_with_claimed_size

    from blurset.errors import BlursetError
    from blurset.model.apply import read_rgb
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_with_claimed_size(30000, 30000))
    with pytest.raises(BlursetError, match="bomb.png: refused, too many pixels"):
        read_rgb(bomb)


# --------------------------------------------------------------------------------------------
# train / evaluate / crosscheck: the shards' bytes are checked before use


@pytest.fixture
def toy_root(tmp_path) -> Path:
    from test_train import write_release
    root = tmp_path / "releases"
    write_release(root, "toy", "1.0.0")
    return root


@pytest.mark.parametrize("damage", ["flip", "delete-other-split"])
def test_model_verbs_refuse_a_release_whose_shards_do_not_verify(toy_root, tmp_path, damage):
    import yaml

    from blurset.model.data import ReleaseIntegrityError, resolve_release
    ref = resolve_release("toy@1.0.0", toy_root)
    assert ref.provenance()["shards"]  # a sound release resolves
    shard = toy_root / "toy" / "1.0.0" / "data" / "test-00000-of-00001.parquet"
    if damage == "flip":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 1
        shard.write_bytes(bytes(data))
    else:
        shard.unlink()
    with pytest.raises(ReleaseIntegrityError, match="test-00000-of-00001.parquet"):
        resolve_release("toy@1.0.0:train", toy_root)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": {"variant": "deb+bl", "width": 0.125},
                                      "input_size": 64, "batch_size": 4, "epochs": 1,
                                      "augment": {"rotations": False, "rescales": []}}))
    ws = str(tmp_path / "ws")
    for args in (["train", "--train", "toy@1.0.0", "--config", str(config), "--out",
                  str(tmp_path / "run")],
                 ["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--release",
                  "toy@1.0.0:train"],
                 ["crosscheck", "--checkpoint", str(tmp_path / "none.pt"), "--test",
                  "toy@1.0.0", "--out", str(tmp_path / "cc")]):
        res = run("-w", ws, *args, "--releases-root", str(toy_root))
        assert res.exit_code == 1, (args[0], res.output)
        assert res.output.startswith("Error: shard data/test-00000-of-00001.parquet of "
                                     "toy@1.0.0"), (args[0], res.output)
    assert not (tmp_path / "run").exists()


def test_a_manifest_shard_path_leaving_the_release_is_refused_by_training(toy_root):
    from blurset.model.data import ReleaseIntegrityError, resolve_release
    folder = toy_root / "toy" / "1.0.0"
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][0]["path"] = "../../../../etc/passwd"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ReleaseIntegrityError, match="outside the release"):
        resolve_release("toy@1.0.0", toy_root)


# --------------------------------------------------------------------------------------------
# One clear line: a missing workspace, a damaged catalog


@pytest.mark.parametrize("verb", [["status"], ["quarantine"], ["dups"], ["release", "list"],
                                  ["annotate", "status", "--project", "p"]])
def test_read_only_verbs_on_a_mistyped_workspace_say_there_is_none(tmp_path, verb):
    ws = tmp_path / "wrokspace"
    res = run("-w", str(ws), *verb)
    assert res.exit_code == 1, res.output
    assert res.output == (f"Error: there is no workspace at {ws} (no catalog.sqlite there); "
                          "check --workspace or $BLURSET_WORKSPACE, or ingest a source to "
                          "create one\n")
    assert not ws.exists()


def test_a_damaged_catalog_is_one_line_naming_the_file(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "catalog.sqlite").write_bytes(b"this is not a SQLite database at all" * 100)
    for verb in (["status"], ["quarantine"]):
        res = run("-w", str(ws), *verb)
        assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
        assert res.output.startswith(f"Error: the catalog {ws / 'catalog.sqlite'} cannot be "
                                     "opened: file is not a database"), res.output
    src = write_cuhk(tmp_path / "src", n=1)
    res = run("-w", str(ws), "ingest", "--kind", "cuhk", "--name", "x", str(src))
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"Error: the catalog {ws / 'catalog.sqlite'} cannot be opened" in res.output


@pytest.mark.parametrize("args,option", [
    (["ingest", "--kind", "cuhk", "--name", "x", "--batch-size", "-5"], "--batch-size"),
    (["ingest", "--kind", "cuhk", "--name", "x", "--batch-size", "0"], "--batch-size"),
    (["ingest", "--kind", "cuhk", "--name", "x", "--max-pixels", "0"], "--max-pixels"),
    (["dedup", "--reference", "cuhk", "--threshold", "-3"], "--threshold"),
    (["dedup", "--reference", "cuhk", "--threshold", "33"], "--threshold"),
    (["annotate", "push", "--project", "p", "--batch-size", "0"], "--batch-size"),
    (["annotate", "push", "--project", "p", "--limit", "-1"], "--limit"),
])
def test_numeric_options_out_of_range_are_refused_before_anything_runs(tmp_path, args, option):
    src = write_cuhk(tmp_path / "src", n=1)
    ws = tmp_path / "ws"
    res = run("-w", str(ws), *args, *([str(src)] if args[0] == "ingest" else []))
    assert res.exit_code == 2 and option in res.output and "Traceback" not in res.output
    assert not ws.exists()


def test_evaluate_hint_names_an_option_the_cli_has(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    mask = png_bytes(Image.fromarray(np.full((8, 8), 255, np.uint8)))
    for stem in ("a", "b"):
        (pred / f"{stem}.png").write_bytes(mask)
    (gt / "a.png").write_bytes(mask)
    res = run("evaluate", "--pred-dir", str(pred), "--gt-dir", str(gt))
    assert res.exit_code == 1 and "--allow-extra-preds" in res.output, res.output
    res = run("evaluate", "--pred-dir", str(pred), "--gt-dir", str(gt), "--allow-extra-preds")
    assert res.exit_code == 0, res.output


# --------------------------------------------------------------------------------------------
# Smaller truths


def test_a_built_and_a_published_release_are_read_only_and_readable_by_others(small_release,
                                                                             tmp_path):
    import os
    import stat
    umask = os.umask(0o022)
    os.umask(umask)
    dest = Path(R.publish_release(small_release, str(tmp_path / "pub")))
    for root in (small_release, dest):
        for p in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(p.stat().st_mode)
            if p.is_dir():
                assert mode == 0o755 & ~umask, (p, oct(mode))
            else:
                assert mode == 0o444 & ~umask, (p, oct(mode))


def test_the_catalog_records_the_files_own_mode(tmp_path):
    ws = ingested(tmp_path)  # RGB JPEGs (hashing decodes a reduced greyscale draft)
    catalog = ws.catalog()
    ids = {p["image_id"] for p in catalog.paths_of("cuhk")}
    assert {catalog.image(i)["mode"] for i in ids} == {"RGB"}
    catalog.close()


def test_the_label_studio_data_folder_is_private(tmp_path):
    import stat

    from blurset.annotation.server import LocalServer
    server = LocalServer.for_workspace(tmp_path / "ws")
    server.data_dir.mkdir(parents=True)
    server.data_dir.chmod(0o755)  # as an older blurset left it
    assert stat.S_IMODE(server.prepare_data_dir().stat().st_mode) == 0o700


# --------------------------------------------------------------------------------------------
# The ML backend answers every bad request with 4xx JSON, and reads its storage only


@pytest.fixture
def ml_backend(tmp_path):
    import threading

    from conftest import png_with_claimed_size

    from blurset.annotation.ml_backend import Backend, make_server
    from blurset.pipeline.stages.prelabel import make_prelabeller
    root = tmp_path / "ws"
    (root / "objects" / "ab").mkdir(parents=True)
    (root / "objects" / "ab" / "ok.jpg").write_bytes(jpeg_bytes(photo(0, (64, 48))))
    (root / "objects" / "ab" / "bomb.png").write_bytes(png_with_claimed_size(30000, 30000))
    (root / "labelstudio").mkdir()
    (root / "labelstudio" / "other.jpg").write_bytes(jpeg_bytes(photo(1, (64, 48))))
    server = make_server(Backend(make_prelabeller("lbp"), root, storage=[root / "objects"]),
                         "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _post(port: int, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.putrequest("POST", "/predict")
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)),
                     **(headers or {})}.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def _tasks(*items) -> bytes:
    return json.dumps({"tasks": list(items)}).encode()


def _url(rel: str) -> dict:
    return {"id": 1, "data": {"image": f"/data/local-files/?d={rel}"}}


@pytest.mark.parametrize("body,headers,status,words", [
    (_tasks("a string", 7), None, 400, "is not an object"),
    (_tasks({"id": 1, "data": "x"}), None, 400, "is not an object"),
    (_tasks(_url("objects/ab/bomb.png")), None, 422, "image refused"),
    (_tasks(_url("labelstudio/other.jpg")), None, 400, "not in the project's storage"),
    (b"{}", {"Content-Length": "-1"}, 400, "Content-Length '-1'"),
    (b"{}", {"Content-Length": "lots"}, 400, "Content-Length 'lots'"),
])
def test_ml_backend_answers_bad_requests_with_4xx_json(ml_backend, body, headers, status, words):
    got, answer = _post(ml_backend, body, headers)
    assert got == status and words in answer["error"], answer
    ok, answer = _post(ml_backend, _tasks(_url("objects/ab/ok.jpg")))  # and it still serves
    assert ok == 200 and len(answer["results"]) == 1


@pytest.mark.parametrize("where", ["objects", "catalog"])
def test_a_full_disk_during_ingest_is_one_line(prefect_harness, tmp_path, monkeypatch, where):
    import errno

    from sqlalchemy.exc import OperationalError

    from blurset.pipeline import store
    from blurset.pipeline.catalog import Catalog
    src = write_cuhk(tmp_path / "src", n=2)
    ws = tmp_path / "ws"
    if where == "objects":
        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(store, "atomic_write", full)
    else:
        def full(*args, **kwargs):
            raise OperationalError("INSERT", {}, Exception("database or disk is full"))
        monkeypatch.setattr(Catalog, "record_batch", full)
    res = run("-w", str(ws), "ingest", "--kind", "cuhk", "--name", "c", str(src))
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    place = ws if where == "objects" else f"sqlite:///{ws / 'catalog.sqlite'}"
    assert errors == [(f"Error: no space left writing to {place}: free space there and run the "
                      "ingest again (every batch finished before is kept)")], res.output
    other = [line for line in res.output.splitlines()
             if line.strip() and not line.startswith(("Error:", "ingest c:"))]
    assert other == [], res.output  # nothing but the progress bar and the Error line


def test_ml_backend_up_with_a_mistyped_project_creates_nothing(tmp_path, monkeypatch):
    from blurset.annotation import client as client_module
    from blurset.annotation.ml_backend import BackendProcess

    created: list[str] = []

    class FakeClient:
        conn = type("Conn", (), {"url": "http://label-studio.test"})()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def find_project(self, title):
            return 3 if title == "blur" else None

        def project(self, title):
            created.append(title)
            return 4

    monkeypatch.setattr(client_module, "connect", lambda *a, **k: FakeClient())

    def must_not_start(*args, **kwargs):
        raise AssertionError("the backend was started for a project that does not exist")

    monkeypatch.setattr(BackendProcess, "up", must_not_start)
    res = run("-w", str(tmp_path / "ws"), "labelstudio", "ml-backend", "up", "--checkpoint",
              "lbp", "--project", "TYPO")
    assert res.exit_code == 1 and res.output.startswith("Error: no project 'TYPO'"), res.output
    assert created == []


def test_label_studio_stopping_during_a_push_is_one_line(prefect_harness, tmp_path,
                                                         monkeypatch):
    """The server answered the CLI's first check, then stopped: the retries are quiet and the
    CLI prints one Error line (it came after 225 lines of tracebacks)."""
    from blurset.annotation import client as client_module
    from blurset.errors import ServiceError
    from blurset.pipeline import flows
    from blurset.pipeline.stages.dedup.run import run_dedup
    ws = ingested(tmp_path)
    catalog = ws.catalog()
    out = run_dedup(catalog, "cuhk")
    catalog.replace_findings("cuhk", None, {}, out.summary, out.findings, out.exclusions)
    catalog.close()
    calls = []

    class StoppedServer:
        conn = type("Conn", (), {"url": "http://127.0.0.1:9"})()

        def close(self):
            pass

        def project(self, title):
            calls.append(title)
            raise ServiceError("Label Studio at http://127.0.0.1:9 cannot be reached "
                               "(connection refused); start it and push again")

    monkeypatch.setattr(client_module, "connect", lambda *a, **k: StoppedServer())
    monkeypatch.setattr(flows.push_task, "retry_delay_seconds", 0)
    res = run("-w", str(ws.root), "annotate", "push", "--project", "p")
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert len(calls) == 3, res.output  # tried, then retried twice: it may come back
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines == [("Error: Label Studio at http://127.0.0.1:9 cannot be reached (connection "
                     "refused); start it and push again")], res.output
