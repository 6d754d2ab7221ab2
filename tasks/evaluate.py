"""The `evaluate` stage: score every trained run on the test split (and valid), draw the
learning curves and name the final model.

Output directory:

- ``metrics.json``: ``{"labels", "multi_label", "runs": [{method, slice, slice_size,
  run_dir, fallback, test: {...}, valid: {...}}], "zero_shot": {...} | null}``; each
  ``test``/``valid`` entry is ``label_pipeline.metrics.classification_metrics`` (micro/macro-F1,
  per-label precision/recall/F1, log loss; accuracy and confusion matrix for single-label;
  ROC-AUC and curve for two-label single-label tasks) plus ``interval_95``, the 95 % bootstrap
  interval over the split's rows of micro-F1 (accuracy for single-label) and macro-F1;
- ``learning_curves.json``: per method, slice sizes and test micro/macro-F1 (+ the zero-shot
  line); ``figures/learning_curve_micro.png``, ``figures/learning_curve_macro.png``;
- ``best.json``: ``{"method", "slice", "run_dir", "metric", "valid", "test", "reason",
  "candidates", "best_baseline"}``, the final model chosen on valid at the largest slice
  (see :func:`choose_final`; the label stage uses it); ``chosen_per_slice`` in
  ``metrics.json`` and ``learning_curves.json``: the same choice made at every slice (the
  ``chosen`` curve of the figures);
- ``unlearnable`` in ``metrics.json``: per slice, the labels without a training example;
- ``label_more`` in ``metrics.json`` (and the summary): did more labelled rows help? The
  chosen model's test score from one slice to the next with the 95 % interval of the
  difference over paired resamples of the test rows (see :func:`label_more`);
- calibration: each run's ``calibration`` entry in ``metrics.json`` (the calibrator the train
  stage chose, and ``label_pipeline.calibration.calibration_scores`` — ECE with 15 equal-width
  bins, adaptive ECE, Brier, log loss — on valid (cross-fitted) and test, ``before`` and
  ``after`` calibration), ``calibration.json`` (the same per run, plus the final model's),
  ``figures/reliability.png`` (the final model's reliability diagram on test, before and after);
- ``summary.md``, ``sample.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from label_pipeline.artifacts import md_table
from label_pipeline.artifacts import num as _f
from label_pipeline.choice import (
    SavedRun,
    calibration_table,
    choose_final,
    chosen_curve,
    chosen_per_slice,
    chosen_table,
    final_calibration,
    interval_text,
    label_more,
    label_more_lines,
    load_saved_run,
    results_table,
)
from label_pipeline.decision import apply_decision
from label_pipeline.errors import InputDataError
from label_pipeline.metrics import (
    bootstrap_interval,
    classification_metrics,
)
from label_pipeline.orchestration import write_summary
from label_pipeline.progress import stage_logger
from label_pipeline.store import BuildContext, StageRef, StageSpec, StageStore

SPEC = StageSpec("evaluate", "7")
STAGE, VERSION = SPEC.name, SPEC.version


class EvaluateConfig(BaseModel):
    """Evaluation of the trained runs.

    Attributes:
        enabled: run the stage.
        select_by: validation metric that names the final model (``best.json``).
        select_tolerance: models whose valid score is within this of the best are treated as
            tied and the simplest of them is chosen (baselines, then ``hybrid``, then the
            others); on a small valid split the tolerance is at least one valid row's worth
            (``1 / valid rows``). Never below the best baseline's valid score.
        prefer_average: ship the train stage's ``average`` run of a slice (the mean of its
            best runs on valid, ``train.average_top``) instead of the single run the rule
            above picks, unless a single run beats it on valid beyond luck
            (``single_over_average_p``): on a small valid split the best single run is partly
            luck, the average of the best few is steadier.
        single_over_average_p: with ``prefer_average``, a single run beats the average on
            valid beyond luck when, in a paired bootstrap over the valid rows (2,000
            resamples of the same rows for both), it scores no higher than the average in
            fewer than this fraction of the resamples. The best single run above the average
            then ships instead; the best baseline above the average that way puts the
            average out (the rule above picks). 0: no test; the average ships whenever it is
            not below the best baseline.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    select_by: Literal["micro_f1", "macro_f1"] = "micro_f1"
    select_tolerance: float = Field(0.005, ge=0.0, le=0.2)
    prefer_average: bool = True
    single_over_average_p: float = Field(0.05, ge=0.0, lt=0.5)


