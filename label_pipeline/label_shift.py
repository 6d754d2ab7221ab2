"""Label shift: when the labelled rows do not have the unlabeled pool's label frequencies.

A common way to collect few labels is *N rows per label* ("8 tickets per queue"); the pool they
came from is rarely balanced. A classifier trained on the balanced rows then predicts the rare
labels far too often on the pool. Under label shift (the texts of a label look alike in both
sets, only the label frequencies differ) the fix is to reweight the probabilities:

    p_pool(y | x)  ∝  p(y | x) · q_y / π_y

where ``π`` is the label distribution the model was trained for and ``q`` the pool's. ``q`` is
not known; it is estimated from the model's own predictions (black-box shift estimation,
Lipton et al. 2018, with soft predictions): the mean predicted probability vector on the pool
is ``μ = C q``, where column ``j`` of ``C`` is the mean predicted probability vector on the
validation rows of label ``j``. With a handful of validation rows per label ``C`` is noisy,
so each column is smoothed towards "the model is right" (``pseudo_count`` rows of the one-hot
vector ``e_j``; a label without validation rows gets ``e_j`` itself). ``q`` is the
least-squares solution clipped to at least ``floor_share`` of a balanced share (``1/K`` for
``K`` labels) and renormalised: a few validation rows per label cannot rule a label out.

Single-label tasks only: a multi-label task's per-label decision thresholds, tuned on valid,
already set how often each label is predicted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: smoothing of each confusion column towards the one-hot vector, in validation rows
PSEUDO_COUNT = 2.0
#: no label's estimated pool frequency goes below this share of 1/K
FLOOR_SHARE = 0.25


@dataclass
class LabelShift:
    """The estimate and what it rests on.

    Attributes:
        source_prior: label distribution the model's probabilities are calibrated for.
        target_prior: estimated label distribution of the pool.
        pool_rows: pool rows the estimate used.
        valid_rows_per_label: validation rows of each label behind ``C``.
        pool_mean_proba: the model's mean probability per label on those pool rows.
    """

    source_prior: list[float]
    target_prior: list[float]
    pool_rows: int
    valid_rows_per_label: list[int]
    pool_mean_proba: list[float]

    def to_json(self) -> dict[str, Any]:
        return {
            "source_prior": [round(v, 6) for v in self.source_prior],
            "target_prior": [round(v, 6) for v in self.target_prior],
            "pool_rows": self.pool_rows,
            "valid_rows_per_label": self.valid_rows_per_label,
            "pool_mean_proba": [round(v, 6) for v in self.pool_mean_proba],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabelShift:
        return cls(
            source_prior=[float(v) for v in data["source_prior"]],
            target_prior=[float(v) for v in data["target_prior"]],
            pool_rows=int(data.get("pool_rows", 0)),
            valid_rows_per_label=[int(v) for v in data.get("valid_rows_per_label", [])],
            pool_mean_proba=[float(v) for v in data.get("pool_mean_proba", [])],
        )

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities reweighted to the pool's label distribution (rows still sum to 1)."""
        return reweight(probs, np.asarray(self.source_prior), np.asarray(self.target_prior))


def reweight(probs: np.ndarray, source_prior: np.ndarray, target_prior: np.ndarray) -> np.ndarray:
    """``p · q / π``, renormalised per row."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[0] == 0:
        return probs
    w = np.asarray(target_prior, dtype=np.float64) / np.maximum(
        np.asarray(source_prior, dtype=np.float64), 1e-12
    )
    out = probs * w[None, :]
    total = out.sum(axis=1, keepdims=True)
    # a row whose mass sat entirely on labels weighted to ~0 keeps its original probabilities
    return np.where(total > 0, out / np.where(total > 0, total, 1.0), probs)


def estimate_label_shift(
    valid_probs: np.ndarray,
    valid_y: np.ndarray,
    pool_probs: np.ndarray,
    source_prior: np.ndarray,
    pseudo_count: float = PSEUDO_COUNT,
    floor_share: float = FLOOR_SHARE,
) -> LabelShift:
    """Estimate the pool's label distribution (see the module docstring).

    Args:
        valid_probs: (rows x labels) probabilities on the validation split.
        valid_y: (rows x labels) one-hot gold labels of those rows.
        pool_probs: (rows x labels) probabilities on unlabeled pool rows.
        source_prior: the label distribution the model was trained for.
        pseudo_count: smoothing of each confusion column, in rows (>= 0).
        floor_share: smallest estimated frequency of a label, as a share of ``1/K``.
    """
    pv = np.asarray(valid_probs, dtype=np.float64)
    yv = np.asarray(valid_y, dtype=np.int64)
    pp = np.asarray(pool_probs, dtype=np.float64)
    k = pv.shape[1] if pv.ndim == 2 else pp.shape[1]
    if pv.shape != yv.shape:
        raise ValueError(f"valid probabilities {pv.shape} and labels {yv.shape} differ in shape")
    if pp.ndim != 2 or pp.shape[1] != k or len(pp) == 0:
        raise ValueError(f"pool probabilities must be (rows > 0, {k}), got {pp.shape}")
    if pseudo_count < 0:
        raise ValueError(f"pseudo_count must be >= 0, got {pseudo_count}")
    idx = yv.argmax(axis=1) if len(yv) else np.zeros(0, dtype=np.int64)
    eye = np.eye(k)
    counts = np.bincount(idx, minlength=k)
    cols = []
    for j in range(k):
        total = pv[idx == j].sum(axis=0) + pseudo_count * eye[j]
        n = counts[j] + pseudo_count
        cols.append(total / n if n > 0 else eye[j])
    c = np.stack(cols, axis=1)
    mu = pp.mean(axis=0)
    q = np.linalg.lstsq(c, mu, rcond=None)[0]
    if not 0.0 <= floor_share <= 1.0:
        raise ValueError(f"floor_share must lie in [0, 1], got {floor_share}")
    floor = floor_share / k
    for _ in range(k):  # clipping then renormalising can push others under the floor
        q = np.clip(q, floor, None)
        q = q / q.sum()
        if q.min() >= floor * (1 - 1e-9):
            break
    src = np.asarray(source_prior, dtype=np.float64)
    src = src / max(src.sum(), 1e-12)
    return LabelShift(
        source_prior=src.tolist(),
        target_prior=q.tolist(),
        pool_rows=len(pp),
        valid_rows_per_label=counts.tolist(),
        pool_mean_proba=mu.tolist(),
    )
