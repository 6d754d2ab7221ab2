"""Turning per-label scores into label sets: threshold, top-k and argmax rules, and the sweeps
that pick a rule and its value on the validation split.

Every function here is pure: numpy arrays in, numpy arrays or plain values out.
``scores`` is a float matrix (rows x labels) with values in [0, 1]; ``y_true`` and the
selections are 0/1 matrices of the same shape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

Metric = Literal["micro_f1", "macro_f1"]
METRICS: tuple[str, ...] = ("micro_f1", "macro_f1")

#: the threshold grid of the sweep: 0.01, 0.02, ..., 1.00
THRESHOLDS: np.ndarray = np.round(np.arange(1, 101) / 100.0, 2)


def _check(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a (rows x labels) matrix, got shape {scores.shape}")
    return scores


def select_by_threshold(scores: np.ndarray, threshold: float | np.ndarray) -> np.ndarray:
    """Labels whose score is >= ``threshold`` (a scalar, or one threshold per label)."""
    scores = _check(scores)
    thr = np.asarray(threshold, dtype=np.float64)
    if thr.ndim == 1 and thr.shape[0] != scores.shape[1]:
        raise ValueError(f"{thr.shape[0]} per-label thresholds for {scores.shape[1]} labels")
    # a small tolerance so that 0.3 selects a score stored as 0.29999998 (float32 round-trip)
    return (scores >= thr - 1e-9).astype(np.int64)


def select_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` highest-scoring labels of every row (ties broken by label order)."""
    scores = _check(scores)
    n_labels = scores.shape[1]
    if not 1 <= k <= max(n_labels, 1):
        raise ValueError(f"top-k needs 1 <= k <= {n_labels} (number of labels), got k={k}")
    out = np.zeros(scores.shape, dtype=np.int64)
    if scores.shape[0] == 0:
        return out
    # stable sort on the negated scores: equal scores keep label order
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    np.put_along_axis(out, top, 1, axis=1)
    return out


