"""Calibration and expected precision of the pipeline's labels, measured on held-out labels.

Two datasets, each run through the pipeline's stages (the plain ``run_*`` functions) in a
temporary stage store:

- ``default``: the embedded default data (data/goemotions-ekman-sample.csv, multi-label) with
  the default config: ingest, clean, split, adapt, zero_shot, train (naive_bayes, tfidf_nb,
  embed_lr, knn, finetune on the adapted encoder), evaluate, label;
- ``emotion``: ../shared/datasets/emotion (single-label, 6 labels) with the few-shot protocol
  of bench_finetune.py: 64 rows per label from train.csv (seed 0) for train, 64 per label from
  dev.csv for valid, the full test.csv (2,000 rows) for test, 4,000 other train.csv rows
  (labels dropped) as the unlabeled pool, ``train.label_shift: pool`` and
  ``zero_shot.label_shift: pool`` (valid is balanced, the pool is not); methods: the default
  set without ``finetune`` (naive_bayes, tfidf_nb, embed_lr, knn; ``--emotion-methods`` to
  change), base encoder.

For each: (a) the final model's (evaluate's ``best.json``) test ECE (15 equal-width bins),
adaptive ECE (15 equal-mass bins), Brier and log loss before and after calibration;
(b) expected precision: the zero_shot and label stages are run on a copy of the split whose
unlabeled pool is the test split with its labels hidden; the precision each stage states for
its labels (the zero-shot rule's pseudo-labels, the final model's labels of the pool) is
compared with the precision measured on the hidden labels.

    .venv/bin/python bench/bench_calibration.py                # both
    .venv/bin/python bench/bench_calibration.py --datasets default
    .venv/bin/python bench/bench_calibration.py --zero-shot-split-seeds 0 1 2 3 4 5 6 7 8 9

The last runs only the default data's zero-shot stage, once per draw of the split (no
training, about 30 s per seed): how far the precision it states for its pseudo-labels is from
the one measured, over ten validation / test draws instead of one.

Prints a table and writes ``bench/results/bench_calibration.json``. Goals: test ECE <= 0.05
for the final model; stated expected precision within 5 points of the measured one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _emotion import EMOTION, EMOTION_LABELS, read_emotion, sample_per_label  # noqa: E402
from harness import ROOT, setup_project, write_results  # noqa: E402

setup_project()

ECE_GOAL = 0.05
PRECISION_GOAL = 0.05


def _split_ref(directory: Path, name: str):
    from label_pipeline.store import StageRef

    return StageRef(stage="split", fingerprint=f"bench-{name}", path=str(directory))


def test_as_pool(split_dir: Path, out: Path, name: str):
    """A copy of a split directory whose unlabeled pool is the test split, labels hidden."""
    import datasets

    from label_pipeline.data import load_splits

    dd = load_splits(split_dir)
    test = dd["test"]
    pool = test.map(lambda r: {"labels": [], "split": "unlabeled"}, features=test.features)
    parts = {k: dd[k] for k in ("train", "valid", "test")}
    parts["unlabeled"] = pool
    out.mkdir(parents=True, exist_ok=True)
    datasets.DatasetDict(parts).save_to_disk(str(out / "splits"))
    for f in ("labels.json", "slices.json"):
        shutil.copyfile(split_dir / f, out / f)
    return _split_ref(out, name)


def measured_precision(
    ids: list[str], predicted: list[list[str]], gold: dict[str, list[str]], labels: list[str]
) -> dict[str, Any]:
    """Precision of the predicted labels against the hidden gold ones, overall and per label."""
    right = np.zeros(len(labels))
    assigned = np.zeros(len(labels))
    for i, pred in zip(ids, predicted, strict=True):
        for name in pred:
            j = labels.index(name)
            assigned[j] += 1
            right[j] += name in gold[i]
    per = {
        name: (float(right[j] / assigned[j]) if assigned[j] else None)
        for j, name in enumerate(labels)
    }
    total = assigned.sum()
    return {
        "overall": float(right.sum() / total) if total else None,
        "assigned": int(total),
        "per_label": per,
    }


def compare(stated: dict[str, Any], measured: dict[str, Any]) -> dict[str, Any]:
    o = stated["overall"]
    out = {
        "assigned": o["assigned"],
        "stated": o["expected_precision"],
        "interval": o["interval"],
        "valid_precision": o["valid_precision"],
        "measured": measured["overall"],
        "per_label": {
            r["label"]: {
                "assigned": r["assigned"],
                "stated": r["expected_precision"],
                "interval": r["interval"],
                "measured": measured["per_label"][r["label"]],
            }
            for r in stated["per_label"]
        },
    }
    if out["stated"] is not None and out["measured"] is not None:
        out["gap_points"] = round(100 * (out["stated"] - out["measured"]), 2)
        lo, hi = out["interval"]
        out["measured_in_interval"] = bool(lo <= out["measured"] <= hi)
        out["goal_met"] = bool(abs(out["stated"] - out["measured"]) <= PRECISION_GOAL)
    return out


def hidden_gold(split_dir: Path) -> dict[str, list[str]]:
    """The test split's labels by row id: the labels hidden from the test-as-pool copy."""
    from label_pipeline.data import load_splits

    test = load_splits(split_dir)["test"]
    return {str(i): list(x) for i, x in zip(test["id"], test["labels"], strict=True)}


