"""label stage: on a fake trained/evaluated pair, the exports agree with each other and the
decision rule, the model directory is complete, and config errors name the parameter."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from label_pipeline.errors import ConfigError, InputDataError
from label_pipeline.methods.base import REGISTRY, FitContext, LabelledTexts, Method, register
from label_pipeline.store import StageRef, StageStore
from tasks.label import LabelConfig, run_label

LABELS = ["joy", "anger", "fear"]
KEYWORDS = {"joy": "happy", "anger": "angry", "fear": "scared"}


class KeywordMethod(Method):
    """Deterministic test method: probability grows with keyword counts."""

    name = "_test_keyword"

    def fit(self, train: LabelledTexts, valid, ctx: FitContext) -> KeywordMethod:
        self.labels_, self.multi_ = train.label_names, train.multi_label
        return self

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        hits = np.array(
            [[t.split().count(KEYWORDS[n]) for n in self.labels_] for t in texts], dtype=float
        )
        if self.multi_:
            return 1.0 / (1.0 + np.exp(-(2.0 * hits - 1.0)))
        e = np.exp(hits)
        return e / e.sum(axis=1, keepdims=True)

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "kw.json").write_text(json.dumps({"labels": self.labels_, "multi": self.multi_}))

    @classmethod
    def load(cls, path: Path) -> KeywordMethod:
        meta = json.loads((Path(path) / "kw.json").read_text())
        m = cls()
        m.labels_, m.multi_ = meta["labels"], meta["multi"]
        return m


@pytest.fixture(autouse=True, scope="module")
def keyword_method():
    """The test method is registered for this module's tests only (the registry lists stay
    those of the project for every other test)."""
    if KeywordMethod.name not in REGISTRY:
        register(KeywordMethod)
    yield
    REGISTRY.pop(KeywordMethod.name, None)


def _pool_texts(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    words = ["happy", "angry", "scared", "the", "day", "was"]
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 6)))) for _ in range(n)]


def make_inputs(root: Path, multi_label: bool, thresholds: list[float] | None = None):
    import datasets

    from label_pipeline.data import CANONICAL_FEATURES, write_label_info

    splits_dir = root / "split"
    texts = _pool_texts(53)
    one = {"id": ["v0"], "text": ["angry"], "labels": [["anger"]], "split": ["valid"]}
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"id": ["t0"], "text": ["happy"], "labels": [["joy"]], "split": ["train"]},
                features=CANONICAL_FEATURES,
            ),
            "valid": datasets.Dataset.from_dict(one, features=CANONICAL_FEATURES),
            "test": datasets.Dataset.from_dict(one, features=CANONICAL_FEATURES),
            "unlabeled": datasets.Dataset.from_dict(
                {
                    "id": [f"u{i}" for i in range(len(texts))],
                    "text": texts,
                    "labels": [[] for _ in texts],
                    "split": ["unlabeled"] * len(texts),
                },
                features=CANONICAL_FEATURES,
            ),
        }
    )
    dd.save_to_disk(str(splits_dir / "splits"))
    write_label_info(splits_dir, LABELS, multi_label)

    trained = root / "train"
    for slice_name in ("8", "all"):
        run_dir = trained / "runs" / KeywordMethod.name / slice_name
        y = np.eye(3, dtype=int)
        KeywordMethod().fit(
            LabelledTexts(["a"] * 3, y, LABELS, multi_label), None, FitContext()
        ).save(run_dir / "model")
        rule = "argmax" if not multi_label else "per_label"
        decision = {"rule": rule, "thresholds": thresholds or [], "fallback": False, "note": ""}
        (run_dir / "decision.json").write_text(json.dumps(decision))
        (run_dir / "fit.json").write_text(json.dumps({"train_rows": 3, "info": {}}))
    runs = [
        {
            "method": KeywordMethod.name,
            "base_method": KeywordMethod.name,
            "slice": s,
            "slice_size": size,
            "train_rows": size,
            "dir": f"runs/{KeywordMethod.name}/{s}",
        }
        for s, size in (("8", 8), ("all", 30))
    ]
    (trained / "runs.json").write_text(json.dumps(runs))
    write_label_info(trained, LABELS, multi_label)

    evaluated = root / "evaluate"
    evaluated.mkdir()
    best = {
        "method": KeywordMethod.name,
        "slice": "all",
        "run_dir": "elsewhere",
        "metric": "valid micro_f1",
    }
    (evaluated / "best.json").write_text(json.dumps(best))
    metrics = {
        "runs": [
            {
                "method": KeywordMethod.name,
                "slice": "all",
                "valid": {"micro_f1": 0.75, "macro_f1": 0.5},
                "test": {"micro_f1": 0.7, "macro_f1": 0.45},
            }
        ]
    }
    (evaluated / "metrics.json").write_text(json.dumps(metrics))
    refs = [
        StageRef(stage=s, fingerprint=f"fp-{s}", path=str(p))
        for s, p in (("split", splits_dir), ("train", trained), ("evaluate", evaluated))
    ]
    return refs, texts


@pytest.mark.parametrize("multi_label", [True, False])
def test_exports_agree_with_each_other_and_the_decision(tmp_path, multi_label):
    import datasets
    import pandas as pd

    thresholds = [0.5, 0.8, 0.2] if multi_label else None
    (splits, trained, evaluated), texts = make_inputs(tmp_path / "in", multi_label, thresholds)
    store = StageStore(tmp_path / "store")
    ref = run_label(store, LabelConfig(shard_size=10), splits, trained, evaluated)
    out = ref.dir

    ds = datasets.load_from_disk(str(out / "labelled"))
    pq = pd.read_parquet(out / "labelled.parquet")
    js = pd.read_json(out / "labelled.jsonl", lines=True)
    cols = ["id", "text", "predicted_labels"] + [f"prob_{n}" for n in LABELS]
    assert ds.column_names == cols and list(pq.columns) == cols and list(js.columns) == cols
    assert len(ds) == len(pq) == len(js) == 53
    assert ds["id"] == list(pq["id"]) == list(js["id"]) == [f"u{i}" for i in range(53)]
    assert ds["text"] == texts
    probs = np.array([ds[f"prob_{n}"] for n in LABELS]).T
    np.testing.assert_allclose(probs, pq[[f"prob_{n}" for n in LABELS]].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(probs, js[[f"prob_{n}" for n in LABELS]].to_numpy(), atol=1e-6)
    expected = KeywordMethod.load(trained.dir / "runs" / KeywordMethod.name / "all" / "model")
    np.testing.assert_allclose(probs, expected.predict_proba(texts), atol=1e-6)
    for row_probs, ds_labels, pq_labels, js_labels in zip(
        probs, ds["predicted_labels"], pq["predicted_labels"], js["predicted_labels"], strict=True
    ):
        if multi_label:
            want = [
                n for n, p, t in zip(LABELS, row_probs, thresholds, strict=True) if p >= t - 1e-6
            ]
        else:
            want = [LABELS[int(row_probs.argmax())]]
        assert ds_labels == list(pq_labels) == list(js_labels) == want

    model = out / "model"
    for name in ("kw.json", "labels.json", "decision.json", "README.md", "run.json"):
        assert (model / name).is_file(), name
    assert json.loads((model / "decision.json").read_text())["thresholds"] == (thresholds or [])
    card = (model / "README.md").read_text()
    assert "0.700" in card and "Limitations" in card and "Intended use" in card
    assert (out / "summary.md").is_file() and len(
        json.loads((out / "sample.json").read_text())
    ) == 20
    manifest = ref.manifest()
    assert manifest["rows"] == 53 and manifest["slice"] == "all"
    assert not (out / ".shards").exists()
    # cached on the second call
    assert run_label(store, LabelConfig(shard_size=10), splits, trained, evaluated).cached


def test_explicit_run_and_errors(tmp_path):
    (splits, trained, evaluated), _ = make_inputs(tmp_path / "in", False)
    store = StageStore(tmp_path / "store")
    ref = run_label(
        store, LabelConfig(method=KeywordMethod.name, slice="8"), splits, trained, evaluated
    )
    assert ref.manifest()["slice"] == "8"
    with pytest.raises(ConfigError, match="label.method='nope'"):
        run_label(store, LabelConfig(method="nope"), splits, trained, evaluated)
    with pytest.raises(ConfigError, match="label.slice='64'"):
        run_label(
            store, LabelConfig(method=KeywordMethod.name, slice="64"), splits, trained, evaluated
        )
    (evaluated.dir / "best.json").unlink()
    with pytest.raises(InputDataError, match="label.method"):
        run_label(store, LabelConfig(), splits, trained, evaluated)
    assert not list((store.root / "label").glob(".tmp-*"))  # failures leave nothing behind


def test_label_pool_is_a_plain_function_of_the_shards():
    """The label stage's computation, called without a store: per-row labels from the decision
    rule, counts over every shard, the sample as written (float32 probabilities), each shard
    handed to ``on_shard``, and the expected precision checked against the valid rows."""
    from label_pipeline.decision import Decision
    from tasks.label import label_pool

    class Fixed:
        def predict_proba(self, texts):
            table = {"j": [0.9, 0.05, 0.05], "a": [0.2, 0.7, 0.1], "n": [0.1, 0.2, 0.3]}
            return np.array([table[t] for t in texts])

    shards = [(["1", "2"], ["j", "a"]), (["3", "4"], ["n", "j"]), (["5"], ["a"])]
    seen = []
    valid_probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]])
    out = label_pool(
        Fixed(),
        Decision(rule="per_label", thresholds=[0.5, 0.5, 0.5]),
        LABELS,
        iter(shards),
        valid_probs=valid_probs,
        valid_y=np.array([[1, 0, 0], [0, 0, 1]]),
        calibration={"describe": "temperature 1.5", "notes": ["few valid rows"]},
        sample_rows=3,
        on_shard=lambda s: seen.append((s.ids, s.names, s.probs.shape)),
    )
    assert seen == [
        (["1", "2"], [["joy"], ["anger"]], (2, 3)),
        (["3", "4"], [[], ["joy"]], (2, 3)),
        (["5"], [["anger"]], (1, 3)),
    ]
    assert out.rows == 5 and out.shards == 3 and out.no_label == 1
    assert out.counts.tolist() == [2, 2, 0]
    assert out.mean_top_prob() == pytest.approx((0.9 + 0.7 + 0.3 + 0.9 + 0.7) / 5)
    assert [r["id"] for r in out.sample] == ["1", "2", "3"]
    assert out.sample[0] == {
        "id": "1",
        "text": "j",
        "predicted_labels": ["joy"],
        "prob_joy": float(np.float32(0.9)),
        "prob_anger": float(np.float32(0.05)),
        "prob_fear": float(np.float32(0.05)),
    }
    exp = out.expected
    assert exp["calibration"] == "temperature 1.5" and exp["calibration_notes"] == [
        "few valid rows"
    ]
    # the same rule on valid: joy right, anger wrong (the row is fear)
    assert exp["overall"]["valid_precision"] == pytest.approx(0.5)
    per = {r["label"]: r for r in exp["per_label"]}
    assert per["joy"]["expected_precision"] == pytest.approx(0.9)
    # no valid rows and no calibrator: the precision is expected, not checked
    bare = label_pool(Fixed(), Decision(rule="argmax"), LABELS, [(["1"], ["n"])])
    assert bare.counts.tolist() == [0, 0, 1] and bare.sample[0]["predicted_labels"] == ["fear"]
    assert bare.expected["calibration"] == "none (the train stage did not calibrate)"
    assert bare.expected["overall"]["valid_precision"] is None
