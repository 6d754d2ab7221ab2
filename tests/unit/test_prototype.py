"""``prototype``: cosine head started at the label names, fine-tuned, self-trained on the pool."""

from __future__ import annotations

import numpy as np
import pytest
import test_contrastive

from label_pipeline.errors import ConfigError
from label_pipeline.methods import FitContext, get_method
from label_pipeline.methods.prototype import Prototype

toy = test_contrastive.toy  # the tiny encoder fixture, shared with the setfit tests


def test_untrained_head_is_the_embedding_zero_shot_classifier(toy):
    """Before training, valid accuracy equals the embedding zero-shot backend's on the same
    encoder and label names."""
    from test_finetune import CPU, single_label_rows

    from label_pipeline.embeddings import embed_texts
    from label_pipeline.zeroshot.embedding import cosine_to_scores

    train, valid = single_label_rows(6, 1), single_label_rows(30, 2)
    ctx = FitContext(device=CPU, encoder=str(toy), seed=0)
    Prototype(epochs=1, self_training_rounds=0).fit(train, valid, ctx)
    cos = (
        embed_texts(toy, valid.texts, device=CPU)
        @ embed_texts(toy, valid.label_names, device=CPU).T
    )
    zs = cosine_to_scores(cos, False, 0.05)
    expected = float((zs.argmax(1) == valid.y_index).mean())
    assert ctx.info["history"]["valid_zero_shot"] == pytest.approx(expected, abs=1e-4)
    assert ctx.info["history"]["label_texts"] == valid.label_names


@pytest.mark.slow
def test_single_label_learns_self_trains_and_round_trips(toy, tmp_path):
    from test_finetune import CPU, single_label_rows

    train, valid, test = single_label_rows(6, 1), single_label_rows(12, 2), single_label_rows(60, 3)
    pool = single_label_rows(90, 4).texts
    ctx = FitContext(device=CPU, encoder=str(toy), seed=0, unlabeled_texts=pool)
    m = get_method("prototype")(
        epochs=6,
        lr=1e-3,
        head_lr=1e-2,
        batch_size=4,
        self_training_rounds=2,
        self_training_per_label=5,
        self_training_epochs=2,
    ).fit(train, valid, ctx)
    p = m.predict_proba(test.texts)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert ((p >= 0) & (p <= 1)).all()
    assert (p.argmax(1) == test.y_index).mean() > 0.6  # chance is 1/3
    rounds = ctx.info["self_training"]
    assert [r["round"] for r in rounds] == [1, 2]
    # round r takes per_label * r rows for each label the model predicts
    assert all(sum(r["added_per_label"].values()) == r["added"] for r in rounds)
    assert rounds[1]["added"] > rounds[0]["added"] > 0
    assert max(rounds[0]["added_per_label"].values()) <= 5
    hist = ctx.info["history"]
    assert hist["valid_best"] >= hist["valid_after_labelled"]
    # keep="auto" with 12 validation rows: the last round's model
    assert hist["self_training_keep"] == "last"
    assert hist["valid_final"] == rounds[-1]["valid"]
    m.save(tmp_path / "p")
    np.testing.assert_allclose(
        Prototype.load(tmp_path / "p", device=CPU).predict_proba(test.texts), p, atol=1e-6
    )


@pytest.mark.slow
def test_multi_label_sigmoid(toy):
    from test_finetune import CPU, multi_label_rows

    train, test = multi_label_rows(40, 4), multi_label_rows(40, 6)
    m = Prototype(epochs=8, lr=1e-3, head_lr=1e-2, batch_size=8, self_training_rounds=0).fit(
        train, None, FitContext(device=CPU, encoder=str(toy))
    )
    q = m.predict_proba(test.texts)
    assert q.shape == (40, 3) and ((q >= 0) & (q <= 1)).all()
    pred = (q >= 0.5).astype(int)
    assert 2 * (pred & test.y).sum() / (pred.sum() + test.y.sum()) > 0.7


def test_best_valid_keeps_the_best_round(toy):
    from test_finetune import CPU, single_label_rows

    train, valid = single_label_rows(6, 1), single_label_rows(12, 2)
    ctx = FitContext(
        device=CPU, encoder=str(toy), seed=0, unlabeled_texts=single_label_rows(30, 4).texts
    )
    Prototype(
        epochs=1,
        lr=1e-3,
        head_lr=1e-2,
        self_training_rounds=2,
        self_training_per_label=3,
        self_training_epochs=1,
        self_training_keep="best_valid",
    ).fit(train, valid, ctx)
    hist = ctx.info["history"]
    scores = [hist["valid_after_labelled"]] + [r["valid"] for r in ctx.info["self_training"]]
    assert hist["valid_final"] == hist["valid_best"] == max(scores)


