"""Deployments on a real Prefect server: ``blurset serve`` takes runs triggered with
``run_deployment`` and they change the catalog as the stages do; ``prefect deploy --all``
registers the deployments of ``prefect.yaml`` with their typed parameters."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prefect_server import clean_env, prefect_server, query

REPO = Path(__file__).resolve().parents[1]
FLOWS = {"ingest", "dedup", "annotate-push", "annotate-pull", "release-build"}

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    with prefect_server(home) as url:
        yield url


def blurset(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blurset.pipeline.cli.main", *args],
                          capture_output=True, check=False, text=True, env=env, timeout=300)


def deployments(url: str, names: set[str]) -> dict[str, object]:
    """The deployments of these FLOW/NAME names that the server has, read one by one."""
    from prefect.exceptions import ObjectNotFound

    async def read(client):
        found = {}
        for name in names:
            try:
                found[name] = await client.read_deployment_by_name(name)
            except ObjectNotFound:
                pass
        return found
    return query(url, read)


def test_serve_runs_deployments_triggered_on_the_server(server, tmp_path):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from blurset.pipeline.catalog import Catalog
    from blurset.pipeline.demo.sample import write_sample
    from blurset.pipeline.stages.dedup.run import run_dedup

    sample, ws, objects = tmp_path / "sample", tmp_path / "ws", tmp_path / "shared-objects"
    write_sample(sample)
    # the objects outside the workspace (--objects-url as $BLURSET_OBJECTS_URL), remembered by it
    env = clean_env(PREFECT_API_URL=server, BLURSET_OBJECTS_URL=str(objects))
    r = blurset("-w", str(ws), "ingest", "--kind", "cuhk", "--name", "cuhk", str(sample / "cuhk"),
                env=env)
    assert r.returncode == 0, r.stderr
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    served = subprocess.Popen([sys.executable, "-m", "blurset.pipeline.cli.main", "-w", str(ws),
                               "serve", "--deployment", "team"], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        team = {f"{f}/team" for f in FLOWS}
        while set(deployments(server, team)) != team:
            assert served.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "blurset serve registered no deployments"
            time.sleep(1)
        dedup = deployments(server, {"dedup/team"})["dedup/team"]
        assert dedup.parameters == {"workspace": str(ws), "objects_url": str(objects),
                                    "catalog_url": f"sqlite:///{ws}/catalog.sqlite"}
        with temporary_settings(updates={PREFECT_API_URL: server}):
            ingested = run_deployment("ingest/team", timeout=240, parameters={
                "kind": "msra10k", "name": "msra10k", "path": str(sample / "msra10k")})
            deduped = run_deployment("dedup/team", parameters={"reference": "cuhk"},
                                     timeout=240)
    finally:
        served.terminate()
        served.wait(timeout=60)
        log.close()
    assert ingested.state.is_completed(), (ingested.state, (tmp_path / "serve.log").read_text())
    assert deduped.state.is_completed(), (deduped.state, (tmp_path / "serve.log").read_text())
    catalog = Catalog(f"sqlite:///{ws}/catalog.sqlite")
    try:
        assert catalog.path_counts().get("msra10k", 0) > 10
        recorded = catalog.findings("duplicate")
        expected = [f for f in run_dedup(catalog, "cuhk").findings if f["verdict"] == "duplicate"]
    finally:
        catalog.close()
    assert recorded, "the served dedup recorded no duplicate"
    stored = {p.name for p in objects.rglob("*") if p.is_file()}
    assert len(stored) >= 40 and not (ws / "objects").exists()  # both sources' images
    key = ("candidate_source", "candidate_path", "reference_source", "reference_path", "method")
    assert sorted(tuple(f[k] for k in key) for f in recorded) == \
        sorted(tuple(f[k] for k in key) for f in expected)


def test_serve_without_a_server_is_one_error_line(tmp_path):
    r = blurset("-w", str(tmp_path / "ws"), "serve", env=clean_env(HOME=str(tmp_path)))
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "prefect server start" in lines[0], lines


def test_prefect_deploy_registers_the_yaml_deployments(server, tmp_path):
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    assert {d["entrypoint"].rsplit(".", 1)[1] for d in spec["deployments"]} == \
        {"ingest_flow", "dedup_flow", "push_flow", "pull_flow", "release_flow"}
    env = clean_env(PREFECT_API_URL=server, BLURSET_WORKSPACE=str(tmp_path / "shared-ws"))
    prefect = [sys.executable, "-m", "prefect"]
    r = subprocess.run([*prefect, "work-pool", "create", "blurset", "--type", "process"],
                       capture_output=True, check=False, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    deploy_all = subprocess.run([*prefect, "--no-prompt", "deploy", "--all"], cwd=REPO,
                                capture_output=True, check=False, text=True, env=env, timeout=300)
    out = deploy_all.stdout + deploy_all.stderr
    assert deploy_all.returncode == 0, out[-3000:]  # fastapi<0.151 (pyproject.toml)
    found = deployments(server, {f"{f}/blurset" for f in FLOWS})
    for flow in FLOWS:
        d = found.get(f"{flow}/blurset")
        assert d is not None, (flow, out[-3000:])
        assert d.entrypoint.startswith("blurset.pipeline.flows.")
        assert d.work_pool_name == "blurset" and d.pull_steps == []
        assert d.parameters["workspace"] == str(tmp_path / "shared-ws")
        schema = d.parameter_openapi_schema["properties"]
        assert {"workspace", "catalog_url", "objects_url"} <= set(schema), (flow, schema)
