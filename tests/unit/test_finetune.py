"""finetune: learns separable toy tasks, probabilities, save/load, divergence, self-training."""

from __future__ import annotations

import numpy as np
import pytest

from label_pipeline.devices import choose_device
from label_pipeline.errors import ConfigError, TrainingDivergedError
from label_pipeline.methods import FitContext, LabelledTexts, get_method
from label_pipeline.methods.finetune import FineTune, length_grouped_batches
from label_pipeline.methods.self_training import (
    SelfTrainingParams,
    reachable_score,
    run_self_training,
    select_confident,
    valid_score,
    with_pseudo_rows,
)

WORDS = {
    "joy": ["happy", "great", "good", "love", "smile"],
    "anger": ["angry", "hate", "mad", "furious", "rage"],
    "fear": ["scared", "afraid", "fear", "panic", "dark"],
}
FILLER = ["the", "a", "today", "it", "was", "so", "and", "this"]
CPU = choose_device(cuda_available=False, bf16_supported=False, mps_available=False)


def toy_texts(labels: list[list[str]], seed: int) -> list[str]:
    """A text per label set: filler words plus two words of each of its labels."""
    rng = np.random.default_rng(seed)
    out = []
    for row in labels:
        words = list(rng.choice(FILLER, size=3))
        for name in row:
            words += list(rng.choice(WORDS[name], size=2))
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def single_label_rows(n: int, seed: int) -> LabelledTexts:
    names = list(WORDS)
    idx = np.arange(n) % len(names)
    y = np.eye(len(names), dtype=np.int64)[idx]
    return LabelledTexts(toy_texts([[names[i]] for i in idx], seed), y, names, False)


def multi_label_rows(n: int, seed: int) -> LabelledTexts:
    names = list(WORDS)
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(names))) < 0.4).astype(np.int64)
    y[y.sum(axis=1) == 0, 0] = 1
    labels = [[names[j] for j in np.flatnonzero(r)] for r in y]
    return LabelledTexts(toy_texts(labels, seed), y, names, True)


@pytest.fixture(scope="module")
def toy_encoder(tmp_path_factory):
    from label_pipeline.testing import make_tiny_bert

    corpus = [" ".join(WORDS[k] + FILLER) for k in WORDS] * 4
    return make_tiny_bert(
        tmp_path_factory.mktemp("toy-enc"),
        "mlm",
        corpus=corpus,
        hidden_size=64,
        num_layers=1,
        intermediate_size=128,
    )


def fast_params(**kw):
    base = dict(epochs=16, patience=0, lr=2e-3, head_lr=2e-3, batch_size=8)
    base.update(kw)
    return base


def micro_f1(p: np.ndarray, y: np.ndarray) -> float:
    pred = (p >= 0.5).astype(int)
    return 2 * (pred & y).sum() / max(1, pred.sum() + y.sum())


def test_registered():
    assert get_method("finetune") is FineTune


@pytest.mark.slow
def test_single_label_learns_and_softmax(toy_encoder, tmp_path):
    train, valid, test = (single_label_rows(n, s) for n, s in [(48, 1), (24, 2), (60, 3)])
    ctx = FitContext(device=CPU, encoder=str(toy_encoder), seed=0)
    m = FineTune(**fast_params()).fit(train, valid, ctx)
    p = m.predict_proba(test.texts)
    assert p.shape == (60, 3)
    assert ((p >= 0) & (p <= 1)).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    acc = (p.argmax(1) == test.y_index).mean()
    assert acc > 0.8  # chance and majority class are 1/3
    assert ctx.info["history"]["best_epoch"] >= 1

    m.save(tmp_path / "m")
    again = FineTune.load(tmp_path / "m", device=CPU)
    np.testing.assert_allclose(again.predict_proba(test.texts), p, atol=1e-6)


@pytest.mark.slow
def test_multi_label_learns_sigmoid_and_weights(toy_encoder):
    train, valid, test = (multi_label_rows(n, s) for n, s in [(60, 4), (24, 5), (60, 6)])
    ctx = FitContext(device=CPU, encoder=str(toy_encoder), seed=0)
    m = FineTune(**fast_params()).fit(train, valid, ctx)
    p = m.predict_proba(test.texts)
    assert ((p >= 0) & (p <= 1)).all()
    # sigmoid outputs are independent: rows do not sum to 1
    assert not np.allclose(p.sum(axis=1), 1.0)
    baseline = micro_f1(np.tile(train.y.mean(axis=0) >= 0.5, (60, 1)).astype(float), test.y)
    assert micro_f1(p, test.y) > max(0.8, baseline + 0.2)


