"""Classification metrics of predictions against gold labels, as plain JSON values.

Thin, tested wrappers over scikit-learn so every stage reports the same numbers with the
same conventions (``zero_division=0``; a label absent from both truth and prediction has
F1 0 and counts in the macro average).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def f1_micro_macro(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Micro- and macro-F1 of 0/1 matrices (rows x labels)."""
    from sklearn.metrics import f1_score

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape[0] == 0:
        return {"micro_f1": float("nan"), "macro_f1": float("nan")}
    return {
        "micro_f1": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def log_loss_of(y_true: np.ndarray, probs: np.ndarray, multi_label: bool) -> float:
    """Mean per-label binary cross-entropy (multi-label) or categorical log loss (single)."""
    eps = 1e-7
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(y_true, dtype=np.float64)
    if y.shape[0] == 0:
        return float("nan")
    if multi_label:
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    p = p / p.sum(axis=1, keepdims=True)
    return float(-np.log(p[np.arange(len(y)), y.argmax(axis=1)]).mean())


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    y_pred: np.ndarray,
    label_names: list[str],
    multi_label: bool,
) -> dict[str, Any]:
    """Everything the evaluate stage reports for one set of predictions.

    Args:
        y_true: 0/1 gold matrix (rows x labels).
        probs: probabilities (rows x labels).
        y_pred: 0/1 predicted matrix after the decision rule.

    Returns a dict with ``micro_f1``, ``macro_f1``, ``log_loss``, ``per_label`` (precision,
    recall, f1, support per label), ``n``; single-label adds ``accuracy`` and
    ``confusion_matrix`` (rows = gold, columns = predicted, in ``label_names`` order); a
    two-label single-label task adds ``roc_auc`` and ``roc_curve`` (positive = second label).
    Multi-label adds ``subset_accuracy``.
    """
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
        roc_curve,
    )

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    out: dict[str, Any] = {"n": int(y_true.shape[0]), **f1_micro_macro(y_true, y_pred)}
    out["log_loss"] = log_loss_of(y_true, probs, multi_label)
    if y_true.shape[0] == 0:
        out["per_label"] = []
        return out
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    out["per_label"] = [
        {
            "label": name,
            "precision": float(p[j]),
            "recall": float(r[j]),
            "f1": float(f[j]),
            "support": int(s[j]),
        }
        for j, name in enumerate(label_names)
    ]
    if multi_label:
        out["subset_accuracy"] = float(accuracy_score(y_true, y_pred))
        return out
    gold, pred = y_true.argmax(axis=1), y_pred.argmax(axis=1)
    out["accuracy"] = float(accuracy_score(gold, pred))
    out["confusion_matrix"] = confusion_matrix(
        gold, pred, labels=list(range(len(label_names)))
    ).tolist()
    if len(label_names) == 2 and len(set(gold.tolist())) == 2:
        out["roc_auc"] = float(roc_auc_score(gold, probs[:, 1]))
        fpr, tpr, thr = roc_curve(gold, probs[:, 1])
        out["roc_curve"] = {
            "fpr": fpr.tolist(),
            "tpr": tpr.tolist(),
            "thresholds": [float(min(t, 1.0)) for t in thr],
        }
    return out


def _f1_counts(y_true: np.ndarray, pred: np.ndarray, metric: str) -> np.ndarray:
    """Per row the true positives, false positives and false negatives that ``metric`` sums
    over resampled rows: rows x 3 for ``micro_f1`` (summed over labels), rows x labels x 3
    for ``macro_f1``."""
    if metric not in {"micro_f1", "macro_f1"}:
        raise ValueError(f"bootstrap: metric must be micro_f1 or macro_f1, got {metric}")
    y = np.asarray(y_true, dtype=bool)
    p = np.asarray(pred, dtype=bool)
    if p.shape != y.shape:
        raise ValueError(f"bootstrap: predictions of shape {p.shape} for gold of shape {y.shape}")
    counts = np.stack([p & y, p & ~y, ~p & y], axis=-1).astype(np.float64)
    return counts.sum(axis=1) if metric == "micro_f1" else counts


