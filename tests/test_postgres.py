"""The catalog on PostgreSQL: the URLs it accepts, the one-line errors when the driver is missing
or the server cannot be reached, schema creation by several processes at once, and the sample's
ingest → dedup → release on a real server against the same run on SQLite (tests/pg.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pg
import pytest
from click.testing import CliRunner
from pg import Cluster, free_port, open_all_at_once
from sqlalchemy import create_engine, inspect, text

from blurset.errors import BlursetError, InputError, ServiceError
from blurset.pipeline.catalog import (
    SCHEMA_LOCK,
    Catalog,
    CatalogDriverMissingError,
    CatalogUnreachableError,
    CatalogUnusableError,
    engine_url,
    metadata,
)
from blurset.pipeline.cli.main import cli

pg_cluster, pg_url = pg.pg_cluster, pg.pg_url  # the fixtures of tests/pg.py
VOLATILE = {"created_at", "updated_at", "pushed_at", "decided_at"}  # wall-clock times


def blurset(*args: str):
    return CliRunner().invoke(cli, list(args))


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


# -- URLs and errors without a server -----------------------------------------------------------
def test_postgres_urls_use_psycopg_3_and_others_are_kept():
    assert engine_url("postgresql://u:p@h:5433/db").drivername == "postgresql+psycopg"
    assert engine_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    kept = engine_url("postgres://u:secret@h:5433/db?sslmode=require")
    assert (kept.username, kept.password, kept.host, kept.port, kept.database,
            dict(kept.query)) == ("u", "secret", "h", 5433, "db", {"sslmode": "require"})
    assert engine_url("postgresql+psycopg2://u@h/db").drivername == "postgresql+psycopg2"
    assert engine_url("sqlite:////tmp/c.sqlite").drivername == "sqlite"


def test_a_url_that_is_no_database_url_is_an_input_error_without_the_password():
    with pytest.raises(InputError, match="not a database URL") as e:
        Catalog("user:secret@host/db")
    assert "secret" not in str(e.value)


def test_a_missing_driver_is_one_line_naming_the_extra(tmp_path):
    """The real ``blurset`` command in a fresh process whose ``psycopg`` cannot be imported (a
    module of that name on PYTHONPATH that fails as a missing one does): one Error line, exit 1."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "psycopg.py").write_text(
        'raise ModuleNotFoundError("No module named \'psycopg\'", name="psycopg")\n')
    env = {**os.environ, "PYTHONPATH": str(shadow)}
    (tmp_path / "ws").mkdir()
    exe = Path(sys.executable).parent / "blurset"
    p = subprocess.run([str(exe), "-w", str(tmp_path / "ws"), "--catalog-url",
                        "postgresql://team:secret@db.example:5432/blurset", "dups"],
                       capture_output=True, text=True, timeout=300, env=env, check=False)
    assert p.returncode == 1, p.stderr
    lines = error_lines(p.stderr)
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("Error: ") and "pip install 'blurset[postgres]'" in lines[0]
    assert "psycopg" in lines[0] and "secret" not in lines[0]


def test_the_missing_driver_error_is_an_import_error_too(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # ``import psycopg`` fails
    with pytest.raises(CatalogDriverMissingError, match=r"blurset\[postgres\]") as e:
        Catalog("postgres://u@127.0.0.1:1/db")
    assert isinstance(e.value, ImportError) and isinstance(e.value, BlursetError)


def test_a_server_that_is_down_is_one_line_naming_host_and_port(tmp_path):
    port = free_port()  # nothing listens there
    (tmp_path / "ws").mkdir()
    t0 = time.monotonic()
    r = blurset("-w", str(tmp_path / "ws"), "--catalog-url",
                f"postgresql://team:secret@127.0.0.1:{port}/blurset", "dups")
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit)
    lines = error_lines(r.output)
    assert len(lines) == 1, r.output
    assert lines[0].startswith(f"Error: cannot reach the catalog database at 127.0.0.1:{port}")
    assert "Connection refused" in lines[0] and "secret" not in lines[0]
    assert time.monotonic() - t0 < 30


def test_a_flow_verb_reports_a_server_that_is_down_before_prefect_starts(tmp_path, monkeypatch):
    """dedup runs a Prefect flow: the catalog is tried first, before Prefect is set up."""
    from blurset.pipeline.cli import context

    def prefect_started() -> None:
        raise AssertionError("Prefect was set up before the catalog was tried")

    monkeypatch.setattr(context, "migrate_prefect_once", prefect_started)
    port = free_port()
    ws = tmp_path / "ws"
    r = blurset("-w", str(ws), "--catalog-url", f"postgresql://team@127.0.0.1:{port}/blurset",
                "dedup", "--reference", "cuhk")
    assert r.exit_code == 1, r.output
    (line,) = error_lines(r.output)
    assert line.startswith(f"Error: cannot reach the catalog database at 127.0.0.1:{port}")


def test_the_unreachable_error_is_a_service_error_and_a_connection_error():
    with pytest.raises(CatalogUnreachableError) as e:
        Catalog(f"postgresql://u@127.0.0.1:{free_port()}/db")
    assert isinstance(e.value, ServiceError) and isinstance(e.value, ConnectionError)