def zero_shot_line(zero_shot_dir: Path | None) -> dict[str, Any] | None:
    """Test (and valid) micro/macro-F1 of the zero-shot stage from its ``metrics.json``.

    Accepts ``{"test": {"micro_f1": ...}}`` and flat ``{"test_micro_f1": ...}`` layouts.
    """
    if zero_shot_dir is None or not (Path(zero_shot_dir) / "metrics.json").is_file():
        return None
    data = json.loads((Path(zero_shot_dir) / "metrics.json").read_text())
    out: dict[str, Any] = {}
    for split in ("test", "valid"):
        block = data.get(split) if isinstance(data.get(split), dict) else {}
        for metric in ("micro_f1", "macro_f1", "accuracy"):
            value = block.get(metric, data.get(f"{split}_{metric}"))
            if isinstance(value, int | float):
                out.setdefault(split, {})[metric] = float(value)
    if "test" not in out:
        return None
    sel = data.get("selection")
    if isinstance(sel, dict):
        out["selection"] = sel
    return out


def score_run(
    run_dir: str,
    saved: SavedRun,
    y_valid: np.ndarray,
    y_test: np.ndarray,
    labels: list[str],
    multi_label: bool,
) -> dict[str, Any]:
    """Valid and test metrics of one saved run (probabilities + decision rule); ``run_dir``
    names it in errors."""
    out: dict[str, Any] = {}
    for split, y in (("valid", y_valid), ("test", y_test)):
        probs = saved.probs[split]
        if probs.shape != y.shape:
            raise InputDataError(
                f"{Path(run_dir) / f'{split}_probs.npy'} has shape {probs.shape} but the {split} "
                f"split has {y.shape}; the train and split stages do not match, re-run train"
            )
        pred = apply_decision(probs, saved.decision)
        out[split] = classification_metrics(y, probs, pred, labels, multi_label)
        out[split]["interval_95"] = score_intervals(y, pred)
    out["decision"] = saved.decision.to_json()
    out["calibration"] = calibration_of_run(saved, {"valid": y_valid, "test": y_test}, multi_label)
    return out


def score_intervals(y: np.ndarray, pred: np.ndarray) -> dict[str, list[float]]:
    """95 % bootstrap intervals of micro-F1 (accuracy for single-label) and macro-F1 of one
    run's 0/1 predictions on a split: ``{"micro_f1": [low, high], "macro_f1": [low, high]}``
    (how far the score could move on another draw of as many rows)."""
    return {m: list(bootstrap_interval(y, pred, m)) for m in ("micro_f1", "macro_f1")}


def score_runs(
    train_runs: list[dict[str, Any]],
    saved: dict[str, SavedRun],
    y_valid: np.ndarray,
    y_test: np.ndarray,
    labels: list[str],
    multi_label: bool,
) -> list[dict[str, Any]]:
    """:func:`score_run` of each entry of a train stage's ``runs.json``, with its saved run
    (``saved``: ``run_dir`` -> run, in the same order), in order: the rows
    :func:`choose_final` picks from."""
    runs = []
    for order, (tr, (run_dir, run)) in enumerate(zip(train_runs, saved.items(), strict=True)):
        runs.append(
            {
                "method": tr["method"],
                "slice": tr["slice"],
                "slice_size": tr["slice_size"],
                "train_rows": tr.get("train_rows"),
                "run_dir": run_dir,
                "fallback": tr.get("fallback", ""),
                "order": order,
                **score_run(run_dir, run, y_valid, y_test, labels, multi_label),
            }
        )
    return runs


