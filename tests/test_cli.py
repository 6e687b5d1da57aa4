"""The command line's error display: an expected error (a BlursetError, also from inside a Prefect
flow) is one ``Error:`` line and exit 1, ``-v`` adds the traceback, anything else keeps it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from blurset.errors import BlursetError
from blurset.pipeline.cli.main import cli


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_a_missing_source_folder_is_one_usage_error(tmp_path):
    r = invoke("-w", str(tmp_path / "ws"), "ingest", "--kind", "cuhk", "--name", "cuhk",
               str(tmp_path / "nowhere"))
    assert r.exit_code == 2, r.output
    assert "Error: Invalid value for 'PATH'" in r.output and "does not exist" in r.output
    assert "Traceback" not in r.output


def test_a_bad_release_name_is_one_error_line_and_exit_1(tmp_path):
    r = invoke("-w", str(tmp_path / "ws"), "release", "build", "Bad Name!", "1.0.0",
               "--from-source", "cuhk")
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit)  # handled: no exception escaped
    lines = error_lines(r.output)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Bad Name!" in lines[0], lines
    assert not (tmp_path / "ws" / "releases").exists()


def test_a_bad_version_and_a_bad_split_are_refused_before_any_flow(tmp_path):
    for args, message in [(["1.0"], "not a semantic version"),
                          (["1.0.0", "--split", "train=2"], "train")]:
        r = invoke("-w", str(tmp_path / "ws"), "release", "build", "cuhk", *args,
                   "--from-source", "cuhk")
        assert r.exit_code == 1 and message in r.output, r.output
        assert len(error_lines(r.output)) == 1, r.output


def test_verbose_shows_the_traceback_then_the_error(tmp_path):
    r = invoke("-v", "-w", str(tmp_path / "ws"), "release", "build", "Bad Name!", "1.0.0",
               "--from-source", "cuhk")
    assert r.exit_code == 1
    assert "Traceback (most recent call last)" in r.output and "ReleaseError" in r.output
    assert r.output.rstrip().splitlines()[-1].startswith("Error: ")


def test_numeric_options_are_checked_by_click(tmp_path):
    r = invoke("-w", str(tmp_path / "ws"), "ingest", "--kind", "folder", "--name", "x",
               "--batch-size", "0", str(tmp_path))
    assert r.exit_code == 2 and "--batch-size" in r.output, r.output


def test_an_error_from_inside_a_flow_is_one_line(tmp_path, monkeypatch):
    from blurset.pipeline import flows
    from blurset.pipeline.stages.sources import LayoutError

    def refuses(*args, **kwargs):
        raise LayoutError("x does not look like a cuhk source")

    monkeypatch.setattr(flows, "ingest_flow", refuses)
    (tmp_path / "image").mkdir()  # a layout the CLI's own check (before the flow) accepts
    (tmp_path / "image" / "motion0001.jpg").write_bytes(b"x")
    r = invoke("-w", str(tmp_path / "ws"), "ingest", "--kind", "cuhk", "--name", "x",
               str(tmp_path))
    assert r.exit_code == 1 and error_lines(r.output) == [
        "Error: x does not look like a cuhk source"], r.output


def test_a_refusal_of_a_stage_reads_like_an_error(tmp_path):
    """A stage refuses with its own BlursetError (here SampleExistsError), never a builtin that
    the CLI would have to translate; see test_refusals.py for each stage."""
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "mine.txt").write_text("keep")
    r = invoke("sample", str(tmp_path / "s"))
    assert r.exit_code == 1 and error_lines(r.output)[0].startswith("Error: "), r.output
    assert "never overwrites" in r.output and "Traceback" not in r.output


def test_anything_else_keeps_its_traceback(tmp_path, monkeypatch):
    from blurset.pipeline import release

    def bug(path):
        raise RuntimeError("a bug")

    monkeypatch.setattr(release, "verify_release", bug)
    r = invoke("release", "verify", str(tmp_path))
    assert r.exit_code == 1 and isinstance(r.exception, RuntimeError)
    assert "Error:" not in r.output


def test_every_expected_error_class_derives_from_the_root():
    from blurset.annotation.client import LabelStudioError
    from blurset.model.config import ConfigError
    from blurset.pipeline.catalog import SourceConflictError
    from blurset.pipeline.release import ReleaseError
    from blurset.pipeline.stages.prelabel import PrelabelError
    from blurset.pipeline.stages.sources import LayoutError
    from blurset.pipeline.workspace import WorkspaceError
    for cls in (LabelStudioError, ConfigError, SourceConflictError, ReleaseError, PrelabelError,
                LayoutError, WorkspaceError):
        assert issubclass(cls, BlursetError), cls
    assert issubclass(LayoutError, ValueError)  # callers that catch the builtin still do


@pytest.mark.integration
def test_a_bad_layout_through_a_real_prefect_run_prints_one_line(tmp_path):
    """The real thing, in a fresh process: Prefect starts, the flow raises LayoutError, and
    stderr holds the one line (Prefect's own traceback of it stays off the console)."""
    (tmp_path / "folder").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    p = subprocess.run([sys.executable, "-P", "-m", "blurset", "-w", str(tmp_path / "ws"),
                        "ingest", "--kind", "cuhk", "--name", "cuhk", str(tmp_path / "folder")],
                       check=False, capture_output=True, text=True, timeout=600, env=env,
                       cwd=Path(__file__).parent)
    assert p.returncode == 1, p.stderr
    lines = error_lines(p.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "cuhk" in lines[0], p.stderr
    assert p.stdout == ""
