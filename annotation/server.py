"""A local Label Studio server: its own virtualenv, its data in the workspace, started and stopped.

Label Studio's server pins (python-json-logger, redis) clash with Prefect's, so it lives in a
virtualenv of its own (``$BLURSET_LABEL_STUDIO_VENV``, or a per-user folder); the
project itself talks to it only through ``label-studio-sdk``. Connection settings are the SDK's:
``LABEL_STUDIO_URL`` and ``LABEL_STUDIO_API_KEY``; ``up`` starts the server at that URL with that
token as a legacy API token of a fixed admin user.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from blurset.annotation.process import alive, health, read_record, stop_recorded
from blurset.errors import ServiceError

LABEL_STUDIO_VERSION = "1.23.2"
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TOKEN = "blurset-local-dev-token-0123456789abcdef"  # local server only; set your own
DEFAULT_USERNAME = "admin@blurset.local"
DEFAULT_PASSWORD = "blurset-local-admin"
# Label Studio 1.23.2's default SSRF-banned subnets (core/utils/io.py validate_ip) without the
# loopback ones, 127.0.0.0/8 and ::1/128
BANNED_SUBNETS_BUT_LOOPBACK = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
    "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "233.252.0.0/24", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64",
    "2001:0000::/32", "2001:20::/28", "2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10",
    "ff00::/8",
)


class ServerError(ServiceError, RuntimeError):
    """The local Label Studio server could not be installed, started, reached or stopped."""


@dataclass(frozen=True)
class Connection:
    """Where Label Studio is and how to authenticate (the SDK's own environment variables)."""

    url: str
    api_key: str

    @classmethod
    def from_env(cls) -> Connection:
        url = os.environ.get("LABEL_STUDIO_URL", DEFAULT_URL).rstrip("/")
        key = (os.environ.get("LABEL_STUDIO_API_KEY") or os.environ.get("LABEL_STUDIO_USER_TOKEN")
               or DEFAULT_TOKEN)
        return cls(url, key)


def document_root(ws_root: Path) -> Path:
    """The folder Label Studio serves local files under: the workspace, unless
    ``BLURSET_LABEL_STUDIO_DOCUMENT_ROOT`` names a folder above it (one server, many workspaces)."""
    env = os.environ.get("BLURSET_LABEL_STUDIO_DOCUMENT_ROOT")
    return Path(env).resolve() if env else Path(ws_root).resolve()


def venv_dir() -> Path:
    """The Label Studio server's own virtualenv: ``$BLURSET_LABEL_STUDIO_VENV``, else a per-user
    folder (``$XDG_DATA_HOME/blurset/labelstudio-VERSION``), never inside the installed package."""
    env = os.environ.get("BLURSET_LABEL_STUDIO_VENV")
    if env:
        return Path(env)
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "blurset" / f"labelstudio-{LABEL_STUDIO_VERSION}"


def label_studio_bin() -> Path:
    return venv_dir() / "bin" / "label-studio"


def ensure_installed(log=print) -> Path:
    """Create the server's own virtualenv and install Label Studio into it, once."""
    exe = label_studio_bin()
    if exe.exists():
        return exe
    venv = venv_dir()
    log(f"installing label-studio=={LABEL_STUDIO_VERSION} into {venv} (about a minute, once)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", f"label-studio=={LABEL_STUDIO_VERSION}"],
                       check=True)
    except subprocess.CalledProcessError as e:
        raise ServerError(f"installing Label Studio into {venv} failed ({e}); "
                          f"remove {venv} and try again") from None
    return exe