def calibration_of_run(
    saved: SavedRun, ys: dict[str, np.ndarray], multi_label: bool
) -> dict[str, Any]:
    """Calibration scores of a run's saved probabilities per split: ``after`` (the saved,
    calibrated ones) and ``before`` (``<split>_probs_uncalibrated.npy``, when the train stage
    calibrated), with the calibrator's facts from ``fit.json``."""
    from label_pipeline.calibration import calibration_scores

    cal = saved.fit.get("calibration") or {}
    out: dict[str, Any] = {
        "method": cal.get("method", "none"),
        "describe": cal.get("describe", "none (identity)"),
        "fallback": bool(cal.get("fallback", False)),
        "notes": cal.get("notes", []),
    }
    for split, y in ys.items():
        after = saved.probs[split]
        before = saved.uncalibrated.get(split, after)
        out[split] = {
            "before": calibration_scores(y, before, multi_label),
            "after": calibration_scores(y, after, multi_label),
        }
    return out


def reliability_curves(
    saved: SavedRun, y_test: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The curves of a run's reliability diagram on test: uncalibrated and calibrated (or
    as trained, when the train stage did not calibrate)."""
    curves = {}
    if "test" in saved.uncalibrated:
        curves["uncalibrated"] = (y_test, saved.uncalibrated["test"])
    curves["calibrated" if "test" in saved.uncalibrated else "as trained"] = (
        y_test,
        saved.probs["test"],
    )
    return curves


def learning_curves(runs: list[dict[str, Any]]) -> dict[str, dict[str, list[Any]]]:
    """Per method: slice names, sizes and test micro/macro-F1, ordered by slice size."""
    curves: dict[str, dict[str, list[Any]]] = {}
    for r in sorted(runs, key=lambda r: (r["method"], r["slice_size"])):
        c = curves.setdefault(
            r["method"], {"slice": [], "size": [], "micro_f1": [], "macro_f1": []}
        )
        c["slice"].append(r["slice"])
        c["size"].append(r["slice_size"])
        c["micro_f1"].append(r["test"]["micro_f1"])
        c["macro_f1"].append(r["test"]["macro_f1"])
    return curves


def plot_learning_curve(
    curves: dict[str, dict[str, list[Any]]],
    metric: str,
    zero_shot: dict[str, Any] | None,
    path: Path,
) -> None:
    """F1 vs training-slice size for every method (log x axis), zero-shot as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes: set[int] = set()
    for method, c in curves.items():
        style = {"color": "black", "linewidth": 2.5} if method == "chosen" else {}
        ax.plot(c["size"], c[metric], marker="o", label=method, **style)
        sizes.update(c["size"])
    if zero_shot and metric in zero_shot.get("test", {}):
        ax.axhline(zero_shot["test"][metric], color="black", linestyle="--", label="zero-shot")
    if sizes and len(sizes) > 1:
        ax.set_xscale("log")
        ticks = sorted(sizes)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.minorticks_off()
    ax.set_xlabel("training rows (slice size)")
    ax.set_ylabel(f"test {metric.replace('_', '-')}")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"Learning curve: test {metric.replace('_', '-')}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class Evaluation:
    """The evaluation of a train stage's runs (:func:`evaluate_trained`)."""

    labels: list[str]
    multi_label: bool
    runs: list[dict[str, Any]]
    curves: dict[str, dict[str, list[Any]]]
    zero: dict[str, Any] | None
    per_slice: list[dict[str, Any]]
    more: list[dict[str, Any]]
    unlearnable: dict[str, list[str]]
    #: ``best.json`` (None: no run), and the final model's reliability curves on test
    best: dict[str, Any] | None = None
    reliability: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def facts(self) -> dict[str, Any]:
        """The stage's manifest facts."""
        best = self.best
        return {
            "runs": len(self.runs),
            "best": best and {k: best[k] for k in ("method", "slice", "test")},
            "zero_shot_test": self.zero and self.zero.get("test"),
            "final_calibration": best and best["calibration"],
        }


