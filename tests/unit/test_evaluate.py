"""Evaluate: metrics equal scikit-learn's on a constructed case; stage outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_fixtures import make_splits_dir, splits_ref

from label_pipeline.choice import choose_best
from label_pipeline.metrics import classification_metrics
from label_pipeline.store import StageRef, StageStore
from tasks.evaluate import EvaluateConfig, run_evaluate, zero_shot_line
from tasks.train import TrainConfig, run_train


def test_multilabel_metrics_match_sklearn():
    from sklearn.metrics import f1_score, log_loss, precision_recall_fscore_support

    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]])
    probs = np.array(
        [[0.9, 0.2, 0.4], [0.3, 0.8, 0.1], [0.6, 0.4, 0.2], [0.1, 0.3, 0.7], [0.2, 0.1, 0.6]]
    )
    pred = (probs >= 0.5).astype(int)
    m = classification_metrics(y, probs, pred, ["a", "b", "c"], multi_label=True)
    assert m["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    p, r, f, s = precision_recall_fscore_support(y, pred, zero_division=0)
    assert [x["recall"] for x in m["per_label"]] == pytest.approx(r.tolist())
    assert [x["support"] for x in m["per_label"]] == s.tolist()
    expected_ll = np.mean([log_loss(y[:, j], probs[:, j], labels=[0, 1]) for j in range(3)])
    assert m["log_loss"] == pytest.approx(expected_ll, rel=1e-6)


def test_single_label_binary_metrics_match_sklearn():
    from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, roc_auc_score

    gold = np.array([0, 1, 1, 0, 1, 0])
    p1 = np.array([0.2, 0.7, 0.4, 0.3, 0.9, 0.6])
    probs = np.c_[1 - p1, p1]
    y, pred = np.eye(2, dtype=int)[gold], np.eye(2, dtype=int)[probs.argmax(1)]
    m = classification_metrics(y, probs, pred, ["neg", "pos"], multi_label=False)
    assert m["accuracy"] == pytest.approx(accuracy_score(gold, probs.argmax(1)))
    assert m["confusion_matrix"] == confusion_matrix(gold, probs.argmax(1)).tolist()
    assert m["roc_auc"] == pytest.approx(roc_auc_score(gold, p1))
    assert m["log_loss"] == pytest.approx(log_loss(gold, probs))
    assert m["roc_curve"]["fpr"][0] == 0.0 and m["roc_curve"]["tpr"][-1] == 1.0


def test_zero_shot_line_reads_nested_and_flat_layouts(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a/metrics.json").write_text(
        json.dumps({"test": {"micro_f1": 0.4, "macro_f1": 0.3}, "selection": {"rule": "top_k"}})
    )
    (tmp_path / "b").mkdir()
    (tmp_path / "b/metrics.json").write_text(json.dumps({"test_micro_f1": 0.5}))
    assert zero_shot_line(tmp_path / "a")["test"] == {"micro_f1": 0.4, "macro_f1": 0.3}
    assert zero_shot_line(tmp_path / "b")["test"] == {"micro_f1": 0.5}
    assert zero_shot_line(tmp_path / "missing") is None


def test_choose_best_prefers_valid_at_largest_slice_and_skips_fallbacks():
    def run(method, size, v, fallback="", order=0):
        return {
            "method": method,
            "slice_size": size,
            "valid": {"micro_f1": v},
            "fallback": fallback,
            "order": order,
        }

    runs = [
        run("a", 8, 0.99),
        run("a", 48, 0.7),
        run("b", 48, 0.8, order=1),
        run("c", 48, 0.95, fallback="did not converge", order=2),
    ]
    assert choose_best(runs, "micro_f1")["method"] == "b"


@pytest.mark.slow
def test_evaluate_stage_outputs(tmp_path):
    split_dir = make_splits_dir(tmp_path / "split")
    store = StageStore(tmp_path / "store")
    trained = run_train(
        store, TrainConfig(methods=["naive_bayes", "tfidf_nb"], slices=["*"]), splits_ref(split_dir)
    )
    zs = tmp_path / "zs"
    zs.mkdir()
    (zs / "metrics.json").write_text(json.dumps({"test": {"micro_f1": 0.41, "macro_f1": 0.33}}))
    zs_ref = StageRef(stage="zero_shot", fingerprint="z", path=str(zs))
    ref = run_evaluate(store, EvaluateConfig(), splits_ref(split_dir), trained, zero_shot=zs_ref)
    metrics = json.loads((ref.dir / "metrics.json").read_text())
    assert len(metrics["runs"]) == 9 and metrics["zero_shot"]["test"]["micro_f1"] == 0.41
    for f in ("figures/learning_curve_micro.png", "figures/learning_curve_macro.png"):
        assert (ref.dir / f).stat().st_size > 1000
    curves = json.loads((ref.dir / "learning_curves.json").read_text())
    assert curves["methods"]["naive_bayes"]["size"] == [8, 16, 48]
    best = json.loads((ref.dir / "best.json").read_text())
    assert best["slice"] == "all" and (tmp_path / best["run_dir"]).is_dir()
    all_runs = [r for r in metrics["runs"] if r["slice"] == "all"]
    # the average is a valid row below the best baseline: within luck, so it still ships
    top = max(r["valid"]["micro_f1"] for r in all_runs)
    assert best["method"] == "average" and top - 0.03 < best["valid"]["micro_f1"] < top
    assert "beats the average on valid" in best["reason"] and "within luck" in best["reason"]
    # the stage's test metrics equal a direct recomputation from the saved probabilities
    from label_pipeline.data import label_matrix, load_splits
    from label_pipeline.decision import Decision, apply_decision

    run_dir = trained.dir / "runs/naive_bayes/all"
    probs = np.load(run_dir / "test_probs.npy")
    dec = Decision.from_json(json.loads((run_dir / "decision.json").read_text()))
    gold = label_matrix(load_splits(split_dir)["test"]["labels"], ["bug", "feature", "question"])
    from sklearn.metrics import f1_score

    nb = next(r for r in all_runs if r["method"] == "naive_bayes")
    assert nb["test"]["micro_f1"] == pytest.approx(
        f1_score(gold, apply_decision(probs, dec), average="micro")
    )
    # each test score comes with its bootstrap interval, which holds it; the final model's
    # interval is in best.json, the summary and the chosen-per-slice table
    for r in metrics["runs"]:
        for m in ("micro_f1", "macro_f1"):
            lo, hi = r["test"]["interval_95"][m]
            assert lo <= r["test"][m] + 1e-9 and r["test"][m] <= hi + 1e-9
    lo, hi = best["test"]["interval_95"]["micro_f1"]
    assert f"[{lo:.3f}–{hi:.3f}]" in (ref.dir / "summary.md").read_text()
    assert all(c["interval_95"] for c in metrics["chosen_per_slice"])
    # did more labels help: one entry per pair of consecutive slices, in the summary too
    more = metrics["label_more"]
    chosen = metrics["chosen_per_slice"]
    assert [(e["from_slice"], e["to_slice"]) for e in more] == [
        (a["slice"], b["slice"]) for a, b in zip(chosen, chosen[1:], strict=False)
    ]
    for e, a, b in zip(more, chosen, chosen[1:], strict=False):
        d = e["micro_f1"]
        assert d["difference"] == pytest.approx(b["micro_f1"] - a["micro_f1"])
        assert d["interval_95"][0] <= d["difference"] <= d["interval_95"][1]
    assert "Did more labels help?" in (ref.dir / "summary.md").read_text()


def test_bootstrap_interval_covers_the_population_score_and_narrows_with_rows():
    """Rows drawn from a population where a classifier is right 70 % of the time: the 95 %
    interval of its accuracy on 300 drawn rows holds 0.70 in about 95 % of the draws, and
    on 1,200 rows it is about half as wide as on 300."""
    from label_pipeline.metrics import bootstrap_interval

    rng = np.random.default_rng(0)
    n_labels, covered, widths = 3, 0, {300: [], 1200: []}
    for trial in range(200):
        for n in (300, 1200) if trial < 20 else (300,):
            gold = rng.integers(0, n_labels, n)
            right = rng.random(n) < 0.7
            pred = np.where(right, gold, (gold + rng.integers(1, n_labels, n)) % n_labels)
            y, p = np.eye(n_labels, dtype=int)[gold], np.eye(n_labels, dtype=int)[pred]
            lo, hi = bootstrap_interval(y, p, "micro_f1", draws=500, seed=trial)
            acc = float(right.mean())
            assert lo <= acc <= hi
            widths[n].append(hi - lo)
            if n == 300:
                covered += lo <= 0.7 <= hi
    assert 0.88 <= covered / 200 <= 0.99
    ratio = np.mean(widths[300]) / np.mean(widths[1200])
    assert 1.7 < ratio < 2.3


def test_bootstrap_interval_of_perfect_predictions_and_bad_input():
    from label_pipeline.metrics import bootstrap_interval

    y = np.tile(np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]]), (30, 1))
    assert bootstrap_interval(y, y, "macro_f1") == (1.0, 1.0)
    lo, hi = bootstrap_interval(y, 1 - y, "micro_f1")
    assert (lo, hi) == (0.0, 0.0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(y, y, level=1.5)
    with pytest.raises(ValueError, match="shape"):
        bootstrap_interval(y, y[:, :2])
    assert all(np.isnan(bootstrap_interval(y[:0], y[:0])))


def test_bootstrap_difference_tells_a_real_gain_from_noise():
    """Two classifiers on 300 single-label rows: one right on 80 %, one on 60 % of the rows
    (the same rows otherwise) differ beyond the interval; two equally good ones that err
    on different rows give an interval holding 0."""
    from label_pipeline.metrics import bootstrap_difference

    rng = np.random.default_rng(1)
    n = 300
    gold = rng.integers(0, 3, n)
    y = np.eye(3, dtype=int)[gold]
    wrong = np.eye(3, dtype=int)[(gold + 1) % 3]
    u = rng.random(n)
    good = np.where((u < 0.8)[:, None], y, wrong)
    poor = np.where((u < 0.6)[:, None], y, wrong)
    diff, lo, hi = bootstrap_difference(y, good, poor, "micro_f1")
    assert diff == pytest.approx(float((u < 0.8).mean() - (u < 0.6).mean()))
    assert 0 < lo < diff < hi
    other = np.where((rng.random(n) < 0.8)[:, None], y, wrong)
    diff, lo, hi = bootstrap_difference(y, good, other, "macro_f1")
    assert lo < 0 < hi
    assert bootstrap_difference(y, good, good)[1:] == (0.0, 0.0)


def test_evaluate_trained_scores_and_chooses_from_runs_held_in_memory():
    """The stage's compute part on runs the test builds: no run directory is read (the
    ``run_dir`` names do not exist)."""
    from sklearn.metrics import accuracy_score

    from label_pipeline.choice import SavedRun
    from label_pipeline.decision import Decision
    from tasks.evaluate import evaluate_trained

    rng = np.random.default_rng(0)
    labels = ["bug", "feature", "question"]
    ys = {s: np.eye(3, dtype=np.int64)[rng.integers(0, 3, 60)] for s in ("valid", "test")}

    def probs(y, right):
        """Probabilities that put the true label first on a ``right`` fraction of rows."""
        wrong = np.roll(y, 1, axis=1)
        pick = (rng.random(len(y)) < right)[:, None]
        return np.where(pick, y, wrong) * 0.6 + 0.4 / 3

    quality = {("naive_bayes", "8"): 0.6, ("finetune", "8"): 0.7}
    quality |= {("naive_bayes", "all"): 0.8, ("finetune", "all"): 0.9, ("average", "all"): 0.9}
    train_runs, saved = [], {}
    for (method, slice_name), right in quality.items():
        size = 8 if slice_name == "8" else 48
        train_runs.append({"method": method, "slice": slice_name, "slice_size": size})
        run = SavedRun({s: probs(ys[s], right) for s in ys}, Decision("argmax"))
        if method == "average":
            run.fit = {"info": {"members": [{"method": "finetune"}, {"method": "naive_bayes"}]}}
            run.uncalibrated = {"test": np.full((60, 3), 1 / 3)}
        saved[f"/nowhere/runs/{method}/{slice_name}"] = run
    train_runs[0]["unlearnable"] = ["question"]

    ev = evaluate_trained(train_runs, saved, ys, labels, False, None, EvaluateConfig())
    nb = ev.runs[2]
    assert (nb["method"], nb["slice"], nb["run_dir"]) == (
        "naive_bayes",
        "all",
        "/nowhere/runs/naive_bayes/all",
    )
    pred = saved[nb["run_dir"]].predictions("test")
    assert nb["test"]["accuracy"] == pytest.approx(accuracy_score(ys["test"], pred))
    assert ev.curves["naive_bayes"]["size"] == [8, 48]
    # the average is not below the best baseline: it ships, naming its members
    assert ev.best["method"] == "average" and ev.best["slice"] == "all"
    assert "the average of finetune, naive_bayes" in ev.best["reason"]
    assert [c["method"] for c in ev.per_slice] == ["finetune", "average"]
    (more,) = ev.more
    assert more["micro_f1"]["difference"] == pytest.approx(
        ev.per_slice[1]["micro_f1"] - ev.per_slice[0]["micro_f1"]
    )
    assert ev.unlearnable == {"8": ["question"]}
    assert list(ev.reliability) == ["uncalibrated", "calibrated"]
    assert (
        ev.runs[-1]["calibration"]["test"]["before"] != ev.runs[-1]["calibration"]["test"]["after"]
    )
    assert ev.facts()["best"]["method"] == "average" and ev.facts()["runs"] == 5