def _f1_of_totals(total: np.ndarray, metric: str) -> np.ndarray:
    tp, fp, fn = total[..., 0], total[..., 1], total[..., 2]
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1 if metric == "micro_f1" else f1.mean(axis=-1)


def _bootstrap_scores(
    counts: list[np.ndarray], metric: str, draws: int, seed: int
) -> list[np.ndarray]:
    """``metric`` of each prediction (its :func:`_f1_counts`) on ``draws`` resamples of the
    rows, the same resamples for all: one array of ``draws`` scores per prediction."""
    n = len(counts[0])
    rng = np.random.default_rng(seed)
    out: list[list[np.ndarray]] = [[] for _ in counts]
    for start in range(0, draws, 250):
        k = min(250, draws - start)
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=k).astype(np.float64)
        for i, c in enumerate(counts):
            out[i].append(_f1_of_totals(np.tensordot(weights, c, axes=(1, 0)), metric))
    return [np.concatenate(o) for o in out]


def _paired(
    y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, metric: str, draws: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The two predictions' counts and their scores on the same resamples of the rows
    (:func:`_bootstrap_scores`); None without rows."""
    ca, cb = _f1_counts(y_true, pred_a, metric), _f1_counts(y_true, pred_b, metric)
    if len(ca) == 0:
        return None
    sa, sb = _bootstrap_scores([ca, cb], metric, draws, seed)
    return ca, cb, sa, sb


def _check_level(level: float, who: str) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"{who}: level must lie in (0, 1), got {level}")


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_bootstrap_p(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    metric: str = "micro_f1",
    draws: int = 2000,
    seed: int = 0,
) -> float:
    """One-sided paired bootstrap over rows: the fraction of ``draws`` resamples of the rows
    (the same rows for both) in which ``pred_a`` does not score above ``pred_b``.

    Small values say that ``a`` beats ``b`` on these rows by more than the luck of which
    rows were drawn. ``y_true`` and the predictions are 0/1 (rows x labels); ``metric`` is
    ``micro_f1`` (accuracy for single-label rows) or ``macro_f1``.
    """
    paired = _paired(y_true, pred_a, pred_b, metric, draws, seed)
    if paired is None:
        return 1.0
    sa, sb = paired[2:]
    return float((sa <= sb + 1e-12).sum()) / draws


def bootstrap_interval(
    y_true: np.ndarray,
    pred: np.ndarray,
    metric: str = "micro_f1",
    level: float = 0.95,
    draws: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric`` (``micro_f1``, which is accuracy for
    single-label rows, or ``macro_f1``) over resamples of the rows: how far the score of
    these predictions could move on another draw of as many rows from the same data.
    ``(nan, nan)`` without rows."""
    _check_level(level, "bootstrap_interval")
    counts = _f1_counts(y_true, pred, metric)
    if len(counts) == 0:
        return float("nan"), float("nan")
    (scores,) = _bootstrap_scores([counts], metric, draws, seed)
    return _percentile_interval(scores, level)


def bootstrap_difference(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    metric: str = "micro_f1",
    *,
    level: float = 0.95,
    draws: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """``metric`` of ``pred_a`` minus that of ``pred_b`` on the same rows, with the percentile
    interval of that difference over paired resamples of the rows (the same rows for both):
    ``(difference, low, high)``. An interval that holds 0 says the rows cannot tell the two
    apart. ``(nan, nan, nan)`` without rows."""
    _check_level(level, "bootstrap_difference")
    paired = _paired(y_true, pred_a, pred_b, metric, draws, seed)
    if paired is None:
        return float("nan"), float("nan"), float("nan")
    ca, cb, sa, sb = paired
    point = float(_f1_of_totals(ca.sum(axis=0), metric) - _f1_of_totals(cb.sum(axis=0), metric))
    return (point, *_percentile_interval(sa - sb, level))
