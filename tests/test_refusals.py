"""Refused requests and bad input: each stage raises a specific ``BlursetError`` (also the builtin
exception it raised before, for callers that catch that), and the command line shows it as one
``Error:`` line with exit code 1 (``-v``: the traceback first)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_train import write_release

from blurset.errors import BlursetError, ConflictError, InputError, NotFoundError
from blurset.model.apply import ImageWriteError, image_format, write_rgb
from blurset.model.config import ConfigNotFoundError, load_config
from blurset.model.data import ReleaseIntegrityError, decode_pair
from blurset.model.dpn import WeightsFileError, WeightsNotFoundError, load_vgg16_state_dict
from blurset.model.evaluate import (
    EvaluationInputError,
    MapFolderNotFoundError,
    ReportExistsError,
    evaluate_dirs,
)
from blurset.model.release_format import ReleaseNotFoundError
from blurset.pipeline.cli.main import cli
from blurset.pipeline.demo.sample import SampleDataMissingError, SampleExistsError, write_sample
from blurset.pipeline.release import ReleaseError, ReleaseExistsError, diff_releases

# (class, its kind of refusal, the builtin it also is)
CLASSES = [
    (ReleaseExistsError, ConflictError, FileExistsError),
    (SampleExistsError, ConflictError, FileExistsError),
    (SampleDataMissingError, NotFoundError, FileNotFoundError),
    (ReportExistsError, ConflictError, FileExistsError),
    (MapFolderNotFoundError, NotFoundError, FileNotFoundError),
    (EvaluationInputError, InputError, ValueError),
    (ConfigNotFoundError, NotFoundError, FileNotFoundError),
    (WeightsNotFoundError, NotFoundError, FileNotFoundError),
    (WeightsFileError, InputError, TypeError),
    (ImageWriteError, InputError, ValueError),
    (ReleaseIntegrityError, InputError, ValueError),
]


@pytest.mark.parametrize(("cls", "kind", "builtin"), CLASSES, ids=[c[0].__name__ for c in CLASSES])
def test_each_refusal_is_a_blurset_error_and_still_its_builtin(cls, kind, builtin):
    assert issubclass(cls, kind) and issubclass(cls, BlursetError) and issubclass(cls, builtin)


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def one_error_line(r) -> str:
    """The output's one line, which must be an ``Error:`` line of an exit code 1."""
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert "Traceback" not in r.output
    return lines[0]


# ------------------------------------------------------------------------------------- sample

def test_a_sample_over_a_non_empty_folder(tmp_path):
    dest = tmp_path / "s"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep")
    with pytest.raises(SampleExistsError, match="never overwrites"):
        write_sample(dest)
    line = one_error_line(invoke("sample", str(dest)))
    assert str(dest) in line and "never overwrites" in line
    r = invoke("-v", "sample", str(dest))
    assert r.exit_code == 1 and "Traceback" in r.output and "SampleExistsError" in r.output
    assert r.output.rstrip().splitlines()[-1].startswith("Error: ")
    assert [p.name for p in dest.iterdir()] == ["mine.txt"]


def test_an_unknown_sample_size(tmp_path):
    with pytest.raises(InputError, match="unknown sample size 'huge'; choose one of demo"):
        write_sample(tmp_path / "s", size="huge")


# ---------------------------------------------------------------------------------- releases

def test_a_diff_of_a_folder_that_is_no_release(tmp_path):
    release = write_release(tmp_path / "releases", "toy", "1.0.0")
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ReleaseNotFoundError, match=r"other is not a release: it has no manifest"):
        diff_releases(release, other)
    line = one_error_line(invoke("release", "diff", str(release), str(other)))
    assert str(other) in line and "release list" in line


def test_a_diff_of_a_release_with_an_unreadable_shard(tmp_path):
    a = write_release(tmp_path / "releases", "toy", "1.0.0")
    b = write_release(tmp_path / "releases", "toy", "1.1.0")
    shard = min((b / "data").glob("*.parquet"))
    shard.write_bytes(b"not parquet at all")
    with pytest.raises(ReleaseError, match=rf"shard {re.escape(str(shard))} cannot be read.*release verify"):
        diff_releases(a, b)
    line = one_error_line(invoke("release", "diff", str(a), str(b)))
    assert shard.name in line and "blurset release verify" in line


def test_an_existing_release_is_refused_before_anything_is_read(tmp_path):
    from blurset.pipeline.release import ReleaseSpec, build_release
    from blurset.pipeline.workspace import Workspace
    ws = Workspace.open(tmp_path / "ws")
    (tmp_path / "releases" / "toy" / "1.0.0").mkdir(parents=True)
    spec = ReleaseSpec("toy", "1.0.0", out_root=tmp_path / "releases")
    with pytest.raises(ReleaseExistsError, match="already exists.*build a new version"):
        build_release(ws, ws.catalog(), spec)


