import json
import os
from pathlib import Path

import datasets
import numpy as np
import pytest

from label_pipeline.data import CANONICAL_FEATURES, write_label_info
from label_pipeline.devices import choose_device
from label_pipeline.errors import ConfigError, InputDataError
from label_pipeline.store import StageRef, StageStore
from label_pipeline.zeroshot import available_backends, get_backend
from tasks import zero_shot as zs
from tasks.zero_shot import ZeroShotConfig, plan_shards, run_zero_shot, score_shard

os.environ["HF_HUB_OFFLINE"] = "1"

CPU = choose_device(cuda_available=False, bf16_supported=False, mps_available=False)
TEXTS = {
    "joy": "I love this, so happy and delighted, what a wonderful day",
    "anger": "I am furious and angry, this is outrageous and infuriating",
    "sadness": "I feel so sad and lonely, I cried all night, heartbroken",
}
CORPUS = list(TEXTS.values()) + ["this text is about joy anger sadness", "a long text " * 40]


@pytest.fixture(scope="module")
def tiny_nli(tmp_path_factory) -> Path:
    from label_pipeline.testing import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-nli"), "nli", corpus=CORPUS, seed=3)


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory) -> Path:
    from label_pipeline.testing import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny-mlm"), "mlm", corpus=CORPUS, seed=4)


def make_splits(
    root: Path,
    labels: list[str] | None = None,
    n_unlabeled: int = 30,
    multi_label: bool = True,
    n_eval: int = 9,
) -> StageRef:
    """A split-stage-shaped directory: splits/ (train/valid/test/unlabeled) and labels.json."""
    labels = ["joy", "anger", "sadness"] if labels is None else labels
    names = list(TEXTS)

    def rows(split: str, n: int, labelled: bool) -> datasets.Dataset:
        out = []
        for i in range(n):
            lab = names[i % len(names)]
            out.append(
                {
                    "id": f"{split}-{i}",
                    "text": f"{TEXTS[lab]} ({i})",
                    "labels": [lab] if labelled else [],
                    "split": split,
                }
            )
        columns = {k: [r[k] for r in out] for k in CANONICAL_FEATURES}
        return datasets.Dataset.from_dict(columns, features=CANONICAL_FEATURES)

    root.mkdir(parents=True, exist_ok=True)
    dd = datasets.DatasetDict(
        {
            "train": rows("train", 6, True),
            "valid": rows("valid", n_eval, True),
            "test": rows("test", n_eval, True),
            "unlabeled": rows("unlabeled", n_unlabeled, False),
        }
    )
    # one shard per split: a zero-row split saved otherwise cannot be loaded back
    dd.save_to_disk(str(root / "splits"), num_shards={k: 1 for k in dd})
    write_label_info(root, labels, multi_label)
    return StageRef(stage="split", fingerprint=f"fp-{root.name}", path=str(root))


# ---------------------------------------------------------------- registry


def test_registry_lists_every_backend_module_and_rejects_unknown_names():
    assert {"nli", "embedding", "fill_mask"} <= set(available_backends())
    assert get_backend("nli").name == "nli"
    with pytest.raises(ConfigError, match="not a known backend.*embedding"):
        get_backend("no_such_backend")


# ---------------------------------------------------------------- nli backend


@pytest.mark.parametrize("multi_label", [True, False])
def test_nli_batched_matches_transformers_pipeline(tiny_nli, multi_label):
    from transformers import pipeline

    texts = [TEXTS["joy"], "short", TEXTS["anger"] + " and more words here", TEXTS["sadness"]]
    labels = ["joy", "anger", "sadness", "neutral"]
    template = "This text is about {}."
    backend = get_backend("nli")(tiny_nli, CPU, batch_size=5, hypothesis_template=template)
    assert backend.cls_only  # the last layer runs for the first token only (BERT)
    got = backend.score(texts, labels, labels, multi_label).scores
    assert got.shape == (4, 4)

    pipe = pipeline("zero-shot-classification", model=str(tiny_nli), device="cpu")
    for r, text in enumerate(texts):
        out = pipe(
            text, candidate_labels=labels, hypothesis_template=template, multi_label=multi_label
        )
        ref = dict(zip(out["labels"], out["scores"], strict=True))
        np.testing.assert_allclose(got[r], [ref[name] for name in labels], atol=1e-5)
    if not multi_label:
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_nli_counts_truncated_texts(tiny_nli):
    backend = get_backend("nli")(tiny_nli, CPU, batch_size=8, max_length=24)
    res = backend.score(
        ["a long text " * 40, "short text"], ["joy", "anger"], ["joy", "anger"], True
    )
    assert res.truncated.tolist() == [True, False]
    assert np.isfinite(res.scores).all() and ((res.scores >= 0) & (res.scores <= 1)).all()


