"""The way users run it: a real local Prefect server, the work pools and deployments of
prefect.yaml, process workers (``python -m label_pipeline.worker``, as ``make worker`` starts
them), ``prefect deployment run`` from the CLI and ``run_deployment``; the run page and the
run form in a headless Chromium.

Set ``LABEL_PIPELINE_UI_SCREENSHOTS`` to a directory to keep the two screenshots of the UI
test (the artifacts of a fully cached run, the deployment's run form)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from chromium import CHROMIUM, SKIP_REASON, Browser
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
        "PREFECT_UI_API_URL": api,  # what the UI in the browser calls
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # workers pick runs up quickly
    }
    # `make deploy` deploys without LABEL_PIPELINE_DIR: each worker reads its own
    for name in ("PREFECT_API_KEY", "LABEL_PIPELINE_DIR", "LABEL_PIPELINE_STORE"):
        env.pop(name, None)
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


@contextmanager
def _worker(
    server, pool: str, log_path: Path, cwd: Path, queue: str | None = None, **env: str
) -> Iterator[subprocess.Popen]:
    """A process worker as `make worker` starts it (label_pipeline.worker), stopped with
    SIGINT (Ctrl-C) on exit; ``env`` adds to the server's environment (LABEL_PIPELINE_DIR:
    the checkout the deployments' pull step changes into)."""
    cmd = [sys.executable, "-m", "label_pipeline.worker", "--pool", pool]
    if queue:
        cmd += ["--work-queue", queue]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd,
            env={**server["env"], "LABEL_PIPELINE_DIR": str(ROOT), **env},
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            stop_process_group(proc, signal.SIGINT, wait_s=30)


@pytest.fixture(scope="module")
def deployed(server):
    """The pools of prefect.yaml, its deployments, and a process worker on the CPU pool."""
    for pool in ("label-pipeline-cpu", "label-pipeline-gpu"):
        _cli(server, "work-pool", "create", pool, "--type", "process")
    _cli(server, "deploy", "--all", "--no-prompt")
    # no scheduled run may start while the test runs
    _cli(server, "deployment", "schedule", "pause", "label-pipeline/default", "--all", check=False)
    with _worker(server, "label-pipeline-cpu", server["home"] / "worker.log", cwd=ROOT):
        yield server


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
    # nothing of the deploying machine is written in: each worker reads its own checkout
    # (LABEL_PIPELINE_DIR) when a run starts, and the store from a Variable or its env
    pull = json.dumps(default.pull_steps)
    assert "set_working_directory" in pull and "{{ $LABEL_PIPELINE_DIR }}" in pull, pull
    assert str(ROOT) not in json.dumps([d.pull_steps for d in (default, gpu)])
    assert "store" not in default.parameters["config"] and "store" not in gpu.parameters["config"]
    # the run form: the device once, every field described
    config = default.parameter_openapi_schema["properties"]["config"]
    assert "device" not in config["properties"]["zero_shot"]["properties"]
    assert config["properties"]["ingest"]["properties"]["path"]["description"]


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


# --- partial parameters, one store for every worker, the UI ----------------------------------

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _wait_for_runs(api: str, run_ids: list, timeout_s: float = 240, until=None) -> list:
    """Poll until every run is final (or ``until(runs)`` is true); returns the flow runs."""
    deadline = time.time() + timeout_s
    while True:

        async def read(client):
            return [await client.read_flow_run(i) for i in run_ids]

        runs = _client_call(api, read)
        done = all(r.state and r.state.type.value in FINAL for r in runs)
        if done or (until is not None and until(runs)) or time.time() > deadline:
            return runs
        time.sleep(2)


def _run_logs(api: str, run_id) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read(client):
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
        )
        return "\n".join(log.message for log in logs)

    return _client_call(api, read)


def _logs_once(api: str, run_id, text: str, timeout_s: float = 30) -> str:
    """The run's logs once they hold ``text`` (or at ``timeout_s``): a run's last log lines
    can reach the API a moment after its final state does."""
    deadline = time.time() + timeout_s
    while text not in (logs := _run_logs(api, run_id)) and time.time() < deadline:
        time.sleep(1)
    return logs


def _run_artifacts(api: str, run_id) -> dict:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read(client):
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )

    return {a.key: a for a in _client_call(api, read)}


