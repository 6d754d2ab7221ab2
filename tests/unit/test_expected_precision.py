"""Expected precision of labels written on a pool: matches the measured precision on a
constructed case, and the evaluate / label stages report calibration and expected precision."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_fixtures import LABELS, make_splits_dir, splits_ref

from label_pipeline.calibration import fit_calibration
from label_pipeline.expected_precision import (
    PrecisionAccumulator,
    expected_precision,
    fit_selected_calibration,
    precision_rows,
    wilson,
)


def _overconfident(n: int, seed: int):
    """Multi-label rows whose label j is drawn with probability sigmoid(z_j); the model reports
    sigmoid(3 z_j)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-0.5, 1.5, size=(n, 3))
    y = (rng.random((n, 3)) < 1 / (1 + np.exp(-z))).astype(np.int64)
    return 1 / (1 + np.exp(-3 * z)), y


def _ranked(n: int, seed: int, n_labels: int = 5):
    """Rows with one true label among ``n_labels``. Every label's score carries a strong
    per-row offset (some texts score high on every label), the true label 1.5 logits more: on
    its own a score says little, its rank in the row says much."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, n_labels, size=n)
    y = np.eye(n_labels, dtype=np.int64)[truth]
    z = rng.normal(0, 2.0, size=(n, 1)) + rng.normal(0, 0.6, size=(n, n_labels)) + 1.5 * y
    return 1 / (1 + np.exp(-z)), y


def _top1(p: np.ndarray) -> np.ndarray:
    out = np.zeros(p.shape, dtype=np.int64)
    out[np.arange(len(p)), p.argmax(axis=1)] = 1
    return out


def test_labels_picked_by_rank_get_the_precision_they_reach():
    valid_s, valid_y = _ranked(600, seed=0)
    pool_s, pool_y = _ranked(6000, seed=1)  # labels hidden from the estimate
    names = [f"l{j}" for j in range(5)]
    fit = fit_calibration(valid_s, valid_y, True, "platt")
    pool_p, pool_pred = fit.calibrator.apply(pool_s), _top1(pool_s)
    valid_pred = _top1(valid_s)
    measured = (pool_y * pool_pred).sum() / pool_pred.sum()
    # per-label calibration is right about each label's own score, not about the top label
    plain = expected_precision(pool_p, pool_pred, names, fit.valid_probs, valid_pred, valid_y)
    assert measured - plain["overall"]["expected_precision"] > 0.15
    picked, valid_probs = fit_selected_calibration(
        fit.valid_probs, valid_pred, valid_y, 30, "zero_shot.calibration_min_rows"
    )
    assert picked.cells == 600 and not picked.fit.fallback
    est = expected_precision(
        picked.apply(pool_p, pool_pred), pool_pred, names, valid_probs, valid_pred, valid_y
    )
    o = est["overall"]
    assert abs(o["expected_precision"] - measured) < 0.03, (o, measured)
    assert o["interval"][0] <= measured <= o["interval"][1]
    # the cross-fitted valid statement agrees with the valid precision
    assert abs(o["valid_expected_precision"] - o["valid_precision"]) < 0.03
    # labels the rule did not pick keep their probabilities
    unpicked = pool_pred == 0
    assert np.array_equal(picked.apply(pool_p, pool_pred)[unpicked], pool_p[unpicked])


def test_picked_calibration_with_too_few_or_uniform_picks_says_so():
    valid_s, valid_y = _ranked(20, seed=2)
    picked, probs = fit_selected_calibration(
        valid_s, _top1(valid_s), valid_y, 30, "zero_shot.calibration_min_rows"
    )
    assert picked.fit.fallback and picked.fit.method == "none"
    assert "at least 30 (zero_shot.calibration_min_rows)" in picked.fit.notes[0]
    assert np.array_equal(probs, valid_s)
    # every picked label right: nothing to fit on
    right = _top1(valid_s)
    picked, _ = fit_selected_calibration(valid_s, right, right, 10, "x")
    assert picked.fit.fallback and "are right" in picked.fit.notes[0]
    assert np.array_equal(picked.apply(valid_s, right), valid_s)


def test_wilson_interval():
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 0) is None
    assert wilson(10, 10)[1] == pytest.approx(1.0)


def test_stated_precision_matches_the_measured_one_within_the_interval():
    valid_p, valid_y = _overconfident(800, seed=0)
    pool_p, pool_y = _overconfident(5000, seed=1)  # labels hidden from the estimate
    fit = fit_calibration(valid_p, valid_y, True, "auto")
    pool_cal = fit.calibrator.apply(pool_p)
    pool_pred = (pool_cal >= 0.5).astype(int)
    valid_pred = (fit.valid_probs >= 0.5).astype(int)
    est = expected_precision(pool_cal, pool_pred, LABELS, fit.valid_probs, valid_pred, valid_y)

    measured = (pool_y * pool_pred).sum() / pool_pred.sum()
    o = est["overall"]
    assert o["interval"][0] <= measured <= o["interval"][1], (o, measured)
    assert abs(o["expected_precision"] - measured) < 0.03
    assert o["interval"][1] - o["interval"][0] < 0.1
    assert o["expected_wrong"] == pytest.approx(o["assigned"] * (1 - o["expected_precision"]))
    assert o["valid_precision"] == pytest.approx((valid_y * valid_pred).sum() / valid_pred.sum())
    for j, row in enumerate(est["per_label"]):
        m = (pool_y[:, j] * pool_pred[:, j]).sum() / pool_pred[:, j].sum()
        assert row["interval"][0] <= m <= row["interval"][1], (row, m)
    # the uncalibrated probabilities state a precision the labels do not reach
    raw = expected_precision(pool_p, pool_pred, LABELS)["overall"]["expected_precision"]
    assert raw - measured > 0.05
    assert len(precision_rows(est)) == 1 + len(LABELS)


def test_accumulating_shards_equals_one_pass():
    p, y = _overconfident(1000, seed=2)
    pred = (p >= 0.5).astype(int)
    acc = PrecisionAccumulator(3)
    for start in range(0, 1000, 300):
        acc.add(p[start : start + 300], pred[start : start + 300])
    whole = expected_precision(p, pred, LABELS)
    parts = acc.result(LABELS)
    for a, b in zip(
        [parts["overall"], *parts["per_label"]],
        [whole["overall"], *whole["per_label"]],
        strict=True,
    ):
        assert a["assigned"] == b["assigned"]
        assert a["expected_precision"] == pytest.approx(b["expected_precision"])
        assert a["interval"] == pytest.approx(b["interval"])
    assert whole["overall"]["assigned"] == int(pred.sum())


def test_a_label_never_assigned_has_no_precision():
    p = np.array([[0.9, 0.1, 0.2], [0.8, 0.3, 0.1]])
    est = expected_precision(p, (p >= 0.5).astype(int), LABELS)
    assert est["per_label"][1]["assigned"] == 0
    assert est["per_label"][1]["expected_precision"] is None
    assert est["overall"]["expected_precision"] == pytest.approx(0.85)


@pytest.mark.slow
def test_evaluate_and_label_report_calibration_and_expected_precision(tmp_path):
    from label_pipeline.methods.base import load_saved
    from label_pipeline.store import StageStore
    from tasks.evaluate import EvaluateConfig, run_evaluate
    from tasks.label import LabelConfig, run_label
    from tasks.train import TrainConfig, run_train

    split_dir = make_splits_dir(tmp_path / "split", multi_label=False, n_valid=60, n_unlabeled=60)
    split = splits_ref(split_dir)
    store = StageStore(tmp_path / "store")
    trained = run_train(
        store, TrainConfig(methods=["naive_bayes"], calibration="temperature"), split
    )
    evaluated = run_evaluate(store, EvaluateConfig(), split, trained)
    metrics = json.loads((evaluated.dir / "metrics.json").read_text())
    cal = metrics["runs"][0]["calibration"]
    assert cal["method"] == "temperature"
    assert set(cal["test"]["before"]) >= {"ece", "adaptive_ece", "brier", "log_loss"}
    assert cal["test"]["before"] != cal["test"]["after"]
    assert (evaluated.dir / "figures" / "reliability.png").is_file()
    assert json.loads((evaluated.dir / "best.json").read_text())["calibration"]["method"] == (
        "temperature"
    )
    assert "## Calibration" in (evaluated.dir / "summary.md").read_text()

    labelled = run_label(store, LabelConfig(), split, trained, evaluated)
    est = json.loads((labelled.dir / "expected_precision.json").read_text())
    o = est["overall"]
    assert o["assigned"] == 60  # single-label: one label per pool row
    assert 0 < o["expected_precision"] <= 1
    assert o["interval"][0] <= o["expected_precision"] <= o["interval"][1]
    assert o["valid_assigned"] == 60 and o["valid_precision"] is not None
    manifest = json.loads((labelled.dir / "manifest.json").read_text())
    facts = manifest.get("facts", manifest)
    assert facts["expected_precision"] == pytest.approx(o["expected_precision"])
    assert "Expected precision" in (labelled.dir / "summary.md").read_text()

    # the exported probabilities are the calibrated ones, and their mean top probability is
    # the stated expected precision
    import datasets

    ds = datasets.load_from_disk(str(labelled.dir / "labelled"))
    probs = np.stack([ds[f"prob_{name}"] for name in LABELS], axis=1)
    model = load_saved("naive_bayes", labelled.dir / "model")
    np.testing.assert_allclose(probs, model.predict_proba(list(ds["text"])), atol=1e-6)
    assert not np.allclose(probs, model.model.predict_proba(list(ds["text"])), atol=1e-3)
    assert probs.max(axis=1).mean() == pytest.approx(o["expected_precision"], abs=1e-5)

    from tasks.report import calibration_section

    lines, values = calibration_section({"evaluate": evaluated, "label": labelled})
    text = "\n".join(lines)
    assert "## Calibration" in text and "## Expected precision of the pool labels" in text
    assert values["label"]["expected_precision"] == pytest.approx(o["expected_precision"])
    assert values["final"]["method"] == "temperature"


def test_zero_shot_states_the_expected_precision_of_its_pseudo_labels(tmp_path):
    import datasets

    from label_pipeline.store import StageStore
    from tasks.zero_shot import ZeroShotConfig, run_zero_shot

    split_dir = make_splits_dir(tmp_path / "split", multi_label=False, n_valid=90, n_unlabeled=90)
    store = StageStore(tmp_path / "store")
    ref = run_zero_shot(store, ZeroShotConfig(backend="embedding"), splits_ref(split_dir))
    cal = json.loads((ref.dir / "calibration.json").read_text())
    assert not cal["fallback"]
    assert cal["cv_log_loss"][cal["method"]] <= cal["cv_log_loss"]["none"]
    est = json.loads((ref.dir / "expected_precision.json").read_text())
    o = est["overall"]
    pool = datasets.load_from_disk(str(ref.dir / "unlabeled"))
    assert o["assigned"] == sum(len(x) for x in pool["labels"])
    # the pool rows were written from the words of LABELS[i % 3]: measure the precision
    right = sum(
        lab == [LABELS[int(i.split("-")[1]) % 3]]
        for i, lab in zip(pool["id"], pool["labels"], strict=True)
        if lab
    )
    measured = right / o["assigned"]
    assert o["interval"][0] <= measured <= o["interval"][1], (o, measured)
    assert o["valid_precision"] is not None
    summary = (ref.dir / "summary.md").read_text()
    assert "Expected precision of the pseudo-labels" in summary
    assert ref.manifest()["expected_precision"] == pytest.approx(o["expected_precision"])


def test_zero_shot_top_k_recalibrates_the_labels_it_picks(tmp_path):
    from label_pipeline.store import StageStore
    from tasks.zero_shot import ZeroShotConfig, run_zero_shot

    split_dir = make_splits_dir(tmp_path / "split", multi_label=True, n_valid=90, n_unlabeled=60)
    store = StageStore(tmp_path / "store")
    ref = run_zero_shot(
        store, ZeroShotConfig(backend="embedding", rule="top_k"), splits_ref(split_dir)
    )
    cal = json.loads((ref.dir / "calibration.json").read_text())
    picked = cal["picked"]
    sel = json.loads((ref.dir / "selection.json").read_text())
    assert sel["rule"] == "top_k"
    assert picked["cells"] == 90 * int(sel["value"]) and not picked["fallback"]
    assert picked["describe"] == "Platt scaling"
    assert "picks labels by rank" in (ref.dir / "summary.md").read_text()
    from tasks.report import calibration_section

    lines, _ = calibration_section({"zero_shot": ref})
    assert f"calibrated once more on the {picked['cells']} labels" in "\n".join(lines)
    off = run_zero_shot(
        store,
        ZeroShotConfig(backend="embedding", rule="top_k", picked_calibration=False),
        splits_ref(split_dir),
    )
    assert "picked" not in json.loads((off.dir / "calibration.json").read_text())
    plain = json.loads((off.dir / "expected_precision.json").read_text())["overall"]
    assert picked["expected_precision_per_label_calibration_only"] == pytest.approx(
        plain["expected_precision"]
    )


def test_zero_shot_with_too_few_valid_rows_says_so(tmp_path):
    from label_pipeline.store import StageStore
    from tasks.zero_shot import ZeroShotConfig, run_zero_shot

    split_dir = make_splits_dir(tmp_path / "split", multi_label=True, n_valid=12, n_unlabeled=12)
    store = StageStore(tmp_path / "store")
    ref = run_zero_shot(store, ZeroShotConfig(backend="embedding"), splits_ref(split_dir))
    cal = json.loads((ref.dir / "calibration.json").read_text())
    assert cal["fallback"] and cal["method"] == "none"
    summary = (ref.dir / "summary.md").read_text()
    assert "calibration needs at least 30 (zero_shot.calibration_min_rows)" in summary


def test_zero_shot_label_shift_reweights_the_stated_precision_to_the_pool(tmp_path):
    from label_pipeline.store import StageStore
    from tasks.zero_shot import ZeroShotConfig, run_zero_shot

    # the pool is written from the words of one label only; valid is balanced
    split_dir = make_splits_dir(
        tmp_path / "split", multi_label=False, n_valid=45, n_unlabeled=40, unlabeled_label="bug"
    )
    store = StageStore(tmp_path / "store")
    cfg = ZeroShotConfig(backend="embedding", label_shift="pool")
    ref = run_zero_shot(store, cfg, splits_ref(split_dir))
    cal = json.loads((ref.dir / "calibration.json").read_text())
    target = cal["label_shift"]["target_prior"]
    assert target[LABELS.index("bug")] == max(target)
    assert "label shift (zero_shot.label_shift: pool)" in (ref.dir / "summary.md").read_text()
    est = json.loads((ref.dir / "expected_precision.json").read_text())
    assert est["overall"]["assigned"] == 40