def select_argmax(scores: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """One label per row (the best), or none when its score is below ``floor``."""
    out = select_top_k(scores, 1)
    if floor > 0 and out.shape[0]:
        out[_check(scores).max(axis=1) < floor - 1e-9] = 0
    return out


def f1_per_label(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """F1 of each label; 0 where a label is neither true nor predicted anywhere."""
    y_true, y_pred = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    tp = (y_true & y_pred).sum(axis=0)
    denom = y_true.sum(axis=0) + y_pred.sum(axis=0)
    return np.divide(2.0 * tp, denom, out=np.zeros(tp.shape, dtype=np.float64), where=denom > 0)


def f1_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Micro- and macro-F1 of multi-hot predictions (same conventions as scikit-learn's
    ``f1_score(..., zero_division=0)``)."""
    y_true, y_pred = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    tp = float((y_true & y_pred).sum())
    denom = float(y_true.sum() + y_pred.sum())
    micro = 2.0 * tp / denom if denom else 0.0
    per_label = f1_per_label(y_true, y_pred)
    macro = float(per_label.mean()) if per_label.size else 0.0
    return {"micro_f1": micro, "macro_f1": macro}


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Exact-match accuracy: the predicted label set equals the true one."""
    y_true, y_pred = np.asarray(y_true, bool), np.asarray(y_pred, bool)
    if y_true.shape[0] == 0:
        return 0.0
    return float((y_true == y_pred).all(axis=1).mean())


def sweep_thresholds(
    scores: np.ndarray, y_true: np.ndarray, thresholds: np.ndarray = THRESHOLDS
) -> dict[str, list[float]]:
    """Micro- and macro-F1 at every threshold: ``{"value": [...], "micro_f1": [...], ...}``."""
    curve: dict[str, list[float]] = {"value": [float(t) for t in thresholds]}
    results = [f1_scores(y_true, select_by_threshold(scores, t)) for t in thresholds]
    for m in METRICS:
        curve[m] = [r[m] for r in results]
    return curve


def sweep_top_k(scores: np.ndarray, y_true: np.ndarray) -> dict[str, list[float]]:
    """Micro- and macro-F1 for k = 1 ... number of labels."""
    ks = list(range(1, _check(scores).shape[1] + 1))
    curve: dict[str, list[float]] = {"value": [float(k) for k in ks]}
    results = [f1_scores(y_true, select_top_k(scores, k)) for k in ks]
    for m in METRICS:
        curve[m] = [r[m] for r in results]
    return curve


def sweep_floor(
    scores: np.ndarray, y_true: np.ndarray, floors: np.ndarray = THRESHOLDS
) -> dict[str, list[float]]:
    """Single-label: micro/macro-F1 and coverage of argmax with a confidence floor."""
    curve: dict[str, list[float]] = {"value": [0.0] + [float(f) for f in floors]}
    results = []
    for f in curve["value"]:
        pred = select_argmax(scores, f)
        r = f1_scores(y_true, pred)
        r["coverage"] = float(pred.any(axis=1).mean()) if pred.shape[0] else 0.0
        results.append(r)
    for m in (*METRICS, "coverage"):
        curve[m] = [r[m] for r in results]
    return curve


def best_index(values: list[float]) -> int:
    """Index of the best value; ties go to the first (lowest threshold / smallest k)."""
    return int(np.argmax(np.asarray(values, dtype=np.float64)))


def tune_per_label_thresholds(
    scores: np.ndarray, y_true: np.ndarray, thresholds: np.ndarray = THRESHOLDS
) -> np.ndarray:
    """For every label, the threshold that maximises that label's own F1 on ``y_true``.

    A label that never occurs in ``y_true`` gets the highest threshold of the grid: with
    nothing to learn from, predicting it rarely is the safe choice.
    """
    scores = _check(scores)
    y_true = np.asarray(y_true, bool)
    out = np.full(scores.shape[1], float(thresholds[-1]))
    for j in range(scores.shape[1]):
        if not y_true[:, j].any():
            continue
        f1 = [
            f1_per_label(y_true[:, [j]], select_by_threshold(scores[:, [j]], t))[0]
            for t in thresholds
        ]
        out[j] = float(thresholds[best_index(f1)])
    return out


@dataclass
class Selection:
    """A chosen rule and its value, with the validation metrics that chose it.

    rule: ``"threshold"``, ``"top_k"`` or ``"argmax"`` (single-label).
    value: the threshold, k, or the confidence floor (argmax).
    per_label_thresholds: label -> threshold when per-label thresholds were tuned.
    """

    rule: str
    value: float
    metric: str
    valid_metrics: dict[str, float] = field(default_factory=dict)
    per_label_thresholds: dict[str, float] | None = None
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    note: str = ""

    def to_json(self, with_curves: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not with_curves:
            out.pop("curves")
        return out


def apply_selection(selection: Selection, scores: np.ndarray, labels: list[str]) -> np.ndarray:
    """The 0/1 label matrix that ``selection`` gives for ``scores``."""
    if selection.rule == "argmax":
        return select_argmax(scores, selection.value)
    if selection.rule == "top_k":
        return select_top_k(scores, int(selection.value))
    if selection.rule == "threshold":
        if selection.per_label_thresholds:
            thr = np.array([selection.per_label_thresholds[name] for name in labels])
            return select_by_threshold(scores, thr)
        return select_by_threshold(scores, selection.value)
    raise ValueError(f"unknown selection rule {selection.rule!r}")


def _metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    out = f1_scores(y_true, y_pred)
    out["accuracy"] = accuracy(y_true, y_pred)
    return out


def choose_selection(
    scores: np.ndarray,
    y_true: np.ndarray,
    labels: list[str],
    multi_label: bool,
    metric: Metric = "micro_f1",
    rule: Literal["auto", "threshold", "top_k"] = "auto",
    per_label: bool = False,
    confidence_floor: float = 0.0,
) -> Selection:
    """Pick the selection rule and value on validation scores.

    Multi-label: sweep thresholds (0.01 ... 1.0) and/or k (1 ... number of labels) and
    keep the best by ``metric``; ``rule="auto"`` compares both. ``per_label`` then tunes
    one threshold per label (only when the threshold rule wins or is forced).
    Single-label: argmax with ``confidence_floor`` (rows whose best score is lower get no
    label); the floor curve is kept for the figure.
    With no validation rows carrying labels, falls back to top-1 / argmax, noted in ``note``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    scores = _check(scores)
    y_true = np.asarray(y_true, dtype=np.int64)
    has_truth = y_true.shape[0] > 0 and bool(y_true.any())

    if not multi_label:
        sel = Selection(rule="argmax", value=float(confidence_floor), metric=metric)
        if has_truth:
            sel.curves["floor"] = sweep_floor(scores, y_true)
            sel.valid_metrics = _metrics(y_true, apply_selection(sel, scores, labels))
        else:
            sel.note = "no labelled validation rows: metrics not measured"
        return sel

    if not has_truth:
        return Selection(
            rule="top_k",
            value=1.0,
            metric=metric,
            note="no labelled validation rows: fell back to top-1 without a sweep",
        )

    candidates: list[Selection] = []
    if rule in ("auto", "threshold"):
        curve = sweep_thresholds(scores, y_true)
        i = best_index(curve[metric])
        sel = Selection("threshold", curve["value"][i], metric, curves={"threshold": curve})
        candidates.append(sel)
    if rule in ("auto", "top_k"):
        curve = sweep_top_k(scores, y_true)
        i = best_index(curve[metric])
        sel = Selection("top_k", curve["value"][i], metric, curves={"top_k": curve})
        candidates.append(sel)
    if rule not in ("auto", "threshold", "top_k"):
        raise ValueError(f"rule must be 'auto', 'threshold' or 'top_k', got {rule!r}")

    all_curves = {k: v for c in candidates for k, v in c.curves.items()}
    # on equal scores the first candidate (threshold) wins: it adapts to each row
    best = max(
        candidates, key=lambda c: c.curves[c.rule][metric][best_index(c.curves[c.rule][metric])]
    )
    best.curves = all_curves
    if per_label and best.rule == "threshold":
        thr = tune_per_label_thresholds(scores, y_true)
        best.per_label_thresholds = {name: float(t) for name, t in zip(labels, thr, strict=True)}
    best.valid_metrics = _metrics(y_true, apply_selection(best, scores, labels))
    return best
