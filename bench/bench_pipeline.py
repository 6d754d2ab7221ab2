"""Cold vs warm wall time and peak memory of a default `label-pipeline` run.

Usage: python bench/bench_pipeline.py [--config my.yaml] [--keep-store DIR]

Runs the flow twice in fresh subprocesses on an empty stage store (cold), then
again on the same store (warm: every stage a cache hit), and prints wall time,
peak resident memory (the process and its children) and the warm/cold ratio.
Writes bench/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(store: str, config: str | None, prefect_home: str) -> dict:
    env = {
        **os.environ,
        "PREFECT_HOME": prefect_home,
        "HF_HUB_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, "-m", "flows.label_pipeline", "--store", store]
    if config:
        cmd += ["--config", config]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"pipeline run failed with exit code {proc.returncode}")
    stages = [line.split(":")[0].strip() for line in proc.stdout.splitlines() if ": /" in line]
    cached = [line.split(":")[0].strip() for line in proc.stdout.splitlines() if "(cached)" in line]
    return {
        "wall_s": round(wall, 1),
        # ru_maxrss of children is the largest single child, which is the flow process here
        "peak_rss_mb": round(max(peak_kb, before) / 1024, 1),
        "stages": stages,
        "cached": cached,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--keep-store", default=None, help="use this store dir (else a temp dir)")
    args = parser.parse_args()
    store = args.keep_store or tempfile.mkdtemp(prefix="lp-bench-store-")
    home = tempfile.mkdtemp(prefix="lp-bench-prefect-")
    cold = run_once(store, args.config, home)
    warm = run_once(store, args.config, home)
    result = {
        "config": args.config or "default (embedded data)",
        "cpu_count": os.cpu_count(),
        "cold": cold,
        "warm": warm,
        "warm_over_cold": round(warm["wall_s"] / cold["wall_s"], 4),
    }
    print(f"{'run':<6}{'wall s':>10}{'peak RSS MB':>14}  cached stages")
    for name in ("cold", "warm"):
        r = result[name]
        print(
            f"{name:<6}{r['wall_s']:>10}{r['peak_rss_mb']:>14}  {len(r['cached'])}/{len(r['stages'])}"
        )
    print(f"warm / cold wall time: {result['warm_over_cold']:.1%}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
