"""Benchmark of the ingest, clean and split stages.

Cases (each in its own subprocess, so peak memory is the case's own):

- ``default``: the embedded GoEmotions sample (5,600 rows);
- ``large``: a ``--rows`` (default 50,000) row CSV built by resampling GoEmotions rows
  (``../shared/datasets/goemotions/ekman/train.tsv`` when present, else the embedded
  data), with words dropped/swapped for variety and 3% exact and 3% near duplicates
  injected; 5% of the rows keep their labels.

Reports rows/s per stage, peak RSS per case, and the cold vs warm wall time of the
``label-pipeline`` flow restricted to these three stages (fresh temp store and Prefect
home; the second run is answered from the cache). Prints a table and writes
``bench/results/foundation.json``.

    .venv/bin/python bench/bench_foundation.py [--rows 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from harness import DATASETS, write_results  # noqa: E402

GOEMOTIONS = DATASETS / "goemotions/ekman"


def _env(prefect_home: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=prefect_home,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
        PREFECT_LOGGING_LEVEL="WARNING",
        PYTHONPATH=str(ROOT),
    )
    return env


def build_large(path: Path, n_rows: int, seed: int = 0) -> dict[str, int]:
    """Write an ``n_rows`` CSV (text, labels) with injected exact and near duplicates."""
    import pandas as pd

    rng = random.Random(seed)
    if (GOEMOTIONS / "train.tsv").is_file():
        names = (GOEMOTIONS / "labels.txt").read_text().split()
        src = pd.read_csv(
            GOEMOTIONS / "train.tsv",
            sep="\t",
            header=None,
            quoting=3,
            dtype=str,
            keep_default_na=False,
        )
        texts = src[0].tolist()
        labels = [";".join(names[int(x)] for x in ids.split(",")) for ids in src[1]]
        source = str(GOEMOTIONS / "train.tsv")
    else:
        src = pd.read_csv(
            ROOT / "data/goemotions-ekman-sample.csv", dtype=str, keep_default_na=False
        )
        src = src[src["labels"] != ""]
        texts, labels, source = src["text"].tolist(), src["labels"].tolist(), "embedded sample"
    n_dup = n_near = int(0.03 * n_rows)
    rows = []
    for _ in range(n_rows - n_dup - n_near):
        k = rng.randrange(len(texts))
        words = texts[k].split()
        if len(words) > 6 and rng.random() < 0.5:  # variety beyond the source rows
            del words[rng.randrange(len(words))]
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        rows.append([" ".join(words), labels[k] if rng.random() < 0.05 else ""])
    for _ in range(n_dup):
        t, lab = rng.choice(rows)
        rows.append([t.upper() if rng.random() < 0.5 else f"  {t} ", lab])
    for _ in range(n_near):
        t, lab = rng.choice(rows)
        rows.append([t + rng.choice([" !", " lol", " :)", "..."]), ""])
    rng.shuffle(rows)
    pd.DataFrame(rows, columns=["text", "labels"]).to_csv(path, index=False)
    return {
        "rows": len(rows),
        "exact_dups_injected": n_dup,
        "near_dups_injected": n_near,
        "source": source,
    }


def worker(csv_path: str, store_dir: str) -> None:
    """Run ingest, clean and split once (cold store); print timings and peak RSS as JSON."""
    from label_pipeline.store import StageStore
    from tasks.clean import CleanConfig, run_clean
    from tasks.ingest import IngestConfig, run_ingest
    from tasks.split import SplitConfig, run_split

    store = StageStore(store_dir)
    out: dict[str, dict] = {}
    t = time.perf_counter()
    ing = run_ingest(store, IngestConfig(path=csv_path))
    out["ingest"] = {"seconds": time.perf_counter() - t, **ing.manifest()}
    t = time.perf_counter()
    cln = run_clean(store, CleanConfig(), ing)
    out["clean"] = {"seconds": time.perf_counter() - t, **cln.manifest()}
    t = time.perf_counter()
    spl = run_split(store, SplitConfig(), cln)
    out["split"] = {"seconds": time.perf_counter() - t, **spl.manifest()}
    keep = (
        "seconds",
        "rows_in",
        "rows_out",
        "dropped_by_reason",
        "conflicts",
        "train_rows",
        "valid_rows",
        "test_rows",
        "unlabeled_rows",
        "slices",
    )
    result = {k: {f: v[f] for f in keep if f in v} for k, v in out.items()}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def flow_worker(csv_path: str, store_dir: str, reports: str) -> None:
    """Run the label-pipeline flow (ingest, clean, split only) twice; print wall times."""
    from flows.config import PipelineConfig
    from flows.label_pipeline import label_pipeline

    cfg = {"store": store_dir, "reports_dir": reports, "ingest": {"path": csv_path}}
    for stage in ("augment", "zero_shot", "adapt", "train", "report"):
        cfg[stage] = {"enabled": False}
    config = PipelineConfig.model_validate(cfg)
    times, cached = [], []
    for _ in range(2):
        t = time.perf_counter()
        refs = label_pipeline(config=config)
        times.append(time.perf_counter() - t)
        cached.append(all(r["cached"] for r in refs.values()))
    print(
        "RESULT "
        + json.dumps(
            {"cold_s": times[0], "warm_s": times[1], "warm_all_cached": cached[1] and not cached[0]}
        )
    )


def _run(args: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"benchmark worker {args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--worker", nargs="+")
    parser.add_argument("--flow-worker", nargs="+")
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)
    if args.flow_worker:
        return flow_worker(*args.flow_worker)

    tmp = Path(tempfile.mkdtemp(prefix="bench-foundation-"))
    env = _env(str(tmp / "prefect-home"))
    large_csv = tmp / "large.csv"
    large_info = build_large(large_csv, args.rows)
    cases = {
        "default": str(ROOT / "data/goemotions-ekman-sample.csv"),
        f"large_{args.rows}": str(large_csv),
    }
    results: dict = {"cases": {}, "large_input": large_info, "cpus": os.cpu_count()}
    for name, path in cases.items():
        results["cases"][name] = _run(["--worker", path, str(tmp / f"store-{name}")], env)
    results["flow_default"] = _run(
        ["--flow-worker", cases["default"], str(tmp / "store-flow"), str(tmp / "reports")], env
    )

    print(f"{'case':<14}{'stage':<8}{'rows in':>9}{'rows out':>10}{'seconds':>9}{'rows/s':>10}")
    for name, res in results["cases"].items():
        for stage in ("ingest", "clean", "split"):
            r = res[stage]
            r["rows_per_s"] = r["rows_in"] / r["seconds"] if r["seconds"] else None
            print(
                f"{name:<14}{stage:<8}{r['rows_in']:>9}{r['rows_out']:>10}{r['seconds']:>9.2f}{r['rows_per_s']:>10.0f}"
            )
        total = sum(res[s]["seconds"] for s in ("ingest", "clean", "split"))
        print(f"{name:<14}{'total':<8}{'':>19}{total:>9.2f}   peak RSS {res['peak_rss_mb']:.0f} MB")
        print(f"{'':<14}clean dropped: {res['clean'].get('dropped_by_reason')}")
    fl = results["flow_default"]
    print(
        f"flow (ingest+clean+split, default data): cold {fl['cold_s']:.1f}s, warm {fl['warm_s']:.1f}s (all cached: {fl['warm_all_cached']})"
    )
    write_results("foundation", results)


if __name__ == "__main__":
    main()
