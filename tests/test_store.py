"""Object store, catalog and file-name basics."""

from __future__ import annotations

import hashlib

import pytest

from blurset.names import slug
from blurset.pipeline.catalog import Catalog, SourceConflictError
from blurset.pipeline.store import ObjectStore


def test_put_is_content_addressed_write_once_and_read_only(tmp_path):
    store = ObjectStore(tmp_path / "objects")
    data = b"\xff\xd8 fake jpeg bytes"
    rel = store.put(data, ".jpg")
    digest = hashlib.sha256(data).hexdigest()
    assert rel == f"{digest[:2]}/{digest}.jpg"
    path = store.root / rel
    mtime = path.stat().st_mtime_ns
    assert store.put(data, ".jpg") == rel and path.stat().st_mtime_ns == mtime
    assert store.read(rel) == data
    assert not (path.stat().st_mode & 0o222)  # objects are read-only
    assert not list(store.root.rglob(".tmp-*"))


def test_a_source_name_cannot_be_reused_for_another_folder(tmp_path):
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.sqlite'}")
    catalog.register_source("msra", "msra10k", "/data/msra")
    catalog.register_source("msra", "msra10k", "/data/msra")  # same again: fine
    with pytest.raises(SourceConflictError, match="Use another --name"):
        catalog.register_source("msra", "folder", "/data/other")


@pytest.mark.parametrize(("name", "expected"), [
    ("Blur Pull #2", "blur-pull-2"), ("pre newer", "pre-newer"), ("my_project", "my-project"),
    ("cuhk", "cuhk"), ("Ünï code", "n-code"), ("", "unnamed"), ("--!--", "unnamed"),
])
def test_one_slug_rule_for_folders_and_artifact_keys(name, expected):
    assert slug(name) == expected
    assert slug(name, empty="source") == (expected if expected != "unnamed" else "source")
