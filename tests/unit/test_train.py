"""The train stage on a small split-stage directory written by the test."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from train_fixtures import LABELS, make_splits_dir, splits_ref

from label_pipeline.errors import ConfigError, TrainingDivergedError
from label_pipeline.methods.base import REGISTRY, Method, register
from label_pipeline.store import StageRef, StageStore
from tasks.train import TrainConfig, run_train

FAST = ["naive_bayes", "tfidf_nb"]


def _train(tmp_path, multi_label=True, **cfg):
    split_dir = make_splits_dir(
        tmp_path / "split",
        multi_label=multi_label,
        drop_label_from_small_slices=cfg.pop("drop", None),
    )
    store = StageStore(tmp_path / "store")
    cfg.setdefault("methods", FAST)
    ref = run_train(store, TrainConfig(**cfg), splits_ref(split_dir), **cfg.pop("refs", {}))
    return ref, json.loads((ref.dir / "runs.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("multi_label", [True, False])
def test_runs_beat_a_trivial_baseline_and_write_their_files(tmp_path, multi_label):
    ref, runs = _train(tmp_path, multi_label, slices=["*"])
    assert [(r["method"], r["slice"]) for r in runs] == [
        (m, s) for s in ("8", "16", "all") for m in [*FAST, "average"]
    ]
    # trivial baseline: always predict the most frequent label -> micro-F1 about 1/3
    for r in runs:
        run = ref.dir / r["dir"]
        for f in ("valid_probs.npy", "test_probs.npy", "decision.json", "fit.json", "model"):
            assert (run / f).exists(), f
        probs = np.load(run / "test_probs.npy")
        assert probs.shape == (30, len(LABELS))
        assert ((probs >= 0) & (probs <= 1)).all()
        if not multi_label:
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
            assert json.loads((run / "decision.json").read_text())["rule"] == "argmax"
    best_all = max(r["valid_micro_f1"] for r in runs if r["slice"] == "all")
    assert best_all >= 0.9
    summary = (ref.dir / "summary.md").read_text()
    assert "valid micro-F1" in summary and "naive_bayes" in summary
    assert json.loads((ref.dir / "sample.json").read_text())


def test_label_missing_from_a_slice_is_warned_by_name(tmp_path):
    ref, runs = _train(tmp_path, slices=["8", "all"], drop="question")
    fit = json.loads((ref.dir / "runs/naive_bayes/8/fit.json").read_text())
    assert fit["labels_without_examples"] == ["question"]
    assert "no example of label(s) ['question']" in (ref.dir / "summary.md").read_text()
    assert ref.manifest()["warnings"]


def test_tiny_valid_split_falls_back_to_half_and_reports_it(tmp_path):
    ref, runs = _train(tmp_path, methods=["naive_bayes"], min_valid_rows=100)
    dec = json.loads((ref.dir / "runs/naive_bayes/all/decision.json").read_text())
    assert dec["fallback"] and dec["thresholds"] == [0.5] * 3
    assert "Decision fallbacks" in (ref.dir / "summary.md").read_text()


class _Diverges(Method):
    name = "test_diverges"

    def __init__(self, raise_in_fit: bool = False) -> None:
        self.raise_in_fit = raise_in_fit

    def fit(self, train, valid, ctx):
        if self.raise_in_fit:
            raise TrainingDivergedError("loss is NaN at step 3")
        return self

    def predict_proba(self, texts):
        return np.full((len(texts), 3), np.nan)

    def save(self, path: Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)

    @classmethod
    def load(cls, path):
        return cls()


@contextmanager
def _registered(cls):
    register(cls)
    try:
        yield
    finally:
        REGISTRY.pop(cls.name, None)


@pytest.fixture
def diverging_method():
    with _registered(_Diverges):
        yield


@pytest.mark.parametrize("raise_in_fit", [False, True])
def test_diverging_method_gets_a_reported_prior_fallback(tmp_path, diverging_method, raise_in_fit):
    ref, runs = _train(
        tmp_path,
        methods=["test_diverges"],
        method_params={"test_diverges": {"raise_in_fit": raise_in_fit}},
    )
    (run,) = runs
    assert "did not converge" in run["fallback"]
    probs = np.load(ref.dir / run["dir"] / "test_probs.npy")
    assert np.isfinite(probs).all() and (probs == probs[0]).all()  # the label prior
    assert probs[0].tolist() != [0.0, 0.0, 0.0]
    assert "FALLBACK" in (ref.dir / "summary.md").read_text()


def test_config_errors_name_the_problem(tmp_path):
    split_dir = make_splits_dir(tmp_path / "split")
    store = StageStore(tmp_path / "store")
    with pytest.raises(ConfigError, match="unknown method 'bayes'"):
        run_train(store, TrainConfig(methods=["bayes"]), splits_ref(split_dir))
    with pytest.raises(ConfigError, match=r"'nope'.*not in .*slices.json"):
        run_train(
            store, TrainConfig(methods=["naive_bayes"], slices=["nope"]), splits_ref(split_dir)
        )
    with pytest.raises(ConfigError, match="unknown modifier"):
        run_train(store, TrainConfig(methods=["naive_bayes+magic"]), splits_ref(split_dir))
    with pytest.raises(ConfigError, match="augment stage did not run"):
        run_train(store, TrainConfig(methods=["naive_bayes+aug"]), splits_ref(split_dir))
    assert not list((tmp_path / "store").glob("train/*/manifest.json"))


def test_augmented_and_pseudo_rows_are_added(tmp_path):
    import datasets

    split_dir = make_splits_dir(tmp_path / "split")
    slices = json.loads((split_dir / "slices.json").read_text())
    aug_dir = tmp_path / "aug"
    datasets.Dataset.from_list(
        [
            {"id": f"a{i}", "text": "crash error", "labels": ["bug"], "parent_id": pid}
            for i, pid in enumerate(slices["8"][:3] + ["train-40"])
        ]
    ).save_to_disk(str(aug_dir / "augmented"))
    zs_dir = tmp_path / "zs"
    datasets.Dataset.from_list(
        [
            {"id": "u1", "text": "how why", "labels": ["question"], "confidence": 0.9},
            {"id": "u2", "text": "what", "labels": ["question"], "confidence": 0.2},
            {"id": "u3", "text": "hmm", "labels": [], "confidence": 0.95},
        ]
    ).save_to_disk(str(zs_dir / "unlabeled"))
    aug = StageRef(stage="augment", fingerprint="a", path=str(aug_dir))
    zs = StageRef(stage="zero_shot", fingerprint="z", path=str(zs_dir))
    store = StageStore(tmp_path / "store")
    cfg = TrainConfig(
        methods=["naive_bayes", "naive_bayes+aug", "naive_bayes+pseudo"],
        slices=["8"],
        pseudo_min_confidence=0.5,
    )
    ref = run_train(store, cfg, splits_ref(split_dir), augmented=aug, pseudo=zs)
    fits = {m: json.loads((ref.dir / f"runs/{m}/8/fit.json").read_text()) for m in cfg.methods}
    assert fits["naive_bayes"]["train_rows"] == 8
    assert fits["naive_bayes+aug"]["augmented_rows"] == 3  # train-40 is not in slice 8
    assert fits["naive_bayes+pseudo"]["pseudo_rows"] == 1  # confidence and non-empty filter


def test_cached_second_run(tmp_path):
    split_dir = make_splits_dir(tmp_path / "split")
    store = StageStore(tmp_path / "store")
    cfg = TrainConfig(methods=["naive_bayes"])
    first = run_train(store, cfg, splits_ref(split_dir))
    second = run_train(store, cfg, splits_ref(split_dir))
    assert not first.cached and second.cached and first.path == second.path


class _Constant(_Diverges):
    """Every text gets the same probabilities: a run that ranks last on valid."""

    name = "test_constant"

    def predict_proba(self, texts):
        return np.tile([0.5, 0.3, 0.2], (len(texts), 1))


@pytest.fixture
def constant_method():
    with _registered(_Constant):
        yield


@pytest.mark.parametrize("multi_label", [True, False])
@pytest.mark.parametrize("calibration", ["none", "auto"])
def test_average_run_is_the_mean_of_the_best_runs_and_reloads(
    tmp_path, constant_method, multi_label, calibration
):
    from label_pipeline.data import load_splits
    from label_pipeline.methods.base import load_saved

    ref, runs = _train(
        tmp_path,
        multi_label,
        methods=[*FAST, "test_constant"],
        average_top=2,
        calibration=calibration,
        calibration_min_rows=10,
    )
    assert [r["method"] for r in runs] == [*FAST, "test_constant", "average"]
    average = runs[-1]
    assert average["base_method"] == "ensemble" and average["dir"] == "runs/average/all"
    fit = json.loads((ref.dir / average["dir"] / "fit.json").read_text())
    # the constant run is the worst on valid: the two best are averaged
    assert sorted(m["method"] for m in fit["info"]["members"]) == sorted(FAST)
    member_probs = [np.load(ref.dir / f"runs/{m}/all/test_probs.npy") for m in FAST]
    test_probs = np.load(ref.dir / average["dir"] / "test_probs.npy")
    if calibration == "none":
        np.testing.assert_allclose(test_probs, np.mean(member_probs, axis=0), atol=1e-6)
    if not multi_label:
        np.testing.assert_allclose(test_probs.sum(axis=1), 1.0, atol=1e-5)
    texts = [str(t) for t in load_splits(tmp_path / "split")["test"]["text"]]
    reloaded = load_saved("ensemble", ref.dir / average["dir"] / "model").predict_proba(texts)
    np.testing.assert_allclose(reloaded, test_probs, atol=1e-5)
    assert average["valid_micro_f1"] >= 0.9
    assert "| average | all |" in (ref.dir / "summary.md").read_text()


def test_no_average_when_switched_off_or_one_run(tmp_path):
    _, runs = _train(tmp_path / "a", average_top=0)
    assert [r["method"] for r in runs] == FAST
    _, runs = _train(tmp_path / "b", methods=["naive_bayes"])
    assert [r["method"] for r in runs] == ["naive_bayes"]


def test_a_slice_with_the_same_rows_as_a_smaller_one_is_trained_once(tmp_path):
    # the user's largest slice is the whole training split: "all" repeats it
    split_dir = make_splits_dir(tmp_path / "split", n_train=48, slice_sizes=(8, 48))
    store = StageStore(tmp_path / "store")
    ref = run_train(
        store, TrainConfig(methods=["naive_bayes"], slices=["*"]), splits_ref(split_dir)
    )
    runs = json.loads((ref.dir / "runs.json").read_text())
    assert [(r["method"], r["slice"]) for r in runs] == [
        ("naive_bayes", "8"),
        ("naive_bayes", "48"),
    ]
    summary = (ref.dir / "summary.md").read_text()
    assert "slice 'all' holds the same rows as slice '48'" in summary
    # named on purpose, both are trained
    named = run_train(
        StageStore(tmp_path / "store2"),
        TrainConfig(methods=["naive_bayes"], slices=["48", "all"]),
        splits_ref(split_dir),
    )
    runs = json.loads((named.dir / "runs.json").read_text())
    assert sorted(r["slice"] for r in runs) == ["48", "all"]


def _train_data(multi_label: bool = True):
    """The train stage's inputs built in memory (no split stage directory)."""
    from train_fixtures import labelled_rows

    from label_pipeline.data import label_matrix
    from label_pipeline.methods.base import LabelledTexts
    from tasks.train import ExtraRows, TrainData

    texts, labels, ids = labelled_rows("train", 48, multi_label, seed=1)
    va_texts, va_labels, _ = labelled_rows("valid", 30, multi_label, seed=2)
    te_texts, _, _ = labelled_rows("test", 30, multi_label, seed=3)
    aug_parents = [ids[0], ids[3], ids[40]]  # ids[40] is not in slice 8
    return TrainData(
        labels=LABELS,
        multi_label=multi_label,
        slices={"8": ids[:8], "all": ids},
        names=["8", "all"],
        texts=texts,
        y=label_matrix(labels, LABELS),
        ids=ids,
        valid=LabelledTexts(va_texts, label_matrix(va_labels, LABELS), LABELS, multi_label),
        test_texts=te_texts,
        augmented=ExtraRows(
            texts=["crash error broken"] * 3,
            y=label_matrix([["bug"]] * 3, LABELS),
            ids=["a0", "a1", "a2"],
            parent_ids=aug_parents,
        ),
    )


