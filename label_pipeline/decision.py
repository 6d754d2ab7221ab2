"""From probabilities to label sets: the decision rule of a trained classifier, tuned on valid.

Single-label tasks take the most probable label (argmax). Multi-label tasks predict every
label whose probability reaches a threshold: one global threshold, or one per label, chosen
on the validation split to maximise micro-F1. A per-label threshold tuned on two or three
validation positives fits those rows, not the label: the ``auto`` mode tunes its own
threshold only for labels with at least ``min_label_positives`` validation positives and
gives the others the global one. When the validation split is too small to tune anything
(too few rows, or no positive labels), the rule falls back to 0.5 and says so.
A single-label rule may carry a label-shift correction (:mod:`label_pipeline.label_shift`):
the model's probabilities are reweighted to the pool's estimated label frequencies before the
argmax, and the reweighted probabilities are the ones exported.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

#: candidate thresholds: 0.01, 0.02, ..., 0.99
THRESHOLD_GRID: np.ndarray = np.round(np.arange(1, 100) / 100.0, 2)
FALLBACK_THRESHOLD = 0.5
#: fewer validation rows than this: no tuning, the 0.5 fallback
MIN_VALID_ROWS = 10
#: ``auto`` mode: fewer validation positives than this and a label keeps the global threshold
MIN_LABEL_POSITIVES = 5

ThresholdMode = Literal["global", "per_label", "auto"]


@dataclass
class Decision:
    """A decision rule.

    Attributes:
        rule: ``argmax`` (single-label), ``global`` or ``per_label`` (multi-label thresholds).
        thresholds: one threshold per label (multi-label; all equal for ``global``).
        fallback: True when the rule was not tuned (see ``note``).
        note: why it fell back, or what was special; empty when nothing.
        valid_micro_f1: micro-F1 on the validation split with this rule (None: not measured).
        label_shift: the label-shift estimate (``LabelShift.to_json()``) applied to the
            model's probabilities before the rule; None = probabilities used as they are.
    """

    rule: Literal["argmax", "global", "per_label"]
    thresholds: list[float] = field(default_factory=list)
    fallback: bool = False
    note: str = ""
    valid_micro_f1: float | None = None
    label_shift: dict[str, Any] | None = None

    def adjust(self, probs: np.ndarray) -> np.ndarray:
        """The model's probabilities as this rule reads them (label-shift reweighted if set)."""
        if not self.label_shift:
            return np.asarray(probs, dtype=np.float64)
        from label_pipeline.label_shift import LabelShift

        return LabelShift.from_json(self.label_shift).apply(probs)

    @property
    def threshold(self) -> float | None:
        """The global threshold (None for argmax or per-label rules)."""
        return self.thresholds[0] if self.rule == "global" and self.thresholds else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "threshold": self.threshold}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Decision:
        return cls(
            rule=data["rule"],
            thresholds=[float(t) for t in data.get("thresholds", [])],
            fallback=bool(data.get("fallback", False)),
            note=str(data.get("note", "")),
            valid_micro_f1=data.get("valid_micro_f1"),
            label_shift=data.get("label_shift"),
        )

    def describe(self) -> str:
        if self.rule == "argmax":
            text = "argmax"
        elif self.rule == "global":
            text = f"threshold {self.thresholds[0]:.2f}"
        else:
            text = "per-label thresholds " + ", ".join(f"{t:.2f}" for t in self.thresholds)
        if self.label_shift:
            text += " after label-shift reweighting"
        return text + (" (fallback)" if self.fallback else "")