def stated_vs_measured(
    stage_dir: Path, written: str, column: str, gold: dict[str, list[str]], labels: list[str]
) -> dict[str, Any]:
    """:func:`compare` of what a stage states in its ``expected_precision.json`` with the
    precision of the labels it wrote (dataset ``written``, column ``column``) on the hidden
    gold labels."""
    import datasets

    ds = datasets.load_from_disk(str(stage_dir / written))
    measured = measured_precision(
        [str(i) for i in ds["id"]], [list(x) for x in ds[column]], gold, labels
    )
    return compare(json.loads((stage_dir / "expected_precision.json").read_text()), measured)


def default_split(store: Any, seed: int = 0) -> Any:
    """ingest → clean → split of the embedded default data with the default config (the
    split drawn with ``seed``)."""
    from flows.config import PipelineConfig
    from tasks.clean import run_clean
    from tasks.ingest import run_ingest
    from tasks.split import run_split

    cfg = PipelineConfig()
    split_cfg = cfg.split.model_copy(update={"seed": seed})
    return run_split(store, split_cfg, run_clean(store, cfg.clean, run_ingest(store, cfg.ingest)))


def run_dataset(
    name: str, store_root: Path, split_ref, train_cfg, zs_cfg, adapt_cfg=None
) -> dict[str, Any]:
    """train → evaluate on the split; zero_shot and label on its test-as-pool copy."""
    from label_pipeline.data import load_splits, read_label_info
    from label_pipeline.store import StageStore
    from tasks.adapt import run_adapt
    from tasks.evaluate import EvaluateConfig, run_evaluate
    from tasks.label import LabelConfig, run_label
    from tasks.zero_shot import run_zero_shot

    store = StageStore(store_root)
    labels, _ = read_label_info(split_ref.dir)
    timings: dict[str, float] = {}

    def timed(stage: str, fn, *args, **kwargs):
        t0 = time.time()
        ref = fn(*args, **kwargs)
        timings[stage] = round(time.time() - t0, 1)
        print(f"  {name}: {stage} done in {timings[stage]}s", flush=True)
        return ref

    adapted = timed("adapt", run_adapt, store, adapt_cfg, split_ref) if adapt_cfg else None
    from tasks.train import run_train

    trained = timed("train", run_train, store, train_cfg, split_ref, adapted=adapted)
    pool_ref = test_as_pool(split_ref.dir, store_root / "test-as-pool", f"{name}-test-as-pool")
    zs = timed("zero_shot", run_zero_shot, store, zs_cfg, pool_ref)
    evaluated = timed("evaluate", run_evaluate, store, EvaluateConfig(), split_ref, trained, zs)
    labelled = timed("label", run_label, store, LabelConfig(), pool_ref, trained, evaluated)

    best = json.loads((evaluated.dir / "best.json").read_text())
    metrics = json.loads((evaluated.dir / "metrics.json").read_text())
    gold = hidden_gold(split_ref.dir)
    lab_stated = json.loads((labelled.dir / "expected_precision.json").read_text())
    runs = [
        {
            "method": r["method"],
            "slice": r["slice"],
            "calibration": r["calibration"]["describe"],
            "test_before": r["calibration"]["test"]["before"],
            "test_after": r["calibration"]["test"]["after"],
            "test_micro_f1": r["test"]["micro_f1"],
        }
        for r in metrics["runs"]
    ]
    final = best["calibration"]
    return {
        "dataset": name,
        "rows": {s: len(d) for s, d in load_splits(split_ref.dir).items()},
        "final_model": {
            **final,
            "method": best["method"],
            "slice": best["slice"],
            "calibrator": final["method"],
        },
        "ece_goal_met": bool(final["test_after"]["ece"] <= ECE_GOAL),
        "runs": runs,
        "zero_shot": {
            "calibration": json.loads((zs.dir / "calibration.json").read_text())["describe"],
            **stated_vs_measured(zs.dir, "unlabeled", "labels", gold, labels),
        },
        "label": {
            "calibration": lab_stated["calibration"],
            **stated_vs_measured(labelled.dir, "labelled", "predicted_labels", gold, labels),
        },
        "seconds": timings,
    }