@pytest.mark.parametrize("multi, rounds_run", [(False, 3), (True, 2)])
def test_auto_runs_three_rounds_for_single_label_and_two_for_multi_label(toy, multi, rounds_run):
    """``self_training_rounds: auto`` (the default) resolves by the task once the rows are
    read, and every resolved round runs when valid is too small to stop them."""
    from test_finetune import CPU, multi_label_rows, single_label_rows

    rows = multi_label_rows if multi else single_label_rows
    ctx = FitContext(device=CPU, encoder=str(toy), seed=0, unlabeled_texts=rows(30, 4).texts)
    m = Prototype(
        epochs=2, lr=1e-3, head_lr=1e-2, self_training_per_label=3, self_training_epochs=1
    )
    assert m.self_training_rounds == "auto"
    m.fit(rows(12, 1), rows(12, 2), ctx)
    assert m.rounds() == rounds_run == ctx.info["history"]["self_training_rounds"]
    assert [r["round"] for r in ctx.info["self_training"]] == list(range(1, rounds_run + 1))
    assert all(r["added"] > 0 for r in ctx.info["self_training"])


def test_self_training_without_pool_is_reported(toy):
    from test_finetune import CPU, single_label_rows

    ctx = FitContext(device=CPU, encoder=str(toy))
    Prototype(epochs=1, self_training_rounds=2).fit(single_label_rows(6, 0), None, ctx)
    assert ctx.info["self_training_skipped"] == "no unlabeled texts were given"
    assert ctx.info["self_training"] == []


def test_bad_params_name_the_setting():
    from test_finetune import single_label_rows

    rows = single_label_rows(6, 0)
    with pytest.raises(ConfigError, match=r"prototype.label_texts names labels \['sadness'\]"):
        Prototype(label_texts={"sadness": "feeling sad"}).fit(rows, None, FitContext())
    with pytest.raises(ConfigError, match="prototype.label_template"):
        Prototype(label_template="no slot").fit(rows, None, FitContext())
    with pytest.raises(ConfigError, match="prototype.self_training_keep"):
        Prototype(self_training_keep="first").fit(rows, None, FitContext())
    with pytest.raises(ConfigError, match="temperature"):
        Prototype(temperature=0).fit(rows, None, FitContext())


@pytest.mark.parametrize("patience, rounds_run", [(1, 1), (2, 2), (0, 3)])
def test_self_training_stops_when_valid_stops_improving(toy, monkeypatch, patience, rounds_run):
    """Chosen on valid, the rounds stop after ``patience`` rounds below the best in a row."""
    from test_finetune import CPU, single_label_rows

    scores = iter([0.6, 0.6, 0.5, 0.4, 0.7])  # zero-shot, labelled rows, rounds 1, 2, 3
    monkeypatch.setattr(Prototype, "_score", lambda self, valid: next(scores))
    train, valid = single_label_rows(6, 1), single_label_rows(12, 2)
    ctx = FitContext(
        device=CPU, encoder=str(toy), seed=0, unlabeled_texts=single_label_rows(30, 4).texts
    )
    Prototype(
        epochs=1,
        self_training_rounds=3,
        self_training_per_label=3,
        self_training_epochs=1,
        self_training_keep="best_valid",
        self_training_patience=patience,
    ).fit(train, valid, ctx)
    rounds = ctx.info["self_training"]
    assert len(rounds) == rounds_run
    assert ("stopped" in rounds[-1]) == (rounds_run < 3)
    assert ctx.info["history"]["valid_best"] == (0.7 if rounds_run == 3 else 0.6)


@pytest.mark.parametrize(
    "bar, max_gain, trained_again",
    [(0.75, 0.10, False), (0.65, 0.10, True), (0.75, None, True), (None, 0.10, True)],
)
def test_a_run_that_cannot_win_is_not_trained_again(toy, monkeypatch, bar, max_gain, trained_again):
    """Valid .6 after the labelled rows: with the slice's bar at .75 even +.10 cannot reach it,
    so no self-training round runs and the fit says why; a bar within reach, no bar, or
    ``self_training_max_gain: None`` keeps the rounds."""
    from test_finetune import CPU, single_label_rows

    scores = iter([0.5, 0.6, 0.62, 0.63, 0.64])  # zero-shot, labelled rows, rounds 1-3
    monkeypatch.setattr(Prototype, "_score", lambda self, valid: next(scores))
    train, valid = single_label_rows(6, 1), single_label_rows(12, 2)
    ctx = FitContext(
        device=CPU,
        encoder=str(toy),
        seed=0,
        unlabeled_texts=single_label_rows(30, 4).texts,
        valid_bar=bar,
    )
    Prototype(
        epochs=1,
        self_training_rounds=2,
        self_training_per_label=3,
        self_training_epochs=1,
        self_training_max_gain=max_gain,
    ).fit(train, valid, ctx)
    assert bool(ctx.info.get("self_training")) == trained_again
    skipped = ctx.info.get("self_training_skipped", "")
    assert skipped.startswith("cannot win") != trained_again
    if not trained_again:
        assert "0.600" in skipped and "0.750" in skipped
