import numpy as np
import pytest
from sklearn.metrics import f1_score

from label_pipeline.zeroshot.selection import (
    THRESHOLDS,
    Selection,
    accuracy,
    apply_selection,
    choose_selection,
    f1_scores,
    select_argmax,
    select_by_threshold,
    select_top_k,
    sweep_thresholds,
    sweep_top_k,
    tune_per_label_thresholds,
)

LABELS = ["a", "b", "c"]
SCORES = np.array(
    [
        [0.9, 0.2, 0.6],
        [0.1, 0.5, 0.4],
        [0.3, 0.3, 0.3],
        [0.05, 0.02, 0.01],
    ]
)


def test_threshold_selects_scores_at_or_above_it():
    got = select_by_threshold(SCORES, 0.4)
    assert got.tolist() == [[1, 0, 1], [0, 1, 1], [0, 0, 0], [0, 0, 0]]
    # float32 storage must not push a score of exactly the threshold below it
    assert select_by_threshold(np.float32([[0.3]]), 0.3).tolist() == [[1]]


def test_per_label_thresholds():
    got = select_by_threshold(SCORES, np.array([0.95, 0.25, 0.3]))
    assert got.tolist() == [[0, 0, 1], [0, 1, 1], [0, 1, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match="per-label thresholds"):
        select_by_threshold(SCORES, np.array([0.5, 0.5]))


def test_top_k_picks_highest_and_breaks_ties_by_label_order():
    assert select_top_k(SCORES, 1).tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 0]]
    assert select_top_k(SCORES, 2).tolist() == [[1, 0, 1], [0, 1, 1], [1, 1, 0], [1, 1, 0]]
    assert select_top_k(SCORES, 3).sum() == 12
    with pytest.raises(ValueError, match="1 <= k <= 3"):
        select_top_k(SCORES, 4)


def test_argmax_with_confidence_floor_leaves_unsure_rows_unlabelled():
    got = select_argmax(SCORES, floor=0.35)
    assert got.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert select_argmax(SCORES).sum() == 4


def test_f1_matches_scikit_learn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, size=(50, 5))
    y_pred = rng.integers(0, 2, size=(50, 5))
    y_pred[:, 4] = 0  # a label never predicted: zero_division convention
    got = f1_scores(y_true, y_pred)
    assert got["micro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, average="micro", zero_division=0)
    )
    assert got["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, average="macro", zero_division=0)
    )
    assert accuracy(y_true, y_true) == 1.0


def test_threshold_sweep_finds_the_gap_between_positives_and_negatives():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=(40, 3))
    y[0] = 1
    # positives score in [0.62, 0.9], negatives in [0.1, 0.48]: any threshold in (0.48, 0.62] is perfect
    scores = np.where(y == 1, rng.uniform(0.62, 0.9, y.shape), rng.uniform(0.1, 0.48, y.shape))
    curve = sweep_thresholds(scores, y)
    assert len(curve["value"]) == 100 and curve["value"][0] == 0.01 and curve["value"][-1] == 1.0
    sel = choose_selection(scores, y, LABELS, multi_label=True, rule="threshold")
    assert sel.rule == "threshold"
    # the first perfect threshold: just above the highest negative score
    assert scores[y == 0].max() < sel.value <= scores[y == 1].min()
    assert sel.value - 0.01 <= scores[y == 0].max()
    assert sel.valid_metrics["micro_f1"] == 1.0
    # lower or higher thresholds are worse
    assert curve["micro_f1"][int(round(0.3 * 100)) - 1] < 1.0
    assert curve["micro_f1"][int(round(0.8 * 100)) - 1] < 1.0


def test_top_k_wins_when_rows_have_a_fixed_number_of_labels_on_different_scales():
    # every row has exactly two true labels, but score levels differ by row: no global
    # threshold separates them, top-2 does
    y = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 1, 1]])
    scale = np.array([[0.9], [0.5], [0.2], [0.7]])
    scores = np.where(y == 1, scale, scale - 0.1)
    sel = choose_selection(scores, y, ["a", "b", "c", "d"], multi_label=True)
    assert (sel.rule, sel.value) == ("top_k", 2.0)
    assert sel.valid_metrics["micro_f1"] == 1.0
    assert set(sel.curves) == {"threshold", "top_k"}
    k_curve = sweep_top_k(scores, y)
    assert k_curve["value"] == [1.0, 2.0, 3.0, 4.0]
    assert k_curve["micro_f1"][1] == 1.0


def test_macro_metric_can_choose_differently_from_micro():
    # label "b" is rare and scores low; macro-F1 rewards a low threshold that recovers it
    y = np.array([[1, 0], [1, 0], [1, 0], [1, 1], [0, 0], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.9, 0.3], [0.2, 0.2], [0.2, 0.2]])
    micro = choose_selection(scores, y, ["a", "b"], True, metric="micro_f1", rule="threshold")
    macro = choose_selection(scores, y, ["a", "b"], True, metric="macro_f1", rule="threshold")
    assert micro.valid_metrics["macro_f1"] <= macro.valid_metrics["macro_f1"]
    assert 0.2 < macro.value <= 0.3


def test_per_label_thresholds_are_tuned_per_label():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    scores = np.array([[0.8, 0.1], [0.2, 0.35], [0.9, 0.4], [0.3, 0.2]])
    thr = tune_per_label_thresholds(scores, y)
    assert 0.3 < thr[0] <= 0.8 and 0.2 < thr[1] <= 0.35
    sel = choose_selection(scores, y, ["a", "b"], True, rule="threshold", per_label=True)
    assert sel.per_label_thresholds == {"a": thr[0], "b": thr[1]}
    assert (apply_selection(sel, scores, ["a", "b"]) == y).all()
    # a label absent from the truth gets the grid's top threshold
    assert tune_per_label_thresholds(scores, np.zeros_like(y))[0] == THRESHOLDS[-1]


def test_single_label_uses_argmax_and_the_floor():
    y = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    scores = np.array([[0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8]])
    sel = choose_selection(scores, y, LABELS, multi_label=False, confidence_floor=0.5)
    assert (sel.rule, sel.value) == ("argmax", 0.5)
    assert apply_selection(sel, scores, LABELS).tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert sel.valid_metrics["accuracy"] == pytest.approx(2 / 3)
    assert sel.curves["floor"]["coverage"][0] == 1.0


def test_without_labelled_validation_rows_falls_back_to_top_1():
    sel = choose_selection(SCORES, np.zeros((0, 3)), LABELS, multi_label=True)
    assert (sel.rule, sel.value) == ("top_k", 1.0)
    assert "no labelled validation rows" in sel.note
    assert apply_selection(sel, SCORES, LABELS).sum(axis=1).tolist() == [1, 1, 1, 1]


def test_selection_json_round_trip():
    sel = Selection("threshold", 0.4, "micro_f1", {"micro_f1": 0.5}, curves={"x": {}})
    out = sel.to_json()
    assert "curves" not in out and out["rule"] == "threshold"
    with pytest.raises(ValueError, match="unknown selection rule"):
        apply_selection(Selection("bogus", 1, "micro_f1"), SCORES, LABELS)
