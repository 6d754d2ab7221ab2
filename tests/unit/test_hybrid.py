"""The hybrid method (TF-IDF word + char n-grams + sentence embeddings + zero-shot scores)
on data built here, with a tiny random encoder."""

from __future__ import annotations

import numpy as np
import pytest

from label_pipeline.devices import DeviceConfig, choose_device
from label_pipeline.errors import ConfigError
from label_pipeline.methods import FitContext, LabelledTexts, get_method
from label_pipeline.metrics import f1_micro_macro

LABELS = ["bug", "feature", "question"]
WORDS = {
    "bug": "crash segfault traceback exception broken regression nullpointer".split(),
    "feature": "support request option enhancement proposal configurable".split(),
    "question": "how why wondering explain docs clarify".split(),
}
FILLER = "the a we when this that it repo version build".split()
CPU = choose_device(DeviceConfig(device="cpu"))


def _rows(n: int, multi_label: bool, seed: int) -> LabelledTexts:
    """Issue-like texts: a title line, filler paragraphs, the label's words in the body."""
    rng = np.random.default_rng(seed)
    texts, y = [], []
    for i in range(n):
        labs = [i % 3]
        if multi_label and i % 4 == 0:
            labs.append((i + 1) % 3)
        words = [w for j in labs for w in rng.choice(WORDS[LABELS[j]], 3)]
        words += list(rng.choice(FILLER, 12))
        rng.shuffle(words)
        texts.append(f"Issue {i}\n\n" + " ".join(words))
        y.append([int(j in labs) for j in range(3)])
    return LabelledTexts(texts, np.array(y), LABELS, multi_label)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from label_pipeline.testing import make_tiny_bert

    corpus = [" ".join(WORDS[k] + FILLER) for k in WORDS] * 4
    return str(
        make_tiny_bert(
            tmp_path_factory.mktemp("hyb-enc"),
            "base",
            corpus=corpus,
            hidden_size=32,
            num_layers=1,
            intermediate_size=64,
        )
    )


@pytest.mark.parametrize("multi_label", [True, False])
def test_learns_and_save_load_reproduces_probabilities(encoder, tmp_path, multi_label):
    train, test = _rows(36, multi_label, 0), _rows(30, multi_label, 1)
    ctx = FitContext(device=CPU, encoder=encoder, seed=0)
    model = get_method("hybrid")().fit(train, None, ctx)
    probs = model.predict_proba(test.texts)
    assert probs.shape == test.y.shape and ((probs >= 0) & (probs <= 1)).all()
    if multi_label:
        pred = (probs >= 0.5).astype(int)
    else:
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
        pred = np.eye(3, dtype=int)[probs.argmax(axis=1)]
    assert f1_micro_macro(test.y, pred)["micro_f1"] >= 0.9
    # CV chose C from the grid and the probabilities were calibrated on out-of-fold scores
    assert ctx.info["C"] in model.Cs and ctx.info["C_cv"]["folds"] != "none"
    expected = "Platt" if multi_label else "temperature"
    assert expected in ctx.info["calibration"]
    assert set(ctx.info["features"]) == {"word", "char", "total"}
    model.save(tmp_path / "m")
    again = get_method("hybrid").load(tmp_path / "m")
    np.testing.assert_allclose(again.predict_proba(test.texts), probs, atol=1e-6)


def test_each_block_alone_learns_and_blocks_change_the_features(encoder):
    train, test = _rows(36, False, 0), _rows(30, False, 1)
    widths = {}
    for blocks in (["word"], ["char"], ["word", "char", "embed", "zero_shot"]):
        ctx = FitContext(device=CPU, encoder=encoder)
        model = get_method("hybrid")(blocks=blocks).fit(train, None, ctx)
        pred = model.predict_proba(test.texts).argmax(axis=1)
        assert (pred == test.y.argmax(axis=1)).mean() >= 0.9, blocks
        widths[tuple(blocks)] = ctx.info["features"]["total"]
        assert ("encoder" in ctx.info) == ("embed" in blocks)
    # the dense blocks add the encoder width (32) and one zero-shot column per label (3)
    assert widths[("word", "char", "embed", "zero_shot")] == (
        widths[("word",)] + widths[("char",)] + 32 + 3
    )


def test_tiny_slice_falls_back_to_default_c_and_own_probabilities(encoder):
    train = _rows(3, True, 0)  # too few rows for 2-fold CV
    ctx = FitContext(device=CPU, encoder=encoder)
    model = get_method("hybrid")(default_C=7.0).fit(train, None, ctx)
    assert model.C_ == 7.0 and ctx.info["C_cv"]["folds"] == "none"
    assert "own probabilities" in ctx.info["calibration"]
    probs = model.predict_proba(["crash segfault traceback"])
    assert probs.shape == (1, 3) and np.isfinite(probs).all()


def test_label_without_training_rows_is_reported_and_never_predicted(encoder):
    base = _rows(30, True, 0)
    y = base.y.copy()
    y[:, 2] = 0
    train = LabelledTexts(base.texts, y, LABELS, True)
    ctx = FitContext(device=CPU, encoder=encoder)
    probs = get_method("hybrid")().fit(train, None, ctx).predict_proba(base.texts)
    assert ctx.info["labels_without_examples"] == ["question"]
    assert (probs[:, 2] == 0).all()


def test_parameter_errors_name_the_parameter():
    with pytest.raises(ConfigError, match=r"hybrid\.blocks.*unknown block"):
        get_method("hybrid")(blocks=["word", "bigrams"])
    with pytest.raises(ConfigError, match=r"hybrid\.char_ngram"):
        get_method("hybrid")(char_ngram=[5, 2])
    with pytest.raises(ConfigError, match=r"hybrid\.weights"):
        get_method("hybrid")(weights={"embed": -1})