def test_gpu_deployment_run_with_one_field_keeps_every_other_setting(deployed, tmp_path):
    """`prefect deployment run --params` (the documented form) and `run_deployment` with one
    field: Prefect hands the run only that field; the flow merges it onto the deployment's
    config, so the GPU deployment keeps its device, batch size and adapt budget. On a machine
    without CUDA the run then fails fast naming device.device; on one with CUDA it is
    cancelled once its settings are logged. Ctrl-C then stops the worker within seconds."""
    from prefect.deployments import run_deployment

    api = deployed["api"]
    one_field = {"config": {"ingest": {"sample_rows": 5}}}
    log = tmp_path / "gpu-worker.log"
    with _worker(
        deployed,
        "label-pipeline-gpu",
        log,
        cwd=tmp_path,
        queue="gpu",
        LABEL_PIPELINE_STORE=str(tmp_path / "store"),
    ) as worker:
        res = _cli(
            deployed, "deployment", "run", "label-pipeline/gpu", "--params", json.dumps(one_field)
        )
        cli_run = next(w for w in res.stdout.split() if w.count("-") == 4 and len(w) == 36)

        async def by_api(client):
            return await run_deployment(
                "label-pipeline/gpu", parameters=one_field, timeout=0, client=client
            )

        api_run = _client_call(api, by_api).id
        ids = [cli_run, api_run]

        def logged(runs) -> bool:
            return all("settings that differ" in _run_logs(api, r.id) for r in runs)

        runs = _wait_for_runs(api, ids, until=logged)
        for run in runs:
            if run.state.type.value not in FINAL:  # a CUDA machine: the run would go on
                _cli(deployed, "flow-run", "cancel", str(run.id), check=False)
            # what Prefect itself gives the run: the one field, the deployment's config gone
            assert run.parameters == one_field, run.parameters
            logs = _run_logs(api, run.id)
            assert "settings: deployment 'gpu', this run changes ingest.sample_rows" in logs, logs
            for kept in (
                'device.device="cuda"',
                "device.allow_cpu_fallback=false",
                "device.batch_size_gpu=256",
                'encoder="sentence-transformers/all-mpnet-base-v2"',
                "ingest.sample_rows=5",
                "zero_shot.shard_size=8192",
                "adapt.batch_size=64",
                "adapt.epochs=3",
                "adapt.learning_rate=0.0001",
                "adapt.max_minutes=30",
            ):
                assert kept in logs, (kept, logs)
            if run.state.type.value == "FAILED":
                logs = _logs_once(api, run.id, "device.device='cuda'")
                assert "device.device='cuda'" in logs and "allow_cpu_fallback" in logs
        # Ctrl-C: the worker is gone within seconds (Prefect's own worker lingers)
        started = time.time()
        os.kill(worker.pid, signal.SIGINT)
        worker.wait(30)
        assert time.time() - started < 15, log.read_text()[-2000:]
        assert worker.returncode == 0


def _loop_params(data: Path) -> dict:
    """Both runs of the shared-store test: the tiny data, the model stages with the fast
    baseline, the CPU when there is no GPU (one field of the device, the rest kept), the
    encoder the machine has."""
    cfg = {
        "ingest": {"path": str(data)},
        "split": {"slice_sizes": [8]},
        "train": {"methods": ["naive_bayes"]},
        "device": {"allow_cpu_fallback": True},
        "encoder": "auto",  # the deployment's strong encoder may not be installed here
    }
    for stage in ("augment", "zero_shot", "adapt", "quality", "report"):
        cfg[stage] = {"enabled": False}
    return {"config": cfg}


@pytest.fixture(scope="module")
def shared_store_runs(deployed, tmp_path_factory):
    """Two workers of the GPU pool, one after the other, on two working directories (the
    second with its own Prefect home, as on another machine): each runs the GPU deployment
    once, with the store the Prefect Variable `label_pipeline_store` names."""
    tmp = tmp_path_factory.mktemp("shared-store")
    store = tmp / "shared-store"
    _cli(deployed, "variable", "set", "label_pipeline_store", str(store), "--overwrite")
    params = _loop_params(_tiny_csv(tmp / "tiny.csv"))
    checkout_b = tmp / "checkout-b"  # the second worker's "checkout" (code from the install)
    runs = []
    try:
        for name, extra in (
            ("a", {"LABEL_PIPELINE_DIR": str(ROOT)}),
            ("b", {"LABEL_PIPELINE_DIR": str(checkout_b), "PREFECT_HOME": str(tmp / "home-b")}),
        ):
            (tmp / name).mkdir()
            checkout_b.mkdir(exist_ok=True)
            with _worker(
                deployed,
                "label-pipeline-gpu",
                tmp / f"worker-{name}.log",
                tmp / name,
                "gpu",
                **extra,
            ):

                async def create(client):
                    dep = await client.read_deployment_by_name("label-pipeline/gpu")
                    return await client.create_flow_run_from_deployment(dep.id, parameters=params)

                run_id = _client_call(deployed["api"], create).id
                (run,) = _wait_for_runs(deployed["api"], [run_id])
                logs = (tmp / f"worker-{name}.log").read_text()[-3000:]
                assert run.state.is_completed(), (
                    f"{run.state}\n{logs}\n{_run_logs(deployed['api'], run.id)}"
                )
                runs.append(run)
    finally:
        _cli(deployed, "variable", "unset", "label_pipeline_store", check=False)
    return {"store": store, "runs": runs, "checkout_b": checkout_b, "home_b": tmp / "home-b"}


