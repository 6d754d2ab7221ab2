"""Running the ``label-pipeline`` command line as a subprocess, for the integration tests of
user errors, crashes and concurrent runs: small data, the expensive stages off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROG = "label-pipeline: "
GOOD_CSV = "text,labels\n" + "".join(
    f"{w} report number {i} with some words,{lab}\n"
    for i, (w, lab) in enumerate([("crash", "bug"), ("please add", "feature")] * 6)
)
#: stages after split switched off: the cases fail in ingest or before the flow
OFF = {s: {"enabled": False} for s in ("augment", "zero_shot", "adapt", "quality", "train")}


def cli_env(api_url: str | None, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: offline, INFO logs, the project importable, the
    given Prefect API (None: Prefect's temporary server, as a user's run)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_LOGGING_LEVEL": "INFO"}
    env.pop("LABEL_PIPELINE_DEBUG", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    else:
        env.pop("PREFECT_API_URL", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_cli(
    args: list[str], cwd: Path, api_url: str | None, timeout: float = 240
) -> subprocess.CompletedProcess:
    """``python -m flows.label_pipeline ARGS`` to its end."""
    return subprocess.run(
        [sys.executable, "-m", "flows.label_pipeline", *args],
        cwd=cwd,
        env=cli_env(api_url),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_paragraph(stderr: str) -> str:
    """The paragraph that ends stderr: from the last line starting with the program name."""
    lines = stderr.rstrip("\n").split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith(PROG)]
    assert starts, f"no '{PROG}' paragraph in stderr:\n{stderr[-3000:]}"
    return "\n".join(lines[starts[-1] :])


def small_config(tmp: Path, data: str | None, **sections: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "store": str(tmp / "store"),
        "reports_dir": str(tmp / "reports"),
        "report": {"enabled": False},
        **OFF,
        "split": {"slice_sizes": [4]},
    }
    if data is not None:
        cfg["ingest"] = {"path": data}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


@pytest.fixture(scope="module")
def api_url(prefect_server) -> str:
    """The session's Prefect API: runs that use it skip the temporary server's start."""
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())