def default_dataset(store_root: Path, args) -> dict[str, Any]:
    from flows.config import PipelineConfig
    from label_pipeline.store import StageStore

    cfg = PipelineConfig()
    split = default_split(StageStore(store_root))
    adapt = cfg.adapt if cfg.adapt.enabled and not args.no_adapt else None
    train = cfg.train if adapt else cfg.train.model_copy(update={"encoder": "base"})
    return run_dataset("default", store_root, split, train, cfg.zero_shot, adapt)


def emotion_split(out: Path, n: int, seed: int, pool_rows: int):
    """The bench_finetune emotion protocol as a split-stage directory."""
    import datasets
    import pandas as pd

    from label_pipeline.data import CANONICAL_FEATURES, write_label_info

    train_all, dev, test = read_emotion()
    train = sample_per_label(train_all, n, seed, keep_index=True)
    valid = sample_per_label(dev, max(n, 8), seed, keep_index=True)
    rest = train_all.drop(index=train["index"])
    pool = rest.sample(n=min(pool_rows, len(rest)), random_state=seed + 1000).reset_index()

    def rows(df: pd.DataFrame, split: str, labelled: bool) -> datasets.Dataset:
        idx = df["index"] if "index" in df else df.index
        return datasets.Dataset.from_dict(
            {
                "id": [f"{split}-{i}" for i in idx],
                "text": [str(t) for t in df["text"]],
                "labels": [[EMOTION_LABELS[y]] if labelled else [] for y in df["labels"]],
                "split": [split] * len(df),
            },
            features=CANONICAL_FEATURES,
        )

    dd = {
        "train": rows(train, "train", True),
        "valid": rows(valid, "valid", True),
        "test": rows(test.reset_index(), "test", True),
        "unlabeled": rows(pool, "unlabeled", False),
    }
    feats = CANONICAL_FEATURES.copy()
    feats["min_slice"] = datasets.Value("string")
    dd["train"] = dd["train"].map(lambda r: {"min_slice": "all"}, features=feats)
    out.mkdir(parents=True, exist_ok=True)
    datasets.DatasetDict(dd).save_to_disk(str(out / "splits"))
    (out / "slices.json").write_text(json.dumps({"all": list(dd["train"]["id"])}))
    write_label_info(out, EMOTION_LABELS, False)
    return _split_ref(out, f"emotion-{n}-{seed}")


