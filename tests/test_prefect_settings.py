"""Prefect as users run it: the CLI keeps ``PREFECT_API_URL``, ``PREFECT_HOME`` and the user's
active profile, and puts Prefect's home in the workspace only when none of them is set; a run
reaches a real Prefect server named in the user's profile."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from prefect_server import clean_env, prefect_server, query

# What Prefect resolves after the CLI set up its environment for a workspace (no flow is run).
PROBE = """
import json, sys
from blurset.pipeline.cli.context import Ctx
ws = Ctx(sys.argv[1]).ws
from prefect.settings import get_current_settings
s = get_current_settings()
print(json.dumps({"home": str(s.home), "api_url": s.api.url, "logging": s.logging.level,
                  "analytics": s.server.analytics_enabled, "ui": s.server.ui.enabled,
                  "workspace": str(ws.root)}))
"""


def resolved(tmp_path: Path, **env: str) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "ws")], capture_output=True,
                       check=False, text=True, timeout=120,
                       env=clean_env(HOME=str(tmp_path / "home"), **env))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def write_profiles(path: Path, active: str, **profiles: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f'active = "{active}"']
    for name, settings in profiles.items():
        lines.append(f"\n[profiles.{name}]")
        lines += [f'{k} = "{v}"' for k, v in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_with_nothing_set_prefect_lives_in_the_workspace(tmp_path):
    s = resolved(tmp_path)
    assert s["home"] == str(tmp_path / "ws" / ".prefect")
    assert s["api_url"] is None
    assert (s["logging"], s["analytics"], s["ui"]) == ("WARNING", False, False)


def test_the_active_profile_of_the_users_home_is_used(tmp_path):
    write_profiles(tmp_path / "home" / ".prefect" / "profiles.toml", "team",
                   local={"PREFECT_API_URL": "http://127.0.0.1:1/api"},
                   team={"PREFECT_API_URL": "http://prefect.team.example:4200/api",
                         "PREFECT_LOGGING_LEVEL": "DEBUG",
                         "PREFECT_SERVER_ANALYTICS_ENABLED": "true"})
    s = resolved(tmp_path)
    assert s["api_url"] == "http://prefect.team.example:4200/api"
    assert s["home"] == str(tmp_path / "home" / ".prefect")  # Prefect's own default home
    # the profile's settings win over the one-machine defaults; the others stay defaults
    assert (s["logging"], s["analytics"], s["ui"]) == ("DEBUG", True, False)


def test_prefect_profile_and_profiles_path_choose_the_profile(tmp_path):
    profiles = write_profiles(tmp_path / "elsewhere" / "p.toml", "a",
                              a={"PREFECT_API_URL": "http://a.example/api"},
                              b={"PREFECT_API_URL": "http://b.example/api"})
    assert resolved(tmp_path, PREFECT_PROFILES_PATH=str(profiles))["api_url"] == \
        "http://a.example/api"
    assert resolved(tmp_path, PREFECT_PROFILES_PATH=str(profiles),
                    PREFECT_PROFILE="b")["api_url"] == "http://b.example/api"


def test_a_profile_without_a_server_keeps_its_settings_and_the_workspace_home(tmp_path):
    write_profiles(tmp_path / "home" / ".prefect" / "profiles.toml", "quiet",
                   quiet={"PREFECT_LOGGING_LEVEL": "ERROR"})
    s = resolved(tmp_path)
    assert s["home"] == str(tmp_path / "ws" / ".prefect") and s["api_url"] is None
    assert s["logging"] == "ERROR"


def test_the_environment_wins(tmp_path):
    write_profiles(tmp_path / "home" / ".prefect" / "profiles.toml", "team",
                   team={"PREFECT_API_URL": "http://profile.example/api"})
    s = resolved(tmp_path, PREFECT_API_URL="http://env.example/api",
                 PREFECT_HOME=str(tmp_path / "my-prefect"), PREFECT_LOGGING_LEVEL="INFO")
    assert (s["api_url"], s["home"], s["logging"]) == \
        ("http://env.example/api", str(tmp_path / "my-prefect"), "INFO")
    assert resolved(tmp_path, PREFECT_HOME=str(tmp_path / "h2"))["home"] == str(tmp_path / "h2")


def test_an_unreadable_profiles_file_is_one_error_line(tmp_path):
    bad = tmp_path / "home" / ".prefect" / "profiles.toml"
    bad.parent.mkdir(parents=True)
    bad.write_text("active = [\n")
    r = subprocess.run([sys.executable, "-m", "blurset.pipeline.cli.main", "-w",
                        str(tmp_path / "ws"), "dedup", "--reference", "cuhk"], check=False,
                       capture_output=True, text=True, timeout=120,
                       env=clean_env(HOME=str(tmp_path / "home")))
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(bad) in lines[0] and "PREFECT_PROFILES_PATH" in lines[0], lines


@pytest.mark.integration
def test_a_run_reaches_the_server_of_the_users_profile(tmp_path):
    """A real ``prefect server start``; the user's profile names it; ``blurset ingest`` and
    ``blurset dedup`` runs are on that server, completed, and nothing went to a workspace home."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    from blurset.pipeline.demo.sample import write_sample
    write_sample(tmp_path / "sample")
    (tmp_path / "server").mkdir()
    with prefect_server(tmp_path / "server") as url:
        write_profiles(tmp_path / "home" / ".prefect" / "profiles.toml", "team",
                       team={"PREFECT_API_URL": url})
        env = clean_env(HOME=str(tmp_path / "home"))
        for args in (["ingest", "--kind", "cuhk", "--name", "cuhk", str(tmp_path / "sample/cuhk")],
                     ["dedup", "--reference", "cuhk"]):
            r = subprocess.run([sys.executable, "-m", "blurset.pipeline.cli.main", "-w",
                                str(tmp_path / "ws"), *args], capture_output=True,
                               check=False, text=True, env=env, timeout=300)
            assert r.returncode == 0, r.stderr

        async def runs(client):
            return await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["ingest", "dedup"])),
                sort=FlowRunSort.START_TIME_ASC, limit=10, offset=0)
        found = query(url, runs)

        async def flow_name(client, flow_id):
            return (await client.read_flow(flow_id)).name
        names = [query(url, lambda c, r=r: flow_name(c, r.flow_id)) for r in found]
    assert names == ["ingest", "dedup"]
    assert all(r.state.is_completed() for r in found), [r.state for r in found]
    assert found[0].parameters["name"] == "cuhk"
    assert not (tmp_path / "ws" / ".prefect").exists()
