"""The final model: which trained run ships at each slice, and the tables that show it.

Read by the ``evaluate`` stage (which writes the choice into ``best.json`` and
``metrics.json``), the report (the tables) and the benchmarks. A run is the evaluate
stage's record of one trained method at one slice: ``method``, ``slice``, ``slice_size``,
``order``, ``fallback``, ``run_dir`` and its ``valid`` / ``test`` metrics.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from label_pipeline.artifacts import num as _f
from label_pipeline.decision import Decision, apply_decision, load_decision
from label_pipeline.metrics import bootstrap_difference, paired_bootstrap_p

#: the method name of the train stage's average of a slice's best runs
AVERAGE = "average"


#: the baselines the final model must not be worse than on valid
BASELINES = ("naive_bayes", "tfidf_nb", "embed_lr", "knn")


#: preference among models whose valid scores are within the tolerance: simplest first
#: (methods not listed rank after these, in the order they were trained)
SIMPLICITY = ("naive_bayes", "tfidf_nb", "knn", "embed_lr", "hybrid")


def interval_text(r: dict[str, Any], metric: str) -> str:
    """`` [low–high]`` for a ``test``/``valid`` entry with ``interval_95``, else ``""``."""
    iv = (r.get("interval_95") or {}).get(metric)
    return f" [{_f(iv[0])}–{_f(iv[1])}]" if iv else ""


@dataclass
class SavedRun:
    """What the train stage saved of one run (its ``runs/<method>/<slice>/`` directory),
    read once: probabilities per split (and before calibration, where saved), the decision
    rule and ``fit.json``. The functions below take ``saved`` (``run_dir`` -> ``SavedRun``)
    to use these instead of reading the run directories."""

    probs: dict[str, np.ndarray]
    decision: Decision
    uncalibrated: dict[str, np.ndarray] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)

    def predictions(self, split: str) -> np.ndarray:
        """The 0/1 decisions on ``split``."""
        return apply_decision(self.probs[split], self.decision)


def load_saved_run(run_dir: str | Path, splits: tuple[str, ...] = ("valid", "test")) -> SavedRun:
    """Read a run directory of the train stage (see :class:`SavedRun`)."""
    run_dir = Path(run_dir)
    decision = load_decision(run_dir)
    probs, uncalibrated = {}, {}
    for split in splits:
        probs[split] = np.load(run_dir / f"{split}_probs.npy").astype(np.float64)
        raw = run_dir / f"{split}_probs_uncalibrated.npy"
        if raw.is_file():
            uncalibrated[split] = np.load(raw).astype(np.float64)
    fit_path = run_dir / "fit.json"
    fit = json.loads(fit_path.read_text()) if fit_path.is_file() else {}
    return SavedRun(probs, decision, uncalibrated, fit)


def run_predictions(
    run_dir: str | Path, split: str = "valid", saved: Mapping[str, SavedRun] | None = None
) -> np.ndarray:
    """A saved run's 0/1 decisions on ``split`` (its probabilities and decision rule)."""
    if saved is not None and str(run_dir) in saved:
        return saved[str(run_dir)].predictions(split)
    probs = np.load(Path(run_dir) / f"{split}_probs.npy").astype(np.float64)
    return apply_decision(probs, load_decision(run_dir))


def average_members_of(
    run: dict[str, Any], saved: Mapping[str, SavedRun] | None = None
) -> list[str]:
    """The methods an ``average`` run averages (from its ``fit.json``)."""
    run_dir = str(run.get("run_dir", ""))
    if saved is not None and run_dir in saved:
        fit = saved[run_dir].fit
    else:
        path = Path(run_dir) / "fit.json"
        fit = json.loads(path.read_text()) if path.is_file() else {}
    members = fit.get("info", {}).get("members", [])
    return [m["method"] for m in members] or ["the best runs"]


def _base_name(method: str) -> str:
    return method.split("+")[0]


def _simplicity(r: dict[str, Any]) -> tuple[int, int]:
    base = _base_name(r["method"])
    modified = int("+" in r["method"])
    rank = SIMPLICITY.index(base) if base in SIMPLICITY else len(SIMPLICITY)
    return (rank, modified)


