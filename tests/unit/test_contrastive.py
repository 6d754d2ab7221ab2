"""setfit: the no-shared-label batcher, pair building, and learning a toy task."""

from __future__ import annotations

import numpy as np
import pytest

from label_pipeline.errors import ConfigError
from label_pipeline.methods import FitContext, get_method
from label_pipeline.methods.contrastive import SetFit, make_pairs, no_shared_label_batches


@pytest.mark.parametrize("seed", range(25))
def test_batches_never_share_a_label(seed):
    rng = np.random.default_rng(seed)
    n_labels = int(rng.integers(1, 12))
    n_items = int(rng.integers(0, 200))
    batch_size = int(rng.integers(1, 20))
    sets = [
        set(rng.choice(n_labels, size=int(rng.integers(0, min(4, n_labels) + 1)), replace=False))
        for _ in range(n_items)
    ]
    batches = no_shared_label_batches(sets, batch_size, seed=seed)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(n_items))  # every item exactly once
    for b in batches:
        assert 1 <= len(b) <= batch_size
        seen: set = set()
        for i in b:
            assert seen.isdisjoint(sets[i])
            seen |= sets[i]


def test_single_label_batches_fill_up_to_the_label_count():
    labels = [{i % 4} for i in range(40)]
    batches = no_shared_label_batches(labels, batch_size=16, seed=0)
    assert all(len(b) == 4 for b in batches)
    assert no_shared_label_batches(labels, 16, seed=1) != batches
    with pytest.raises(ConfigError):
        no_shared_label_batches(labels, 0)


def test_make_pairs_share_a_label():
    rng = np.random.default_rng(0)
    y = (rng.random((30, 5)) < 0.3).astype(int)
    y[0] = [1, 0, 0, 0, 0]
    y[1:, 0] = 0  # row 0 is the only one with label 0 ... and no other label
    pairs = make_pairs(y, 3, rng)
    assert pairs
    for a, p in pairs:
        assert a != p and (y[a] & y[p]).any()
    assert all(a != 0 for a, _ in pairs)  # no partner for row 0


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from test_finetune import FILLER, WORDS

    from label_pipeline.testing import make_tiny_bert

    corpus = [" ".join(WORDS[k] + FILLER) for k in WORDS] * 4
    enc = make_tiny_bert(
        tmp_path_factory.mktemp("toy-enc"),
        "base",
        corpus=corpus,
        hidden_size=64,
        num_layers=1,
        intermediate_size=128,
    )
    return enc


@pytest.mark.slow
def test_setfit_beats_chance_and_round_trips(toy, tmp_path):
    from test_finetune import CPU, multi_label_rows, single_label_rows

    train, test = single_label_rows(24, 1), single_label_rows(60, 3)
    ctx = FitContext(device=CPU, encoder=str(toy), seed=0)
    m = get_method("setfit")(pairs_per_row=4, epochs=2, lr=1e-3).fit(train, None, ctx)
    p = m.predict_proba(test.texts)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert ((p >= 0) & (p <= 1)).all()
    assert (p.argmax(1) == test.y_index).mean() > 0.6  # chance is 1/3
    assert ctx.info["history"]["warmup"]["steps"] > 0
    m.save(tmp_path / "s")
    np.testing.assert_allclose(
        SetFit.load(tmp_path / "s", device=CPU).predict_proba(test.texts), p, atol=1e-6
    )

    ml_train, ml_test = multi_label_rows(40, 4), multi_label_rows(40, 6)
    ml = SetFit(pairs_per_row=2, epochs=1, lr=1e-3).fit(
        ml_train, None, FitContext(device=CPU, encoder=str(toy))
    )
    q = ml.predict_proba(ml_test.texts)
    assert q.shape == (40, 3) and ((q >= 0) & (q <= 1)).all()
    pred = (q >= 0.5).astype(int)
    assert 2 * (pred & ml_test.y).sum() / (pred.sum() + ml_test.y.sum()) > 0.7


@pytest.mark.slow
def test_setfit_finetune_head(toy, tmp_path):
    from test_finetune import CPU, single_label_rows

    train, valid = single_label_rows(24, 1), single_label_rows(12, 2)
    m = SetFit(
        pairs_per_row=2,
        epochs=1,
        lr=1e-3,
        head="finetune",
        finetune_params={"epochs": 3, "patience": 0, "lr": 2e-3, "head_lr": 2e-3, "batch_size": 8},
    ).fit(train, valid, FitContext(device=CPU, encoder=str(toy), work_dir=tmp_path))
    p = m.predict_proba(valid.texts)
    m.save(tmp_path / "s")
    assert (tmp_path / "s" / "finetune" / "model" / "config.json").is_file()
    np.testing.assert_allclose(
        SetFit.load(tmp_path / "s", device=CPU).predict_proba(valid.texts), p, atol=1e-6
    )


def test_setfit_bad_params():
    from test_finetune import single_label_rows

    with pytest.raises(ConfigError, match="setfit.batch_size"):
        SetFit(batch_size=1).fit(single_label_rows(6, 0), None, FitContext())
