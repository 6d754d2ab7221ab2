"""Baselines on constructed cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from label_pipeline.methods import FitContext, LabelledTexts, get_method
from label_pipeline.metrics import f1_micro_macro

POS = "great happy wonderful love excellent superb".split()
NEG = "awful sad terrible hate horrible dreadful".split()


def _toy(multi_label: bool, n: int = 24, seed: int = 0) -> LabelledTexts:
    rng = np.random.default_rng(seed)
    texts, y = [], []
    for i in range(n):
        words = POS if i % 2 == 0 else NEG
        texts.append(" ".join(rng.choice(words, 4)))
        y.append([1, 0] if i % 2 == 0 else [0, 1])
    return LabelledTexts(texts, np.array(y), ["pos", "neg"], multi_label)


@pytest.mark.parametrize("multi_label", [True, False])
def test_naive_bayes_separable_gets_f1_one(multi_label):
    train, test = _toy(multi_label), _toy(multi_label, seed=1)
    model = get_method("naive_bayes")().fit(train, None, FitContext())
    probs = model.predict_proba(test.texts)
    assert probs.shape == test.y.shape and (probs >= 0).all() and (probs <= 1).all()
    pred = (probs >= 0.5).astype(int)
    assert f1_micro_macro(test.y, pred) == {"micro_f1": 1.0, "macro_f1": 1.0}
    if not multi_label:
        np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_naive_bayes_multilabel_matches_sklearn_per_label():
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.naive_bayes import MultinomialNB

    train = _toy(True)
    model = get_method("naive_bayes")(alpha=0.5).fit(train, None, FitContext())
    X = CountVectorizer().fit(train.texts)
    nb = MultinomialNB(alpha=0.5).fit(X.transform(train.texts), train.y[:, 0])
    expected = nb.predict_proba(X.transform(["great sad love"]))[:, 1]
    np.testing.assert_allclose(model.predict_proba(["great sad love"])[:, 0], expected)


def test_label_absent_from_training_gets_constant_probability_and_is_reported():
    train = _toy(True)
    train = LabelledTexts(
        train.texts, np.c_[train.y, np.zeros(len(train), int)], ["pos", "neg", "x"], True
    )
    ctx = FitContext()
    probs = get_method("naive_bayes")().fit(train, None, ctx).predict_proba(["great"])
    assert probs[0, 2] == 0.0
    assert ctx.info["labels_without_examples"] == ["x"]


def test_tfidf_alpha_is_picked_from_the_grid_by_cv():
    grid = [0.01, 0.5, 2.0]
    ctx = FitContext()
    model = get_method("tfidf_nb")(alphas=grid, folds=3).fit(_toy(False, n=30), None, ctx)
    assert model.alpha_ in grid and ctx.info["alpha"] == model.alpha_
    assert set(ctx.info["alpha_cv"]["scores"]) == {str(a) for a in grid}
    assert "3-fold" in ctx.info["alpha_cv"]["folds"]


def test_tfidf_small_slice_falls_back_to_default_alpha_and_says_why():
    ctx = FitContext()
    model = get_method("tfidf_nb")(default_alpha=0.3).fit(_toy(False, n=3), None, ctx)
    assert model.alpha_ == 0.3
    assert "too few" in ctx.info["alpha_cv"]["fallback"]


def test_knn_votes_k1_returns_the_neighbours_labels():
    from label_pipeline.methods.baselines import knn_votes

    train_vecs = np.eye(3)
    y = np.array([[1, 0], [0, 1], [1, 1]])
    queries = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.95]])
    votes = knn_votes(queries @ train_vecs.T, y, np.ones(3), k=1)
    assert votes.tolist() == [[1.0, 0.0], [1.0, 1.0]]
    votes3 = knn_votes(queries @ train_vecs.T, y, np.ones(3), k=3)
    np.testing.assert_allclose(votes3, [[2 / 3, 2 / 3]] * 2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["embed_lr", "knn"])
def test_embedding_methods_on_toy_task_and_save_load(name, tmp_path):
    train, test = _toy(True), _toy(True, seed=2)
    ctx = FitContext()
    model = get_method(name)().fit(train, test, ctx)
    probs = model.predict_proba(test.texts)
    assert ((probs >= 0) & (probs <= 1)).all()
    assert f1_micro_macro(test.y, (probs >= 0.5).astype(int))["micro_f1"] >= 0.9
    assert "encoder" in ctx.info
    model.save(tmp_path / "m")
    again = get_method(name).load(tmp_path / "m")
    np.testing.assert_allclose(again.predict_proba(test.texts), probs, atol=1e-6)


@pytest.mark.slow
def test_knn_k1_single_label_predicts_nearest_training_label():
    train = _toy(False, n=10)
    model = get_method("knn")(max_k=1).fit(train, train, FitContext())
    assert model.k_ == 1
    probs = model.predict_proba(train.texts)
    np.testing.assert_array_equal(probs, train.y.astype(float))


def test_unknown_method_is_a_clear_config_error():
    from label_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown method 'nb'.*naive_bayes"):
        get_method("nb")