def emotion_dataset(store_root: Path, args) -> dict[str, Any] | None:
    from tasks.train import TrainConfig
    from tasks.zero_shot import ZeroShotConfig

    if not (EMOTION / "train.csv").is_file():
        print(f"skipping emotion: {EMOTION} not found (set LABEL_PIPELINE_DATASETS)")
        return None
    split = emotion_split(store_root / "emotion-split", args.n, args.seed, args.pool)
    train = TrainConfig(
        methods=args.emotion_methods, encoder="base", label_shift="pool", seed=args.seed
    )
    zs = ZeroShotConfig(label_shift="pool")
    out = run_dataset("emotion", store_root, split, train, zs)
    out["protocol"] = {
        "n_per_label": args.n,
        "seed": args.seed,
        "pool_rows": args.pool,
        "methods": args.emotion_methods,
        "label_shift": "pool (train and zero_shot)",
    }
    return out


def zero_shot_split_seeds(store_root: Path, seeds: list[int]) -> dict[str, Any]:
    """The default data's zero-shot stage alone over several draws of the split: for each
    split seed, ingest → clean → split (that seed) → zero_shot on the test-as-pool copy; the
    precision it states for its pseudo-labels (and what per-label calibration alone would
    state) against the precision measured on the hidden labels."""
    from flows.config import PipelineConfig
    from label_pipeline.data import read_label_info
    from label_pipeline.store import StageStore
    from tasks.zero_shot import run_zero_shot

    zs_cfg = PipelineConfig().zero_shot
    rows = []
    for seed in seeds:
        t0 = time.time()
        store = StageStore(store_root / f"split-seed-{seed}")
        split = default_split(store, seed)
        labels, _ = read_label_info(split.dir)
        pool_ref = test_as_pool(split.dir, store.root / "test-as-pool", f"default-seed-{seed}")
        zs = run_zero_shot(store, zs_cfg, pool_ref)
        c = stated_vs_measured(zs.dir, "unlabeled", "labels", hidden_gold(split.dir), labels)
        calibration = json.loads((zs.dir / "calibration.json").read_text())
        selection = json.loads((zs.dir / "selection.json").read_text())
        plain = (calibration.get("picked") or {}).get(
            "expected_precision_per_label_calibration_only"
        )
        rows.append(
            {
                "split_seed": seed,
                "rule": f"{selection['rule']} {selection['value']:g}",
                "calibration": calibration["describe"],
                "picked": (calibration.get("picked") or {}).get("describe"),
                "per_label_only": plain,
                "per_label_only_gap_points": None
                if plain is None
                else round(100 * (plain - c["measured"]), 2),
                **{k: v for k, v in c.items() if k != "per_label"},
                "seconds": round(time.time() - t0, 1),
            }
        )
        r = rows[-1]
        print(
            f"  split seed {seed}: {r['rule']}, stated {_f(r['stated'], True)} % "
            f"(per-label calibration only {_f(plain, True)} %), measured "
            f"{_f(r['measured'], True)} %, gap {r.get('gap_points')} points",
            flush=True,
        )
    gaps = [abs(r["gap_points"]) for r in rows if r.get("gap_points") is not None]
    plain_gaps = [
        abs(r["per_label_only_gap_points"])
        for r in rows
        if r.get("per_label_only_gap_points") is not None
    ]
    return {
        "seeds": rows,
        "mean_abs_gap_points": round(float(np.mean(gaps)), 2) if gaps else None,
        "max_abs_gap_points": round(float(np.max(gaps)), 2) if gaps else None,
        "within_goal": sum(g <= 100 * PRECISION_GOAL for g in gaps),
        "in_interval": sum(bool(r.get("measured_in_interval")) for r in rows),
        "per_label_only_mean_abs_gap_points": round(float(np.mean(plain_gaps)), 2)
        if plain_gaps
        else None,
        "per_label_only_within_goal": sum(g <= 100 * PRECISION_GOAL for g in plain_gaps),
    }


