"""distill: a teacher labels the pool with probabilities, a student learns them."""

from __future__ import annotations

import numpy as np
import pytest
from test_baselines import NEG, POS, _toy
from test_finetune import CPU, fast_params, single_label_rows, toy_encoder  # noqa: F401

from label_pipeline.errors import ConfigError, InputDataError
from label_pipeline.methods import FitContext, LabelledTexts, get_method
from label_pipeline.methods.base import label_frequencies, load_saved
from label_pipeline.methods.finetune import FineTune, check_labelled
from label_pipeline.methods.self_training import with_pseudo_rows

NB = {"teacher": "naive_bayes", "student": "tfidf_nb"}


def _pool(n_pos: int, n_neg: int, seed: int = 7) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(POS, 4)) for _ in range(n_pos)] + [
        " ".join(rng.choice(NEG, 4)) for _ in range(n_neg)
    ]


def test_soft_targets_equal_hard_ones_on_one_hot_rows_and_follow_the_teacher_otherwise():
    import torch

    m = FineTune()
    m.multi_label_ = False
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    one_hot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    w, cw = torch.tensor([1.0, 0.5]), torch.tensor([1.0, 2.0, 3.0])
    assert float(m._loss(logits, one_hot, w, cw, soft=True)) == pytest.approx(
        float(m._loss(logits, one_hot, w, cw))
    )
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    logp = torch.log_softmax(logits, dim=1)
    per = -(soft * logp).sum(dim=1)
    expected = float((per * w).sum() / w.sum())
    assert float(m._loss(logits, soft, w, None, soft=True)) == pytest.approx(expected)


def test_soft_targets_are_checked_and_kept_by_pseudo_rows():
    rows = _toy(False, n=4)
    bad = LabelledTexts(rows.texts, rows.y, rows.label_names, False, soft_y=np.ones((4, 3)))
    with pytest.raises(InputDataError, match="soft targets have shape"):
        check_labelled(bad, "train", "finetune")
    rows.soft_y = np.full((4, 2), 0.5)
    out = with_pseudo_rows(rows, ["great"], np.array([[1, 0]]), 0.5)
    np.testing.assert_allclose(out.soft_y[-1], [1.0, 0.0])
    np.testing.assert_allclose(out.soft_y[:4], 0.5)
    np.testing.assert_allclose(label_frequencies(rows), [0.5, 0.5])


def test_student_learns_the_pool_and_survives_save_load(tmp_path):
    train, valid, test = _toy(False, n=8), _toy(False, seed=1), _toy(False, seed=2)
    pool = _pool(30, 10)
    ctx = FitContext(seed=0, unlabeled_texts=pool + train.texts[:2])  # training texts dropped
    model = get_method("distill")(**NB).fit(train, valid, ctx)
    facts = ctx.info["distill"]
    assert facts["pool_rows"] == 40
    assert facts["teacher"]["valid"] == 1.0 and facts["student"]["valid"] == 1.0
    assert model.model_name_ == "tfidf_nb" and model.teacher_ is not model.model_
    probs = model.predict_proba(test.texts)
    np.testing.assert_allclose(probs, model.model_.predict_proba(test.texts))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert (probs.argmax(1) == test.y_index).all()
    # the student trained on 8 balanced rows + 40 pool rows, 3/4 of them positive
    prior = model.source_prior(train)
    assert prior[0] == pytest.approx(34 / 48, abs=0.03)

    model.save(tmp_path / "m")
    back = load_saved("distill", tmp_path / "m")
    np.testing.assert_allclose(back.predict_proba(test.texts), probs)
    np.testing.assert_allclose(back.source_prior(train), prior)


def test_label_shift_estimates_the_pool_mix_before_the_student_learns_it():
    train, valid = _toy(False, n=8), _toy(False, seed=1)
    ctx = FitContext(seed=0, unlabeled_texts=_pool(40, 10))
    get_method("distill")(**NB, label_shift="pool").fit(train, valid, ctx)
    shift = ctx.info["distill"]["label_shift"]
    assert shift["target_prior"][0] == pytest.approx(0.8, abs=0.05)
    assert shift["source_prior"] == pytest.approx([0.5, 0.5])


