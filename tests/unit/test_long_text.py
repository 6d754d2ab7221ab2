"""Long texts: the tail of a long text reaches the model with ``head_tail`` and ``chunks``
(frozen embeddings, embed_lr, finetune) and not with ``truncate``; window helpers, title
weighting, option errors and the shared window cache."""

from __future__ import annotations

import numpy as np
import pytest

from label_pipeline import embeddings
from label_pipeline.devices import choose_device
from label_pipeline.embeddings import (
    chunk_windows,
    embed_texts,
    encoder_inputs,
    encoder_windows,
    head_tail,
    long_text_options,
    split_title,
)
from label_pipeline.errors import ConfigError
from label_pipeline.methods import FitContext, LabelledTexts, get_method

CPU = choose_device(cuda_available=False, bf16_supported=False, mps_available=False)
FILLER = "the a it was and this then so we our when with for".split()
SIGNAL = {
    "bug": "crash error exception broken fails".split(),
    "feature": "support option request add would".split(),
}
TAIL_WORDS = 600  # the class words come after this many filler words (> 4 windows of 128)


def long_text(label: str, rng: np.random.Generator, title: str = "report") -> str:
    """A title line, ``TAIL_WORDS`` filler words, then the class words: the signal sits
    only in the tail."""
    body = " ".join(rng.choice(FILLER, size=TAIL_WORDS))
    tail = " ".join(rng.choice(SIGNAL[label], size=40))
    return f"{title} {rng.integers(1000)}\n\n{body}\n\n{tail}"


def middle_text(label: str, rng: np.random.Generator) -> str:
    """A title line, then the class words between two runs of filler words: the signal
    sits neither at the start nor at the end."""
    before, after = (" ".join(rng.choice(FILLER, size=100)) for _ in range(2))
    middle = " ".join(rng.choice(SIGNAL[label], size=30))
    return f"report {rng.integers(1000)}\n\n{before}\n\n{middle}\n\n{after}"


