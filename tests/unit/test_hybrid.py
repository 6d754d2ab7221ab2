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
    with pytest.raises(ConfigError, match=r"hybrid\.prior_weights"):
        get_method("hybrid")(prior_weights=[0, -5])


# ---------------------------------------------------------------- the zero-shot prior

TOPICS = {
    "sports": [
        "the striker scored a late goal",
        "our team won the final match",
        "the coach praised his players",
        "she served an ace at the tennis open",
        "the runner finished the marathon",
        "the goalkeeper saved a penalty",
        "the referee showed a red card",
        "the cyclists raced up the mountain stage",
    ],
    "cooking": [
        "simmer the sauce for ten minutes",
        "bake the bread in a hot oven",
        "chop the onions and fry the garlic",
        "whisk the eggs with sugar and butter",
        "season the soup with salt and pepper",
        "roast the chicken with lemon and herbs",
        "knead the dough and let it rise",
        "grill the vegetables over charcoal",
    ],
    "weather": [
        "heavy rain is expected tomorrow",
        "a cold front brings snow overnight",
        "sunny skies and a light breeze today",
        "thunderstorms will hit the coast",
        "the forecast warns of strong winds",
        "fog and drizzle in the morning",
        "temperatures drop below freezing tonight",
        "a heatwave pushes the thermometer to forty degrees",
    ],
}


#: everyday filler sentences, the same for every topic
FILLER_SENTENCES = [
    f"{who} {did} {what}"
    for who in ("my uncle", "the new manager", "a stranger", "our landlord", "my sister")
    for did in ("painted", "repaired", "sold", "borrowed", "lost", "photographed")
    for what in (
        "a wooden fence",
        "the blue car",
        "an antique clock",
        "the garden shed",
        "a broken laptop",
        "the kitchen table",
    )
]


def _topic_rows(
    phrases: slice, per_label: int, seed: int, multi_label: bool, filler: int = 6
) -> LabelledTexts:
    """Texts of one topic phrase among ``filler`` unrelated sentences. Training and test
    rows use different phrases, so their words barely overlap: with two rows per label the
    regression mostly learns the filler, while the label names still point at the topic."""
    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    texts, y = [], []
    for j, name in enumerate(names):
        pool = TOPICS[name][phrases]
        for _ in range(per_label):
            parts = [pool[rng.integers(len(pool))]]
            parts += list(rng.choice(FILLER_SENTENCES, filler, replace=False))
            rng.shuffle(parts)
            texts.append(". ".join(p[0].upper() + p[1:] for p in parts) + ".")
            y.append([int(k == j) for k in range(len(names))])
    return LabelledTexts(texts, np.array(y), names, multi_label)


@pytest.fixture(scope="module")
def minilm():
    from label_pipeline.models import resolve_model

    return str(resolve_model("all-MiniLM-L6-v2"))


def test_zero_shot_prior_carries_label_names_where_the_few_rows_cannot(minilm, tmp_path):
    accuracy: dict[str, list[float]] = {"prior": [], "plain": []}
    weights = []
    for seed in range(4):
        train = _topic_rows(slice(0, 4), 2, seed, False)
        test = _topic_rows(slice(4, 8), 10, 100 + seed, False)
        truth = test.y.argmax(axis=1)
        ctx = FitContext(device=CPU, encoder=minilm, seed=0)
        with_prior = get_method("hybrid")().fit(train, None, ctx)
        chosen = ctx.info["zero_shot_prior"]
        weights.append(chosen["weight"])
        # chosen on the out-of-fold scores: a weight is used only where it scored higher
        if chosen["weight"] > 0:
            assert chosen["cv_scores"][f"{chosen['weight']:g}"] > chosen["cv_scores"]["0"]
        off_ctx = FitContext(device=CPU, encoder=minilm, seed=0)
        without = get_method("hybrid")(prior_weights=[0]).fit(train, None, off_ctx)
        assert "zero_shot_prior" not in off_ctx.info and without.prior_weight_ == 0.0
        probs = with_prior.predict_proba(test.texts)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
        accuracy["prior"].append(float((probs.argmax(axis=1) == truth).mean()))
        accuracy["plain"].append(
            float((without.predict_proba(test.texts).argmax(axis=1) == truth).mean())
        )
    assert sum(w > 0 for w in weights) >= 3, weights
    assert np.mean(accuracy["prior"]) >= np.mean(accuracy["plain"]) + 0.05, accuracy
    # the model of the last seed (its weight > 0 or not) reloads with the same probabilities
    with_prior.save(tmp_path / "m")
    again = get_method("hybrid").load(tmp_path / "m")
    assert again.prior_weight_ == with_prior.prior_weight_
    np.testing.assert_allclose(again.predict_proba(test.texts), probs, atol=1e-6)


def test_zero_shot_prior_multi_label_and_a_minimum_gain(minilm):
    train = _topic_rows(slice(0, 4), 4, 0, True, filler=1)
    test = _topic_rows(slice(4, 8), 6, 1, True, filler=1)
    ctx = FitContext(device=CPU, encoder=minilm, seed=0)
    model = get_method("hybrid")().fit(train, None, ctx)
    probs = model.predict_proba(test.texts)
    assert ((probs >= 0) & (probs <= 1)).all()
    assert (probs.argmax(axis=1) == test.y.argmax(axis=1)).mean() >= 0.9
    # a gain the CV scores cannot reach (mean average precision is at most 1) keeps it off
    strict = FitContext(device=CPU, encoder=minilm, seed=0)
    get_method("hybrid")(prior_min_gain=1.0).fit(train, None, strict)
    assert strict.info["zero_shot_prior"]["weight"] == 0.0
    # without the zero_shot block there is no prior at all
    plain = FitContext(device=CPU, encoder=minilm, seed=0)
    m = get_method("hybrid")(blocks=["word", "embed"]).fit(train, None, plain)
    assert "zero_shot_prior" not in plain.info and m.prior_weight_ == 0.0
