"""Zero-shot scoring of a GoEmotions pool in 1, 2 and 4 shards under the Dask task runner.

Each shard is one Prefect task running ``tasks.zero_shot.score_shard`` (embedding backend,
the bundled all-MiniLM-L6-v2) on a local Dask cluster with one worker process per shard.
Prints rows/s and the peak RSS of every worker process (psutil, sampled every 0.2 s) and
checks that every shard count gives the same scores. JSON to bench/results/shards.json.

    .venv/bin/python bench/bench_shards.py --rows 50000      # the full pool
    .venv/bin/python bench/bench_shards.py --rows 4000 --shards 1 2

Worker processes get ``OMP_NUM_THREADS = cores // workers`` (at least 1) so that the
shard counts share the same cores instead of oversubscribing them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from harness import DATASETS  # noqa: E402

sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

DATA = DATASETS / "goemotions/ekman"


def build_pool(rows: int, out: Path) -> Path:
    """A split-stage-like directory whose ``unlabeled`` split holds ``rows`` GoEmotions texts
    (train.tsv, repeated with a suffix when more rows are asked for than it has)."""
    import datasets

    from label_pipeline.data import CANONICAL_FEATURES, write_label_info

    texts = [line.split("\t", 1)[0] for line in (DATA / "train.tsv").read_text().splitlines()]
    pool = [
        texts[i % len(texts)] + ("" if i < len(texts) else f" ({i // len(texts)})")
        for i in range(rows)
    ]

    def ds(d):
        return datasets.Dataset.from_dict(d, features=CANONICAL_FEATURES)

    # only the pool: the shard plan then holds nothing but unlabeled rows
    dd = datasets.DatasetDict(
        unlabeled=ds(
            {
                "id": [f"u{i}" for i in range(rows)],
                "text": pool,
                "labels": [[] for _ in range(rows)],
                "split": ["unlabeled"] * rows,
            }
        ),
    )
    out.mkdir(parents=True, exist_ok=True)
    dd.save_to_disk(str(out / "splits"))
    labels = (DATA / "labels.txt").read_text().split()
    write_label_info(out, labels, multi_label=True)
    return out


def score_one(index: int, cfg, splits_dir: str, shards_dir: str) -> tuple[int, str, float]:
    """One shard (runs in a Dask worker): its pid, directory and seconds."""
    from tasks.zero_shot import score_shard

    started = time.time()
    path = score_shard(cfg, splits_dir, index, shards_dir)
    return os.getpid(), str(path), time.time() - started


class RssSampler:
    """Peak RSS of every descendant process of this one, sampled in a thread."""

    def __init__(self, every_s: float = 0.2) -> None:
        import psutil

        self.me = psutil.Process()
        self.every_s = every_s
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for p in self.me.children(recursive=True):
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
            self._stop.wait(self.every_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_case(pool_dir: Path, rows: int, n_shards: int, work: Path) -> dict:
    from prefect import flow

    from label_pipeline.runners import RunnerConfig, make_task_runner
    from label_pipeline.shards import map_shards
    from tasks.zero_shot import ZeroShotConfig, plan_shards

    cores = os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(max(1, cores // n_shards))  # inherited by workers
    cfg = ZeroShotConfig(
        backend="embedding", shard_size=math.ceil(rows / n_shards), device={"device": "cpu"}
    )
    plan = plan_shards(pool_dir, cfg.shard_size)
    assert len(plan) == n_shards, plan
    shards_dir = work / f"shards-{n_shards}"
    runner = RunnerConfig(kind="dask", n_workers=n_shards, threads_per_worker=1, processes=True)

    @flow(name=f"bench-shards-{n_shards}", validate_parameters=False)
    def bench_flow() -> tuple[list, float]:
        started = time.time()
        out = map_shards(
            score_one,
            stage="zero_shot",
            fingerprint=f"bench-{rows}",
            n_shards=n_shards,
            splits_dir=str(pool_dir),
            shards_dir=str(shards_dir),
            cfg=cfg,
        )
        return out, time.time() - started

    with RssSampler() as rss:
        t0 = time.time()
        results, mapped_s = bench_flow.with_options(task_runner=make_task_runner(runner))()
        total_s = time.time() - t0
    worker_pids = sorted({pid for pid, _, _ in results})
    # score_shard's own clock starts after the model is loaded: scoring alone
    scoring = [json.loads((Path(p) / "shard.json").read_text())["seconds"] for _, p, _ in results]
    return {
        "n_shards": n_shards,
        "dask_workers": n_shards,
        "omp_threads_per_worker": int(os.environ["OMP_NUM_THREADS"]),
        "rows": rows,
        "seconds_scoring": round(mapped_s, 2),
        "seconds_with_cluster_start": round(total_s, 2),
        "rows_per_s": round(rows / mapped_s, 1),
        "shard_seconds": [round(s, 2) for _, _, s in results],
        "shard_scoring_seconds": scoring,
        "rows_per_s_scoring_only": round(rows / max(scoring), 1),
        "peak_rss_mb_per_worker": [round(rss.peak.get(p, 0) / 2**20) for p in worker_pids],
        "shard_dirs": [p for _, p, _ in results],
    }


def scores_of(shard_dirs: list[str]):
    import datasets
    import numpy as np

    ds = datasets.concatenate_datasets([datasets.load_from_disk(d) for d in shard_dirs])
    cols = [c for c in ds.column_names if c.startswith("score_")]
    return ds["id"], np.stack([np.asarray(ds[c]) for c in cols], axis=1)


@contextlib.contextmanager
def prefect_server(home: Path):
    """A Prefect server on a free loopback port; PREFECT_API_URL points every process we
    start (Dask workers included) at it instead of each starting its own temporary API."""
    from label_pipeline.testing import free_port, local_prefect_server

    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    os.environ.update(PREFECT_HOME=str(home), PREFECT_API_URL=api)
    with local_prefect_server(dict(os.environ), port=port):
        yield api


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "shards.json"))
    args = parser.parse_args()

    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    try:
        pool = build_pool(args.rows, work / "pool")
        cases = []
        with prefect_server(work / "prefect-home"):
            for n in args.shards:
                case = run_case(pool, args.rows, n, work)
                cases.append(case)
                print(
                    f"{n} shard(s): {case['rows_per_s']:>7.1f} rows/s end to end, "
                    f"{case['rows_per_s_scoring_only']:>7.1f} rows/s once models are loaded "
                    f"({case['seconds_scoring']} s scoring, {case['seconds_with_cluster_start']} s "
                    f"with cluster start)  peak RSS per worker MB: {case['peak_rss_mb_per_worker']}",
                    flush=True,
                )
        ids0, ref = scores_of(cases[0]["shard_dirs"])
        for case in cases:
            ids, s = scores_of(case["shard_dirs"])
            case["max_abs_score_diff_vs_first"] = float(np.abs(s - ref).max()) if len(s) else 0.0
            case["same_row_order"] = ids == ids0
            del case["shard_dirs"]
        base = cases[0]["rows_per_s"]
        base_scoring = cases[0]["rows_per_s_scoring_only"]
        for case in cases:
            case["speedup_vs_first"] = round(case["rows_per_s"] / base, 2)
            case["scoring_speedup_vs_first"] = round(
                case["rows_per_s_scoring_only"] / base_scoring, 2
            )
        result = {
            "benchmark": "zero_shot embedding scoring (all-MiniLM-L6-v2) in shards, Dask runner",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "cases": cases,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        for case in cases:
            print(
                f"{case['n_shards']} shard(s): speed-up x{case['speedup_vs_first']} end to end, "
                f"x{case['scoring_speedup_vs_first']} scoring only, "
                f"max |score diff| vs {cases[0]['n_shards']} shard(s) "
                f"{case['max_abs_score_diff_vs_first']:.2e}, same order {case['same_row_order']}"
            )
        print(f"wrote {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
