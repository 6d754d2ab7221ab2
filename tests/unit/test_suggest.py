"""The suggest stage and the query strategies behind it (label_pipeline.active)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from label_pipeline import active
from label_pipeline.errors import ConfigError
from label_pipeline.store import StageRef, StageStore

LABELS = ["anger", "fear", "joy"]
WORDS = {
    "anger": "furious rage mad annoyed",
    "fear": "scared afraid terrified nervous",
    "joy": "happy glad delighted cheerful",
}


def _texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        lab = LABELS[i % 3]
        words = list(rng.choice(WORDS[lab].split(), 2)) + [f"w{int(rng.integers(1000))}"]
        texts.append(" ".join(words) + f" row {i}")
        labels.append(lab)
    return texts, labels


def make_stages(root: Path, multi_label: bool = False, n_pool: int = 60, train_sources=None):
    """A split stage directory (train/valid/test/unlabeled) and a label stage directory with
    probabilities for every pool row, as the real stages write them."""
    import datasets

    from label_pipeline.data import CANONICAL_FEATURES, write_label_info

    def part(prefix: str, n: int, seed: int, labelled: bool, split: str) -> datasets.Dataset:
        texts, labs = _texts(n, seed)
        return datasets.Dataset.from_dict(
            {
                "id": [f"{prefix}{i}" for i in range(n)],
                "text": texts,
                "labels": [[lab] if labelled else [] for lab in labs],
                "split": [split] * n,
            },
            features=CANONICAL_FEATURES,
        )

    train = part("t", 12, 1, True, "train")
    if train_sources is not None:
        train = train.add_column("source", train_sources)
    # anger is rare in the labelled set: keep one of its rows
    keep = [i for i, lab in enumerate(train["labels"]) if lab != ["anger"]] + [0]
    train = train.select(sorted(keep))
    dd = datasets.DatasetDict(
        {
            "train": train,
            "valid": part("v", 6, 2, True, "valid"),
            "test": part("s", 6, 3, True, "test"),
            "unlabeled": part("u", n_pool, 4, False, "unlabeled"),
        }
    )
    split_dir = root / "split"
    dd.save_to_disk(str(split_dir / "splits"))
    write_label_info(split_dir, LABELS, multi_label)

    rng = np.random.default_rng(5)
    if multi_label:
        probs = rng.random((n_pool, 3))
        thresholds = [0.4, 0.5, 0.6]
        pred = probs >= np.array(thresholds)
        decision = {"rule": "per_label", "thresholds": thresholds}
    else:
        probs = rng.dirichlet(np.ones(3) * 0.7, size=n_pool)
        pred = probs == probs.max(axis=1, keepdims=True)
        decision = {"rule": "argmax", "thresholds": []}
    pool = dd["unlabeled"]
    cols = {
        "id": pool["id"],
        "text": pool["text"],
        "predicted_labels": [[LABELS[j] for j in np.flatnonzero(r)] for r in pred],
    }
    cols.update({f"prob_{name}": probs[:, j].astype(np.float32) for j, name in enumerate(LABELS)})
    label_dir = root / "label"
    datasets.Dataset.from_dict(cols).save_to_disk(str(label_dir / "labelled"))
    (label_dir / "model").mkdir(parents=True)
    (label_dir / "model" / "decision.json").write_text(json.dumps(decision))
    refs = (
        StageRef(stage="split", fingerprint="fp-split", path=str(split_dir)),
        StageRef(stage="label", fingerprint="fp-label", path=str(label_dir)),
    )
    return refs, probs.astype(np.float32).astype(np.float64), dd


def _read_csv(ref: StageRef) -> list[dict[str, str]]:
    with open(ref.dir / "to_label.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    from label_pipeline.testing import make_tiny_bert

    corpus = [" ".join(WORDS.values())] + _texts(80, 4)[0]
    return make_tiny_bert(tmp_path_factory.mktemp("enc"), "base", corpus=corpus)


@pytest.mark.parametrize(
    ("strategy", "multi_label"),
    [
        ("random", False),
        ("least_confidence", False),
        ("margin", False),
        ("entropy", False),
        ("diverse", False),
        ("k_center", False),
        ("label_uncertainty", True),
        ("diverse", True),
        ("k_center", True),
    ],
)
def test_suggests_n_distinct_pool_rows_only(tmp_path, tiny_encoder, strategy, multi_label):
    from tasks.suggest import SuggestConfig, run_suggest

    (splits, labelled), probs, dd = make_stages(tmp_path, multi_label)
    cfg = SuggestConfig(n=10, strategy=strategy, encoder=str(tiny_encoder))
    ref = run_suggest(StageStore(tmp_path / "store"), cfg, splits=splits, labelled=labelled)
    rows = _read_csv(ref)
    ids = [r["id"] for r in rows]
    assert len(ids) == 10 and len(set(ids)) == 10
    pool = set(dd["unlabeled"]["id"])
    held = {i for part in ("train", "valid", "test") for i in dd[part]["id"]}
    assert set(ids) <= pool and not set(ids) & held
    assert [int(r["rank"]) for r in rows] == list(range(1, 11))
    assert all(r["labels"] == "" and r["reason"] and r["source"] == "round-1" for r in rows)
    # the probabilities written are the label stage's
    pos = {i: k for k, i in enumerate(dd["unlabeled"]["id"])}
    for r in rows:
        got = [float(r[f"prob_{name}"]) for name in LABELS]
        assert np.allclose(got, probs[pos[r["id"]]], atol=1e-4)
    manifest = ref.manifest()
    assert manifest["suggested"] == 10 and manifest["strategy"] == strategy
    assert json.loads((ref.dir / "suggestions.json").read_text())["ids"] == ids


def test_uncertainty_strategies_pick_the_least_sure_rows(tmp_path):
    from tasks.suggest import SuggestConfig, run_suggest

    (splits, labelled), probs, dd = make_stages(tmp_path)
    store = StageStore(tmp_path / "store")
    pool_ids = dd["unlabeled"]["id"]
    top2 = np.sort(probs, axis=1)[:, -2:]
    expected = {
        "least_confidence": probs.max(axis=1),  # lowest first
        "margin": top2[:, 1] - top2[:, 0],
        "entropy": (probs * np.log(probs)).sum(axis=1),  # = -entropy
    }
    for strategy, key in expected.items():
        ref = run_suggest(
            store, SuggestConfig(n=8, strategy=strategy), splits=splits, labelled=labelled
        )
        got = [r["id"] for r in _read_csv(ref)]
        assert got == [pool_ids[i] for i in np.argsort(key, kind="stable")[:8]], strategy
    rnd = run_suggest(
        store, SuggestConfig(n=8, strategy="random"), splits=splits, labelled=labelled
    )
    ent = run_suggest(
        store, SuggestConfig(n=8, strategy="entropy"), splits=splits, labelled=labelled
    )
    assert {r["id"] for r in _read_csv(rnd)} != {r["id"] for r in _read_csv(ent)}


def _clustered(n_groups: int = 5, per_group: int = 20, dim: int = 16):
    """Groups of near-identical embeddings; group 0 is the most uncertain, then group 1..."""
    rng = np.random.default_rng(0)
    centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:n_groups]
    emb = np.repeat(centres, per_group, axis=0) + rng.normal(
        scale=0.01, size=(n_groups * per_group, dim)
    )
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    group = np.repeat(np.arange(n_groups), per_group)
    sure = 0.4 + 0.1 * group + rng.uniform(0, 0.01, size=len(group))
    probs = np.stack([sure, (1 - sure) / 2, (1 - sure) / 2], axis=1)
    return emb, probs, group


def test_diverse_and_k_center_spread_a_batch_over_clusters():
    emb, probs, group = _clustered()
    ent = active.suggest("entropy", probs, LABELS, False, 5)
    assert set(group[ent.positions]) == {0}  # five near-copies of the most uncertain text
    div = active.suggest("diverse", probs, LABELS, False, 5, embeddings=emb, candidate_factor=20)
    assert sorted(group[div.positions]) == [0, 1, 2, 3, 4]
    assert div.positions[0] in np.flatnonzero(group == 0)  # the most uncertain row first
    kc = active.suggest(
        "k_center", probs, LABELS, False, 4, embeddings=emb, labelled_embeddings=emb[:1]
    )
    assert sorted(group[kc.positions]) == [1, 2, 3, 4]  # group 0 is already labelled


def test_label_uncertainty_gives_every_label_its_rows_near_its_threshold():
    rng = np.random.default_rng(1)
    probs = rng.uniform(0.0, 0.2, size=(30, 3))
    probs[5, 0], probs[9, 1], probs[17, 2] = 0.39, 0.52, 0.61  # one row near each threshold
    out = active.suggest("label_uncertainty", probs, LABELS, True, 3, thresholds=[0.4, 0.5, 0.6])
    assert out.positions == [5, 9, 17]
    assert "'anger'" in out.reasons[0] and "threshold 0.40" in out.reasons[0]


def test_cover_rare_labels_puts_the_rarest_label_first(tmp_path):
    from tasks.suggest import SuggestConfig, run_suggest

    (splits, labelled), probs, dd = make_stages(tmp_path)
    cfg = SuggestConfig(n=10, strategy="margin", cover_rare_labels=True, rare_rows_per_label=3)
    ref = run_suggest(StageStore(tmp_path / "store"), cfg, splits=splits, labelled=labelled)
    rows = _read_csv(ref)
    top_anger = [dd["unlabeled"]["id"][i] for i in np.argsort(-probs[:, 0], kind="stable")[:3]]
    assert [r["id"] for r in rows[:3]] == top_anger
    assert all(r["reason"].startswith("rare label 'anger' (1 labelled rows)") for r in rows[:3])
    assert not any(r["reason"].startswith("rare label") for r in rows[3:])
    # without the option the batch is the plain margin batch
    plain = run_suggest(
        StageStore(tmp_path / "store"), SuggestConfig(n=10), splits=splits, labelled=labelled
    )
    assert [r["id"] for r in _read_csv(plain)][:3] != top_anger


def test_round_number_pool_smaller_than_n_and_errors(tmp_path):
    from tasks.suggest import SuggestConfig, run_suggest

    sources = ["input"] * 8 + ["round-1"] * 2 + ["round-2"] * 2
    (splits, labelled), _, dd = make_stages(tmp_path, n_pool=7, train_sources=sources)
    ref = run_suggest(
        StageStore(tmp_path / "store"), SuggestConfig(n=50), splits=splits, labelled=labelled
    )
    rows = _read_csv(ref)
    assert sorted(r["id"] for r in rows) == sorted(dd["unlabeled"]["id"])
    assert {r["source"] for r in rows} == {"round-3"}

    (splits, labelled), _, _ = make_stages(tmp_path / "ml", multi_label=True)
    with pytest.raises(ConfigError, match="suggest.strategy='entropy'.*multi-label"):
        run_suggest(
            StageStore(tmp_path / "store"),
            SuggestConfig(strategy="entropy"),
            splits=splits,
            labelled=labelled,
        )
    with pytest.raises(ConfigError, match="needs one embedding per pool row"):
        active.suggest("diverse", np.full((4, 3), 1 / 3), LABELS, False, 2)


def test_choose_rows_is_a_plain_function_of_the_pool():
    """The suggest stage's computation, called without a store: rejected rows first, then the
    least confident rows, the round after the training rows' highest, and embeddings asked for
    only by the strategies that need them (for the rows not already chosen)."""
    from tasks.suggest import REJECTED_REASON, SuggestConfig, choose_rows

    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3], [0.6, 0.2, 0.2], [0.34, 0.33, 0.33]])
    ids, texts = ["a", "b", "c", "d"], ["ta", "tb", "tc", "td"]
    guesses = [["anger"], ["anger"], ["anger"], ["anger", "joy"]]
    out = choose_rows(
        ids,
        texts,
        probs,
        LABELS,
        False,
        SuggestConfig(n=3, label_separator="|"),
        guesses=guesses,
        train_labels=[["joy"], ["joy"], ["fear"]],
        train_sources=["input", "round-2", "round-1"],
        rejected=["c", "gone"],
    )
    assert out.strategy == "least_confidence" and out.round_no == 3 and out.source == "round-3"
    assert [r["id"] for r in out.rows] == ["c", "d", "b"]
    assert out.rows[0]["reason"] == REJECTED_REASON and out.rows[0]["score"] == 1.0
    assert [r["rank"] for r in out.rows] == [1, 2, 3] and out.rejected_first == 1
    assert out.rows[1]["guess"] == "anger|joy" and out.rows[1]["prob_anger"] == 0.34
    assert out.rows[1]["labels"] == "" and {r["source"] for r in out.rows} == {"round-3"}
    assert list(out.rows[0]) == out.columns and out.pool_rows == 4
    assert out.labelled_counts == {"joy": 2, "fear": 1}

    asked = []

    def embed(pool_texts, train_texts):
        asked.append((pool_texts, train_texts))
        emb = np.eye(4)[[0, 1, 3]]  # the three rows not rejected
        return emb, np.eye(4)[[0]]

    kc = choose_rows(
        ids,
        texts,
        probs,
        LABELS,
        False,
        SuggestConfig(n=2, strategy="k_center"),
        train_texts=["x"],
        rejected=["c"],
        embed=embed,
    )
    assert asked == [(["ta", "tb", "td"], ["x"])]
    assert kc.rows[0]["id"] == "c" and kc.rows[1]["id"] in {"b", "d"}  # "a" is labelled already