def apply_decision(probs: np.ndarray, decision: Decision) -> np.ndarray:
    """0/1 prediction matrix (rows x labels) from probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    out = np.zeros(probs.shape, dtype=np.int64)
    if probs.shape[0] == 0:
        return out
    if decision.rule == "argmax":
        out[np.arange(probs.shape[0]), probs.argmax(axis=1)] = 1
        return out
    thr = np.asarray(decision.thresholds, dtype=np.float64)
    if thr.shape[0] != probs.shape[1]:
        raise ValueError(f"{thr.shape[0]} thresholds for {probs.shape[1]} labels")
    return (probs >= thr - 1e-9).astype(np.int64)


def _counts(probs: np.ndarray, y: np.ndarray, grid: np.ndarray) -> tuple[np.ndarray, ...]:
    """tp, fp, fn of every label at every grid threshold: arrays (n_thresholds, n_labels)."""
    pred = probs[None, :, :] >= grid[:, None, None] - 1e-9
    truth = y.astype(bool)[None, :, :]
    tp = (pred & truth).sum(axis=1)
    fp = (pred & ~truth).sum(axis=1)
    fn = (~pred & truth).sum(axis=1)
    return tp, fp, fn


def _micro(tp: float, fp: float, fn: float) -> float:
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def _middle_of_best(values: np.ndarray, grid: np.ndarray) -> tuple[float, float]:
    """The grid value in the middle of the best-scoring thresholds (ties are plateaus)."""
    best = float(values.max())
    idx = np.flatnonzero(np.isclose(values, best))
    return float(grid[idx[len(idx) // 2]]), best


def tune_decision(
    probs: np.ndarray,
    y_true: np.ndarray,
    multi_label: bool,
    mode: ThresholdMode = "global",
    min_valid_rows: int = MIN_VALID_ROWS,
    grid: np.ndarray = THRESHOLD_GRID,
    min_label_positives: int = MIN_LABEL_POSITIVES,
) -> Decision:
    """Choose the decision rule on validation probabilities and gold labels.

    Args:
        probs: (rows x labels) probabilities on the validation split.
        y_true: (rows x labels) 0/1 gold labels of the same rows.
        multi_label: False: argmax, nothing to tune.
        mode: ``global`` (one threshold), ``per_label`` (coordinate ascent on micro-F1,
            starting from the best global threshold; a label with no validation positives
            keeps the global threshold) or ``auto`` (the same, but only labels with at least
            ``min_label_positives`` validation positives get their own threshold; the rule is
            ``global`` when no label has that many).
        min_valid_rows: fewer rows than this (or no positive label at all) -> 0.5 fallback.
        min_label_positives: see ``auto``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if probs.shape != y.shape:
        raise ValueError(f"probs {probs.shape} and y_true {y.shape} differ in shape")
    n, n_labels = probs.shape
    if not multi_label:
        dec = Decision(rule="argmax")
        if n:
            pred = apply_decision(probs, dec)
            dec.valid_micro_f1 = _micro(*(float(v) for v in _tp_fp_fn(pred, y)))
        return dec
    if n < min_valid_rows or not y.any():
        why = (
            f"validation split has {n} rows (< {min_valid_rows})"
            if n < min_valid_rows
            else "validation split has no positive labels"
        )
        dec = Decision(
            rule="global",
            thresholds=[FALLBACK_THRESHOLD] * n_labels,
            fallback=True,
            note=f"{why}: threshold not tuned, {FALLBACK_THRESHOLD} used",
        )
        if n:
            pred = apply_decision(probs, dec)
            dec.valid_micro_f1 = _micro(*(float(v) for v in _tp_fp_fn(pred, y)))
        return dec

    tp, fp, fn = _counts(probs, y, grid)
    micro = np.array(
        [_micro(a, b, c) for a, b, c in zip(tp.sum(1), fp.sum(1), fn.sum(1), strict=True)]
    )
    thr, best = _middle_of_best(micro, grid)
    if mode == "global":
        return Decision(rule="global", thresholds=[thr] * n_labels, valid_micro_f1=best)

    g = int(np.flatnonzero(np.isclose(grid, thr))[0])
    chosen = np.full(n_labels, g)
    floor = max(1, int(min_label_positives)) if mode == "auto" else 1
    no_pos = [j for j in range(n_labels) if y[:, j].sum() < floor]
    if mode == "auto" and len(no_pos) == n_labels:
        return Decision(
            rule="global",
            thresholds=[thr] * n_labels,
            valid_micro_f1=best,
            note=f"no label has {floor} validation positives: one global threshold",
        )
    for _ in range(3):  # coordinate ascent converges in one or two passes
        changed = False
        for j in range(n_labels):
            if j in no_pos:
                continue
            others = np.arange(n_labels) != j
            base = [float(m[chosen[others], np.flatnonzero(others)].sum()) for m in (tp, fp, fn)]
            scores = np.array(
                [
                    _micro(base[0] + tp[t, j], base[1] + fp[t, j], base[2] + fn[t, j])
                    for t in range(len(grid))
                ]
            )
            cur = scores[chosen[j]]
            t_new, s_new = _middle_of_best(scores, grid)
            if s_new > cur + 1e-12:
                chosen[j] = int(np.flatnonzero(np.isclose(grid, t_new))[0])
                changed = True
        if not changed:
            break
    final = _micro(*(float(m[chosen, np.arange(n_labels)].sum()) for m in (tp, fp, fn)))
    note = ""
    if no_pos:
        what = "without validation positives" if floor == 1 else f"with < {floor} valid positives"
        note = f"{len(no_pos)} label(s) {what} keep the global threshold {thr:.2f}"
    return Decision(
        rule="per_label",
        thresholds=[float(grid[c]) for c in chosen],
        valid_micro_f1=final,
        note=note,
    )


def _tp_fp_fn(pred: np.ndarray, y: np.ndarray) -> tuple[int, int, int]:
    p, t = pred.astype(bool), y.astype(bool)
    return int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())


def load_decision(run_dir: str | Path) -> Decision:
    """The decision rule saved with a run."""
    return Decision.from_json(json.loads((Path(run_dir) / "decision.json").read_text()))