def test_no_pool_means_the_teacher_predicts_and_says_so(tmp_path):
    train, test = _toy(False, n=8), _toy(False, seed=2)
    ctx = FitContext(seed=0)
    model = get_method("distill")(**NB).fit(train, None, ctx)
    assert "no unlabeled texts" in ctx.info["distill"]["skipped"]
    assert model.model_name_ == "naive_bayes"
    np.testing.assert_allclose(
        model.predict_proba(test.texts), model.teacher_.predict_proba(test.texts)
    )
    model.save(tmp_path / "m")
    assert load_saved("distill", tmp_path / "m").model_name_ == "naive_bayes"


@pytest.mark.parametrize(
    ("params", "multi", "match"),
    [
        ({"teacher": "distill"}, False, "teacher='distill' cannot be used"),
        ({"student": "nope"}, False, "student='nope' cannot be used"),
        ({**NB, "weight": 0.0}, False, r"weight=0.0 must lie in \(0, 1\]"),
        ({**NB, "pool_size": 0}, False, "pool_size=0"),
        ({**NB, "label_shift": "pool"}, True, "single-label tasks only"),
    ],
)
def test_bad_parameters_are_named(params, multi, match):
    with pytest.raises(ConfigError, match=match):
        get_method("distill")(**params).fit(_toy(multi), None, FitContext())


@pytest.mark.slow
def test_finetune_student_learns_from_a_teacher_on_few_rows(toy_encoder):  # noqa: F811
    """A naive Bayes teacher on 6 rows labels a 90-row pool; the transformer student trained
    on the teacher's probabilities classifies new rows."""
    train, valid, test = single_label_rows(6, 1), single_label_rows(12, 2), single_label_rows(60, 3)
    pool = single_label_rows(90, 9).texts
    ctx = FitContext(device=CPU, encoder=str(toy_encoder), unlabeled_texts=pool, seed=0)
    model = get_method("distill")(
        teacher="naive_bayes", student_params=fast_params(epochs=8, class_weighting="none")
    ).fit(train, valid, ctx)
    assert ctx.info["distill"]["student"]["info"]["history"]["rows"] == 96
    p = model.predict_proba(test.texts)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert (p.argmax(1) == test.y_index).mean() > 0.8  # chance is 1/3


def test_train_stage_runs_distill_and_the_saved_student_predicts(tmp_path):
    """Through the train stage: the pool is the unlabeled split, fit.json holds the teacher's
    and student's facts, the saved model reloads and gives the stage's probabilities."""
    import json

    from train_fixtures import LABELS, make_splits_dir, splits_ref

    from label_pipeline.data import load_splits
    from label_pipeline.decision import Decision
    from label_pipeline.store import StageStore
    from tasks.train import TrainConfig, run_train

    split_dir = make_splits_dir(
        tmp_path / "split", multi_label=False, n_unlabeled=40, unlabeled_label="bug"
    )
    cfg = TrainConfig(methods=["distill"], method_params={"distill": NB}, label_shift="pool")
    ref = run_train(StageStore(tmp_path / "store"), cfg, splits_ref(split_dir))
    run = ref.dir / "runs/distill/all"
    fit = json.loads((run / "fit.json").read_text())
    facts = fit["info"]["distill"]
    assert facts["pool_rows"] == 40 and "valid" in facts["student"]
    # the student learned a pool of bug reports: its training mix leans to "bug"
    prior = json.loads((run / "model/method.json").read_text())["history"]["source_prior"]
    assert int(np.argmax(prior)) == LABELS.index("bug")
    test_texts = list(load_splits(split_dir)["test"]["text"])
    probs = load_saved("distill", run / "model").predict_proba(test_texts)
    # the stage's test probabilities are the reloaded student's, reweighted to the pool
    decision = Decision.from_json(json.loads((run / "decision.json").read_text()))
    assert decision.label_shift is not None
    np.testing.assert_allclose(
        decision.adjust(probs), np.load(run / "test_probs.npy"), rtol=1e-5, atol=1e-6
    )