def test_scoring_a_split_without_rows(tmp_path):
    from blurset.model.crosscheck import score_on_release
    from blurset.model.data import resolve_release
    from blurset.model.release_format import ReleaseSpecError
    write_release(tmp_path, "toy", "1.0.0", {"train": 2, "test": 0})
    ref = resolve_release("toy@1.0.0:test", tmp_path)
    with pytest.raises(ReleaseSpecError, match=r"split test has no rows to score; choose a "
                                                r"split with rows \(train 2\)"):
        score_on_release(ref, "test", baselines=())


# ------------------------------------------------------------------------------- evaluation

def _pairs(tmp_path: Path) -> tuple[Path, Path]:
    """Two masks in gt/ and a map for each in pred/, matched by stem."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    for i in range(2):
        mask = np.zeros((20, 30), np.uint8)
        mask[:, : 10 + 5 * i] = 255
        Image.fromarray(mask).save(gt / f"im{i}.png")
        Image.fromarray(np.full((20, 30), 128, np.uint8)).save(pred / f"im{i}.png")
    return pred, gt


def test_evaluating_into_a_folder_that_holds_a_report(tmp_path):
    pred, gt = _pairs(tmp_path)
    out = tmp_path / "report"
    evaluate_dirs(pred, gt, out_dir=out)
    with pytest.raises(ReportExistsError, match="already holds a report.*--force"):
        evaluate_dirs(pred, gt, out_dir=out)
    line = one_error_line(invoke("evaluate", "--pred-dir", str(pred), "--gt-dir", str(gt),
                                 "--out", str(out)))
    assert str(out) in line and "already holds a report" in line
    r = invoke("evaluate", "--pred-dir", str(pred), "--gt-dir", str(gt), "--out", str(out),
               "--force")
    assert r.exit_code == 0, r.output


def test_a_map_that_is_not_a_2d_array(tmp_path):
    pred, gt = _pairs(tmp_path)
    (pred / "im1.png").unlink()
    np.save(pred / "im1.npy", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(EvaluationInputError, match=r"im1\.npy.*2-D"):
        evaluate_dirs(pred, gt)
    line = one_error_line(invoke("evaluate", "--pred-dir", str(pred), "--gt-dir", str(gt)))
    assert "im1.npy" in line and "2-D" in line


def test_a_missing_folder_of_maps(tmp_path):
    _, gt = _pairs(tmp_path)
    with pytest.raises(MapFolderNotFoundError, match=r"prediction directory .*nowhere does not"):
        evaluate_dirs(tmp_path / "nowhere", gt)


# ------------------------------------------------------------------------ model inputs, files

def test_a_training_config_that_does_not_exist(tmp_path):
    with pytest.raises(ConfigNotFoundError, match=r"nope\.yaml does not exist.*dpn-small"):
        load_config(tmp_path / "nope.yaml")


def test_the_torchrun_entry_point_prints_a_refusal_as_one_line(tmp_path, capsys):
    from blurset.model.train import cli_main
    code = cli_main(["--config", str(tmp_path / "nope.yaml"), "--train", "toy@1.0.0",
                     "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: training config ") and "nope.yaml" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "run").exists()


def test_backbone_weights_that_are_missing_or_no_state_dict(tmp_path):
    import torch
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_vgg16_state_dict(tmp_path / "missing.pth")
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(WeightsFileError, match="not a state dict"):
        load_vgg16_state_dict(tensor)


def test_a_mask_whose_size_differs_from_its_image_in_a_release():
    def png(w: int, h: int) -> bytes:
        buf = io.BytesIO()
        Image.new("L", (w, h)).save(buf, "PNG")
        return buf.getvalue()

    with pytest.raises(ReleaseIntegrityError, match=r"row r1: mask is 5×4 but the image is 6×4"):
        decode_pair(png(6, 4), png(5, 4), None, "r1")


def test_an_output_image_name_pil_cannot_write(tmp_path):
    assert image_format(tmp_path / "x.JPG") == "JPEG"
    with pytest.raises(ImageWriteError, match=r"extension '\.foo'; use \.png"):
        write_rgb(np.zeros((4, 4, 3), np.uint8), tmp_path / "out" / "x.foo")
    assert not (tmp_path / "out").exists()
    image = tmp_path / "in.png"
    Image.new("RGB", (8, 8)).save(image)
    # refused before the checkpoint is even read
    line = one_error_line(invoke("dof-magnify", str(image), "--checkpoint", "pretrained",
                                 "--out", str(tmp_path / "x.foo")))
    assert "x.foo" in line and ".png" in line