def evaluate_trained(
    train_runs: list[dict[str, Any]],
    saved: dict[str, SavedRun],
    ys: dict[str, np.ndarray],
    labels: list[str],
    multi_label: bool,
    zero: dict[str, Any] | None,
    cfg: EvaluateConfig,
) -> Evaluation:
    """Score every run (``train_runs``: the train stage's ``runs.json``; ``saved``: each
    run's saved files by ``run_dir``, in the same order; ``ys``: valid and test label
    matrices), choose the final model on valid at every slice and at the largest."""
    runs = score_runs(train_runs, saved, ys["valid"], ys["test"], labels, multi_label)
    n_valid = len(ys["valid"])
    choose = {
        "prefer_average": cfg.prefer_average,
        "y_valid": ys["valid"],
        "single_over_average_p": cfg.single_over_average_p,
        "saved": saved,
    }
    choice = choose_final(runs, cfg.select_by, cfg.select_tolerance, n_valid, **choose)
    per_slice = chosen_per_slice(runs, cfg.select_by, cfg.select_tolerance, n_valid, **choose)
    unlearnable = {tr["slice"]: tr["unlearnable"] for tr in train_runs if tr.get("unlearnable")}
    out = Evaluation(
        labels=labels,
        multi_label=multi_label,
        runs=runs,
        curves=learning_curves(runs),
        zero=zero,
        per_slice=per_slice,
        more=label_more(per_slice, ys["test"], saved),
        unlearnable=unlearnable,
    )
    best = choice and choice["run"]
    if best is not None:
        out.best = {
            "method": best["method"],
            "slice": best["slice"],
            "run_dir": best["run_dir"],
            "model_dir": str(Path(best["run_dir"]) / "model"),
            "metric": f"valid {cfg.select_by}",
            "valid": {k: best["valid"][k] for k in ("micro_f1", "macro_f1")},
            "test": {k: best["test"][k] for k in ("micro_f1", "macro_f1", "interval_95")},
            "decision": best["decision"],
            "calibration": final_calibration(best),
            "reason": choice["reason"],
            "candidates": choice["candidates"],
            "best_baseline": choice["best_baseline"],
            "unlearnable": unlearnable.get(best["slice"], []),
        }
        out.reliability = reliability_curves(saved[best["run_dir"]], ys["test"])
    return out


def write_evaluation(directory: Path, ev: Evaluation, cfg: EvaluateConfig) -> None:
    """Write the figures, ``best.json``, ``calibration.json``, ``metrics.json``,
    ``learning_curves.json`` and the summary of an evaluation into ``directory``."""
    from label_pipeline.calibration import plot_reliability

    figures = directory / "figures"
    curves = ev.curves
    if len(ev.per_slice) > 1:
        curves = {**curves, "chosen": chosen_curve(ev.per_slice)}
    for metric in ("micro_f1", "macro_f1"):
        short = metric.split("_")[0]
        plot_learning_curve(curves, metric, ev.zero, figures / f"learning_curve_{short}.png")
    best = ev.best
    if best is not None:
        (directory / "best.json").write_text(json.dumps(_clean(best), indent=2))
        title = f"Reliability on test: {best['method']} (slice {best['slice']})"
        plot_reliability(ev.reliability, ev.multi_label, figures / "reliability.png", title)
    calibration = {
        "final": best and best["calibration"],
        "runs": [{"method": r["method"], "slice": r["slice"], **r["calibration"]} for r in ev.runs],
    }
    (directory / "calibration.json").write_text(json.dumps(_clean(calibration), indent=1))
    metrics = {
        "labels": ev.labels,
        "multi_label": ev.multi_label,
        "runs": ev.runs,
        "zero_shot": ev.zero,
        "chosen_per_slice": ev.per_slice,
        "label_more": ev.more,
        "unlearnable": ev.unlearnable,
    }
    (directory / "metrics.json").write_text(json.dumps(_clean(metrics), indent=1))
    curves_json = {"methods": ev.curves, "zero_shot": ev.zero, "chosen_per_slice": ev.per_slice}
    (directory / "learning_curves.json").write_text(json.dumps(_clean(curves_json), indent=1))
    _write_summary(
        directory,
        ev.runs,
        ev.zero,
        best,
        ev.multi_label,
        cfg,
        ev.per_slice,
        ev.unlearnable,
        ev.more,
    )


def read_saved_runs(train_dir: Path, train_runs: list[dict[str, Any]]) -> dict[str, SavedRun]:
    """The saved files of each run of ``runs.json`` (its ``dir`` under ``train_dir``), by
    ``run_dir``, in order."""
    return {
        str(Path(train_dir) / tr["dir"]): load_saved_run(Path(train_dir) / tr["dir"])
        for tr in train_runs
    }


