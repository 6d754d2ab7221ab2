"""The model label-pipeline picks by itself, with the default config, on long technical
texts (GitHub issues) and on the embedded default data, beside every baseline of the same run.

Datasets:

- ``nlbse``: ../shared/datasets/nlbse24-train/issues_train.csv (NLBSE'24 issue report
  classification, single-label bug / feature / question, 5 repositories × 3 labels × 100
  rows). A fixed test of 300 rows (20 per label × repository) and valid of 150 (10 per
  label × repository) are drawn once (seed 0) and never trained on; the other 1,050 rows are
  train. Training slices: K = 8, 16, 32, 64 rows per label (nested, drawn per seed) and all
  1,050. Text = title + body (ingest ``text_columns: [title, body]``). Every row is
  labelled, so there is no unlabeled pool: the adapt stage (which needs one) is off. With
  ``--nlbse-pool`` the 858 training rows outside the K=64 slice are written without their
  labels as the unlabeled pool (as a user with a pile of unlabelled issues has): the adapt
  stage runs on it, the methods that self-train use it, and the largest slice is K=64.

The augment stage is off for both: no default method reads its rows (``train.use_augmented``
is off), so it changes no figure, but it back-translates every training row.
- ``goemotions``: the embedded default data (data/goemotions-ekman-sample.csv,
  multi-label) with the default split and every nested slice.
- ``nlupp``: NLU++ banking (../shared/datasets/nlupp, multi-label intents, 48 labels, short
  utterances; the 88 rows with no intent are left out, since an empty label cell means
  "unlabelled"). Fixed folds: 10-19 are test, 8-9 valid, 0-7 train. Training slices of 8,
  32 and 128 rows (nested, drawn per seed); the other training rows are the unlabeled pool
  (labels hidden), as a user with a pile of unlabelled utterances has.

Each dataset runs the ``label-bench`` flow (every stage of the pipeline, every slice) with
``PipelineConfig()`` defaults: only the input description (file, columns, the fixed split
and slices) is set, nothing is tuned per dataset. The final model at each slice is the
evaluate stage's choice on valid (``chosen_per_slice``, never below the best baseline).
``--extra-methods`` trains more methods in the same run for comparison (e.g. ``setfit``);
the chosen row is then recomputed over the default methods only. The hybrid method is also
measured against each of its parts alone (word n-grams, character n-grams, sentence
embeddings, and all three without the zero-shot block) on the same splits.

Prints a markdown table per dataset (test micro/macro-F1; accuracy/macro-F1 for NLBSE) and
writes ``bench/results/bench_issues.json``.

Usage: ``python bench/bench_issues.py [--datasets nlbse goemotions] [--seeds 0]
[--extra-methods setfit] [--no-ablation] [--out FILE] [--keep DIR]``. ``--keep DIR`` keeps each
run's stage store under ``DIR/<dataset>-<seed>`` (to inspect the runs afterwards).
``--summarize FILE [FILE ...]`` runs nothing: it reads results files of earlier runs (one per
seed, say) and prints each method's and the chosen model's test score per slice as the mean
± standard deviation over the seeds, so that a difference can be set against the spread.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from harness import DATASETS, only_one, split_rows  # noqa: E402

sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# a busy 2-core machine starts Prefect's temporary server slowly; each run keeps its own
# Prefect database so that two benchmark processes do not share one SQLite file
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "600")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="bench-issues-prefect-"))

NLBSE = DATASETS / "nlbse24-train" / "issues_train.csv"
NLBSE_LABELS = ["bug", "feature", "question"]
NLBSE_K = (8, 16, 32, 64)
NLUPP = DATASETS / "nlupp" / "data" / "banking"
NLUPP_ROWS = (8, 32, 128)
RESULTS = ROOT / "bench" / "results" / "bench_issues.json"
#: the hybrid ablation: its parts alone and together (constructor arguments of each row);
#: the default hybrid (all four blocks and the zero-shot prior) is a row of the main run
ABLATION: dict[str, dict[str, Any]] = {
    "hybrid (word 1-2-grams only)": {"blocks": ["word"]},
    "hybrid (char_wb 2-5-grams only)": {"blocks": ["char"]},
    "hybrid (embeddings only)": {"blocks": ["embed"]},
    "hybrid (word + char + embeddings)": {"blocks": ["word", "char", "embed"]},
    "hybrid (all four blocks, no zero-shot prior)": {"prior_weights": [0]},
}


def nlbse_input(out_dir: Path, seed: int, pool: bool = False) -> tuple[Path, Path, dict[str, int]]:
    """Write the NLBSE rows with a fixed split column and the nested per-label slices.
    ``pool``: the training rows outside the largest slice are written without their label
    as the unlabeled pool (the largest slice is then the whole training split).

    Returns (csv path, slice JSON path, slice name -> K per label)."""
    csv.field_size_limit(1 << 30)
    rows = list(csv.DictReader(open(NLBSE, newline="", encoding="utf-8")))
    fixed = np.random.default_rng(0)  # test and valid never move with the seed
    strata: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(rows):
        strata.setdefault((r["label"], r["repo"]), []).append(i)
    split = ["train"] * len(rows)
    for key in sorted(strata):
        idx = fixed.permutation(strata[key])
        for i in idx[:20]:
            split[i] = "test"
        for i in idx[20:30]:
            split[i] = "valid"
    rng = np.random.default_rng(seed)
    by_label = {
        lab: list(
            rng.permutation(
                [i for i, r in enumerate(rows) if split[i] == "train" and r["label"] == lab]
            )
        )
        for lab in NLBSE_LABELS
    }
    slices = {
        str(k * len(NLBSE_LABELS)): [
            f"nlbse-{i}" for lab in NLBSE_LABELS for i in by_label[lab][:k]
        ]
        for k in NLBSE_K
    }
    label = [r["label"] for r in rows]
    if pool:
        kept = {int(x.split("-")[1]) for x in slices[str(max(NLBSE_K) * len(NLBSE_LABELS))]}
        for i in range(len(rows)):
            if split[i] == "train" and i not in kept:
                split[i], label[i] = "unlabeled", ""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "nlbse.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "repo", "title", "body", "labels", "split"])
        for i, r in enumerate(rows):
            w.writerow([f"nlbse-{i}", r["repo"], r["title"], r["body"], label[i], split[i]])
    slice_path = out_dir / "slices.json"
    slice_path.write_text(json.dumps(slices))
    return path, slice_path, {str(k * len(NLBSE_LABELS)): k for k in NLBSE_K}


def nlupp_input(out_dir: Path, seed: int) -> tuple[Path, Path]:
    """Write NLU++ banking with a fixed fold split (test 10-19, valid 8-9, train 0-7), the
    nested training slices of :data:`NLUPP_ROWS` rows drawn with ``seed`` and the training
    rows outside the largest slice as the unlabeled pool. Returns (csv path, slice JSON)."""
    rows = []
    for fold in range(20):
        for r in json.loads((NLUPP / f"fold{fold}.json").read_text(encoding="utf-8")):
            if r.get("intents"):
                split = "test" if fold >= 10 else "valid" if fold >= 8 else "train"
                rows.append((f"nlupp-{fold}-{len(rows)}", r["text"], r["intents"], split))
    train = [i for i, r in enumerate(rows) if r[3] == "train"]
    order = list(np.random.default_rng(seed).permutation(train))
    slices = {str(n): [rows[i][0] for i in order[:n]] for n in NLUPP_ROWS}
    labelled = set(order[: max(NLUPP_ROWS)])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "nlupp.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "labels", "split"])
        for i, (rid, text, intents, split) in enumerate(rows):
            if split == "train" and i not in labelled:
                w.writerow([rid, text, "", "unlabeled"])
            else:
                w.writerow([rid, text, ";".join(intents), split])
    slice_path = out_dir / "slices.json"
    slice_path.write_text(json.dumps(slices))
    return path, slice_path


def csv_input(ingest: Any, path: Path, slice_path: Path, text_columns: list[str]) -> Any:
    """The ingest settings of a benchmark CSV written here: ``id``, the text columns,
    ``labels``, a fixed ``split`` column and the slice file."""
    return ingest.model_copy(
        update={
            "path": str(path),
            "format": "csv",
            "text_columns": text_columns,
            "id_column": "id",
            "split_column": "split",
            "slice_file": str(slice_path),
        }
    )


def dataset_config(
    name: str,
    store: Path,
    work: Path,
    seed: int,
    extra: list[str],
    pool: bool = False,
    encoder: str = "auto",
):
    """The pipeline config: defaults, plus the input description only (``pool``: NLBSE with
    an unlabeled pool, see :func:`nlbse_input`; ``encoder``: the top-level ``encoder``, whose
    default ``auto`` picks by device and budget)."""
    from flows.config import PipelineConfig

    cfg = PipelineConfig()
    update: dict[str, Any] = {
        "store": str(store),
        "reports_dir": str(work / "reports"),
        "encoder": encoder,
    }
    if name == "nlbse":
        path, slice_path, per_label = nlbse_input(work / "input", seed, pool)
        update["ingest"] = csv_input(cfg.ingest, path, slice_path, ["title", "body"])
        update["run_name"] = f"bench-issues-nlbse{'-pool' if pool else ''}-seed{seed}"
        if not pool:
            # every NLBSE row carries a label: there is no unlabeled pool to adapt the
            # encoder on, and the adapt stage says to switch it off in that case
            update["adapt"] = cfg.adapt.model_copy(update={"enabled": False})
    elif name == "nlupp":
        path, slice_path = nlupp_input(work / "input", seed)
        per_label = {}
        update["ingest"] = csv_input(cfg.ingest, path, slice_path, ["text"])
        update["run_name"] = f"bench-issues-nlupp-seed{seed}"
    else:
        per_label = {}
        update["run_name"] = f"bench-issues-goemotions-seed{seed}"
    # no default method trains on augmented rows (train.use_augmented is off), yet the
    # augment stage would back-translate every training row (hours on long issues): off,
    # which changes no figure
    update["augment"] = cfg.augment.model_copy(update={"enabled": False})
    if seed != 0:
        update["split"] = cfg.split.model_copy(update={"seed": seed})
        update["train"] = cfg.train.model_copy(update={"seed": seed})
    cfg = cfg.model_copy(update=update)
    if extra:
        train = cfg.train.model_copy(update={"methods": [*cfg.train.methods, *extra]})
        cfg = cfg.model_copy(update={"train": train})
    return cfg, per_label


def run_encoder_of(refs: dict[str, Any]) -> str | None:
    """The encoder the run's train stage started from: the adapt stage's base model when the
    train stage read the adapted encoder, else the train stage's own."""
    train = json.loads((Path(refs["train"]["path"]) / "manifest.json").read_text())
    adapt = refs.get("adapt")
    if (
        isinstance(adapt, dict)
        and adapt.get("path")
        and "adapted" in str(train.get("encoder_choice"))
    ):
        return json.loads((Path(adapt["path"]) / "manifest.json").read_text()).get("model")
    return train.get("encoder")


