"""Calibration: scores, calibrators chosen by cross-fitted log loss, fallbacks, and the train
stage saving a calibrator that loading applies."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_fixtures import make_splits_dir, splits_ref

from label_pipeline.calibration import (
    Calibrator,
    brier,
    calibrator_from_json,
    ece,
    fit_calibration,
    plot_reliability,
    reliability_bins,
)
from label_pipeline.metrics import log_loss_of


def _single_label_data(n: int, seed: int, sharpen: float = 3.0):
    """Rows whose labels are drawn from softmax(z); the 'model' reports softmax(sharpen * z),
    an overconfident version of the truth."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, size=(n, 4))
    true = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    y_idx = np.array([rng.choice(4, p=p) for p in true])
    model = np.exp(sharpen * z) / np.exp(sharpen * z).sum(axis=1, keepdims=True)
    return model, np.eye(4, dtype=np.int64)[y_idx]


def _multi_label_data(n: int, seed: int, sharpen: float = 3.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 1.5, size=(n, 3))
    y = (rng.random((n, 3)) < 1 / (1 + np.exp(-z))).astype(np.int64)
    return 1 / (1 + np.exp(-sharpen * z)), y


def test_scores_on_hand_computed_cases():
    # single-label: top-label confidences 0.9 (right), 0.9 (wrong), 0.6 (right)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    y = np.array([[1, 0], [0, 1], [0, 1]])
    # bins: 0.9 -> accuracy 0.5 (|0.4| x 2 rows), 0.6 -> accuracy 1 (|0.4| x 1 row)
    assert ece(y, probs, multi_label=False) == pytest.approx(0.4)
    assert brier(y, probs, multi_label=False) == pytest.approx((0.02 + 1.62 + 0.32) / 3)
    # multi-label: every (row, label) pair is binned
    pm = np.array([[0.2, 0.8], [0.2, 0.8]])
    ym = np.array([[0, 1], [1, 1]])
    # bin 0.2: frequency 0.5 (gap 0.3, 2 pairs); bin 0.8: frequency 1 (gap 0.2, 2 pairs)
    assert ece(ym, pm, multi_label=True) == pytest.approx(0.25)
    assert brier(ym, pm, multi_label=True) == pytest.approx((0.04 + 0.04 + 0.64 + 0.04) / 4)
    bins = reliability_bins(ym, pm, True, adaptive=True, n_bins=2)
    assert [b["n"] for b in bins] == [2, 2]


@pytest.mark.parametrize("multi_label", [False, True])
def test_an_overconfident_model_becomes_calibrated_on_held_out_rows(multi_label):
    make = _multi_label_data if multi_label else _single_label_data
    valid_p, valid_y = make(600, seed=0)
    test_p, test_y = make(3000, seed=1)
    fit = fit_calibration(valid_p, valid_y, multi_label, "auto", seed=0)
    assert fit.method != "none" and not fit.fallback
    assert fit.cv_log_loss[fit.method] < fit.cv_log_loss["none"]
    calibrated = fit.calibrator.apply(test_p)
    before, after = ece(test_y, test_p, multi_label), ece(test_y, calibrated, multi_label)
    assert before > 0.08, before
    assert after < 0.035, after
    assert after < before / 3
    assert log_loss_of(test_y, calibrated, multi_label) < log_loss_of(test_y, test_p, multi_label)
    if not multi_label:
        np.testing.assert_allclose(calibrated.sum(axis=1), 1.0, atol=1e-9)
    # the saved form gives the same probabilities
    back = calibrator_from_json(json.loads(json.dumps(fit.calibrator.to_json())))
    np.testing.assert_allclose(back.apply(test_p), calibrated)


def test_temperature_recovers_the_sharpening():
    valid_p, valid_y = _single_label_data(2000, seed=2, sharpen=2.5)
    fit = fit_calibration(valid_p, valid_y, False, "temperature")
    assert fit.method == "temperature"
    assert fit.calibrator.params["temperature"][0] == pytest.approx(2.5, rel=0.15)


def test_valid_probabilities_are_cross_fitted():
    valid_p, valid_y = _single_label_data(300, seed=3)
    fit = fit_calibration(valid_p, valid_y, False, "isotonic", folds=5)
    in_sample = fit.calibrator.apply(valid_p)
    # the held-out folds were calibrated by calibrators that never saw them
    assert not np.allclose(fit.valid_probs, in_sample)
    assert log_loss_of(valid_y, fit.valid_probs, False) > log_loss_of(valid_y, in_sample, False)


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_every_method_keeps_probabilities_valid(method):
    for multi_label, make in ((False, _single_label_data), (True, _multi_label_data)):
        p, y = make(200, seed=4)
        fit = fit_calibration(p, y, multi_label, method)
        out = fit.calibrator.apply(p)
        assert out.shape == p.shape and np.isfinite(out).all()
        assert (out > 0).all() and (out < 1).all()
        assert fit.method == method


