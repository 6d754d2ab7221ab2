"""The final-model chooser (label_pipeline.choice.choose_final) and unlearnable labels through
the train, evaluate and report stages."""

from __future__ import annotations

import json

import pytest
from train_fixtures import make_splits_dir, splits_ref

from label_pipeline.choice import choose_final, chosen_per_slice
from label_pipeline.store import StageStore
from tasks.evaluate import EvaluateConfig, run_evaluate
from tasks.train import TrainConfig, run_train


def _run(method, valid, slice_name="all", size=100, order=0, fallback="", test=None):
    return {
        "method": method,
        "slice": slice_name,
        "slice_size": size,
        "valid": {"micro_f1": valid, "macro_f1": valid},
        "test": {"micro_f1": test if test is not None else valid, "macro_f1": 0.5},
        "fallback": fallback,
        "order": order,
    }


def test_never_worse_on_valid_than_the_best_baseline():
    runs = [
        _run("naive_bayes", 0.70, order=0),
        _run("tfidf_nb", 0.83, order=1),
        _run("hybrid", 0.80, order=2),
        _run("finetune", 0.82, order=3),
    ]
    choice = choose_final(runs, "micro_f1", tolerance=0.05)
    # hybrid and finetune are within the tolerance of the best, but below tfidf_nb
    assert choice["run"]["method"] == "tfidf_nb"
    assert choice["best_baseline"] == {"method": "tfidf_nb", "valid": 0.83}
    assert choice["reason"].startswith("chose tfidf_nb: valid micro-F1 0.830")
    assert "best baseline" in choice["reason"]
    assert (
        "candidates: tfidf_nb 0.830, finetune 0.820, hybrid 0.800, naive_bayes 0.700"
        in (choice["reason"])
    )


def test_simpler_model_within_tolerance_and_the_reason_says_so():
    runs = [
        _run("tfidf_nb", 0.80, order=0),
        _run("finetune", 0.851, order=1),
        _run("hybrid", 0.849, order=2),
    ]
    choice = choose_final(runs, "micro_f1", tolerance=0.005)
    assert choice["run"]["method"] == "hybrid"
    assert "vs best baseline tfidf_nb 0.800 (+0.049)" in choice["reason"]
    assert "within 0.005 of the best (finetune 0.851), so the simpler model" in choice["reason"]
    # a tighter tolerance picks the better one
    assert choose_final(runs, "micro_f1", tolerance=0.0)["run"]["method"] == "finetune"


def test_small_valid_split_widens_the_tolerance_to_one_row():
    runs = [_run("embed_lr", 0.60), _run("finetune", 0.90, order=1), _run("hybrid", 0.86, order=2)]
    assert choose_final(runs, "micro_f1", 0.005, n_valid=400)["run"]["method"] == "finetune"
    small = choose_final(runs, "micro_f1", 0.005, n_valid=20)  # one row = 0.05
    assert small["run"]["method"] == "hybrid" and small["tolerance"] == pytest.approx(0.05)


def test_fallback_runs_only_when_nothing_else_and_largest_slice_by_default():
    runs = [
        _run("finetune", 0.99, slice_name="8", size=8),
        _run("naive_bayes", 0.5, order=1),
        _run("finetune", 0.95, order=2, fallback="did not converge"),
    ]
    choice = choose_final(runs, "micro_f1")
    assert choice["run"]["method"] == "naive_bayes"
    assert "1 fallback run(s) left out" in choice["reason"]
    assert "no baseline" in choose_final(runs[:1], "micro_f1")["reason"]


def test_a_different_method_per_slice():
    runs = [
        _run("tfidf_nb", 0.70, "8", 8, 0, test=0.61),
        _run("finetune", 0.50, "8", 8, 1, test=0.40),
        _run("tfidf_nb", 0.70, "all", 300, 2, test=0.72),
        _run("finetune", 0.90, "all", 300, 3, test=0.88),
    ]
    per = chosen_per_slice(runs, "micro_f1", 0.005, None)
    assert [(c["slice"], c["method"], c["micro_f1"]) for c in per] == [
        ("8", "tfidf_nb", 0.61),
        ("all", "finetune", 0.88),
    ]