def test_train_runs_fits_scores_and_averages_from_data_in_memory(tmp_path):
    """The stage's compute part: runs in order, each slice's average of its best runs, the
    models handed over one at a time; nothing is written until the caller writes a run."""
    from label_pipeline.devices import DeviceConfig, choose_device
    from label_pipeline.methods.base import load_saved
    from tasks.train import train_runs, write_run

    data = _train_data()
    cfg = TrainConfig(methods=[*FAST, "naive_bayes+aug"], calibration="none", average_top=2)
    warnings: list[str] = []
    runs = train_runs(data, cfg, choose_device(DeviceConfig(device="cpu")), None, warnings)
    first = next(runs)
    assert first.dir == "runs/naive_bayes/8" and first.model is not None
    assert not list(tmp_path.iterdir())
    write_run(tmp_path, first)
    saved = load_saved("naive_bayes", tmp_path / first.dir / "model")
    np.testing.assert_allclose(saved.predict_proba(data.test_texts), first.probs["test"], atol=1e-6)
    rest = list(runs)
    assert first.model is None  # let go once the next run was asked for
    got = [(r.entry["method"], r.entry["slice"]) for r in [first, *rest]]
    assert got == [(m, s) for s in ("8", "all") for m in [*cfg.methods, "average"]]
    by = {(r.entry["method"], r.entry["slice"]): r for r in [first, *rest]}
    assert by["naive_bayes+aug", "8"].facts["augmented_rows"] == 2  # parents in slice 8
    assert by["naive_bayes+aug", "8"].facts["train_rows"] == 10
    assert by["naive_bayes+aug", "all"].facts["augmented_rows"] == 3
    average = by["average", "all"]
    members = [by[m["method"], "all"] for m in average.facts["info"]["members"]]
    assert len(members) == 2 and average.ensemble is not None
    assert [b for b, _ in average.members] == [m.entry["base_method"] for m in members]
    mean = np.mean([m.probs["test"].astype(np.float32) for m in members], axis=0)
    np.testing.assert_allclose(average.probs["test"], mean, atol=1e-6)
    assert max(r.entry["valid_micro_f1"] for r in rest if r.entry["slice"] == "all") >= 0.9
    assert warnings == []
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]


