"""Background servers a workspace starts (Label Studio, the ML backend): does it answer, is it
ours, stop it."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path


def health(url: str, timeout: float = 2.0) -> dict | None:
    """The ``/health`` answer of the server at ``url`` (Label Studio and the ML backend both
    answer ``{"status": "UP", …}``), or None when nothing, an error or something else answers."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:
        e.close()
        return None
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return body if isinstance(body, dict) and body.get("status") == "UP" else None


def alive(pid: int, marker: bytes) -> bool:
    """Whether ``pid`` runs and is the process we started (its command line holds ``marker``;
    a recycled pid running something else is not ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    return not cmdline.exists() or marker in cmdline.read_bytes()


def stop_group(pid: int, marker: bytes, timeout: float, poll: float = 0.3) -> None:
    """SIGTERM the process group of ``pid``, wait up to ``timeout`` s, then SIGKILL it."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid, marker):
        time.sleep(poll)
    if alive(pid, marker):
        os.killpg(pid, signal.SIGKILL)


def read_record(pid_file: Path) -> dict | None:
    """The JSON record (pid, url, …) a start wrote, or None."""
    try:
        return json.loads(pid_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def stop_recorded(pid_file: Path, marker: bytes, timeout: float, poll: float = 0.3) -> bool:
    """Stop the process ``pid_file`` records, if it still runs and is ours; forget the record.
    False when none was running."""
    rec = read_record(pid_file)
    running = bool(rec) and alive(rec["pid"], marker)
    if running:
        stop_group(rec["pid"], marker, timeout, poll)
    pid_file.unlink(missing_ok=True)
    return running
