"""Expected precision of labels written on unlabeled rows, and how many of them are wrong.

Given calibrated probabilities of the pool and the labels a rule assigned, the expected number
of right labels of label ``j`` is the sum of ``P(j | row)`` over the rows that got ``j``; the
expected precision is that sum over the number of such rows, the expected number of wrong
labels the rest. The same per label and over all assigned labels.

The interval around it adds two uncertainties: the outcome of each label given its probability
(a Poisson-binomial variance, ``Σ p(1-p) / n²``) and how well the calibration holds in that
region, which the validation split measures only up to its own sampling error (the binomial
standard error of the precision the same rule reaches on the validation rows). The interval is
``expected ± z·sqrt(both variances)``, clipped to [0, 1]. Beside it the precision measured on
the validation rows (Wilson interval), and the expected precision the calibrated validation
probabilities state for those rows (cross-fitted, so honest): their gap shows any calibration
bias in the selected region.

Per-label calibration makes ``P(label | its own score)`` right. A rule that picks a label by its
own score (a threshold) keeps that right on the labels it picks. A rule that picks a label by its
*rank* among the row's labels (top-k, argmax on a multi-label task) does not: a label that beats
the row's other labels is more often right than its own score says, and the per-label
probabilities understate the precision of what the rule picks.
:func:`fit_selected_calibration` fits a second calibrator (Platt scaling, a slope and an
intercept) on the probabilities of the labels the rule picks on the validation split,
cross-fitted, and :meth:`SelectedCalibration.apply` applies it to the picked labels of the pool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: multi-label selection rules that pick a label by its rank among the row's labels
RANK_RULES = ("top_k", "argmax")

Z_95 = 1.959964


def wilson(k: float, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """Wilson score interval of ``k`` successes in ``n`` trials (None when ``n`` is 0)."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


class PrecisionAccumulator:
    """Sums over the pool, shard by shard: per label the number of assigned labels, the sum of
    their probabilities and of ``p(1-p)`` (the whole pool never needs to sit in memory)."""

    def __init__(self, n_labels: int) -> None:
        self.count = np.zeros(n_labels, dtype=np.int64)
        self.sum_p = np.zeros(n_labels)
        self.sum_pq = np.zeros(n_labels)

    def add(self, probs: np.ndarray, pred: np.ndarray) -> None:
        """Add one shard: calibrated probabilities and the rule's 0/1 predictions."""
        P = np.asarray(probs, dtype=np.float64)
        Z = np.asarray(pred).astype(bool)
        if P.shape != Z.shape:
            raise ValueError(f"probabilities {P.shape} and predictions {Z.shape} differ in shape")
        sel = np.where(Z, P, 0.0)
        self.count += Z.sum(axis=0)
        self.sum_p += sel.sum(axis=0)
        self.sum_pq += (sel * (1 - sel)).sum(axis=0)

    def result(
        self,
        labels: list[str],
        valid_probs: np.ndarray | None = None,
        valid_pred: np.ndarray | None = None,
        valid_y: np.ndarray | None = None,
        z: float = Z_95,
    ) -> dict[str, Any]:
        """See :func:`expected_precision`."""
        has_valid = valid_probs is not None and valid_pred is not None and valid_y is not None
        if has_valid:
            PV = np.asarray(valid_probs, dtype=np.float64)
            ZV = np.asarray(valid_pred).astype(bool)
            YV = np.asarray(valid_y).astype(np.float64)
        stats = (int(self.count.sum()), float(self.sum_p.sum()), float(self.sum_pq.sum()))
        overall = _block(stats, (PV[ZV], YV[ZV]) if has_valid else None, None, z)
        per_label = []
        for j, name in enumerate(labels):
            v = (PV[ZV[:, j], j], YV[ZV[:, j], j]) if has_valid else None
            stats = (int(self.count[j]), float(self.sum_p[j]), float(self.sum_pq[j]))
            per_label.append({"label": name, **_block(stats, v, overall["calibration_se"], z)})
        return {"overall": overall, "per_label": per_label, "z": z}