def test_too_few_rows_fall_back_to_identity_and_say_how_many_are_needed():
    p, y = _single_label_data(12, seed=5)
    fit = fit_calibration(p, y, False, "auto", min_rows=30)
    assert fit.fallback and fit.method == "none"
    assert "12 rows" in fit.notes[0] and "at least 30" in fit.notes[0]
    assert "train.calibration_min_rows" in fit.notes[0]
    np.testing.assert_allclose(fit.calibrator.apply(p), p)


def test_equal_probabilities_fall_back_to_identity():
    p = np.full((50, 3), 1 / 3)
    y = np.eye(3, dtype=np.int64)[np.arange(50) % 3]
    fit = fit_calibration(p, y, False, "auto")
    assert fit.fallback and fit.method == "none"
    assert "same probabilities" in fit.notes[0]


def test_a_label_without_valid_positives_is_left_as_it_is_and_named():
    p, y = _multi_label_data(300, seed=6)
    y[:, 2] = 0
    fit = fit_calibration(p, y, True, "temperature", labels=["a", "b", "c"])
    assert fit.calibrator.skipped_labels == [2]
    assert any("['c']" in n and "no positive" in n for n in fit.notes)
    np.testing.assert_allclose(fit.calibrator.apply(p)[:, 2], p[:, 2])
    assert not np.allclose(fit.calibrator.apply(p)[:, 0], p[:, 0])


def test_identity_and_unknown_method():
    p, y = _single_label_data(50, seed=7)
    assert fit_calibration(p, y, False, "none").method == "none"
    with pytest.raises(ValueError, match="unknown calibrat"):
        Calibrator("magic", False).apply(p)


def test_reliability_diagram_is_written(tmp_path):
    p, y = _single_label_data(300, seed=8)
    fit = fit_calibration(p, y, False)
    out = tmp_path / "fig" / "reliability.png"
    plot_reliability({"uncalibrated": (y, p), "calibrated": (y, fit.valid_probs)}, False, out, "t")
    assert out.is_file() and out.stat().st_size > 5000


@pytest.mark.parametrize("multi_label", [False, True])
def test_train_stage_saves_the_calibrator_and_reloading_reproduces_its_probabilities(
    tmp_path, multi_label
):
    from label_pipeline.decision import Decision
    from label_pipeline.methods.base import load_saved
    from label_pipeline.store import StageStore
    from tasks.train import TrainConfig, run_train

    split_dir = make_splits_dir(tmp_path / "split", multi_label=multi_label, n_valid=60)
    store = StageStore(tmp_path / "store")
    cfg = TrainConfig(methods=["naive_bayes"], calibration="temperature")
    ref = run_train(store, cfg, splits_ref(split_dir))
    run = ref.dir / "runs/naive_bayes/all"
    fit = json.loads((run / "fit.json").read_text())
    assert fit["calibration"]["method"] == "temperature"
    assert set(fit["calibration"]["valid_before"]) >= {"ece", "adaptive_ece", "brier", "log_loss"}
    entry = json.loads((ref.dir / "runs.json").read_text())[0]["calibration"]
    assert entry["valid_log_loss_before"] == fit["calibration"]["valid_before"]["log_loss"]
    assert (run / "model" / "calibration.json").is_file()
    raw_test = np.load(run / "test_probs_uncalibrated.npy")
    test = np.load(run / "test_probs.npy")
    assert not np.allclose(raw_test, test, atol=1e-3)

    import datasets

    texts = list(datasets.load_from_disk(str(split_dir / "splits"))["test"]["text"])
    decision = Decision.from_json(json.loads((run / "decision.json").read_text()))
    model = load_saved("naive_bayes", run / "model")
    np.testing.assert_allclose(
        decision.adjust(model.predict_proba(texts)), test, rtol=1e-4, atol=1e-5
    )
    # the model without its calibrator gives the uncalibrated probabilities
    np.testing.assert_allclose(model.model.predict_proba(texts), raw_test, rtol=1e-4, atol=1e-5)
    summary = (ref.dir / "summary.md").read_text()
    assert "temperature" in summary


def test_train_stage_reports_too_few_valid_rows(tmp_path):
    from label_pipeline.store import StageStore
    from tasks.train import TrainConfig, run_train

    split_dir = make_splits_dir(tmp_path / "split", multi_label=False, n_valid=30)
    store = StageStore(tmp_path / "store")
    ref = run_train(
        store, TrainConfig(methods=["naive_bayes"], calibration_min_rows=40), splits_ref(split_dir)
    )
    run = ref.dir / "runs/naive_bayes/all"
    fit = json.loads((run / "fit.json").read_text())
    assert fit["calibration"]["fallback"] and fit["calibration"]["method"] == "none"
    assert not (run / "model" / "calibration.json").exists()
    summary = (ref.dir / "summary.md").read_text()
    assert "calibration needs at least 40" in summary