def stage_seconds(refs: dict[str, Any]) -> dict[str, float]:
    out = {}
    for stage, ref in refs.items():
        if isinstance(ref, dict) and ref.get("path"):
            man = Path(ref["path"]) / "manifest.json"
            if man.is_file():
                out[stage] = json.loads(man.read_text()).get("seconds")
    return out


def _stage_data(split_dir: Path, train_dir: Path) -> dict[str, Any]:
    """What a refit beside the train stage needs: the split stage's rows
    (:func:`harness.split_rows`) and the train stage's encoder."""
    encoder = json.loads((train_dir / "manifest.json").read_text()).get("encoder")
    return {**split_rows(split_dir), "encoder": encoder}


def _refit_scores(
    data: dict[str, Any],
    method: str,
    params: dict,
    ids: list[str],
    cfg: Any,
    pool: list[str] | None = None,
    calibration: str = "none",
) -> dict[str, Any]:
    """Fit ``method`` on the slice ``ids`` with the unlabeled ``pool`` and ``calibration``,
    decided on valid like the train stage; valid and test micro/macro-F1 and the seconds."""
    from label_pipeline.decision import apply_decision, tune_decision
    from label_pipeline.devices import choose_device
    from label_pipeline.methods import FitContext
    from label_pipeline.metrics import classification_metrics
    from tasks.train import fit_and_predict

    valid, test, labels, multi = data["valid"], data["test"], data["labels"], data["multi_label"]
    ctx = FitContext(
        device=choose_device(cfg.train.device),
        seed=cfg.train.seed,
        encoder=data["encoder"],
        unlabeled_texts=pool,
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        pv, pt, _ = fit_and_predict(
            method,
            dict(params),
            data["slice_rows"](ids),
            valid,
            test.texts,
            ctx,
            Path(tmp) / "m",
            calibration=calibration,
            calibration_min_rows=cfg.train.calibration_min_rows,
        )
        seconds = time.time() - t0
    dec = tune_decision(
        pv,
        valid.y,
        multi,
        cfg.train.threshold,
        cfg.train.min_valid_rows,
        min_label_positives=cfg.train.min_label_positives,
    )
    m = classification_metrics(test.y, pt, apply_decision(pt, dec), labels, multi)
    v = classification_metrics(valid.y, pv, apply_decision(pv, dec), labels, multi)
    return {
        "slice_size": len(ids),
        "micro_f1": m["micro_f1"],
        "macro_f1": m["macro_f1"],
        "accuracy": m.get("accuracy"),
        "valid_micro_f1": v["micro_f1"],
        "seconds": round(seconds, 2),
        "self_training": ctx.info.get("self_training"),
    }


def ablation(split_dir: Path, train_dir: Path, multi_label: bool, cfg: Any) -> list[dict]:
    """The hybrid's parts alone, fitted like the train stage on the same rows and slices."""
    data = _stage_data(split_dir, train_dir)
    out = []
    for name, params in ABLATION.items():
        for slice_name, ids in data["slices"].items():
            r = _refit_scores(data, "hybrid", params, ids, cfg)
            r.pop("self_training")
            r.pop("valid_micro_f1")
            out.append({"method": name, "slice": slice_name, **r})
    return out


def check_kept(kept: Path) -> list[dict]:
    """:func:`skipped_check` on a store kept with ``--keep`` (``KEEP/<dataset>-<seed>``), with
    the train stage's own settings from its manifest."""
    from types import SimpleNamespace

    from tasks.train import TrainConfig

    store = kept / "store"
    train_dir = only_one(store, "train/*/runs.json", "train stage").parent
    split_dir = only_one(store, "split/*/slices.json", "split stage").parent
    config = json.loads((train_dir / "manifest.json").read_text())["config"]
    cfg = SimpleNamespace(train=TrainConfig(**config))
    return skipped_check(split_dir, train_dir, cfg)


def skipped_check(split_dir: Path, train_dir: Path, cfg: Any) -> list[dict]:
    """Each run whose self-training the train stage skipped because it could not win
    (``self_training_skipped``), refitted with self-training forced on
    (``self_training_max_gain: None``): would it have reached the bar it was given?"""
    data = _stage_data(split_dir, train_dir)
    runs = json.loads((train_dir / "runs.json").read_text())
    out = []
    for run in runs:
        fit = json.loads((train_dir / run["dir"] / "fit.json").read_text())
        skipped = fit.get("info", {}).get("self_training_skipped", "")
        if not skipped.startswith("cannot win"):
            continue
        bar = fit["valid_bar"]  # the bar the train stage gave the run
        params = {**cfg.train.method_params.get(run["base_method"], {})}
        params["self_training_max_gain"] = None
        forced = _refit_scores(
            data,
            run["base_method"],
            params,
            data["slices"][run["slice"]],
            cfg,
            data["pool"],
            cfg.train.calibration,
        )
        out.append(
            {
                "method": run["method"],
                "slice": run["slice"],
                "bar": bar,
                "skipped": {k: run.get(k) for k in ("valid_micro_f1", "fit_seconds")},
                "forced": forced,
                "would_have_won": forced["valid_micro_f1"] >= bar,
            }
        )
        print(json.dumps(out[-1], default=str), flush=True)
    return out


def run_dataset(
    name: str,
    seed: int,
    extra: list[str],
    do_ablation: bool,
    keep: str | None = None,
    pool: bool = False,
    encoder: str = "auto",
) -> dict[str, Any]:
    from flows.label_bench import label_bench
    from label_pipeline.choice import chosen_per_slice

    tag = f"{name}-pool" if pool and name == "nlbse" else name
    if encoder != "auto":
        tag += "-" + encoder.split("/")[-1]
    kept = Path(keep) / f"{tag}-{seed}" if keep else None
    place = (
        nullcontext(kept) if kept else tempfile.TemporaryDirectory(prefix=f"bench-issues-{name}-")
    )
    with place as tmp:
        work = Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cfg, per_label = dataset_config(name, work / "store", work, seed, extra, pool, encoder)
        default_methods = list(type(cfg.train)().methods)
        t0 = time.time()
        refs = label_bench(config=cfg)
        wall = time.time() - t0
        ev_dir = Path(refs["evaluate"]["path"])
        metrics = json.loads((ev_dir / "metrics.json").read_text())
        runs = metrics["runs"]
        chosen = metrics["chosen_per_slice"]
        if extra:  # the default config's choice: extra methods left out
            from label_pipeline.data import label_matrix, load_splits

            valid = load_splits(Path(refs["split"]["path"]))["valid"]
            n_valid = len(valid)
            y_valid = label_matrix([list(x) for x in valid["labels"]], metrics["labels"])
            own = [r for r in runs if r["method"] in default_methods]
            # the train stage's average may hold an extra method: left out with them
            chosen = chosen_per_slice(
                own,
                cfg.evaluate.select_by,
                cfg.evaluate.select_tolerance,
                n_valid,
                cfg.evaluate.prefer_average,
                y_valid,
                cfg.evaluate.single_over_average_p,
            )
        rows = [
            {
                "method": r["method"],
                "slice": r["slice"],
                "slice_size": r["slice_size"],
                "micro_f1": r["test"]["micro_f1"],
                "macro_f1": r["test"]["macro_f1"],
                "accuracy": r["test"].get("accuracy"),
                "valid_micro_f1": r["valid"]["micro_f1"],
                "valid_macro_f1": r["valid"]["macro_f1"],
            }
            for r in runs
        ]
        train_runs = json.loads((Path(refs["train"]["path"]) / "runs.json").read_text())
        fit_seconds = {f"{r['method']}/{r['slice']}": r.get("fit_seconds") for r in train_runs}
        abl: list[dict] = []
        abl_seconds = None
        if do_ablation:
            t1 = time.time()
            abl = ablation(
                Path(refs["split"]["path"]),
                Path(refs["train"]["path"]),
                metrics["multi_label"],
                cfg,
            )
            abl_seconds = round(time.time() - t1, 1)
        return {
            "dataset": tag,
            "seed": seed,
            "multi_label": metrics["multi_label"],
            "labels": metrics["labels"],
            "per_label_k": per_label,
            "methods": sorted({r["method"] for r in runs}, key=[r["method"] for r in runs].index),
            "default_methods": default_methods,
            "runs": rows,
            "chosen": chosen,
            "ablation": abl,
            "wall_seconds": round(wall, 1),
            "ablation_seconds": abl_seconds,
            "stage_seconds": stage_seconds(refs),
            "fit_seconds": fit_seconds,
            "threshold_rule": cfg.train.threshold,
            "encoder": run_encoder_of(refs),
        }


def _cell(r: dict[str, Any] | None, multi_label: bool) -> str:
    if r is None:
        return "–"
    first = r["micro_f1"] if multi_label else r["accuracy"]
    return f"{first:.3f}/{r['macro_f1']:.3f}"


def _slice_columns(
    runs: list[dict[str, Any]], per_label_k: dict[str, int]
) -> tuple[list[tuple[int, str]], list[str]]:
    """The slices of ``runs`` as (size, name), smallest first, and their column headings
    (``K=<per label> (<rows>)`` where the slice has a per-label K)."""
    slices = sorted({(r["slice_size"], r["slice"]) for r in runs})
    return slices, [
        f"K={per_label_k[s]} ({n})" if s in per_label_k else f"{s} ({n})" for n, s in slices
    ]


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per method (+ the chosen model and its method per slice)."""
    ml = result["multi_label"]
    slices, head = _slice_columns(result["runs"], result["per_label_k"])
    what = "test micro / macro-F1" if ml else "test accuracy / macro-F1"
    lines = [f"| {what} | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for m in result["methods"]:
        by = {r["slice"]: r for r in result["runs"] if r["method"] == m}
        lines.append(f"| {m} | " + " | ".join(_cell(by.get(s), ml) for _, s in slices) + " |")
    for m in ABLATION:
        by = {r["slice"]: r for r in result["ablation"] if r["method"] == m}
        if by:
            lines.append(f"| {m} | " + " | ".join(_cell(by.get(s), ml) for _, s in slices) + " |")
    ch = {c["slice"]: c for c in result["chosen"]}
    lines.append(
        "| **chosen by label-pipeline** | "
        + " | ".join(f"**{_cell(ch.get(s), ml)}**" for _, s in slices)
        + " |"
    )

    def interval(c: dict[str, Any] | None) -> str:
        iv = (c or {}).get("interval_95") or {}
        if not iv:
            return "–"
        return "/".join(f"{iv[m][0]:.2f}–{iv[m][1]:.2f}" for m in ("micro_f1", "macro_f1"))

    lines.append(
        "| chosen: 95 % bootstrap interval over the test rows | "
        + " | ".join(interval(ch.get(s)) for _, s in slices)
        + " |"
    )
    lines.append(
        "| chosen method | "
        + " | ".join(ch[s]["method"] if s in ch else "–" for _, s in slices)
        + " |"
    )
    return "\n".join(lines)


def across_seeds(results: list[dict[str, Any]]) -> str:
    """Markdown per dataset: each method's and the chosen model's test score (accuracy for
    single-label, micro-F1 for multi-label) as mean ± standard deviation over the seeds of
    ``results`` (runs of one dataset with different seeds, e.g. from several result files)."""
    out = []
    for tag in dict.fromkeys(r["dataset"] for r in results):
        group = [r for r in results if r["dataset"] == tag]
        ml = group[0]["multi_label"]
        key = "micro_f1" if ml else "accuracy"
        all_runs = [r for g in group for r in g["runs"]]
        slices, head = _slice_columns(all_runs, group[0]["per_label_k"])
        seeds = ", ".join(str(g["seed"]) for g in group)
        out += [
            f"### {tag}: test {key}, mean ± sd over seeds {seeds}",
            "",
            "| method | " + " | ".join(head) + " |",
            "|---" * (len(head) + 1) + "|",
        ]
        rows = {m: [g["runs"] for g in group] for m in group[0]["methods"]}

        def cell(
            per_seed: list[list[dict[str, Any]]], method: str | None, s: str, key: str = key
        ) -> str:
            vals = [
                r[key]
                for runs in per_seed
                for r in runs
                if r["slice"] == s and (method is None or r["method"] == method)
            ]
            if not vals:
                return "–"
            sd = f" ± {np.std(vals, ddof=1):.3f}" if len(vals) > 1 else ""
            return f"{np.mean(vals):.3f}{sd} (n={len(vals)})"

        for m, per_seed in rows.items():
            out.append(f"| {m} | " + " | ".join(cell(per_seed, m, s) for _, s in slices) + " |")
        chosen = [g["chosen"] for g in group]
        out.append("| **chosen** | " + " | ".join(cell(chosen, None, s) for _, s in slices) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["nlbse", "goemotions"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--extra-methods", nargs="*", default=[])
    parser.add_argument("--no-ablation", action="store_true")
    parser.add_argument("--out", default=str(RESULTS), help="JSON results file")
    parser.add_argument(
        "--keep",
        default=None,
        help="keep each run's stage store and reports under KEEP/<dataset>-<seed> "
        "(default: a temporary directory, deleted)",
    )
    parser.add_argument(
        "--nlbse-pool",
        action="store_true",
        help="nlbse: the training rows outside the K=64 slice become the unlabeled pool "
        "(labels hidden), so the adapt stage and the self-training methods run on it",
    )
    parser.add_argument(
        "--encoder",
        default="auto",
        help="the pipeline's encoder (default auto: chosen by device and budget); e.g. "
        "sentence-transformers/all-MiniLM-L6-v2 or sentence-transformers/all-mpnet-base-v2",
    )
    parser.add_argument(
        "--check-skipped",
        nargs="+",
        default=None,
        metavar="KEPT",
        help="runs no pipeline: in stores kept with --keep (KEEP/<dataset>-<seed>), refit each "
        "run whose self-training was skipped as unable to win, with self-training forced on, "
        "and say whether it would have reached its bar",
    )
    parser.add_argument(
        "--summarize",
        nargs="+",
        default=None,
        metavar="JSON",
        help="print the mean and spread over seeds of results files written by earlier runs "
        "(no pipeline runs)",
    )
    args = parser.parse_args(argv)
    if args.check_skipped:
        checked = {k: check_kept(Path(k)) for k in args.check_skipped}
        out = Path(args.out).with_name("bench_issues_skipped.json")
        out.write_text(json.dumps(checked, indent=1, default=str))
        print(f"wrote {out}")
        return
    if args.summarize:
        found = [r for f in args.summarize for r in json.loads(Path(f).read_text())["results"]]
        print(across_seeds(found))
        return
    results = []
    for name in args.datasets:
        if name == "nlbse" and not NLBSE.is_file():
            print(f"skipping nlbse: {NLBSE} not found (set LABEL_PIPELINE_DATASETS)")
            continue
        if name == "nlupp" and not NLUPP.is_dir():
            print(f"skipping nlupp: {NLUPP} not found (set LABEL_PIPELINE_DATASETS)")
            continue
        for seed in args.seeds:
            res = run_dataset(
                name,
                seed,
                args.extra_methods,
                not args.no_ablation,
                args.keep,
                args.nlbse_pool,
                args.encoder,
            )
            results.append(res)
            print(f"\n## {name}, seed {seed} ({res['wall_seconds']:.0f} s pipeline", end="")
            if res["ablation_seconds"] is not None:
                print(f", {res['ablation_seconds']:.0f} s ablation", end="")
            print(")\n")
            print(table(res))
            print("\nstage seconds:", json.dumps(res["stage_seconds"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results}, indent=1))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
