"""The way users run it: a real local Prefect server, the work pools and deployments of
prefect.yaml, a process worker, and `prefect deployment run` from the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from review_fixtures import LABELS, WORDS

from label_pipeline.testing import free_port, local_prefect_server, stop_process_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _tiny_csv(path: Path, n_labelled: int = 72, n_unlabeled: int = 40) -> Path:
    lines = ["text,labels"]
    for i in range(n_labelled + n_unlabeled):
        lab = LABELS[i % 3]
        words = WORDS[lab].split()
        text = " ".join(words[(i + k) % len(words)] for k in range(4)) + f" item {i}"
        lines.append(f"{text},{lab if i < n_labelled else ''}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server on a free loopback port with its own PREFECT_HOME; always stopped."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "LABEL_PIPELINE_DIR": str(ROOT),
    }
    env.pop("PREFECT_API_KEY", None)
    with local_prefect_server(env, port=port, log_path=home / "server.log", timeout_s=120):
        yield {"api": api, "env": env, "home": home}


def _cli(
    server, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [PREFECT, *args],
        env=server["env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and res.returncode != 0:
        raise AssertionError(f"prefect {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture(scope="module")
def deployed(server):
    """The pools of prefect.yaml, its deployments, and a process worker on the CPU pool."""
    for pool in ("label-pipeline-cpu", "label-pipeline-gpu"):
        _cli(server, "work-pool", "create", pool, "--type", "process")
    _cli(server, "deploy", "--all", "--no-prompt")
    # no scheduled run may start while the test runs
    _cli(server, "deployment", "schedule", "pause", "label-pipeline/default", "--all", check=False)
    log = open(server["home"] / "worker.log", "w")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", "label-pipeline-cpu", "--type", "process"],
        env=server["env"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield server
    finally:
        stop_process_group(worker, signal.SIGINT, wait_s=20)
        log.close()


def _client_call(api: str, fn):
    """Run ``await fn(client)`` against the test server."""
    from prefect.client.orchestration import PrefectClient

    async def go():
        async with PrefectClient(api=api) as client:
            return await fn(client)

    return asyncio.run(go())


def _run_params(tmp_path: Path) -> dict:
    data = _tiny_csv(tmp_path / "tiny.csv")
    cfg = {
        "store": str(tmp_path / "store"),
        "reports_dir": str(tmp_path / "reports"),
        "ingest": {"path": str(data)},
        "split": {"slice_sizes": [8, 16]},
    }
    for stage in ("augment", "zero_shot", "adapt", "quality", "train", "report"):
        cfg[stage] = {"enabled": False}
    return {"config": cfg}


def _logs(server) -> str:
    return "\n".join(
        (server["home"] / name).read_text()[-4000:]
        for name in ("worker.log", "server.log")
        if (server["home"] / name).is_file()
    )


def test_deployments_have_the_pipeline_config_schema(deployed):
    async def read(client):
        return [
            await client.read_deployment_by_name(f"label-pipeline/{n}") for n in ("default", "gpu")
        ]

    default, gpu = _client_call(deployed["api"], read)
    assert default.work_pool_name == "label-pipeline-cpu"
    assert gpu.work_pool_name == "label-pipeline-gpu"
    assert default.entrypoint == "flows.label_pipeline:label_pipeline"
    props = default.parameter_openapi_schema["properties"]
    assert "config" in props and default.enforce_parameter_schema
    assert gpu.parameters["config"]["device"] == {
        "device": "cuda",
        "precision": "auto",
        "allow_cpu_fallback": False,
        "batch_size_gpu": 256,
    }
    assert any(s.schedule.cron == "0 3 * * *" for s in default.schedules)
    pull = json.dumps(default.pull_steps)
    assert "set_working_directory" in pull and str(ROOT) in pull


def test_deployment_run_completes_and_publishes_stage_artifacts(deployed, tmp_path):
    params = _run_params(tmp_path)
    res = _cli(
        deployed,
        "deployment",
        "run",
        "label-pipeline/default",
        "--params",
        json.dumps(params),
        "--watch",
        "--watch-timeout",
        "150",
        check=False,
        timeout=170,
    )
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{_logs(deployed)}"
    assert "Completed" in res.stdout, res.stdout

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    async def artifacts(client):
        dep = await client.read_deployment_by_name("label-pipeline/default")
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[dep.id]))
        )
        done = [r for r in runs if r.state and r.state.is_completed()]
        arts = await client.read_artifacts()
        return done, {a.key for a in arts if a.flow_run_id in {r.id for r in done}}

    done, keys = _client_call(deployed["api"], artifacts)
    assert len(done) == 1
    for stage in ("ingest", "clean", "split"):
        assert {f"{stage}-summary", f"{stage}-sample", f"{stage}-dir"} <= keys, keys
    # the run wrote into the store its parameters named
    assert (tmp_path / "store" / "split").is_dir()


def test_deployment_run_with_invalid_parameters_names_the_parameter(deployed, tmp_path):
    params = {"config": {"store": str(tmp_path / "store"), "runner": {"kind": "spark"}}}
    res = _cli(
        deployed,
        "deployment",
        "run",
        "label-pipeline/default",
        "--params",
        json.dumps(params),
        check=False,
        timeout=60,
    )
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "runner" in out and "kind" in out and "spark" in out, out


def test_gpu_parameters_on_a_cpu_worker_fail_fast_naming_the_setting(deployed, tmp_path):
    params = {
        "config": {
            "store": str(tmp_path / "store"),
            "device": {"device": "cuda", "allow_cpu_fallback": False},
        }
    }
    res = _cli(
        deployed,
        "deployment",
        "run",
        "label-pipeline/default",
        "--params",
        json.dumps(params),
        "--watch",
        "--watch-timeout",
        "120",
        check=False,
        timeout=140,
    )
    assert res.returncode != 0 and "Failed" in res.stdout, res.stdout

    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def failed_run_logs(client):
        runs = await client.read_flow_runs()
        run = next(
            r for r in runs if r.parameters["config"].get("device", {}).get("device") == "cuda"
        )
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
        )
        tasks = await client.read_task_runs()
        return (
            run,
            "\n".join(log.message for log in logs),
            [t for t in tasks if t.flow_run_id == run.id],
        )

    run, logs, task_runs = _client_call(deployed["api"], failed_run_logs)
    assert run.state.is_failed()
    assert "device.device" in logs and "allow_cpu_fallback" in logs, logs
    assert task_runs == []  # no stage started on the wrong machine
    assert not (tmp_path / "store").exists()