def test_nli_model_without_entailment_label_is_rejected(tmp_path):
    from label_pipeline.testing import make_tiny_bert

    path = make_tiny_bert(tmp_path / "cls", "cls", num_labels=3)
    with pytest.raises(ConfigError, match="names no entailment label"):
        get_backend("nli")(path, CPU)


def test_nli_label_ids_are_case_insensitive():
    from label_pipeline.zeroshot.nli import nli_label_ids

    assert nli_label_ids({"CONTRADICTION": 0, "Neutral": 1, "ENTAILMENT": 2}) == (2, 0)


# ---------------------------------------------------------------- embedding backend


def test_embedding_backend_ranks_the_obvious_label_first():
    from label_pipeline.models import resolve_model

    backend = get_backend("embedding")(resolve_model("all-MiniLM-L6-v2"), CPU, batch_size=8)
    labels = ["joy", "anger", "sadness"]
    texts = [
        "I love this, so happy!",
        "This makes me furious, I am so angry.",
        "I miss her so much, I cannot stop crying.",
    ]
    multi = backend.score(texts, labels, labels, multi_label=True)
    single = backend.score(texts, labels, labels, multi_label=False)
    assert multi.scores.argmax(axis=1).tolist() == [0, 1, 2]
    assert single.scores.argmax(axis=1).tolist() == [0, 1, 2]
    assert ((multi.scores >= 0) & (multi.scores <= 1)).all()
    np.testing.assert_allclose(single.scores.sum(axis=1), 1.0, atol=1e-5)
    # descriptions replace label names in the comparison
    described = backend.score(texts[:1], labels, ["happiness and delight", "rage", "grief"], True)
    assert described.scores.argmax() == 0


def test_cosine_to_scores_mapping():
    from label_pipeline.zeroshot.embedding import cosine_to_scores

    cos = np.array([[1.0, 0.0, -1.0], [0.30, 0.25, 0.20]])
    np.testing.assert_allclose(cosine_to_scores(cos, True, 0.05)[0], [1.0, 0.5, 0.0])
    single = cosine_to_scores(cos, False, 0.05)
    np.testing.assert_allclose(single.sum(axis=1), 1.0)
    # a 0.05 cosine lead becomes a clear but not certain preference at T=0.05
    assert 0.5 < single[1, 0] < 0.8


# ---------------------------------------------------------------- fill-mask backend


def test_fill_mask_scores_label_words_at_the_mask(tiny_mlm):
    backend = get_backend("fill_mask")(tiny_mlm, CPU, batch_size=4, max_length=32)
    labels = ["joy", "anger", "sadness"]
    texts = ["i love this", "a long text " * 40, "this is sad [MASK] text"]
    res = backend.score(texts, labels, labels, multi_label=True)
    assert res.scores.shape == (3, 3)
    np.testing.assert_allclose(res.scores.sum(axis=1), 1.0, atol=1e-5)
    assert res.truncated.tolist() == [False, True, False]
    # batch composition must not change a row's scores (padding is masked out)
    alone = backend.score(texts[:1], labels, labels, multi_label=True).scores
    np.testing.assert_allclose(alone[0], res.scores[0], atol=1e-5)


def test_fill_mask_rejects_labels_sharing_one_token(tiny_mlm):
    backend = get_backend("fill_mask")(tiny_mlm, CPU, verbalizers={"a": "joy", "b": "joy"})
    with pytest.raises(ConfigError, match="same token"):
        backend.score(["text"], ["a", "b"], ["a", "b"], True)


# ---------------------------------------------------------------- stage


def nli_cfg(tiny_nli: Path, **kw) -> ZeroShotConfig:
    return ZeroShotConfig(backend="nli", nli_model=str(tiny_nli), shard_size=8, **kw)