def _block(
    stats: tuple[int, float, float],
    valid: tuple[np.ndarray, np.ndarray] | None,
    fallback_se: float | None,
    z: float,
) -> dict[str, Any]:
    """One row: ``stats`` (assigned labels, sum of their calibrated probabilities, sum of
    ``p(1-p)``) on the pool, ``valid`` (calibrated probability, gold 0/1) of the labels the rule
    assigns on valid."""
    n, sum_p, sum_pq = stats
    out: dict[str, Any] = {"assigned": n}
    if n:
        expected = sum_p / n
        out["expected_precision"] = expected
        out["expected_wrong"] = n - sum_p
        var_outcome = sum_pq / (n * n)
    else:
        out["expected_precision"] = None
        out["expected_wrong"] = 0.0
        var_outcome = 0.0
    se_cal = fallback_se
    if valid is not None and valid[0].size:
        pv, yv = valid
        k, m = float(yv.sum()), int(yv.size)
        measured = k / m
        out["valid_assigned"] = m
        out["valid_precision"] = measured
        out["valid_interval"] = wilson(k, m, z)
        out["valid_expected_precision"] = float(pv.mean())
        # a measured precision of 0 or 1 has a zero plug-in variance: use the add-one estimate
        pm = (k + 1) / (m + 2)
        se_cal = math.sqrt(pm * (1 - pm) / m)
    else:
        out["valid_assigned"] = 0
        out["valid_precision"] = None
        out["valid_interval"] = None
        out["valid_expected_precision"] = None
    out["calibration_se"] = se_cal
    if n:
        half = z * math.sqrt(var_outcome + (se_cal or 0.0) ** 2)
        out["interval"] = (max(0.0, expected - half), min(1.0, expected + half))
        out["expected_wrong_interval"] = (
            n * (1 - out["interval"][1]),
            n * (1 - out["interval"][0]),
        )
    else:
        out["interval"] = None
        out["expected_wrong_interval"] = None
    if se_cal is None and n:
        out["note"] = "no validation row got this label: the interval covers outcomes only"
    return out


def expected_precision(
    pool_probs: np.ndarray,
    pool_pred: np.ndarray,
    labels: list[str],
    valid_probs: np.ndarray | None = None,
    valid_pred: np.ndarray | None = None,
    valid_y: np.ndarray | None = None,
    z: float = Z_95,
) -> dict[str, Any]:
    """Expected precision per label and overall of the labels ``pool_pred`` (0/1, rows x
    labels) assigns, from the calibrated ``pool_probs``; with ``valid_*`` (calibrated,
    cross-fitted validation probabilities, the same rule's 0/1 predictions and the gold labels)
    the interval includes the calibration uncertainty and the measured validation precision.

    Returns ``{"overall": {...}, "per_label": [{"label", ...}], "z"}``; each block has
    ``assigned``, ``expected_precision``, ``expected_wrong``, ``interval``,
    ``expected_wrong_interval``, ``valid_assigned``, ``valid_precision``, ``valid_interval``,
    ``valid_expected_precision``, ``calibration_se``.
    """
    acc = PrecisionAccumulator(len(labels))
    acc.add(pool_probs, pool_pred)
    return acc.result(labels, valid_probs, valid_pred, valid_y, z)