def test_fit_method_falls_back_to_the_label_prior_without_a_model(diverging_method):
    from label_pipeline.methods.base import FitContext, LabelledTexts
    from tasks.train import fit_method

    data = _train_data(multi_label=False)
    train = LabelledTexts(data.texts, data.y, LABELS, False)
    fitted = fit_method("test_diverges", {}, train, data.valid, data.test_texts, FitContext())
    assert fitted.model is None and "did not converge" in fitted.facts["fallback"]
    prior = data.y.mean(axis=0)
    np.testing.assert_allclose(fitted.test_probs, np.tile(prior / prior.sum(), (30, 1)))
    assert set(fitted.uncalibrated) == {"valid", "test"} and fitted.calibration is None


class _BarProbe(_Constant):
    """Records the bar the train stage hands it (``FitContext.valid_bar``)."""

    name = "test_bar_probe"

    def fit(self, train, valid, ctx):
        ctx.info["seen_bar"] = ctx.valid_bar
        return self


@pytest.mark.parametrize("average_top, rank", [(2, 2), (0, 1), (3, None)])
def test_each_fit_is_told_the_score_that_wins(tmp_path, average_top, rank):
    """The bar a run must reach is the ``average_top``-th best valid micro-F1 of the slice's
    runs before it (the best, with no average); none while fewer runs are done."""
    with _registered(_BarProbe):
        ref, runs = _train(tmp_path, methods=[*FAST, "test_bar_probe"], average_top=average_top)
    scores = sorted((r["valid_micro_f1"] for r in runs if r["method"] in FAST), reverse=True)
    fit = json.loads((ref.dir / "runs/test_bar_probe/all/fit.json").read_text())
    expected = None if rank is None else scores[rank - 1]
    assert fit["info"]["seen_bar"] == (None if expected is None else pytest.approx(expected))
    assert fit["valid_bar"] == fit["info"]["seen_bar"]  # recorded for a later check
    first = json.loads((ref.dir / f"runs/{FAST[0]}/all/fit.json").read_text())
    assert "seen_bar" not in first["info"]