def choose_final(
    runs: list[dict[str, Any]],
    metric: str,
    tolerance: float = 0.005,
    n_valid: int | None = None,
    slice_name: str | None = None,
    prefer_average: bool = False,
    y_valid: np.ndarray | None = None,
    single_over_average_p: float = 0.0,
    saved: Mapping[str, SavedRun] | None = None,
) -> dict[str, Any] | None:
    """The final model among ``runs`` (at ``slice_name``, default the largest slice) and why.

    Every healthy run (no fallback; fallback runs only when nothing else exists) is scored
    by its valid ``metric``. Runs below the best baseline's score (``BASELINES``) are out:
    the final model is never worse on valid than the best baseline trained beside it. Of
    the rest, those within ``tolerance`` of the best score (at least ``1 / n_valid`` on a
    small valid split) are tied, and the simplest wins (``SIMPLICITY``), then the higher
    score, then the earlier run. With ``prefer_average``, the slice's ``average`` run (see
    ``tasks.train.average_run``) is chosen instead whenever it is healthy, unless a single
    run beats it on valid beyond luck: :func:`label_pipeline.metrics.paired_bootstrap_p` of
    their valid decisions (``run_predictions`` of each ``run_dir``, from ``saved`` when
    given) below ``single_over_average_p``. The best baseline is tested that way when the
    average is below it (the rule above then picks the model), the best single run when it
    is above the average (it ships instead). Without ``y_valid`` or with
    ``single_over_average_p`` 0 nothing is tested: the average ships when it is not below
    the best baseline.

    Returns ``{"run", "reason", "candidates", "best_baseline", "tolerance"}`` or None when
    there are no runs.
    """
    if not runs:
        return None
    if slice_name is None:
        largest = max(r["slice_size"] for r in runs)
        pool = [r for r in runs if r["slice_size"] == largest]
    else:
        pool = [r for r in runs if r["slice"] == slice_name]
        if not pool:
            return None
    healthy = [r for r in pool if not r["fallback"]] or pool

    def score(r: dict[str, Any]) -> float:
        v = r["valid"].get(metric)
        return -1.0 if v is None or v != v else float(v)

    tol = max(float(tolerance), 1.0 / n_valid if n_valid else 0.0)
    best_score = max(score(r) for r in healthy)
    baselines = [r for r in healthy if _base_name(r["method"]) in BASELINES]
    floor = max((score(r) for r in baselines), default=-1.0)
    top_baseline = max(baselines, key=lambda r: (score(r), -r["order"])) if baselines else None
    eligible = [r for r in healthy if score(r) >= floor - 1e-12 and score(r) >= best_score - tol]
    chosen = min(eligible, key=lambda r: (_simplicity(r), -score(r), r["order"]))
    average = next((r for r in healthy if r["method"] == AVERAGE), None) if prefer_average else None

    def luck(rival: dict[str, Any], avg: dict[str, Any]) -> float | None:
        """Paired bootstrap p that ``rival`` beats ``avg`` on valid; None when not tested."""
        if (
            y_valid is None
            or single_over_average_p <= 0
            or "run_dir" not in rival
            or "run_dir" not in avg
        ):
            return None
        return paired_bootstrap_p(
            y_valid,
            run_predictions(rival["run_dir"], saved=saved),
            run_predictions(avg["run_dir"], saved=saved),
            metric,
        )

    def beats_note(rival: dict[str, Any], avg: dict[str, Any], p: float) -> str:
        verdict = "beyond" if p < single_over_average_p else "within"
        return (
            f"; {rival['method']} beats the average on valid ({_f(score(rival))} vs "
            f"{_f(score(avg))}) {verdict} luck: paired bootstrap p = {p:.3f} "
            f"(evaluate.single_over_average_p = {single_over_average_p:g})"
        )

    single_note = ""
    tested = None  # the run already compared with the average
    if average is not None and top_baseline is not None and score(average) < floor - 1e-12:
        # below the best baseline on valid: out, unless that is within luck
        p = luck(top_baseline, average)
        if p is None or p < single_over_average_p:
            average = None
        else:
            single_note, tested = beats_note(top_baseline, average, p), top_baseline
    if average is not None:
        chosen = average
        singles = [r for r in healthy if r["method"] != AVERAGE and score(r) >= floor - 1e-12]
        best_single = max(singles, key=lambda r: (score(r), -r["order"]), default=None)
        if (
            best_single is not None
            and best_single is not tested
            and score(best_single) > score(chosen)
        ):
            p = luck(best_single, chosen)
            if p is not None:
                single_note += beats_note(best_single, chosen, p)
                if p < single_over_average_p:
                    chosen = best_single
    name = metric.replace("_f1", "-F1")
    ranked = sorted(healthy, key=lambda r: (-score(r), r["order"]))
    candidates = [{"method": r["method"], "valid": score(r)} for r in ranked]
    reason = f"chose {chosen['method']}: valid {name} {_f(score(chosen))}"
    if top_baseline is None:
        reason += " (no baseline was trained to compare with)"
    elif top_baseline is chosen:
        reason += " — it is the best baseline"
    else:
        gap = score(chosen) - score(top_baseline)
        reason += (
            f" vs best baseline {top_baseline['method']} {_f(score(top_baseline))} ({gap:+.3f})"
        )
    best_run = ranked[0]
    if chosen["method"] == AVERAGE:
        reason += (
            f"; the average of {', '.join(average_members_of(chosen, saved))} is preferred to a single "
            "run unless a single run beats it on valid beyond luck (evaluate.prefer_average)"
        )
        reason += single_note
    elif single_note:
        reason += single_note + ", so the single run"
    elif best_run is not chosen:
        reason += (
            f"; within {tol:.3f} of the best ({best_run['method']} {_f(best_score)}), "
            "so the simpler model"
        )
    reason += "; candidates: " + ", ".join(f"{c['method']} {_f(c['valid'])}" for c in candidates)
    if len(healthy) < len(pool):
        reason += f"; {len(pool) - len(healthy)} fallback run(s) left out"
    return {
        "run": chosen,
        "reason": reason,
        "candidates": candidates,
        "best_baseline": top_baseline
        and {"method": top_baseline["method"], "valid": score(top_baseline)},
        "tolerance": tol,
    }