def test_unlearnable_label_is_reported_by_train_evaluate_and_report(tmp_path):
    from tasks.report import ReportConfig, build_report

    split_dir = make_splits_dir(tmp_path / "split", drop_label_from_small_slices="question")
    store = StageStore(tmp_path / "store")
    cfg = TrainConfig(methods=["naive_bayes", "tfidf_nb"], slices=["8", "all"], threshold="auto")
    trained = run_train(store, cfg, splits_ref(split_dir))
    runs = json.loads((trained.dir / "runs.json").read_text())
    assert {r["slice"]: r["unlearnable"] for r in runs} == {"8": ["question"], "all": []}
    assert "unlearnable labels" in (trained.dir / "summary.md").read_text()
    assert "slice `8`: question" in (trained.dir / "summary.md").read_text()

    ev = run_evaluate(store, EvaluateConfig(), splits_ref(split_dir), trained)
    metrics = json.loads((ev.dir / "metrics.json").read_text())
    assert metrics["unlearnable"] == {"8": ["question"]}
    assert [c["slice"] for c in metrics["chosen_per_slice"]] == ["8", "all"]
    best = json.loads((ev.dir / "best.json").read_text())
    assert best["reason"].startswith(f"chose {best['method']}: valid micro-F1")
    assert best["unlearnable"] == []
    summary = (ev.dir / "summary.md").read_text()
    assert "- why: chose" in summary and "slice `8`: question" in summary

    refs = {"split": splits_ref(split_dir), "train": trained, "evaluate": ev}
    build_report(ReportConfig(), refs, tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Why: chose" in report and "Unlearnable labels" in report
    assert "Chosen per slice" in report


@pytest.mark.parametrize("average_valid, chosen", [(0.80, "average"), (0.79, "finetune")])
def test_average_is_preferred_when_not_below_the_best_baseline(average_valid, chosen):
    runs = [
        _run("tfidf_nb", 0.80, order=0),
        _run("finetune", 0.85, order=1),
        _run("average", average_valid, order=2),
    ]
    choice = choose_final(runs, "micro_f1", tolerance=0.0, prefer_average=True)
    assert choice["run"]["method"] == chosen
    if chosen == "average":
        assert (
            "is preferred to a single run unless a single run beats it on valid beyond luck"
            in (choice["reason"])
        )
    # without the preference the average competes like any run
    assert choose_final(runs, "micro_f1", tolerance=0.0)["run"]["method"] == "finetune"


def test_an_average_chosen_on_valid_labels_the_pool(tmp_path):
    """train (two baselines and their average) -> evaluate (prefers the average when it is
    not below the best baseline) -> label: the pool's probabilities are the average's."""
    import datasets
    import numpy as np

    from label_pipeline.data import load_splits
    from label_pipeline.methods.base import load_saved
    from tasks.label import LabelConfig, run_label

    split_dir = make_splits_dir(tmp_path / "split", multi_label=False)
    store = StageStore(tmp_path / "store")
    cfg = TrainConfig(methods=["naive_bayes", "tfidf_nb"], slices=["all"])
    trained = run_train(store, cfg, splits_ref(split_dir))
    ev = run_evaluate(store, EvaluateConfig(), splits_ref(split_dir), trained)
    metrics = json.loads((ev.dir / "metrics.json").read_text())
    valid = {r["method"]: r["valid"]["micro_f1"] for r in metrics["runs"]}
    best = json.loads((ev.dir / "best.json").read_text())
    assert valid["average"] >= max(valid["naive_bayes"], valid["tfidf_nb"])  # separable rows
    assert best["method"] == "average"
    assert "is preferred to a single run" in best["reason"]
    assert "naive_bayes" in best["reason"] and "tfidf_nb" in best["reason"]
    # without the preference the simplest of the tied runs wins
    ev2 = run_evaluate(store, EvaluateConfig(prefer_average=False), splits_ref(split_dir), trained)
    assert json.loads((ev2.dir / "best.json").read_text())["method"] == "naive_bayes"

    labelled = run_label(store, LabelConfig(), splits_ref(split_dir), trained, ev)
    ds = datasets.load_from_disk(str(labelled.dir / "labelled"))
    probs = np.array([ds[f"prob_{n}"] for n in ("bug", "feature", "question")]).T
    pool = [str(t) for t in load_splits(split_dir)["unlabeled"]["text"]]
    model = load_saved("ensemble", trained.dir / "runs/average/all/model")
    np.testing.assert_allclose(probs, model.predict_proba(pool), atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (labelled.dir / "model" / "members" / "tfidf_nb").is_dir()


def _saved_run(tmp_path, method, right, y, order):
    """A run directory whose argmax decision is right on the rows in ``right``."""
    import numpy as np

    from label_pipeline.decision import Decision

    d = tmp_path / method
    d.mkdir()
    pred = np.where(right, y.argmax(1), (y.argmax(1) + 1) % y.shape[1])
    probs = np.full(y.shape, 0.1)
    probs[np.arange(len(y)), pred] = 0.8
    np.save(d / "valid_probs.npy", probs)
    (d / "decision.json").write_text(json.dumps(Decision(rule="argmax").to_json()))
    run = _run(method, float(np.mean(right)), order=order)
    run["run_dir"] = str(d)
    return run


@pytest.mark.parametrize(
    "single_right, p_limit, chosen",
    [((0, 126), 0.05, "finetune"), ((20, 130), 0.05, "average"), ((0, 126), 0.0, "average")],
)
def test_a_single_run_beating_the_average_beyond_luck_ships_instead(
    tmp_path, single_right, p_limit, chosen
):
    import numpy as np

    lo, hi = single_right
    y = np.eye(3, dtype=int)[np.arange(150) % 3]
    rows = np.arange(150)
    # the average is right on the first 105 rows, finetune on rows single_right[0] to [1]:
    # 21 rows more than the average and never wrong where it is right (beyond luck), or
    # 5 rows more with 45 rows where only one of the two is right (within luck)
    runs = [
        _saved_run(tmp_path, "tfidf_nb", rows < 90, y, 0),
        _saved_run(tmp_path, "finetune", (rows >= lo) & (rows < hi), y, 1),
        _saved_run(tmp_path, "average", rows < 105, y, 2),
    ]
    choice = choose_final(
        runs,
        "micro_f1",
        tolerance=0.0,
        n_valid=150,
        prefer_average=True,
        y_valid=y,
        single_over_average_p=p_limit,
    )
    assert choice["run"]["method"] == chosen
    if p_limit:
        verdict = "beyond luck" if chosen == "finetune" else "within luck"
        assert "finetune beats the average on valid" in choice["reason"]
        assert verdict in choice["reason"]
    per = chosen_per_slice(runs, "micro_f1", 0.0, 150, True, y, p_limit)
    assert per[0]["method"] == chosen


@pytest.mark.parametrize(
    "baseline_right, chosen",
    [(108, "average"), (126, "tfidf_nb")],
)
def test_an_average_below_the_best_baseline_within_luck_still_ships(
    tmp_path, baseline_right, chosen
):
    """A baseline a few valid rows above the average does not put it out (the rows it wins
    are luck); one far above it does, and the rule picks among the rest."""
    import numpy as np

    y = np.eye(3, dtype=int)[np.arange(150) % 3]
    rows = np.arange(150)
    # the average is right on rows 0-104; tfidf_nb on rows 10 to 10 + baseline_right:
    # 3 rows more with 20 rows where only one of the two is right (within luck), or 21 more
    runs = [
        _saved_run(tmp_path, "tfidf_nb", (rows >= 10) & (rows < 10 + baseline_right), y, 0),
        _saved_run(tmp_path, "finetune", rows < 100, y, 1),
        _saved_run(tmp_path, "average", rows < 105, y, 2),
    ]
    kwargs = {"n_valid": 150, "prefer_average": True, "y_valid": y}
    choice = choose_final(runs, "micro_f1", 0.0, single_over_average_p=0.05, **kwargs)
    assert choice["run"]["method"] == chosen
    if chosen == "average":
        assert (
            "tfidf_nb beats the average on valid (0.720 vs 0.700) within luck" in (choice["reason"])
        )
    # without the test, any baseline above the average on valid puts it out
    plain = choose_final(runs, "micro_f1", 0.0, single_over_average_p=0.0, **kwargs)
    assert plain["run"]["method"] == "tfidf_nb"


def test_paired_bootstrap_p_on_multi_label_rows():
    import numpy as np

    from label_pipeline.metrics import paired_bootstrap_p

    rng = np.random.default_rng(0)
    y = (rng.random((200, 4)) < 0.3).astype(int)
    better = y.copy()
    worse = y.copy()
    flip = rng.random(y.shape) < 0.25  # a quarter of the cells wrong
    worse[flip] = 1 - worse[flip]
    for metric in ("micro_f1", "macro_f1"):
        assert paired_bootstrap_p(y, better, worse, metric) < 0.01
        assert paired_bootstrap_p(y, worse, better, metric) > 0.99
        assert paired_bootstrap_p(y, worse, worse, metric) == 1.0  # a tie is not a win
    # same seed, same answer
    half = y.copy()
    half[:100][flip[:100]] = 1 - half[:100][flip[:100]]
    assert paired_bootstrap_p(y, half, worse) == paired_bootstrap_p(y, half, worse)
    with pytest.raises(ValueError, match="micro_f1 or macro_f1"):
        paired_bootstrap_p(y, y, y, "accuracy")