STAGES = ("ingest", "clean", "split", "train", "evaluate", "label", "suggest")


def test_a_second_worker_finds_the_first_workers_stages_in_the_shared_store(
    deployed, shared_store_runs
):
    api = deployed["api"]
    first, second = shared_store_runs["runs"]
    store = shared_store_runs["store"]
    for run in (first, second):
        assert f"store: {store} (Prefect Variable label_pipeline_store)" in _run_logs(api, run.id)
    assert {p.name for p in store.iterdir()} >= set(STAGES)
    assert not (shared_store_runs["checkout_b"] / ".store").exists()
    first_arts, second_arts = _run_artifacts(api, first.id), _run_artifacts(api, second.id)
    for stage in STAGES:
        assert "Cache hit" not in first_arts[f"{stage}-summary"].data
        summary = second_arts[f"{stage}-summary"].data
        assert "Cache hit" in summary, (stage, summary[:500])
        assert f"built by flow run [{first.name}](/runs/flow-run/{first.id})" in summary
        assert {f"{stage}-sample", f"{stage}-dir"} <= set(second_arts), stage
    # the data in the UI: counts per label and split, the labelled pool's confident rows
    counts = json.loads(second_arts["split-counts"].data)
    assert {"label", "train", "valid", "test", "unlabeled"} <= set(counts[0])
    confident = json.loads(second_arts["label-confidence"].data)
    assert {r["rank"] for r in confident} == {"most confident", "least confident"}
    assert {r["label"] for r in confident} == set(LABELS)
    assert "file://" not in second_arts["label-dir"].data


@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
def test_ui_shows_every_stage_of_a_cached_run_and_the_run_form_explains_each_field(
    deployed, shared_store_runs, tmp_path
):
    api = deployed["api"]
    ui = api.removesuffix("/api")
    shots = Path(os.environ.get("LABEL_PIPELINE_UI_SCREENSHOTS") or tmp_path)
    cached = shared_store_runs["runs"][1]

    async def gpu(client):
        return await client.read_deployment_by_name("label-pipeline/gpu")

    deployment = _client_call(api, gpu)
    path_help = deployment.parameter_openapi_schema["properties"]["config"]["properties"]["ingest"][
        "properties"
    ]["path"]["description"]
    browser = Browser(tmp_path / "chromium-profile")
    try:
        browser.call("Page.enable")
        # the flow run page of the fully cached run, Artifacts tab: every stage's summary
        browser.call("Page.navigate", url=f"{ui}/v2/runs/flow-run/{cached.id}?tab=Artifacts")
        keys = [f"{stage}-summary" for stage in STAGES]
        browser.wait_for(
            f"{json.dumps(keys)}.every(k => document.body.innerText.includes(k))", timeout_s=120
        )
        time.sleep(3)  # the cards' previews
        run_shot = browser.screenshot(shots / "cached-run-artifacts.png")
        text = browser.text()
        assert all(k in text for k in keys) and "label-confidence" in text
        # the deployment's run form: a field's own help text, the deployment's values
        browser.call("Page.navigate", url=f"{ui}/v2/deployments/deployment/{deployment.id}/run")
        browser.wait_for(f"document.body.innerText.includes({json.dumps(path_help)})", 120)
        browser.js(
            "[...document.querySelectorAll('label')]"
            ".find(l => l.innerText.startsWith('Ingest'))?.scrollIntoView({block: 'start'})"
        )
        browser.js("window.scrollBy(0, -80)")
        time.sleep(1)
        form_shot = browser.screenshot(shots / "run-form.png")
        text = browser.text()
        assert "Settings of the ingest stage." in text
        assert "registered method names" in text  # train.methods: its own help
        assert text.count("Allow Cpu Fallback") == 1  # the device settings once
        for shot in (run_shot, form_shot):
            assert shot.stat().st_size > 10_000
    finally:
        browser.close()
