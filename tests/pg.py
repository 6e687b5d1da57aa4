"""A private PostgreSQL server for the catalog tests: Debian's ``initdb``/``pg_ctl`` start a cluster
in a temporary folder on a free port, each test module gets its own database, and the cluster is
stopped (and its folder removed) when the session ends.

PostgreSQL refuses to run as root: under root the cluster belongs to the ``postgres`` OS user
(the Debian package creates it). The binaries are installed by ``scripts/install_postgres.sh``
(apt) when missing; where that is impossible (no root, no apt) the tests skip and say why.

Use in a test module::

    from pg import pg_cluster, pg_url  # noqa: F401  (fixtures)
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

INSTALL = Path(__file__).resolve().parents[1] / "scripts" / "install_postgres.sh"
DEBIAN_BIN = Path("/usr/lib/postgresql")
USER, PASSWORD = "blurset", "pg-test-" + secrets.token_hex(6)


def pg_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: $BLURSET_PG_BIN, $PATH, or the newest
    /usr/lib/postgresql/<major>/bin (where Debian puts them, off $PATH)."""
    if env := os.environ.get("BLURSET_PG_BIN"):
        return Path(env) if (Path(env) / "initdb").exists() else None
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    majors = sorted((p for p in DEBIAN_BIN.glob("*/bin") if (p / "initdb").exists()),
                    key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return majors[-1] if majors else None


def postgres_or_skip() -> Path:
    """The PostgreSQL binaries, installed through apt if missing; skip (saying why) if not."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[test]'")
    if (found := pg_bin()) is not None:
        return found
    r = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, check=False)
    if r.returncode != 0 or (found := pg_bin()) is None:
        pytest.skip(f"no PostgreSQL for the catalog tests: {INSTALL} failed "
                    f"(exit {r.returncode}): {(r.stderr or r.stdout).strip()[-300:]}")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    """A running PostgreSQL cluster on 127.0.0.1:``port``; superuser ``USER`` with ``PASSWORD``
    (scram-sha-256 over TCP, so a wrong password is refused as on a real server)."""

    bin: Path
    root: Path  # holds data/, the socket and the log
    port: int
    owner: str | None  # the OS user the server runs as (None: this process's user)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres", password: str | None = PASSWORD) -> str:
        auth = f"{USER}:{password}" if password is not None else USER
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        r = subprocess.run(args, capture_output=True, text=True, check=False, timeout=timeout,
                           user=self.owner, cwd=self.root)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed (exit {r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()[-600:]}")
        return r

    def init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        self._chown(pwfile)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER,
                  f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        pwfile.unlink()

    def start(self) -> None:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                f"-c unix_socket_directories={self.root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=60 "
                "-c shared_buffers=32MB")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.root / "server.log"), "-o", opts, "-w", "-t", "60", "start")

    def stop(self) -> None:
        subprocess.run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                        "stop"], capture_output=True, check=False, timeout=120, user=self.owner,
                       cwd=self.root)

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return (self.root / "server.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        import psycopg
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a plain database name: {name!r}")
        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def _chown(self, path: Path) -> None:
        if self.owner is not None:
            pw = pwd.getpwnam(self.owner)
            os.chown(path, pw.pw_uid, pw.pw_gid)


def start_cluster(bin_dir: Path) -> Cluster:
    """Initialise and start a cluster in a new temporary folder (world-traversable parent, since
    the server may run as another user than the tests)."""
    owner = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' OS user to run PostgreSQL "
                        "as (PostgreSQL refuses root): install Debian's postgresql package")
        owner = "postgres"
    root = Path(tempfile.mkdtemp(prefix="blurset-pg-"))
    cluster = Cluster(bin=bin_dir, root=root, port=free_port(), owner=owner)
    cluster._chown(root)
    try:
        cluster.init()
        cluster.start()
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
        log = cluster.log_tail(600)
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL ({bin_dir}) could not be started: {e} {log}".strip())
    return cluster


def _open_catalog(url: str, barrier, results) -> None:
    """In a spawned process: once every process is ready, open the catalog; report how it went."""
    from blurset.pipeline.catalog import Catalog
    barrier.wait(timeout=300)
    try:
        Catalog(url).close()
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        results.put(f"{type(e).__name__}: {e}")
    else:
        results.put("ok")


def open_all_at_once(url: str, processes: int = 6) -> list[str]:
    """``Catalog(url)`` in ``processes`` fresh interpreters at one moment (they import first,
    then meet at a barrier); each one's outcome: "ok" or the error."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_open_catalog, args=(url, barrier, results))
             for _ in range(processes)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    return outcomes


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One private PostgreSQL server for the session (skips, saying why, where there is none)."""
    cluster = start_cluster(postgres_or_skip())
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: Cluster, request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database for this test."""
    name = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40]
    return pg_cluster.create_database(f"t_{name}_{secrets.token_hex(3)}")