def choose_best(runs: list[dict[str, Any]], metric: str, **kwargs: Any) -> dict[str, Any] | None:
    """The run :func:`choose_final` picks at the largest slice (None when there are none)."""
    choice = choose_final(runs, metric, **kwargs)
    return choice and choice["run"]


def chosen_per_slice(
    runs: list[dict[str, Any]],
    metric: str,
    tolerance: float,
    n_valid: int | None,
    prefer_average: bool = False,
    y_valid: np.ndarray | None = None,
    single_over_average_p: float = 0.0,
    saved: Mapping[str, SavedRun] | None = None,
) -> list[dict[str, Any]]:
    """:func:`choose_final` at every slice, smallest first: ``slice``, ``size``, ``method``,
    test micro/macro-F1 (and accuracy), ``reason``."""
    out = []
    for name in sorted({r["slice"] for r in runs}, key=lambda s: slice_size_of(runs, s)):
        c = choose_final(
            runs,
            metric,
            tolerance,
            n_valid,
            name,
            prefer_average,
            y_valid,
            single_over_average_p,
            saved,
        )
        if c is None:
            continue
        r = c["run"]
        out.append(
            {
                "slice": name,
                "size": r["slice_size"],
                "method": r["method"],
                **{k: r["test"].get(k) for k in ("micro_f1", "macro_f1", "accuracy")},
                "interval_95": r["test"].get("interval_95"),
                "run_dir": r.get("run_dir"),
                "reason": c["reason"],
            }
        )
    return out


def label_more(
    per_slice: list[dict[str, Any]],
    y_test: np.ndarray,
    saved: Mapping[str, SavedRun] | None = None,
) -> list[dict[str, Any]]:
    """Did more labelled rows help? For each pair of consecutive slices of ``per_slice``
    (smallest first), the chosen model's test micro-F1 (accuracy for single-label) and
    macro-F1 at the larger slice minus those at the smaller, with the 95 % interval of the
    difference over paired resamples of the test rows
    (:func:`label_pipeline.metrics.bootstrap_difference`)."""
    out = []
    preds = [run_predictions(c["run_dir"], "test", saved) for c in per_slice]
    for i in range(1, len(per_slice)):
        small, large, a, b = per_slice[i - 1], per_slice[i], preds[i - 1], preds[i]
        entry: dict[str, Any] = {
            "from_slice": small["slice"],
            "to_slice": large["slice"],
            "from_rows": small["size"],
            "to_rows": large["size"],
        }
        for metric in ("micro_f1", "macro_f1"):
            diff, lo, hi = bootstrap_difference(y_test, b, a, metric)
            entry[metric] = {"difference": diff, "interval_95": [lo, hi]}
        out.append(entry)
    return out