def test_sqlite_still_adds_the_columns_an_older_catalog_lacks(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    Catalog(url).close()
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("ALTER TABLE annotation_tasks DROP COLUMN prelabel_iou"))
    engine.dispose()
    assert "prelabel_iou" not in tables_and_columns(url)["annotation_tasks"]
    Catalog(url).close()
    assert tables_and_columns(url) == expected_schema()


def test_where_postgres_cannot_be_installed_the_tests_skip_with_the_reason(tmp_path, monkeypatch):
    installer = tmp_path / "install_postgres.sh"
    installer.write_text("echo 'not root and no passwordless sudo' >&2; exit 2\n")
    monkeypatch.setattr(pg, "pg_bin", lambda: None)
    monkeypatch.setattr(pg, "INSTALL", installer)
    with pytest.raises(pytest.skip.Exception, match="exit 2.*not root and no passwordless sudo"):
        pg.postgres_or_skip()


# -- a real server ------------------------------------------------------------------------------
@pytest.mark.integration
def test_a_wrong_password_and_a_missing_database_are_one_line_each(pg_cluster: Cluster, tmp_path):
    port = pg_cluster.port
    cases = {
        pg_cluster.url("postgres", password="wrong-pw"): "password authentication failed",
        pg_cluster.url("no_such_db"): "createdb -h 127.0.0.1",
    }
    for i, (url, says) in enumerate(cases.items()):
        (tmp_path / f"ws{i}").mkdir()
        r = blurset("-w", str(tmp_path / f"ws{i}"), "--catalog-url", url, "status")
        lines = error_lines(r.output)
        assert r.exit_code == 1 and len(lines) == 1, r.output
        assert f"at 127.0.0.1:{port}" in lines[0] and says in lines[0], lines[0]
        assert "wrong-pw" not in lines[0] and pg_cluster.url().split(":")[2] not in lines[0]


@pytest.mark.integration
def test_a_url_without_password_uses_pgpassword(pg_cluster: Cluster, pg_url, monkeypatch):
    """libpq's own ways to give the password ($PGPASSWORD, ~/.pgpass) work: the URL need not
    hold it (a URL is remembered in the workspace's blurset.yaml)."""
    database = pg_url.rsplit("/", 1)[1]
    no_password = pg_cluster.url(database, password=None)
    monkeypatch.setenv("PGPASSWORD", "wrong")
    with pytest.raises(CatalogUnreachableError, match="password authentication failed"):
        Catalog(no_password)
    monkeypatch.setenv("PGPASSWORD", pg.PASSWORD)
    Catalog(no_password).close()
    assert tables_and_columns(pg_url) == expected_schema()


@pytest.mark.integration
def test_a_user_who_may_not_create_tables_is_told_how_to_grant_it(pg_cluster: Cluster, pg_url):
    admin = create_engine(engine_url(pg_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text("DROP ROLE IF EXISTS reader"))
        c.execute(text("CREATE ROLE reader LOGIN PASSWORD 'reader-pw'"))
    admin.dispose()
    database = pg_url.rsplit("/", 1)[1]
    with pytest.raises(CatalogUnusableError, match="permission denied") as e:
        Catalog(f"postgresql://reader:reader-pw@127.0.0.1:{pg_cluster.port}/{database}")
    assert "GRANT CREATE ON SCHEMA public TO reader" in str(e.value)
    assert "\n" not in str(e.value) and "reader-pw" not in str(e.value)


def tables_and_columns(url: str) -> dict[str, list[str]]:
    engine = create_engine(engine_url(url))
    try:
        insp = inspect(engine)
        return {t: sorted(c["name"] for c in insp.get_columns(t)) for t in insp.get_table_names()}
    finally:
        engine.dispose()


def expected_schema() -> dict[str, list[str]]:
    return {t.name: sorted(c.name for c in t.columns) for t in metadata.sorted_tables}


@pytest.mark.integration
def test_processes_opening_one_empty_database_at_once_all_succeed(pg_url):
    """Without the advisory lock, 6 processes creating the tables at one moment fail in
    PostgreSQL's own catalog (UniqueViolation on pg_type_typname_nsp_index) in most rounds."""
    outcomes = open_all_at_once(pg_url)
    assert outcomes == ["ok"] * len(outcomes), outcomes
    assert tables_and_columns(pg_url) == expected_schema()


@pytest.mark.integration
def test_processes_adding_a_new_column_at_once_all_succeed(pg_url):
    """A catalog made by an older blurset (a nullable column missing) opened by several newer
    commands at once: the column is added once, nobody fails."""
    Catalog(pg_url).close()
    engine = create_engine(engine_url(pg_url))
    with engine.begin() as c:
        c.execute(text("ALTER TABLE annotation_tasks DROP COLUMN prelabel_iou"))
        c.execute(text("ALTER TABLE duplicate_findings DROP COLUMN decided"))
    engine.dispose()
    assert "prelabel_iou" not in tables_and_columns(pg_url)["annotation_tasks"]
    outcomes = open_all_at_once(pg_url)
    assert outcomes == ["ok"] * len(outcomes), outcomes
    assert tables_and_columns(pg_url) == expected_schema()


@pytest.mark.integration
def test_schema_creation_waits_for_the_advisory_lock(pg_url):
    """While another session holds the schema lock, opening the catalog creates nothing; it
    finishes once the lock is released (the whole schema in one transaction)."""
    holder = create_engine(engine_url(pg_url))
    opened: list[BaseException | None] = []

    def open_it() -> None:
        try:
            Catalog(pg_url).close()
            opened.append(None)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            opened.append(e)

    with holder.connect() as c:
        tx = c.begin()
        c.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK})
        opener = threading.Thread(target=open_it, daemon=True)
        opener.start()
        opener.join(3.0)
        assert opener.is_alive() and not opened  # waiting for the lock
        assert tables_and_columns(pg_url) == {}
        tx.commit()  # releases the lock
    opener.join(60)
    holder.dispose()
    assert opened == [None]
    assert tables_and_columns(pg_url) == expected_schema()


