"""A real ``prefect server start`` for the tests that check what reaches a team's server: its
own home (database) in a temporary folder, on a free port, stopped at the end."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

STARTUP_SECONDS = 180  # a cold start (database migration) takes 15-20 s, longer on busy cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any Prefect or blurset setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "BLURSET_"))}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """Start a Prefect server with its home in ``home``; yields its API URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = clean_env(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
                    PREFECT_UI_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING")
    log = open(home.parent / f"prefect-server-{port}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}: "
                                   + Path(log.name).read_text()[-2000:])
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server not up after {STARTUP_SECONDS} s")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def query(url: str, call):
    """``await call(client)`` with a Prefect client of the server at ``url``."""
    from prefect.client.orchestration import PrefectClient

    async def run():
        async with PrefectClient(api=url) as client:
            return await call(client)
    return asyncio.run(run())