def print_split_seeds(res: dict[str, Any]) -> None:
    n = len(res["seeds"])
    print(
        f"\nzero-shot pseudo-labels of the embedded default over {n} split seeds: "
        f"|stated - measured| mean {res['mean_abs_gap_points']} points, max "
        f"{res['max_abs_gap_points']}; within 5 points {res['within_goal']}/{n}; measured "
        f"inside the stated interval {res['in_interval']}/{n}. Per-label calibration alone: "
        f"mean {res['per_label_only_mean_abs_gap_points']} points, within 5 points "
        f"{res['per_label_only_within_goal']}/{n}"
    )


def _f(v: Any, pct: bool = False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def print_table(results: list[dict[str, Any]]) -> None:
    print("\nCalibration of the final model on test (before → after)")
    print(
        f"{'dataset':<9} {'final model':<14} {'calibrator':<30} {'ECE':<15} {'adaptive ECE':<15} "
        f"{'Brier':<15} {'log loss':<15} goal ECE<=0.05"
    )
    for r in results:
        f = r["final_model"]
        b, a = f["test_before"], f["test_after"]
        cells = [f"{_f(b[k])} → {_f(a[k])}" for k in ("ece", "adaptive_ece", "brier", "log_loss")]
        print(
            f"{r['dataset']:<9} {f['method']:<14} {f['describe']:<30} "
            + " ".join(f"{c:<15}" for c in cells)
            + f" {'met' if r['ece_goal_met'] else 'NOT met'}"
        )
    print("\nExpected precision of labels written on the test split as pool (labels hidden)")
    print(
        f"{'dataset':<9} {'labels of':<10} {'assigned':>8} {'stated %':>9} {'interval %':>12} "
        f"{'measured %':>11} {'gap pts':>8} {'valid %':>8}  goal |gap|<=5"
    )
    for r in results:
        for stage in ("zero_shot", "label"):
            c = r[stage]
            iv = c["interval"]
            print(
                f"{r['dataset']:<9} {stage:<10} {c['assigned']:>8} {_f(c['stated'], True):>9} "
                f"{(f'{100 * iv[0]:.1f}–{100 * iv[1]:.1f}' if iv else '–'):>12} "
                f"{_f(c['measured'], True):>11} {c.get('gap_points', '–')!s:>8} "
                f"{_f(c['valid_precision'], True):>8}  "
                f"{'met' if c.get('goal_met') else 'NOT met'}"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["default", "emotion"])
    parser.add_argument("--n", type=int, default=64, help="emotion: labelled rows per label")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=4000, help="emotion: unlabeled pool rows")
    parser.add_argument(
        "--emotion-methods", nargs="+", default=["naive_bayes", "tfidf_nb", "embed_lr", "knn"]
    )
    parser.add_argument(
        "--no-adapt", action="store_true", help="default: skip adapt, train on the base encoder"
    )
    parser.add_argument("--keep-store", default="", help="keep the stage store in this directory")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    parser.add_argument(
        "--zero-shot-split-seeds",
        nargs="+",
        type=int,
        default=[],
        help="only the default data's zero-shot stage, once per split seed (no training)",
    )
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    results = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="lp-bench-cal-") as tmp:
        root = Path(args.keep_store) if args.keep_store else Path(tmp)
        if args.zero_shot_split_seeds:
            res = zero_shot_split_seeds(root / "zero-shot-seeds", args.zero_shot_split_seeds)
            print_split_seeds(res)
            res["seconds"] = round(time.time() - started, 1)
            write_results("bench_calibration_zero_shot", res, args.tag)
            return
        for name in args.datasets:
            print(f"== {name}", flush=True)
            fn = {"default": default_dataset, "emotion": emotion_dataset}[name]
            r = fn(root / name, args)
            if r is not None:
                results.append(r)
    print_table(results)
    seconds = round(time.time() - started, 1)
    write_results("bench_calibration", {"results": results, "seconds": seconds}, args.tag)


if __name__ == "__main__":
    main()