def test_sample_weight_scales_the_loss():
    import torch

    m = FineTune()
    m.multi_label_ = False
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # second row is wrong
    full = m._loss(logits, targets, torch.tensor([1.0, 1.0]), None)
    down = m._loss(logits, targets, torch.tensor([1.0, 0.1]), None)
    assert down < full
    m.multi_label_ = True
    pos_w = torch.tensor([4.0, 1.0])
    assert m._loss(logits, targets, torch.ones(2), pos_w) > m._loss(
        logits, targets, torch.ones(2), None
    )


def test_class_weights():
    m = FineTune()
    rows = LabelledTexts(["a"] * 4, np.array([[1, 0], [1, 0], [1, 0], [0, 1]]), ["x", "y"], False)
    m.multi_label_ = False
    w = m._class_weights(rows)
    assert w[1] == pytest.approx(3 * w[0])
    m.multi_label_ = True
    np.testing.assert_allclose(m._class_weights(rows), [1.0, 3.0])
    assert FineTune(class_weighting="none")._class_weights(rows) is None


def test_length_grouped_batches_cover_rows_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 60, size=203)
    batches = length_grouped_batches(lengths, 16, rng, group=4)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(203))
    assert max(len(b) for b in batches) <= 16
    # inside a group, batches hold similar lengths
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches if len(b) == 16])
    assert spread < (lengths.max() - lengths.min()) / 2


@pytest.mark.slow
def test_nan_loss_keeps_last_good_checkpoint(toy_encoder, monkeypatch):
    train, valid = single_label_rows(24, 1), single_label_rows(12, 2)
    calls = {"n": 0}
    original = FineTune._loss

    def flaky(self, *args):
        calls["n"] += 1
        loss = original(self, *args)
        return loss * float("nan") if calls["n"] > 6 else loss  # breaks in epoch 3 of 3 steps

    monkeypatch.setattr(FineTune, "_loss", flaky)
    ctx = FitContext(device=CPU, encoder=str(toy_encoder))
    m = FineTune(**fast_params(epochs=5)).fit(train, valid, ctx)
    assert "non-finite" in ctx.info["diverged"] and "lr" in ctx.info["diverged"]
    assert np.isfinite(m.predict_proba(valid.texts)).all()

    calls["n"] = -10_000  # the very first steps fail: nothing to fall back to
    monkeypatch.setattr(FineTune, "_loss", lambda self, *a: original(self, *a) * float("nan"))
    with pytest.raises(TrainingDivergedError, match="lr"):
        FineTune(**fast_params(epochs=2)).fit(
            train, valid, FitContext(device=CPU, encoder=str(toy_encoder))
        )


def test_bad_params_name_the_parameter(toy_encoder):
    rows = single_label_rows(6, 0)
    with pytest.raises(ConfigError, match="finetune.epochs"):
        FineTune(epochs=0).fit(rows, None, FitContext(device=CPU, encoder=str(toy_encoder)))
    with pytest.raises(ConfigError, match="self_training_floor"):
        FineTune(self_training_floor=0.2).fit(rows, None, FitContext(encoder=str(toy_encoder)))


def test_select_confident_balanced_and_capped():
    proba = np.array(
        [[0.99, 0.01], [0.97, 0.03], [0.95, 0.05], [0.6, 0.4], [0.02, 0.98], [0.1, 0.9]]
    )
    idx, y = select_confident(proba, multi_label=False, floor=0.9, per_label=2)
    assert idx.tolist() == [0, 1, 4, 5]
    assert y.tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]
    ml = np.array([[0.95, 0.02], [0.95, 0.5], [0.01, 0.03], [0.92, 0.97]])
    idx, y = select_confident(ml, multi_label=True, floor=0.9, per_label=5)
    assert idx.tolist() == [0, 3]  # row 1 is unsure about label 2, row 2 has no label
    assert y.tolist() == [[1, 0], [1, 1]]
    rows = with_pseudo_rows(single_label_rows(3, 0), ["x", "y"], np.array([[1, 0, 0]] * 2), 0.3)
    assert rows.sample_weight.tolist() == [1, 1, 1, 0.3, 0.3]


