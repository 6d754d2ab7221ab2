"""Cold vs warm wall time and peak memory of a default `label-pipeline` run.

Usage: python bench/bench_pipeline.py [--config my.yaml] [--keep-store DIR] [--mode ...]

Runs the flow in a fresh subprocess on an empty stage store (cold), then again on the
same store (warm: every stage a cache hit), and prints wall time, the peak resident
memory of each run and the warm/cold ratio. Two ways of talking to Prefect:

- ``server``: a local Prefect server the benchmark starts first, as with ``make server``
  (the way deployments and the UI are used); the runs pay no server start-up;
- ``ephemeral``: no server running, so every run starts Prefect's temporary server
  (``make run`` on a laptop); this adds Prefect's start-up, a fixed ~10 s here, to each run.

Both modes share the store, so only the first run of the first mode is cold; every later
run is warm. Writes bench/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from harness import write_results  # noqa: E402

from label_pipeline.testing import local_prefect_server  # noqa: E402

# runs a command and reports the peak RSS of its process tree's largest process
_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:]).returncode\n"
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
    "file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def base_env(prefect_home: str) -> dict[str, str]:
    env = {
        **os.environ,
        "PREFECT_HOME": prefect_home,
        "HF_HUB_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("PREFECT_API_URL", None)
    return env


def run_once(store: str, config: str | None, env: dict[str, str]) -> dict:
    cmd = [sys.executable, "-m", "flows.label_pipeline", "--store", store]
    if config:
        cmd += ["--config", config]
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPER, *cmd], cwd=ROOT, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"pipeline run failed with exit code {proc.returncode}")
    peak_kb = next(
        int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")
    )
    lines = proc.stdout.splitlines()
    stages = [line.split(":")[0].strip() for line in lines if ": /" in line]
    cached = [line.split(":")[0].strip() for line in lines if "(cached)" in line]
    return {
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "stages": stages,
        "cached": cached,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--keep-store", default=None, help="use this store dir (else a temp dir)")
    parser.add_argument(
        "--mode",
        nargs="+",
        choices=["server", "ephemeral"],
        default=["server", "ephemeral"],
        help="Prefect modes to measure, in this order (the first one's first run is cold)",
    )
    args = parser.parse_args()
    store = args.keep_store or tempfile.mkdtemp(prefix="lp-bench-store-")
    home = tempfile.mkdtemp(prefix="lp-bench-prefect-")
    env = base_env(home)
    runs: dict[str, dict] = {}
    for mode in args.mode:
        server = local_prefect_server(env) if mode == "server" else contextlib.nullcontext()
        with server as api:
            run_env = {**env, "PREFECT_API_URL": api} if api else env
            if not runs:
                runs["cold"] = run_once(store, args.config, run_env)
            runs[f"warm ({mode})"] = run_once(store, args.config, run_env)
    cold = runs["cold"]["wall_s"]
    result = {
        "config": args.config or "default (embedded data)",
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "warm_over_cold": {k: round(v["wall_s"] / cold, 4) for k, v in runs.items() if k != "cold"},
    }
    print(f"{'run':<18}{'wall s':>9}{'peak RSS MB':>13}{'of cold':>9}  cached stages")
    for name, r in runs.items():
        ratio = f"{r['wall_s'] / cold:.1%}"
        print(
            f"{name:<18}{r['wall_s']:>9}{r['peak_rss_mb']:>13}{ratio:>9}  "
            f"{len(r['cached'])}/{len(r['stages'])}"
        )
    write_results("pipeline", result)


if __name__ == "__main__":
    main()
