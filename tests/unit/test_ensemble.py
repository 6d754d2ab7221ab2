"""The ensemble method: members fitted on the same rows, probabilities averaged."""

from __future__ import annotations

import numpy as np
import pytest
from test_baselines import _toy

from label_pipeline.errors import ConfigError
from label_pipeline.methods import FitContext, get_method
from label_pipeline.methods.base import load_saved

MEMBERS = ["naive_bayes", "tfidf_nb"]


@pytest.mark.parametrize("multi_label", [True, False])
def test_probabilities_are_the_weighted_member_mean_and_survive_save_load(tmp_path, multi_label):
    train, valid, test = (_toy(multi_label, seed=s) for s in (0, 1, 2))
    test.texts[0] = "great awful"  # a row the members disagree on more than on the others
    ctx = FitContext(seed=0)
    model = get_method("ensemble")(members=MEMBERS, weights=[3, 1]).fit(train, valid, ctx)
    members = [model.members_[m].predict_proba(test.texts) for m in MEMBERS]
    probs = model.predict_proba(test.texts)
    np.testing.assert_allclose(probs, 0.75 * members[0] + 0.25 * members[1])
    assert ((probs >= 0) & (probs <= 1)).all()
    if not multi_label:
        np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert set(ctx.info["members"]) == set(MEMBERS)
    assert all(ctx.info["members"][m]["valid"] == 1.0 for m in MEMBERS)  # separable toy task

    model.save(tmp_path / "model")
    assert (tmp_path / "model/members/tfidf_nb").is_dir()
    back = load_saved("ensemble", tmp_path / "model")
    np.testing.assert_allclose(back.predict_proba(test.texts), probs)
    np.testing.assert_allclose(back.source_prior(train), [0.5, 0.5])


@pytest.mark.parametrize("multi_label", [True, False])
def test_a_label_of_label_members_is_the_mean_of_its_members_only(tmp_path, multi_label):
    train, valid, test = (_toy(multi_label, seed=s) for s in (0, 1, 2))
    test.texts[0] = "great awful"
    model = get_method("ensemble")(
        members=MEMBERS, weights=[3, 1], label_members={"neg": ["tfidf_nb"]}
    ).fit(train, valid, FitContext(seed=0))
    nb, tfidf = (model.members_[m].predict_proba(test.texts) for m in MEMBERS)
    expected = 0.75 * nb + 0.25 * tfidf
    expected[:, 1] = tfidf[:, 1]  # "neg" from tfidf_nb alone, whatever the weights
    if not multi_label:
        expected /= expected.sum(axis=1, keepdims=True)
    probs = model.predict_proba(test.texts)
    np.testing.assert_allclose(probs, expected)
    assert not np.allclose(probs, 0.75 * nb + 0.25 * tfidf)
    model.save(tmp_path / "model")
    np.testing.assert_allclose(
        load_saved("ensemble", tmp_path / "model").predict_proba(test.texts), probs
    )


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"members": []}, "members is empty"),
        ({"members": ["naive_bayes", "naive_bayes"]}, "lists a method twice"),
        ({"members": ["naive_bayes", "ensemble"]}, r"\['ensemble'\] cannot be members"),
        ({"members": ["nope"]}, r"\['nope'\] cannot be members"),
        ({"members": MEMBERS, "member_params": {"knn": {}}}, "not in members"),
        ({"members": MEMBERS, "weights": [1.0]}, "one positive weight per member"),
        ({"members": MEMBERS, "label_members": {"neg": ["knn"]}}, "one or more of the members"),
        ({"members": MEMBERS, "label_members": {"neg": []}}, "one or more of the members"),
        ({"members": MEMBERS, "label_members": {"maybe": MEMBERS}}, r"\['maybe'\], which are not"),
    ],
)
def test_bad_parameters_are_named(params, match):
    with pytest.raises(ConfigError, match=match):
        get_method("ensemble")(**params).fit(_toy(False), None, FitContext())