# -- ingest → dedup → release on PostgreSQL and on SQLite ---------------------------------------
@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    from blurset.pipeline.demo.sample import write_sample
    dest = tmp_path_factory.mktemp("sample") / "s"
    write_sample(dest, size="demo")
    return dest


def run_sample(ws: Path, sample: Path, catalog_url: str | None) -> float:
    """Ingest the sample's four sources, dedup against cuhk, build a release of cuhk's ground
    truth, through the CLI; returns the seconds it took."""
    from blurset.pipeline.demo.run import SAMPLE_SOURCES
    ws.mkdir()
    base = ["-w", str(ws)] + (["--catalog-url", catalog_url] if catalog_url else [])
    t0 = time.perf_counter()
    for args in [*(["ingest", "--kind", kind, "--name", name, str(sample / name)]
                   for kind, name in SAMPLE_SOURCES),
                 ["dedup", "--reference", "cuhk"],
                 ["release", "build", "cuhk-sample", "1.0.0", "--from-source", "cuhk",
                  "--split", "train=0.75,test=0.25"]]:
        r = CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)
        assert r.exit_code == 0, (args, r.output)
    return time.perf_counter() - t0


def catalog_rows(url: str, ws: Path) -> dict[str, list[tuple]]:
    """Every table's rows, sorted, without wall-clock times, paths relative to the workspace."""
    catalog = Catalog(url)
    out: dict[str, list[tuple]] = {}
    try:
        with catalog.engine.connect() as c:
            for table in metadata.sorted_tables:
                rows = []
                for r in c.execute(table.select()).mappings():
                    row = {k: v for k, v in r.items() if k not in VOLATILE}
                    if table.name == "releases":  # the manifest holds times: compared below
                        row["path"] = str(Path(row["path"]).relative_to(ws))
                        del row["manifest_sha256"]
                    if table.name == "dedup_runs":  # its summary holds the run's timings
                        summary = json.loads(row.pop("summary"))
                        row["summary"] = {k: v for k, v in summary.items()
                                          if "second" not in k and "time" not in k}
                    rows.append(tuple(sorted((k, repr(v)) for k, v in row.items())))
                out[table.name] = sorted(rows)
    finally:
        catalog.close()
    return out


@pytest.mark.integration
def test_the_sample_on_postgres_matches_sqlite(prefect_harness, sample, pg_url, tmp_path):
    sqlite_ws, pg_ws = tmp_path / "sqlite", tmp_path / "pg"
    run_sample(tmp_path / "warm-up", sample, None)  # imports and Prefect's first runs, untimed
    sqlite_s = run_sample(sqlite_ws, sample, None)
    pg_s = run_sample(pg_ws, sample, pg_url)
    print(f"\nsample ingest + dedup + release build: SQLite {sqlite_s:.1f} s, "
          f"PostgreSQL {pg_s:.1f} s")

    on_sqlite = catalog_rows(f"sqlite:///{sqlite_ws / 'catalog.sqlite'}", sqlite_ws)
    on_pg = catalog_rows(pg_url, pg_ws)
    assert not (pg_ws / "catalog.sqlite").exists()  # the PostgreSQL run wrote no SQLite catalog
    for name in ("images", "image_paths", "masks", "quarantine", "duplicate_findings",
                 "releases"):
        assert on_sqlite[name], f"the run left {name} empty: nothing compared"
    assert any(r for r in on_sqlite["duplicate_findings"] if ("verdict", "'duplicate'") in r)
    assert on_pg == on_sqlite

    # the same release: the same shard bytes, the same manifest but for the time and the
    # catalog's own URL and dialect of SQL (and the card, which dates the dedup run)
    manifests = [json.loads((ws / "releases" / "cuhk-sample" / "1.0.0" / "manifest.json")
                            .read_text()) for ws in (sqlite_ws, pg_ws)]
    for m in manifests:
        del m["created_at"], m["selection"]["catalog"], m["selection"]["queries"]
        m["files"] = [f for f in m["files"] if f["path"] != "README.md"]
    assert manifests[0]["rows"] > 0 and manifests[0]["shards"]
    assert manifests[0] == manifests[1]