def label_more_lines(more: list[dict[str, Any]], multi_label: bool) -> list[str]:
    """Markdown lines for :func:`label_more`: micro-F1 (accuracy for single-label rows)."""
    if not more:
        return []
    name = "micro-F1" if multi_label else "accuracy"
    lines = [
        f"Did more labels help? The chosen model's test {name} from one slice to the next "
        "(95 % interval of the difference over paired resamples of the test rows; an "
        "interval holding 0 means the test rows cannot tell the two apart):",
        "",
    ]
    for e in more:
        m = e["micro_f1"]
        lo, hi = m["interval_95"]
        verdict = "gain" if lo > 0 else "loss" if hi < 0 else "no clear change"
        names = (
            ""
            if (e["from_slice"], e["to_slice"]) == (str(e["from_rows"]), str(e["to_rows"]))
            else f" (`{e['from_slice']}` → `{e['to_slice']}`)"
        )
        lines.append(
            f"- {e['from_rows']} → {e['to_rows']} rows{names}:"
            f" {m['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}], {verdict}"
        )
    return lines


def slice_size_of(runs: list[dict[str, Any]], name: str) -> int:
    return next(r["slice_size"] for r in runs if r["slice"] == name)


def final_calibration(run: dict[str, Any]) -> dict[str, Any]:
    """The final model's calibrator and its test scores before and after."""
    cal = run["calibration"]
    return {
        "method": cal["method"],
        "describe": cal["describe"],
        "test_before": cal["test"]["before"],
        "test_after": cal["test"]["after"],
    }


def calibration_table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: calibrator, test ECE / adaptive ECE / Brier / log loss before → after."""
    rows = []
    for r in runs:
        cal = r.get("calibration")
        if not cal:
            continue
        b, a = cal["test"]["before"], cal["test"]["after"]
        row = {"method": r["method"], "slice": r["slice"], "calibration": cal["describe"]}
        for key, name in (
            ("ece", "ECE"),
            ("adaptive_ece", "adaptive ECE"),
            ("brier", "Brier"),
            ("log_loss", "log loss"),
        ):
            row[f"test {name}"] = f"{_f(b[key])} → {_f(a[key])}"
        if cal["fallback"]:
            row["calibration"] += " (fallback: " + "; ".join(cal["notes"]) + ")"
        rows.append(row)
    return rows


def results_table(runs: list[dict[str, Any]], multi_label: bool) -> list[dict[str, Any]]:
    """One row per run for markdown and Prefect tables."""
    rows = []
    for r in runs:
        row = {
            "method": r["method"],
            "slice": r["slice"],
            "rows": r["train_rows"],
            "test micro-F1": _f(r["test"]["micro_f1"]),
            "test macro-F1": _f(r["test"]["macro_f1"]),
            "valid micro-F1": _f(r["valid"]["micro_f1"]),
            "valid macro-F1": _f(r["valid"]["macro_f1"]),
            "test log loss": _f(r["test"]["log_loss"]),
        }
        if not multi_label:
            row["test accuracy"] = _f(r["test"].get("accuracy"))
        if "roc_auc" in r["test"]:
            row["test ROC-AUC"] = _f(r["test"]["roc_auc"])
        if r["fallback"]:
            row["note"] = "fallback: label prior"
        rows.append(row)
    return rows


def chosen_curve(per_slice: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {
        "slice": [c["slice"] for c in per_slice],
        "size": [c["size"] for c in per_slice],
        "micro_f1": [c["micro_f1"] for c in per_slice],
        "macro_f1": [c["macro_f1"] for c in per_slice],
    }


def chosen_table(per_slice: list[dict[str, Any]], multi_label: bool) -> list[dict[str, Any]]:
    """One row per slice: the method chosen there and its test scores."""
    rows = []
    for c in per_slice:
        row = {
            "slice": c["slice"],
            "rows": c["size"],
            "chosen": c["method"],
            "test micro-F1": _f(c["micro_f1"]),
            "test macro-F1": _f(c["macro_f1"]),
        }
        if not multi_label:
            row["test accuracy"] = _f(c.get("accuracy"))
        iv = c.get("interval_95") or {}
        if iv:
            first = "accuracy" if not multi_label else "micro-F1"
            row[f"test {first} 95 % interval"] = interval_text(c, "micro_f1").strip(" []")
            row["test macro-F1 95 % interval"] = interval_text(c, "macro_f1").strip(" []")
        rows.append(row)
    return rows
