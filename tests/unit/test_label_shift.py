"""Label-shift estimation and reweighting, and how the train and label stages use it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_fixtures import LABELS, make_splits_dir, splits_ref

from label_pipeline.decision import Decision, apply_decision
from label_pipeline.errors import ConfigError
from label_pipeline.label_shift import FLOOR_SHARE, estimate_label_shift, reweight
from label_pipeline.store import StageStore
from tasks.train import TrainConfig, run_train

CENTRES = np.array([[0.0, 0.0], [1.6, 0.0], [0.8, 1.4]])


def _blobs(rng, counts):
    """Overlapping 2-d Gaussian blobs, ``counts[j]`` rows of class ``j``."""
    x = np.concatenate([rng.normal(CENTRES[j], 0.8, size=(n, 2)) for j, n in enumerate(counts)])
    y = np.concatenate([np.full(n, j) for j, n in enumerate(counts)])
    return x, np.eye(3, dtype=np.int64)[y]


def test_estimate_recovers_a_skewed_pool_and_reweighting_raises_accuracy():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x_tr, y_tr = _blobs(rng, [100, 100, 100])  # balanced labelled rows
    x_va, y_va = _blobs(rng, [20, 20, 20])
    truth = np.array([0.7, 0.2, 0.1])
    x_pool, _ = _blobs(rng, (truth * 3000).astype(int))
    x_te, y_te = _blobs(rng, (truth * 2000).astype(int))
    clf = LogisticRegression().fit(x_tr, y_tr.argmax(1))

    shift = estimate_label_shift(
        clf.predict_proba(x_va), y_va, clf.predict_proba(x_pool), np.full(3, 1 / 3)
    )
    q = np.array(shift.target_prior)
    assert np.abs(q - truth).max() < 0.06, q
    assert shift.valid_rows_per_label == [20, 20, 20] and shift.pool_rows == 3000
    # the model's own mean prediction is pulled towards uniform; the estimate undoes that
    assert np.abs(q - truth).max() < np.abs(np.array(shift.pool_mean_proba) - truth).max()

    before = clf.predict_proba(x_te)
    after = shift.apply(before)
    np.testing.assert_allclose(after.sum(axis=1), 1.0)
    acc = [float((p.argmax(1) == y_te.argmax(1)).mean()) for p in (before, after)]
    assert acc[1] > acc[0] + 0.02, acc


def test_label_without_valid_rows_trusts_the_model_and_no_label_drops_below_the_floor():
    pv = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]])
    yv = np.array([[1, 0, 0], [0, 1, 0]])  # no validation row of label 2
    pool = np.tile([0.5, 0.5, 0.0], (10, 1))  # the model never predicts label 2 on the pool
    shift = estimate_label_shift(pv, yv, pool, np.full(3, 1 / 3))
    q = np.array(shift.target_prior)
    assert shift.valid_rows_per_label == [1, 1, 0]
    assert np.isclose(q.sum(), 1.0) and q[2] == pytest.approx(FLOOR_SHARE / 3, rel=0.01)
    out = reweight(np.array([[0.0, 0.0, 1.0], [0.3, 0.3, 0.4]]), np.full(3, 1 / 3), q)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    # a row whose whole mass is on one label stays there however small its weight
    assert out[0].argmax() == 2


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="differ in shape"):
        estimate_label_shift(np.ones((2, 3)) / 3, np.eye(3)[:1], np.ones((4, 3)) / 3, np.ones(3))
    with pytest.raises(ValueError, match="pool probabilities"):
        estimate_label_shift(np.ones((1, 3)) / 3, np.eye(3)[:1], np.ones((0, 3)), np.ones(3))


def test_decision_round_trips_and_applies_the_shift():
    shift = estimate_label_shift(
        np.eye(3), np.eye(3, dtype=int), np.tile([0.8, 0.1, 0.1], (5, 1)), np.full(3, 1 / 3)
    )
    dec = Decision(rule="argmax", label_shift=shift.to_json())
    back = Decision.from_json(json.loads(json.dumps(dec.to_json())))
    assert back.label_shift == dec.label_shift
    assert "label-shift" in back.describe()
    probs = np.array([[0.4, 0.6, 0.0]])
    adjusted = back.adjust(probs)
    assert apply_decision(adjusted, back)[0].tolist() == [1, 0, 0]  # the pool is mostly label 0
    np.testing.assert_allclose(Decision(rule="argmax").adjust(probs), probs)


def test_label_rows_export_the_reweighted_probabilities():
    from tasks.label import label_rows

    class Fixed:
        def predict_proba(self, texts):
            return np.tile([0.4, 0.6, 0.0], (len(texts), 1))

    shift = {
        "source_prior": [1 / 3, 1 / 3, 1 / 3],
        "target_prior": [0.8, 0.1, 0.1],
        "pool_rows": 5,
    }
    probs, names = label_rows(Fixed(), Decision(rule="argmax", label_shift=shift), ["a"], LABELS)
    assert names == [["bug"]]
    np.testing.assert_allclose(probs[0], np.array([0.32, 0.06, 0.0]) / 0.38)


def test_train_stage_estimates_the_pool_and_rejects_multi_label(tmp_path):
    split_dir = make_splits_dir(
        tmp_path / "split", multi_label=False, n_unlabeled=40, unlabeled_label="bug"
    )
    store = StageStore(tmp_path / "store")
    cfg = TrainConfig(methods=["naive_bayes"], label_shift="pool")
    ref = run_train(store, cfg, splits_ref(split_dir))
    run = ref.dir / "runs/naive_bayes/all"
    decision = json.loads((run / "decision.json").read_text())
    target = decision["label_shift"]["target_prior"]
    assert target[LABELS.index("bug")] > 0.8, target
    assert decision["label_shift"]["pool_rows"] == 40
    assert json.loads((run / "fit.json").read_text())["label_shift"] == decision["label_shift"]
    probs = np.load(run / "test_probs.npy")
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    ml_dir = make_splits_dir(tmp_path / "ml", multi_label=True)
    with pytest.raises(ConfigError, match="train.label_shift='pool' applies to single-label"):
        run_train(store, cfg, splits_ref(ml_dir))


def test_source_prior_is_uniform_only_for_label_balancing_single_label_methods():
    from label_pipeline.methods import LabelledTexts, get_method

    y = np.eye(3, dtype=np.int64)[[0, 0, 0, 1]]
    single = LabelledTexts(["a", "b", "c", "d"], y, LABELS, False)
    multi = LabelledTexts(["a", "b", "c", "d"], y, LABELS, True)
    freq, uniform = [0.75, 0.25, 0.0], [1 / 3] * 3
    cases = [
        (get_method("finetune")(), uniform, freq),
        (get_method("finetune")(class_weighting="none"), freq, freq),
        (get_method("setfit")(), uniform, freq),
        (
            get_method("setfit")(head="finetune", finetune_params={"class_weighting": "none"}),
            freq,
            freq,
        ),
        (get_method("prototype")(), freq, freq),
        (get_method("prototype")(class_weighting="balanced"), uniform, freq),
        (get_method("embed_lr")(class_weight="balanced"), uniform, freq),
        (get_method("naive_bayes")(), freq, freq),
    ]
    for method, want_single, want_multi in cases:
        np.testing.assert_allclose(method.source_prior(single), want_single, err_msg=method.name)
        np.testing.assert_allclose(method.source_prior(multi), want_multi, err_msg=method.name)
