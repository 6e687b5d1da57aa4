"""The workspace remembers its catalog and objects URLs (``blurset.yaml``)."""

from __future__ import annotations

import stat

import pytest

from blurset.errors import ConflictError
from blurset.pipeline.store import ObjectStore, RemoteObjectStore
from blurset.pipeline.workspace import (
    CONFIG_FILE,
    NoWorkspaceError,
    Workspace,
    WorkspaceError,
    WorkspaceUrlConflict,
    read_config,
)


def test_a_plain_workspace_remembers_nothing_and_keeps_its_own_catalog_and_objects(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    assert ws.catalog_url == f"sqlite:///{tmp_path / 'ws' / 'catalog.sqlite'}"
    assert ws.objects == ObjectStore(tmp_path / "ws" / "objects")
    assert not (tmp_path / "ws" / CONFIG_FILE).exists()


def test_urls_given_once_are_remembered_and_used_when_forgotten(tmp_path):
    shared = f"sqlite:///{tmp_path / 'team.sqlite'}"
    first = Workspace.open(tmp_path / "ws", shared, objects_url="s3://bucket/objects/")
    assert first.catalog_url == shared
    again = Workspace.open(tmp_path / "ws")  # --catalog-url and --objects-url forgotten
    assert (again.catalog_url, again.objects_url) == (shared, "s3://bucket/objects/")
    assert again.objects == RemoteObjectStore("s3://bucket/objects")
    assert read_config(tmp_path / "ws") == {"catalog_url": shared,
                                            "objects_url": "s3://bucket/objects/"}
    mode = stat.S_IMODE((tmp_path / "ws" / CONFIG_FILE).stat().st_mode)
    assert mode == 0o600  # a catalog URL may hold a password
    # the same URLs again are fine; so is a read-only open without them
    assert Workspace.open(tmp_path / "ws", shared, objects_url="s3://bucket/objects/") == again
    assert Workspace.open(tmp_path / "ws", create=False) == again


def test_the_environment_catalog_url_is_remembered_too(tmp_path, monkeypatch):
    shared = f"sqlite:///{tmp_path / 'team.sqlite'}"
    monkeypatch.setenv("BLURSET_CATALOG_URL", shared)
    Workspace.open(tmp_path / "ws")
    monkeypatch.delenv("BLURSET_CATALOG_URL")
    assert Workspace.open(tmp_path / "ws").catalog_url == shared
    # a read-only verb finds the workspace by its remembered catalog (no catalog.sqlite here)
    assert Workspace.open(tmp_path / "ws", create=False).catalog_url == shared


def test_a_different_url_than_the_remembered_one_is_refused_with_the_way_out(tmp_path):
    shared = f"sqlite:///{tmp_path / 'team.sqlite'}"
    Workspace.open(tmp_path / "ws", shared, objects_url=str(tmp_path / "objects"))
    with pytest.raises(WorkspaceUrlConflict) as e:
        Workspace.open(tmp_path / "ws", f"sqlite:///{tmp_path / 'other.sqlite'}")
    msg = str(e.value)
    assert isinstance(e.value, ConflictError)
    assert shared in msg and "other.sqlite" in msg and CONFIG_FILE in msg and "edit" in msg
    with pytest.raises(WorkspaceUrlConflict, match="objects_url"):
        Workspace.open(tmp_path / "ws", objects_url="s3://bucket/elsewhere")
    # a relative local objects path means the same folder from anywhere
    ws = Workspace.open(tmp_path / "ws", objects_url=str(tmp_path / "x" / ".." / "objects"))
    assert ws.objects == ObjectStore(tmp_path / "objects")
    # editing the file is the way to change it
    cfg = tmp_path / "ws" / CONFIG_FILE
    cfg.write_text(cfg.read_text().replace("team.sqlite", "other.sqlite"))
    assert Workspace.open(tmp_path / "ws").catalog_url.endswith("other.sqlite")


def test_a_url_given_later_is_added_to_the_remembered_ones(tmp_path):
    shared = f"sqlite:///{tmp_path / 'team.sqlite'}"
    Workspace.open(tmp_path / "ws", shared)
    Workspace.open(tmp_path / "ws", objects_url="s3://b/o")
    assert read_config(tmp_path / "ws") == {"catalog_url": shared, "objects_url": "s3://b/o"}


def test_a_broken_config_file_is_named(tmp_path):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / CONFIG_FILE).write_text("catalog_url: [1, 2]\n")
    with pytest.raises(WorkspaceError, match="blurset.yaml must map"):
        Workspace.open(tmp_path / "ws")
    (tmp_path / "ws" / CONFIG_FILE).write_text("catalog_url: 'unclosed\n")
    with pytest.raises(WorkspaceError, match="cannot read"):
        Workspace.open(tmp_path / "ws")


def test_no_workspace_is_still_reported_for_read_only_verbs(tmp_path):
    with pytest.raises(NoWorkspaceError):
        Workspace.open(tmp_path / "nowhere", create=False)
    assert not (tmp_path / "nowhere").exists()


def test_two_first_openings_at_once_cannot_both_win(tmp_path, monkeypatch):
    """The first URL is written exclusively: a second process that read no config before the
    first one wrote it sees the file on writing, and is checked against it."""
    import blurset.pipeline.workspace as W
    Workspace.open(tmp_path / "ws", f"sqlite:///{tmp_path / 'first.sqlite'}")
    real = W.read_config
    calls = []

    def stale_once(root):
        calls.append(root)
        return {} if len(calls) == 1 else real(root)
    monkeypatch.setattr(W, "read_config", stale_once)
    with pytest.raises(WorkspaceUrlConflict, match="first.sqlite"):
        W.remember_urls(tmp_path / "ws", {"catalog_url": f"sqlite:///{tmp_path / 'second.sqlite'}"})
    assert len(calls) == 2
    assert real(tmp_path / "ws")["catalog_url"].endswith("first.sqlite")
