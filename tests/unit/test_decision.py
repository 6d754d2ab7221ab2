"""Threshold tuning: known optimum on constructed scores, fallback when valid is too small."""

from __future__ import annotations

import numpy as np
import pytest

from label_pipeline.decision import Decision, apply_decision, tune_decision


def _scores_with_optimum_at_030():
    # label 0: positives score 0.30..0.34, negatives 0.20..0.29 -> only thresholds in
    # (0.29, 0.30] separate them; the grid point is 0.30
    pos = np.array([0.30, 0.31, 0.32, 0.33, 0.34] * 3)
    neg = np.array([0.20, 0.22, 0.25, 0.27, 0.29] * 3)
    probs = np.concatenate([pos, neg])[:, None]
    y = np.concatenate([np.ones(15), np.zeros(15)])[:, None].astype(int)
    return probs, y


def test_global_threshold_finds_known_optimum():
    probs, y = _scores_with_optimum_at_030()
    dec = tune_decision(probs, y, multi_label=True, mode="global")
    assert dec.rule == "global" and not dec.fallback
    assert dec.threshold == pytest.approx(0.30)
    assert dec.valid_micro_f1 == pytest.approx(1.0)
    assert apply_decision(probs, dec).tolist() == y.tolist()


def test_per_label_thresholds_beat_a_single_threshold():
    rng = np.random.default_rng(0)
    n = 40
    y = np.zeros((n, 2), dtype=int)
    y[: n // 2, 0] = 1
    y[n // 4 : 3 * n // 4, 1] = 1
    probs = np.zeros((n, 2))
    # label 0 separable at 0.8, label 1 separable at 0.2: no single threshold fits both
    probs[:, 0] = np.where(y[:, 0] == 1, rng.uniform(0.85, 0.95, n), rng.uniform(0.6, 0.75, n))
    probs[:, 1] = np.where(y[:, 1] == 1, rng.uniform(0.25, 0.35, n), rng.uniform(0.05, 0.15, n))
    glob = tune_decision(probs, y, True, "global")
    per = tune_decision(probs, y, True, "per_label")
    assert glob.valid_micro_f1 < 1.0
    assert per.valid_micro_f1 == pytest.approx(1.0)
    assert 0.75 < per.thresholds[0] <= 0.85 and 0.15 < per.thresholds[1] <= 0.25


def test_too_small_valid_falls_back_to_half_and_says_so():
    probs = np.array([[0.9, 0.1], [0.2, 0.7]])
    dec = tune_decision(probs, np.array([[1, 0], [0, 1]]), True, min_valid_rows=10)
    assert dec.fallback and dec.thresholds == [0.5, 0.5]
    assert "2 rows" in dec.note and "0.5" in dec.note
    assert "(fallback)" in dec.describe()


def test_no_positive_labels_in_valid_falls_back():
    probs = np.random.default_rng(1).uniform(size=(20, 3))
    dec = tune_decision(probs, np.zeros((20, 3), int), True)
    assert dec.fallback and "no positive" in dec.note


def test_single_label_is_argmax_and_round_trips():
    probs = np.array([[0.2, 0.8], [0.6, 0.4]])
    dec = tune_decision(probs, np.array([[0, 1], [1, 0]]), multi_label=False)
    assert dec.rule == "argmax" and dec.valid_micro_f1 == 1.0
    assert apply_decision(probs, dec).tolist() == [[0, 1], [1, 0]]
    assert Decision.from_json(dec.to_json()) == dec


def _two_labels_one_rare(n: int = 60, rare_pos: int = 3):
    """Label 0: 30 positives, separable at 0.8 (global optimum elsewhere); label 1: only
    ``rare_pos`` validation positives that a per-label threshold can fit exactly."""
    rng = np.random.default_rng(3)
    y = np.zeros((n, 2), dtype=int)
    y[: n // 2, 0] = 1
    y[:rare_pos, 1] = 1
    probs = np.zeros((n, 2))
    probs[:, 0] = np.where(y[:, 0] == 1, rng.uniform(0.85, 0.95, n), rng.uniform(0.6, 0.75, n))
    probs[:, 1] = rng.uniform(0.0, 0.3, n)
    probs[:rare_pos, 1] = 0.31  # just above every negative: an overfit threshold
    return probs, y


def test_auto_tunes_own_thresholds_only_for_labels_with_enough_valid_positives():
    probs, y = _two_labels_one_rare()
    glob = tune_decision(probs, y, True, "global")
    per = tune_decision(probs, y, True, "per_label")
    auto = tune_decision(probs, y, True, "auto", min_label_positives=5)
    # per_label fits the three rare positives with their own threshold
    assert per.thresholds[1] == pytest.approx(0.31)
    # auto: label 0 (30 positives) gets its own threshold, label 1 (3) the global one
    assert auto.rule == "per_label"
    assert 0.75 < auto.thresholds[0] <= 0.85
    assert auto.thresholds[1] == pytest.approx(glob.threshold)
    assert "1 label(s) with < 5 valid positives keep the global threshold" in auto.note
    # lowering the floor to 3 lets the rare label have its own threshold again
    low = tune_decision(probs, y, True, "auto", min_label_positives=3)
    assert low.thresholds[1] == pytest.approx(0.31)


def test_auto_is_global_when_no_label_has_enough_positives():
    probs, y = _two_labels_one_rare(n=20, rare_pos=2)
    y[:, 0] = 0
    y[:3, 0] = 1
    dec = tune_decision(probs, y, True, "auto", min_label_positives=5)
    assert dec.rule == "global" and not dec.fallback
    assert "no label has 5 validation positives" in dec.note
    assert Decision.from_json(dec.to_json()) == dec