def rows(n: int, seed: int, make=long_text) -> LabelledTexts:
    rng = np.random.default_rng(seed)
    names = sorted(SIGNAL)
    idx = np.arange(n) % 2
    texts = [make(names[i], rng) for i in idx]
    return LabelledTexts(texts, np.eye(2, dtype=np.int64)[idx], names, False)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A tiny random BERT (128 positions) whose tokenizer knows every word."""
    from label_pipeline.testing import make_tiny_bert

    corpus = [" ".join(FILLER + SIGNAL["bug"] + SIGNAL["feature"] + ["report"])] * 20
    return make_tiny_bert(tmp_path_factory.mktemp("long-enc"), "base", corpus=corpus)


@pytest.fixture(autouse=True)
def _fresh_cache():
    embeddings.clear_cache()
    yield
    embeddings.clear_cache()


def accuracy(method, data: LabelledTexts) -> float:
    return float((method.predict_proba(data.texts).argmax(1) == data.y.argmax(1)).mean())


def test_window_helpers():
    ids = list(range(1000))
    assert head_tail(ids[:10], 20, 0.5) == ids[:10]
    cut = head_tail(ids, 100, 0.25)
    assert cut == ids[:25] + ids[-75:]
    assert head_tail(ids, 10, 1.0) == ids[:10]
    wins = chunk_windows(ids, 100, 100, 50)
    assert len(wins) == 10 and wins[0] == ids[:100] and wins[-1] == ids[-100:]
    over = chunk_windows(ids, 100, 50, 50)
    assert len(over) == 19 and over[1][0] == 50
    few = chunk_windows(ids, 100, 100, 3)  # spread over the text, first and last kept
    assert [w[0] for w in few] == [0, 400, 900]
    odd = chunk_windows(ids[:250], 100, 100, 8)
    assert [w[0] for w in odd] == [0, 100, 150] and odd[-1][-1] == 249
    assert chunk_windows(ids[:5], 100, 100, 8) == [ids[:5]]
    assert split_title("Crash on start\n\nbody\nmore") == ("Crash on start", "body\nmore")
    assert split_title("one line only") == ("", "one line only")
    assert split_title("title\n\n  ") == ("", "title")


def test_bad_options_name_the_option():
    with pytest.raises(ConfigError, match="long_text"):
        long_text_options(long_text="all")
    with pytest.raises(ConfigError, match="pooling"):
        long_text_options(pooling="max")
    with pytest.raises(ConfigError, match="chunk_sise"):
        long_text_options(chunk_sise=100)
    with pytest.raises(ConfigError, match="long_text"):
        get_method("embed_lr")(embed_options={"long_text": "everything"})


def test_truncate_is_blind_to_the_tail_and_the_other_policies_see_it(encoder):
    rng = np.random.default_rng(0)
    head = " ".join(rng.choice(FILLER, size=TAIL_WORDS))
    a = f"title\n\n{head} crash crash error exception"
    b = f"title\n\n{head} support option request add"
    same = embed_texts(encoder, [a, b], CPU)
    assert np.allclose(same[0], same[1], atol=1e-6)  # the tail never reaches the encoder
    for opts in (
        {"long_text": "head_tail"},
        {"long_text": "chunks"},
        {"long_text": "chunks", "pooling": "attention", "title_weight": 1.0},
    ):
        v = embed_texts(encoder, [a, b], CPU, max_chunks=16, **opts)
        assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
        assert not np.allclose(v[0], v[1], atol=1e-4), opts


def test_embed_lr_learns_the_tail_only_when_it_reads_it(encoder, tmp_path):
    train, test = rows(40, seed=1), rows(40, seed=2)
    ctx = FitContext(device=CPU, seed=0, encoder=str(encoder))
    scores = {}
    for name, opts in {
        "truncate": {},
        "head_tail": {"long_text": "head_tail", "head_fraction": 0.25},
        "chunks": {"long_text": "chunks", "max_chunks": 16},
        "chunks_attention": {"long_text": "chunks", "max_chunks": 16, "pooling": "attention"},
    }.items():
        m = get_method("embed_lr")(embed_options=opts).fit(train, None, ctx)
        scores[name] = accuracy(m, test)
        if name == "chunks":
            m.save(tmp_path / "m")
            back = get_method("embed_lr").load(tmp_path / "m")
            back._device = CPU
            assert back.embed_options == opts
            np.testing.assert_allclose(back.predict_proba(test.texts), m.predict_proba(test.texts))
    assert scores["truncate"] <= 0.7, scores  # chance: the class words are past the window
    for name in ("head_tail", "chunks", "chunks_attention"):
        assert scores[name] >= 0.9, scores


def test_title_weight_moves_the_vector_toward_the_title(encoder):
    rng = np.random.default_rng(3)
    text = "crash error exception\n\n" + " ".join(rng.choice(FILLER, size=300))
    title = embed_texts(encoder, ["crash error exception"], CPU)[0]
    sims = [
        float(embed_texts(encoder, [text], CPU, long_text="chunks", title_weight=w)[0] @ title)
        for w in (0.0, 1.0, 4.0)
    ]
    assert sims[0] < sims[1] < sims[2] <= 1.0 + 1e-6, sims


def test_windows_are_shared_between_policies(encoder):
    short = ["a short text", "another one here"]
    embed_texts(encoder, short, CPU)
    table = next(iter(embeddings._vectors.values()))
    before = len(table)
    again = embed_texts(encoder, short, CPU, long_text="chunks", pooling="attention")
    assert len(table) == before  # one window each, the same under every policy
    np.testing.assert_allclose(again, embed_texts(encoder, short, CPU), atol=1e-6)
    assert embed_texts(encoder, [], CPU).shape == (0, 32)


def test_encoder_inputs_head_tail_keeps_the_end(encoder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(encoder))
    text = " ".join(["the"] * 100 + ["crash"])
    head = encoder_inputs(tok, [text], 16)[0]
    both = encoder_inputs(tok, [text], 16, "head_tail")[0]
    crash = tok.convert_tokens_to_ids("crash")
    assert len(head) == len(both) == 16
    assert crash not in head and both[-2] == crash
    assert both[0] == tok.cls_token_id and both[-1] == tok.sep_token_id
    assert encoder_inputs(tok, ["the crash"], 16, "head_tail") == encoder_inputs(
        tok, ["the crash"], 16
    )


def test_encoder_windows_read_the_whole_text(encoder):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(encoder))
    text = " ".join(["the"] * 50 + ["crash"] + ["the"] * 50)
    crash = tok.convert_tokens_to_ids("crash")
    (wins,) = encoder_windows(tok, [text], 12, max_chunks=20)
    assert len(wins) == 11  # 101 tokens in windows of 10 (+ [CLS], [SEP])
    assert all(
        len(w) == 12 and w[0] == tok.cls_token_id and w[-1] == tok.sep_token_id for w in wins
    )
    assert sum(w.count(crash) for w in wins) == 1
    (few,) = encoder_windows(tok, [text], 12, max_chunks=3)
    assert len(few) == 3 and few[0] == wins[0] and few[-1] == wins[-1]
    assert encoder_windows(tok, ["the crash"], 12, 4) == [encoder_inputs(tok, ["the crash"], 12)]


@pytest.mark.slow
def test_finetune_chunks_read_the_middle_of_a_long_text(encoder, tmp_path):
    """The class words sit in the middle of 200 filler words: the first and last tokens
    (``head_tail``) miss them, windows over the whole text (``chunks``) find them; the
    saved model gives the same probabilities after reload."""
    train, test = rows(32, 6, middle_text), rows(32, 7, middle_text)
    ctx = FitContext(device=CPU, seed=0, encoder=str(encoder))
    params = dict(epochs=12, patience=0, lr=3e-3, head_lr=3e-3, batch_size=8, max_length=32)
    ends = get_method("finetune")(truncation="head_tail", **params).fit(train, None, ctx)
    chunks = get_method("finetune")(
        truncation="chunks", max_chunks=16, chunk_pooling="max", **params
    ).fit(train, None, ctx)
    assert accuracy(ends, test) <= 0.7
    assert accuracy(chunks, test) >= 0.9
    chunks.save(tmp_path / "m")
    again = get_method("finetune").load(tmp_path / "m", device=CPU)
    assert again.truncation == "chunks" and again.max_chunks == 16
    np.testing.assert_allclose(
        again.predict_proba(test.texts), chunks.predict_proba(test.texts), atol=1e-5
    )
    with pytest.raises(ConfigError, match="max_chunks"):
        get_method("finetune")(truncation="chunks", max_chunks=0).fit(train, None, ctx)


@pytest.mark.slow
def test_finetune_head_tail_learns_the_tail(encoder):
    train, test = rows(32, seed=4), rows(32, seed=5)
    ctx = FitContext(device=CPU, seed=0, encoder=str(encoder))
    params = dict(epochs=12, patience=0, lr=3e-3, head_lr=3e-3, batch_size=8, max_length=32)
    head = get_method("finetune")(**params).fit(train, None, ctx)
    tail = get_method("finetune")(truncation="head_tail", **params).fit(train, None, ctx)
    assert accuracy(head, test) <= 0.7
    assert accuracy(tail, test) >= 0.9
    with pytest.raises(ConfigError, match="truncation"):
        get_method("finetune")(truncation="middle").fit(train, None, ctx)