@dataclass
class SelectedCalibration:
    """A calibrator of the probabilities of the labels a rule picks (see the module docstring).

    Attributes:
        fit: the calibration fitted on the picked validation labels, as one column.
        cells: how many picked (row, label) pairs of valid it was fitted on.
    """

    fit: Any
    cells: int

    def apply(self, probs: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """``probs`` with the picked labels' (``pred`` = 1) probabilities recalibrated."""
        out = np.array(probs, dtype=np.float64, copy=True)
        mask = np.asarray(pred).astype(bool)
        if mask.any():
            out[mask] = self.fit.calibrator.apply(out[mask].reshape(-1, 1)).ravel()
        return out

    def facts(self) -> dict[str, Any]:
        """Plain JSON: what was fitted, on how many picked valid labels, with notes."""
        return {**self.fit.facts(), "cells": self.cells}


def fit_selected_calibration(
    valid_probs: np.ndarray,
    valid_pred: np.ndarray,
    valid_y: np.ndarray,
    min_cells: int,
    min_cells_param: str,
) -> tuple[SelectedCalibration, np.ndarray]:
    """Fit Platt scaling on the (cross-fitted, calibrated) probabilities of the labels that the
    rule picks on valid (``valid_pred`` = 1) against whether the row carries them.

    Returns the calibrator and ``valid_probs`` with the picked labels' probabilities replaced by
    their cross-fitted recalibrated values. Fewer than ``min_cells`` picked labels (named by
    ``min_cells_param``), or picked labels that are all right or all wrong: the identity, with a
    note that says why.
    """
    from label_pipeline.calibration import fit_calibration

    P = np.asarray(valid_probs, dtype=np.float64)
    mask = np.asarray(valid_pred).astype(bool)
    p, y = P[mask].reshape(-1, 1), np.asarray(valid_y, dtype=np.float64)[mask].reshape(-1, 1)
    right = int(y.sum())
    if p.size >= min_cells and right in (0, p.size):
        from label_pipeline.calibration import CalibrationFit, Calibrator

        note = (
            f"all {p.size} labels the rule picks on valid are {'wrong' if right == 0 else 'right'}"
            ": nothing to recalibrate them on (identity)"
        )
        fit = CalibrationFit(Calibrator("none", True), p, {}, "platt", True, [note])
        return SelectedCalibration(fit, int(p.size)), P.copy()
    fit = fit_calibration(
        p,
        y,
        True,
        "platt",
        min_rows=min_cells,
        labels=["picked labels"],
        what="the labels the rule picks on valid",
        min_rows_param=min_cells_param,
    )
    out = P.copy()
    out[mask] = fit.valid_probs.ravel()
    return SelectedCalibration(fit, int(mask.sum())), out


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _iv(v: Any) -> str:
    return "–" if not v else f"{100 * v[0]:.1f}–{100 * v[1]:.1f}"


def precision_rows(est: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows (label, assigned, expected precision % and interval, expected wrong, valid
    precision % and interval) for markdown and Prefect tables."""
    rows = []
    for name, b in [("all labels", est["overall"])] + [(r["label"], r) for r in est["per_label"]]:
        wrong_iv = b.get("expected_wrong_interval")
        rows.append(
            {
                "label": name,
                "labels assigned": b["assigned"],
                "expected precision %": _pct(b["expected_precision"]),
                "interval %": _iv(b["interval"]),
                "expected wrong": f"{b['expected_wrong']:.0f}"
                + (f" ({wrong_iv[0]:.0f}–{wrong_iv[1]:.0f})" if wrong_iv else ""),
                "valid precision %": _pct(b["valid_precision"]),
                "valid interval %": _iv(b["valid_interval"]),
                "valid rows": b["valid_assigned"],
            }
        )
    return rows


def precision_summary(expected: dict[str, Any], noun: str = "label") -> list[str]:
    """Markdown lines stating what :func:`expected_precision` found (``expected``) of the
    labels (called ``noun`` in the text) a stage wrote on the pool: how many are expected to
    be wrong, the expected precision and its interval, the same rule's precision on the
    validation rows and the :func:`precision_rows` table."""
    from label_pipeline.artifacts import md_table

    o = expected["overall"]
    if o["expected_precision"] is None:
        return [f"No {noun} was written on the pool.", ""]
    return [
        f"Of the {o['assigned']} {noun}s written, about **{o['expected_wrong']:.0f}** are expected "
        f"to be wrong: expected precision **{100 * o['expected_precision']:.1f} %** "
        f"({100 * o['interval'][0]:.1f}–{100 * o['interval'][1]:.1f} %, "
        "95 % interval: label outcomes and the validation check of the calibration)"
        + (
            f"; the same rule on the validation split: {100 * o['valid_precision']:.1f} % "
            f"of {o['valid_assigned']} labels right."
            if o["valid_precision"] is not None
            else "; no validation rows to check it on."
        ),
        "",
        md_table(precision_rows(expected)),
        "",
    ]