def test_stage_end_to_end_with_nli(tmp_path, tiny_nli):
    splits = make_splits(tmp_path / "split", n_unlabeled=20)
    store = StageStore(tmp_path / "store")
    ref = run_zero_shot(store, nli_cfg(tiny_nli), splits)
    d = ref.dir
    for name in ("summary.md", "sample.json", "metrics.json", "selection.json", "labels.json"):
        assert (d / name).is_file(), name
    assert (d / "figures" / "selection_curve.png").stat().st_size > 1000
    curve = json.loads((d / "selection_curve.json").read_text())
    assert len(curve["threshold"]["value"]) == 100 and len(curve["top_k"]["value"]) == 3

    unl = datasets.load_from_disk(str(d / "unlabeled"))
    assert len(unl) == 20
    assert {
        "id",
        "text",
        "score_joy",
        "score_anger",
        "score_sadness",
        "labels",
        "confidence",
    } <= set(unl.column_names)
    scores = np.stack([unl["score_joy"], unl["score_anger"], unl["score_sadness"]], axis=1)
    assert ((scores >= 0) & (scores <= 1)).all()
    np.testing.assert_allclose(unl["confidence"], scores.max(axis=1), atol=1e-6)
    sel = json.loads((d / "selection.json").read_text())
    # the selected labels follow the chosen rule
    from label_pipeline.zeroshot.selection import Selection, apply_selection

    rule = Selection(sel["rule"], sel["value"], sel["metric"])
    expected = apply_selection(rule, scores, ["joy", "anger", "sadness"])
    assert [sorted(x) for x in unl["labels"]] == [
        sorted(n for n, on in zip(["joy", "anger", "sadness"], row, strict=True) if on)
        for row in expected
    ]
    metrics = json.loads((d / "metrics.json").read_text())
    assert set(metrics["test"]) == {"micro_f1", "macro_f1", "accuracy"} and metrics["n_test"] == 9
    valid = datasets.load_from_disk(str(d / "valid"))
    assert {"labels", "predicted", "score_joy"} <= set(valid.column_names)
    assert valid["labels"][0] == ["joy"]
    summary = (d / "summary.md").read_text()
    assert (
        "backend: **nli**" in summary
        and "rows truncated" in summary
        and "share of labelled" in summary
    )
    sample = json.loads((d / "sample.json").read_text())
    assert len(sample) == 20 and "top_scores" in sample[0]
    manifest = ref.manifest()
    assert (
        manifest["rows"] == {"valid": 9, "test": 9, "unlabeled": 20} and manifest["shards"] == 7
    )  # 8+1, 8+1, 8+8+4
    # shards are cleaned once assembled; a second run is a cache hit
    assert not zs.shards_dir_for(store, ref.fingerprint).exists()
    assert run_zero_shot(store, nli_cfg(tiny_nli), splits).cached


