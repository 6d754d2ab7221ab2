"""A run killed with SIGKILL in the middle of a stage, then run again.

The killed run leaves a half-written ``.tmp-*`` directory in the store and its temporary
Prefect server without a parent. The server must stop by itself within seconds; the re-run
reuses the stages finished before the kill, removes the stale directory (its writer is
gone), and writes the same outputs as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_runs import GOOD_CSV, api_url, cli_env, run_cli, small_config

__all__ = ["api_url"]  # the fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: runs the CLI with the train stage paused (60 s) once its builder has written its files,
#: so that the test kills it mid-stage; the marker file names the temporary directory
PAUSED_TRAIN = r"""
import os, sys, time
from pathlib import Path
from label_pipeline.store import StageStore

real_build = StageStore.build

def build(self, stage, version, config, inputs, builder, refresh=False):
    if stage != "train":
        return real_build(self, stage, version, config, inputs, builder, refresh)

    def paused(ctx):
        facts = builder(ctx)
        Path(os.environ["CRASH_MARKER"]).write_text(str(ctx.dir))
        time.sleep(60)
        return facts

    return real_build(self, stage, version, config, inputs, paused, refresh)

StageStore.build = build
from flows.label_pipeline import main
main(sys.argv[1:])
"""


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is ``pid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out.append(
                    (int(d.name), (d / "cmdline").read_bytes().replace(b"\0", b" ").decode())
                )
        except (OSError, ValueError, IndexError):
            continue
    return out


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in {"Z", "X"}


#: files that differ between identical runs: timings (manifest, summary) and pickled models
#: (a fitted vectorizer's vocabulary dict pickles in hash-seed order)
_NOT_COMPARED = {"manifest.json", "summary.md"}


def _untimed(value: Any) -> Any:
    """A JSON value without its timings (keys naming seconds)."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if "second" not in k}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _digest(stage_dir: Path, store: Path) -> dict[str, str]:
    """Content hash of every output file of a stage directory (data, predictions, metrics,
    decisions), the store's own path (which some files name) and timings left out."""
    out = {}
    for f in sorted(stage_dir.rglob("*")):
        if not f.is_file() or f.name in _NOT_COMPARED or f.suffix == ".joblib":
            continue
        data = f.read_bytes().replace(str(store).encode(), b"<store>")
        if f.suffix == ".json":
            data = json.dumps(_untimed(json.loads(data)), sort_keys=True).encode()
        out[str(f.relative_to(stage_dir))] = hashlib.sha256(data).hexdigest()
    return out


def _outputs(store: Path) -> dict[str, dict[str, str]]:
    out = {}
    for manifest in sorted(store.glob("*/*/manifest.json")):
        name = f"{manifest.parent.parent.name}/{manifest.parent.name}"
        out[name] = _digest(manifest.parent, store)
    return out


def _write_config(tmp: Path, store: Path) -> Path:
    data = tmp / "in.csv"
    rows = GOOD_CSV + "".join(
        f"{w} thing {i} in another row,\n" for i, w in enumerate(["crash", "add"] * 6)
    )
    data.write_text(rows)
    cfg = small_config(tmp, str(data))
    cfg["store"] = str(store)
    cfg["train"] = {"enabled": True, "methods": ["naive_bayes"], "slices": ["all"]}
    cfg["suggest"] = {"enabled": False}
    path = tmp / f"config-{store.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_sigkill_mid_stage_then_resume(tmp_path, api_url):
    store = tmp_path / "store"
    config = _write_config(tmp_path, store)
    marker = tmp_path / "paused-in"
    env = cli_env(None, CRASH_MARKER=str(marker))  # a user's run: Prefect's temporary server
    run = subprocess.Popen(
        [sys.executable, "-c", PAUSED_TRAIN, "--config", str(config)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 240
        while not marker.exists() and run.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert marker.exists(), run.stderr.read() if run.poll() is not None else "no pause"
        servers = [p for p, cmd in _children(run.pid) if "uvicorn" in cmd]
        assert len(servers) == 1, _children(run.pid)
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        run.stderr.close()
    half_written = Path(marker.read_text())
    assert half_written.is_dir() and half_written.name.startswith(".tmp-")
    assert (half_written.parent / (half_written.name + ".owner")).is_file()
    # the temporary server notices that its parent is gone and stops
    deadline = time.time() + 20
    while _alive(servers[0]) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(servers[0]), f"the killed run's Prefect server {servers[0]} still runs"

    resumed = run_cli(["--config", str(config)], cwd=tmp_path, api_url=api_url)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    cached = {
        line.split(":")[0].strip() for line in resumed.stdout.splitlines() if "(cached)" in line
    }
    assert {"ingest", "clean", "split"} <= cached, resumed.stdout
    assert "train" not in cached
    assert not half_written.exists()
    assert not [p.name for p in store.rglob(".tmp-*")], list(store.rglob(".tmp-*"))
    assert not [p.name for p in store.rglob(".dl-*")] + [p.name for p in store.rglob(".old-*")]

    # the same outputs as a run that was never interrupted
    fresh = tmp_path / "fresh"
    reference = run_cli(
        ["--config", str(_write_config(tmp_path, fresh))], cwd=tmp_path, api_url=api_url
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    got, want = _outputs(store), _outputs(fresh)
    assert set(got) == set(want) and {s.split("/")[0] for s in got} >= {
        "train",
        "evaluate",
        "label",
    }
    for stage in want:
        assert got[stage] == want[stage], stage