def test_a_label_a_slice_never_shows_is_averaged_over_the_runs_that_read_label_names(tmp_path):
    """Only a method that reads the label names can speak for a label without a training
    example; the average takes that label from it alone, and the saved model agrees."""
    from label_pipeline.data import load_splits
    from label_pipeline.methods.base import load_saved
    from label_pipeline.methods.baselines import NaiveBayes

    class _Reader(NaiveBayes):
        """Naive Bayes that finds "question" in every text, as if by its name."""

        name = "test_reader"
        reads_label_names = True

        def predict_proba(self, texts):
            probs = super().predict_proba(texts)
            probs[:, LABELS.index("question")] = 0.9
            return probs

    with _registered(_Reader):
        ref, runs = _train(
            tmp_path,
            methods=[*FAST, "test_reader"],
            slices=["8", "all"],
            drop="question",
            average_top=3,
            calibration="none",
        )
        texts = [str(t) for t in load_splits(tmp_path / "split")["test"]["text"]]
        for slice_name, unseen in (("8", ["question"]), ("all", [])):
            average = next(r for r in runs if r["method"] == "average" and r["slice"] == slice_name)
            fit = json.loads((ref.dir / average["dir"] / "fit.json").read_text())
            assert fit["params"]["label_members"] == (
                {"question": ["test_reader"]} if unseen else None
            )
            member = {
                m: np.load(ref.dir / f"runs/{m}/{slice_name}/test_probs.npy")
                for m in [*FAST, "test_reader"]
            }
            probs = np.load(ref.dir / average["dir"] / "test_probs.npy")
            expected = np.mean(list(member.values()), axis=0)
            if unseen:
                q = LABELS.index("question")
                expected[:, q] = member["test_reader"][:, q]
                assert not np.allclose(expected[:, q], np.mean(list(member.values()), axis=0)[:, q])
            np.testing.assert_allclose(probs, expected, atol=1e-6)
            model = load_saved("ensemble", ref.dir / average["dir"] / "model")
            np.testing.assert_allclose(model.predict_proba(texts), probs, atol=1e-5)