def test_stage_resumes_from_the_last_finished_shard(tmp_path, tiny_nli, monkeypatch):
    splits = make_splits(tmp_path / "split", n_unlabeled=24)
    store = StageStore(tmp_path / "store")
    cfg = nli_cfg(tiny_nli)
    backend, _ = zs.load_backend(cfg)
    real_score = type(backend).score
    scored: list[int] = []

    def crashing(self, texts, *a, **k):
        if len(scored) == 4:
            raise RuntimeError("simulated crash")
        scored.append(len(texts))
        return real_score(self, texts, *a, **k)

    monkeypatch.setattr(type(backend), "score", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_zero_shot(store, cfg, splits)
    fp = zs.stage_fingerprint(cfg, splits)
    shards_dir = zs.shards_dir_for(store, fp)
    finished = sorted(p.name for p in shards_dir.iterdir() if not p.name.startswith("."))
    assert finished == [f"shard-{i:05d}" for i in range(4)]  # hidden: the shards' lock files
    assert not store.path("zero_shot", fp).exists()  # no half-written stage directory

    scored.clear()
    monkeypatch.setattr(
        type(backend),
        "score",
        lambda self, texts, *a, **k: scored.append(len(texts)) or real_score(self, texts, *a, **k),
    )
    ref = run_zero_shot(store, cfg, splits)
    plan = plan_shards(splits.dir, cfg.shard_size)
    # only the shards not finished before the crash are scored again
    assert sum(scored) == sum(s.stop - s.start for s in plan[4:]) == 24
    assert ref.manifest()["shards_reused"] == 4
    assert len(datasets.load_from_disk(str(ref.dir / "unlabeled"))) == 24


def test_concurrent_scorers_claim_shards_so_each_is_scored_once(tmp_path, tiny_nli, monkeypatch):
    """Two scorers (threads here; runs in other processes take the same flock) over the same
    shards: a shard the other is scoring is waited for and reused, never scored twice; a
    scorer that does not wait leaves it (None)."""
    import threading
    import time
    from collections import Counter

    splits = make_splits(tmp_path / "split", n_unlabeled=24)
    cfg = nli_cfg(tiny_nli)
    plan = plan_shards(splits.dir, cfg.shard_size)
    shards_dir = tmp_path / "zero_shot" / ".shards-fp"
    real = zs._score_into
    scored: Counter = Counter()

    def slow(cfg, splits_dir, shard, *a, **k):
        scored[shard.name] += 1
        time.sleep(0.3)
        return real(cfg, splits_dir, shard, *a, **k)

    monkeypatch.setattr(zs, "_score_into", slow)
    with zs.claim_shard(shards_dir, plan[0].name):  # "another run" is scoring shard 0
        assert score_shard(cfg, splits.dir, 0, shards_dir, wait=False) is None
    workers = [
        threading.Thread(
            target=lambda: [score_shard(cfg, splits.dir, s.index, shards_dir) for s in plan]
        )
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert scored == Counter({s.name: 1 for s in plan})
    assert all((shards_dir / s.name / zs.SHARD_DONE).is_file() for s in plan)
    meta = json.loads((shards_dir / plan[0].name / zs.SHARD_DONE).read_text())
    assert meta["pid"] == os.getpid()
    assert not [p for p in shards_dir.iterdir() if p.name.startswith(".tmp-")]


def test_score_shard_is_a_standalone_reusable_unit(tmp_path, tiny_nli):
    splits = make_splits(tmp_path / "split", n_unlabeled=10)
    cfg = nli_cfg(tiny_nli)
    plan = plan_shards(splits.dir, cfg.shard_size)
    assert [(s.split, s.start, s.stop) for s in plan][-2:] == [
        ("unlabeled", 0, 8),
        ("unlabeled", 8, 10),
    ]
    out = score_shard(cfg, splits.dir, len(plan) - 1, tmp_path / "shards")
    shard = datasets.load_from_disk(str(out))
    assert shard["id"] == ["unlabeled-8", "unlabeled-9"]
    assert json.loads((out / "shard.json").read_text())["rows"] == 2
    mtime = (out / "shard.json").stat().st_mtime
    assert score_shard(cfg, splits.dir, len(plan) - 1, tmp_path / "shards") == out
    assert (out / "shard.json").stat().st_mtime == mtime
    with pytest.raises(ValueError, match="out of range"):
        score_shard(cfg, splits.dir, len(plan), tmp_path / "shards")


def test_single_label_stage_with_fill_mask_on_an_adapted_encoder(tmp_path, tiny_mlm):
    import shutil

    splits = make_splits(tmp_path / "split", n_unlabeled=5, multi_label=False)
    adapt_dir = tmp_path / "adapt"
    shutil.copytree(tiny_mlm, adapt_dir / "model")
    encoder = StageRef(stage="adapt", fingerprint="adapted", path=str(adapt_dir))
    cfg = ZeroShotConfig(backend="fill_mask", confidence_floor=0.2)
    ref = run_zero_shot(StageStore(tmp_path / "store"), cfg, splits, encoder=encoder)
    assert ref.manifest()["inputs"]["encoder"]["fingerprint"] == "adapted"
    sel = json.loads((ref.dir / "selection.json").read_text())
    assert (sel["rule"], sel["value"]) == ("argmax", 0.2)
    unl = datasets.load_from_disk(str(ref.dir / "unlabeled"))
    assert all(len(x) <= 1 for x in unl["labels"])
    assert "argmax with confidence floor 0.20" in (ref.dir / "summary.md").read_text()


def test_default_config_runs_offline_with_the_bundled_encoder(tmp_path):
    splits = make_splits(tmp_path / "split", n_unlabeled=12)
    cfg = ZeroShotConfig()
    assert cfg.enabled and cfg.backend == "auto"
    ref = run_zero_shot(StageStore(tmp_path / "store"), cfg, splits)
    assert ref.manifest()["backend"] == "embedding"
    metrics = json.loads((ref.dir / "metrics.json").read_text())
    # the texts name their emotion plainly: the bundled encoder gets them right
    assert metrics["test"]["micro_f1"] >= 0.8
    assert "auto: embedding" in (ref.dir / "summary.md").read_text()


def test_empty_pool_gives_an_empty_but_complete_output(tmp_path, tiny_nli):
    splits = make_splits(tmp_path / "split", n_unlabeled=0)
    ref = run_zero_shot(StageStore(tmp_path / "store"), nli_cfg(tiny_nli), splits)
    unl = datasets.load_from_disk(str(ref.dir / "unlabeled"))
    assert len(unl) == 0 and {"labels", "confidence", "score_joy"} <= set(unl.column_names)
    assert json.loads((ref.dir / "metrics.json").read_text())["test"] is not None


@pytest.mark.parametrize(
    ("labels", "cfg_kw", "error", "match"),
    [
        ([], {}, InputDataError, "lists no labels"),
        (["joy", "anger", "joy"], {}, InputDataError, r"duplicate label names \['joy'\]"),
        (
            ["joy", "anger"],
            {"descriptions": {"joy": "  "}},
            ConfigError,
            r"descriptions\['joy'\] is empty",
        ),
        (
            ["joy", "anger"],
            {"descriptions": {"jyo": "x"}},
            ConfigError,
            "names labels .'jyo'. that are not",
        ),
        (["joy", "anger"], {"backend": "nope"}, ConfigError, "not a known backend"),
    ],
)
def test_bad_input_is_reported_before_anything_is_written(tmp_path, labels, cfg_kw, error, match):
    splits = make_splits(tmp_path / "split", labels=labels)
    store = StageStore(tmp_path / "store")
    with pytest.raises(error, match=match):
        run_zero_shot(store, ZeroShotConfig(**cfg_kw), splits)
    assert not (tmp_path / "store" / "zero_shot").exists() or not any(
        p for p in (tmp_path / "store" / "zero_shot").iterdir() if not p.name.startswith(".")
    )


def test_config_rejects_unknown_fields():
    with pytest.raises(ValueError, match="extra"):
        ZeroShotConfig(tresholds=0.5)


def test_cls_only_last_layer_equals_full_forward_or_is_refused(tiny_nli, tmp_path):
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    from label_pipeline.zeroshot.cls_only import enable_cls_only

    tok = AutoTokenizer.from_pretrained(str(tiny_nli))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_nli)).eval()
    probe = dict(
        tok(
            ["short", TEXTS["anger"]], ["about joy", "about joy"], padding=True, return_tensors="pt"
        )
    )
    batch = dict(
        tok(
            [TEXTS["joy"], "a", TEXTS["sadness"] + " more words"],
            ["x", "y", "z"],
            padding=True,
            return_tensors="pt",
        )
    )
    with torch.inference_mode():
        full = model(**batch).logits
        assert enable_cls_only(model, probe)
        fast = model(**batch).logits
    torch.testing.assert_close(fast, full, rtol=1e-4, atol=1e-5)
    # an architecture it does not know is left as it is
    other = DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=len(tok), dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    ).eval()
    layer = other.distilbert.transformer.layer[-1]
    assert not enable_cls_only(other, probe)
    assert other.distilbert.transformer.layer[-1] is layer