@pytest.mark.slow
def test_self_training_adds_pool_rows(toy_encoder):
    train, valid = single_label_rows(48, 1), single_label_rows(12, 2)
    pool = single_label_rows(60, 9).texts
    ctx = FitContext(device=CPU, encoder=str(toy_encoder), unlabeled_texts=pool, seed=1)
    m = FineTune(**fast_params(), self_training_rounds=1, self_training_floor=0.6)
    m.fit(train, valid, ctx)
    (r,) = ctx.info["self_training"]
    assert r["added"] > 0 and sum(r["added_per_label"].values()) >= r["added"]
    assert "valid_after" in r
    assert m.predict_proba(valid.texts).shape == (12, 3)


def test_self_training_is_skipped_for_a_run_that_cannot_win():
    """``run_self_training`` with a model whose valid accuracy is 1/3: under a bar of .9 it is
    trained once and never again; under a bar within ``max_gain`` the rounds run."""
    train, valid = single_label_rows(6, 1), single_label_rows(12, 2)
    pool = single_label_rows(30, 9).texts

    def run(bar):
        fits = []
        ctx = FitContext(seed=0, unlabeled_texts=pool, valid_bar=bar)
        run_self_training(
            fits.append,
            lambda texts: np.tile([0.98, 0.01, 0.01], (len(texts), 1)),
            lambda: None,
            lambda state: None,
            train,
            valid,
            ctx,
            SelfTrainingParams(rounds=2, floor=0.9, per_label=4, max_gain=0.1),
        )
        return len(fits), ctx.info

    n_fits, info = run(0.9)
    assert n_fits == 1 and "self_training" not in info
    assert info["self_training_skipped"].startswith("cannot win: valid 0.333")
    n_fits, info = run(0.4)
    assert n_fits == 3 and info["self_training"][0]["added"] == 4  # labelled rows + 2 rounds
    # multi-label: each label's own threshold (the train stage calibrates each label before
    # its one threshold), not 0.5 and not one threshold for all: label 0 separates at .85,
    # the others at .15, which no single threshold does
    rows = multi_label_rows(40, 3)
    proba = np.where(rows.y == 1, 0.2, 0.1)
    proba[:, 0] = np.where(rows.y[:, 0] == 1, 0.9, 0.8)
    assert reachable_score(proba, rows) == pytest.approx(1.0)
    assert valid_score(proba, rows) < 0.9


def test_a_multi_label_round_is_judged_as_the_train_stage_decides():
    """A round whose probabilities rank every valid row right but all sit below 0.5 scores 0
    at 0.5 and 1.0 with each label's threshold tuned on valid: ``run_self_training`` keeps it
    over the labelled-rows model (above 0.5, but some rows ranked wrong)."""
    train, valid = multi_label_rows(8, 1), multi_label_rows(40, 2)
    pool = multi_label_rows(30, 9).texts
    valid_index = {t: i for i, t in enumerate(valid.texts)}
    rng = np.random.default_rng(0)
    noisy = np.clip(0.6 + 0.3 * (2 * valid.y - 1) * rng.choice([1, -1], valid.y.shape), 0, 1)
    sharp_low = np.where(valid.y == 1, 0.3, 0.1)
    state = {"fits": 0}

    def predict(texts):
        if texts and texts[0] in valid_index:
            return (noisy if state["fits"] == 1 else sharp_low)[[valid_index[t] for t in texts]]
        return np.tile([0.95, 0.02, 0.02], (len(texts), 1))  # the pool: confident rows

    def fit_once(rows):
        state["fits"] += 1

    ctx = FitContext(seed=0, unlabeled_texts=pool)
    undone = []
    run_self_training(
        fit_once,
        predict,
        lambda: state["fits"],
        undone.append,
        train,
        valid,
        ctx,
        SelfTrainingParams(rounds=1, floor=0.9, per_label=4, max_gain=None),
    )
    (fact,) = ctx.info["self_training"]

    assert valid_score(sharp_low, valid) == 0.0 < valid_score(noisy, valid)
    assert reachable_score(noisy, valid) < reachable_score(sharp_low, valid) == pytest.approx(1.0)
    assert fact["kept"] is True and not undone
    assert fact["valid_after"] == pytest.approx(1.0)
    assert fact["valid_before"] == pytest.approx(reachable_score(noisy, valid), abs=1e-4)
    assert fact["valid_before"] < 0.9