def token_works(url: str, api_key: str, timeout: float = 5.0) -> bool:
    req = urllib.request.Request(f"{url}/api/current-user/whoami",
                                 headers={"Authorization": f"Token {api_key}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@dataclass(frozen=True)
class LocalServer:
    """A Label Studio server whose data lives in ``data_dir`` and which serves ``document_root``."""

    data_dir: Path
    document_root: Path
    conn: Connection
    username: str = DEFAULT_USERNAME
    password: str = DEFAULT_PASSWORD

    @classmethod
    def for_workspace(cls, ws_root: Path, conn: Connection | None = None) -> LocalServer:
        return cls(data_dir=ws_root / "labelstudio", document_root=document_root(ws_root),
                   conn=conn or Connection.from_env(),
                   username=os.environ.get("LABEL_STUDIO_USERNAME", DEFAULT_USERNAME),
                   password=os.environ.get("LABEL_STUDIO_PASSWORD", DEFAULT_PASSWORD))

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "blurset-server.json"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def _host_port(self) -> tuple[str, int]:
        u = urlparse(self.conn.url)
        if u.scheme != "http" or u.hostname not in ("127.0.0.1", "localhost"):
            raise ServerError(f"LABEL_STUDIO_URL={self.conn.url}: blurset starts servers on "
                              "http://127.0.0.1 only; for a remote Label Studio skip `up` and just "
                              "set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
        return "127.0.0.1", u.port or 80

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("USERNAME", "HOST", "PORT") and not k.startswith("DJANGO_")}
        env.update({
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "LABEL_STUDIO_USERNAME": self.username,
            "LABEL_STUDIO_PASSWORD": self.password,
            "LABEL_STUDIO_USER_TOKEN": self.conn.api_key,
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.document_root),
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
            "LABEL_STUDIO_SENTRY_DSN": "",
            "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        })
        if "USE_DEFAULT_BANNED_SUBNETS" not in env:
            # Label Studio refuses to call loopback addresses (ML backends and their webhooks:
            # SSRF protection); a local server must reach `blurset labelstudio ml-backend` on
            # 127.0.0.1, so loopback alone is allowed and every other reserved range stays banned
            env["USE_DEFAULT_BANNED_SUBNETS"] = "false"
            env["USER_ADDITIONAL_BANNED_SUBNETS"] = ",".join(BANNED_SUBNETS_BUT_LOOPBACK)
        return env

    def _recorded(self) -> dict | None:
        return read_record(self.pid_file)

    def _alive(self, pid: int) -> bool:
        return alive(pid, b"label-studio")

    def status(self) -> dict:
        rec = self._recorded()
        pid = rec.get("pid") if rec else None
        return {"url": self.conn.url, "answering": health(self.conn.url) is not None,
                "token_ok": token_works(self.conn.url, self.conn.api_key),
                "pid": pid if pid and self._alive(pid) else None,
                "data_dir": str(self.data_dir), "log": str(self.log_file)}

    def prepare_data_dir(self) -> Path:
        """The data folder, private to its owner (0700): its SQLite file holds the admin's API
        token in clear."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        return self.data_dir

    def up(self, timeout: float = 240.0, log=print) -> dict:
        """Start the server (or find it running) and wait until the API answers to our token."""
        host, port = self._host_port()
        rec = self._recorded()
        if health(self.conn.url) is not None:
            if not token_works(self.conn.url, self.conn.api_key):
                raise ServerError(f"a server answers at {self.conn.url} but refuses the API token "
                                  "(LABEL_STUDIO_API_KEY); a legacy token only works if it was set "
                                  "on the server's very first start")
            log(f"Label Studio already running at {self.conn.url}")
            return self.status()
        if port_in_use(host, port):
            raise ServerError(f"port {port} is taken by something that is not Label Studio; "
                              "set LABEL_STUDIO_URL to a free port")
        if rec and self._alive(rec["pid"]):
            raise ServerError(f"a server started by blurset (pid {rec['pid']}) is still starting "
                              f"or stuck; see {self.log_file}, or run `blurset labelstudio down`")
        exe = ensure_installed(log)
        self.prepare_data_dir()
        first_start = not (self.data_dir / "label_studio.sqlite3").exists()
        cmd = [str(exe), "start", "--no-browser", "--internal-host", host, "--port", str(port),
               "--data-dir", str(self.data_dir), "--enable-legacy-api-token"]
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(cmd, env=self._env(), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    cwd=self.data_dir)
        self.pid_file.write_text(json.dumps({"pid": proc.pid, "url": self.conn.url,
                                             "started_at": time.time()}))
        log(f"starting Label Studio at {self.conn.url} (pid {proc.pid}; "
            f"{'first start runs migrations, ~45 s' if first_start else '~10 s'}); log: {self.log_file}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise ServerError(f"Label Studio exited with code {proc.returncode} while starting; "
                                  f"see {self.log_file}")
            if health(self.conn.url) is not None and token_works(self.conn.url, self.conn.api_key):
                return self.status()
            time.sleep(1.0)
        raise ServerError(f"Label Studio did not answer at {self.conn.url} within {timeout:.0f} s; "
                          f"see {self.log_file}")

    def down(self, timeout: float = 30.0) -> bool:
        """Stop the server this workspace started; returns False when none was running."""
        return stop_recorded(self.pid_file, b"label-studio", timeout, 0.3)