def test_select_pseudo_labels_is_a_plain_function_of_the_scores():
    """Scores that separate the labels on valid give a rule that labels the pool by them."""
    from label_pipeline.zeroshot.loading import LabelSpec

    labels = ["bug", "feature"]
    rng = np.random.default_rng(0)

    def scored(n, prefix):
        gold = [labels[i % 2] for i in range(n)]
        hi = rng.uniform(0.6, 0.9, n)
        bug = np.where([g == "bug" for g in gold], hi, 1 - hi)
        ds = datasets.Dataset.from_dict(
            {
                "id": [f"{prefix}{i}" for i in range(n)],
                "text": [f"text {i}" for i in range(n)],
                "score_bug": bug.astype(np.float32),
                "score_feature": (1 - bug).astype(np.float32),
                "truncated": [False] * n,
            }
        )
        return ds, gold

    (valid, vg), (test, tg), (pool, pg) = scored(40, "v"), scored(30, "t"), scored(50, "u")
    splits = {
        "valid": datasets.Dataset.from_dict({"id": valid["id"], "labels": [[g] for g in vg]}),
        "test": datasets.Dataset.from_dict({"id": test["id"], "labels": [[g] for g in tg]}),
    }
    spec = LabelSpec(labels=labels, label_texts=labels, multi_label=False)
    res = zs.select_pseudo_labels(
        {"valid": valid, "test": test, "unlabeled": pool}, splits, ZeroShotConfig(), spec
    )
    assert res.metrics["test"]["accuracy"] == 1.0 and res.metrics["n_valid"] == 40
    assert [list(x) for x in res.outputs["unlabeled"]["labels"]] == [[g] for g in pg]
    assert [list(x) for x in res.outputs["test"]["predicted"]] == [[g] for g in tg]
    assert set(res.expected["overall"]) >= {"expected_precision", "interval"}