def _builder(cfg: EvaluateConfig, splits_ref: StageRef, trained: StageRef, zs: StageRef | None):
    def build(ctx: BuildContext) -> dict[str, Any]:
        from label_pipeline.data import label_matrix, load_splits, read_label_info

        labels, multi_label = read_label_info(splits_ref.dir)
        runs_path = trained.dir / "runs.json"
        if not runs_path.is_file():
            raise InputDataError(f"{runs_path} is missing; re-run the train stage")
        train_runs = json.loads(runs_path.read_text())
        splits = load_splits(splits_ref.dir)
        ys = {
            s: label_matrix([list(x) for x in splits[s]["labels"]], labels)
            for s in ("valid", "test")
        }
        saved = read_saved_runs(trained.dir, train_runs)
        zero = zero_shot_line(zs.dir if zs is not None else None)
        if zs is not None and zero is None:
            stage_logger().warning(
                "evaluate: %s has no usable test metrics; no zero-shot line", zs.dir
            )
        ev = evaluate_trained(train_runs, saved, ys, labels, multi_label, zero, cfg)
        write_evaluation(ctx.dir, ev, cfg)
        return ev.facts()

    return build


def _clean(value: Any) -> Any:
    from label_pipeline.data import to_jsonable

    return to_jsonable(value)


def _write_summary(
    directory: Path,
    runs: list[dict[str, Any]],
    zero: dict[str, Any] | None,
    best: dict[str, Any] | None,
    multi_label: bool,
    cfg: EvaluateConfig,
    per_slice: list[dict[str, Any]] | None = None,
    unlearnable: dict[str, list[str]] | None = None,
    more: list[dict[str, Any]] | None = None,
) -> None:
    lines = []
    if best:
        lines.append(
            f"- final model: **{best['method']}** on slice `{best['slice']}` ({best['metric']}"
            f" {_f(best['valid'][cfg.select_by])}; test micro-F1 {_f(best['test']['micro_f1'])}"
            f"{interval_text(best['test'], 'micro_f1')}, macro-F1 {_f(best['test']['macro_f1'])}"
            f"{interval_text(best['test'], 'macro_f1')}; 95 % bootstrap intervals over the test "
            "rows in brackets)"
        )
        lines.append(f"- why: {best['reason']}")
    if unlearnable:
        lines.append(
            "- **unlearnable labels** (no training example in the slice): "
            + "; ".join(f"slice `{s}`: {', '.join(labs)}" for s, labs in unlearnable.items())
        )
    if zero:
        lines.append(
            f"- zero-shot on test: micro-F1 {_f(zero['test'].get('micro_f1'))}, "
            f"macro-F1 {_f(zero['test'].get('macro_f1'))}"
        )
    lines += ["", md_table(results_table(runs, multi_label))]
    if per_slice and len(per_slice) > 1:
        lines += ["", "Chosen per slice (valid, never below the best baseline beyond luck):", ""]
        lines.append(md_table(chosen_table(per_slice, multi_label)))
        lines += ["", *label_more_lines(more or [], multi_label)]
    lines += [
        "",
        "![learning curve micro](figures/learning_curve_micro.png)",
        "![learning curve macro](figures/learning_curve_macro.png)",
    ]
    cal_rows = calibration_table(runs)
    if cal_rows:
        lines += [
            "",
            "## Calibration",
            "",
            "Test scores before → after calibrating on valid (ECE: 15 equal-width bins; adaptive"
            " ECE: 15 equal-mass bins).",
            "",
            md_table(cal_rows),
        ]
        if best:
            lines += ["", "![reliability](figures/reliability.png)"]
    write_summary(directory, "\n".join(lines) + "\n", results_table(runs, multi_label))


def run_evaluate(
    store: StageStore,
    cfg: EvaluateConfig,
    splits: StageRef,
    trained: StageRef,
    zero_shot: StageRef | None = None,
    refresh: bool = False,
) -> StageRef:
    """Evaluate every run of the train stage; see the module docstring."""
    splits = store.localize(splits)
    trained = store.localize(trained)
    zero_shot = store.localize(zero_shot) if zero_shot is not None else None
    inputs = {"splits": splits, "trained": trained, "zero_shot": zero_shot}
    return store.build_stage(SPEC, cfg, inputs, _builder(cfg, splits, trained, zero_shot), refresh)
