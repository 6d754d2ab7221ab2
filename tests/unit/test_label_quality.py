"""The quality stage and label_pipeline.label_quality on split directories the tests write:
planted wrong labels are flagged with the right suggestion, conflicting duplicates are listed,
labels whose rows disagree with their name are reported, and train.label_issues acts on the
flagged rows."""

from __future__ import annotations

import csv
import json
import shutil

import datasets
import numpy as np
import pytest
from train_fixtures import LABELS, make_splits_dir, splits_ref

from label_pipeline.errors import ConfigError
from label_pipeline.label_quality import (
    conflict_issues,
    find_mislabelled,
    label_name_check,
    load_issues,
    out_of_fold_probs,
    pool_agreement,
    stratified_folds,
)
from label_pipeline.methods.base import FitContext, LabelledTexts
from label_pipeline.methods.baselines import NaiveBayes
from label_pipeline.store import StageRef, StageStore
from tasks.quality import (
    CSV_COLUMNS,
    ISSUES_CSV,
    QualityConfig,
    resolve_method,
    run_quality,
)
from tasks.train import TrainConfig, run_train

FAST = {"method": "naive_bayes"}


def _planted_split(tmp_path, multi_label=False, plant=None, n_train=60):
    """A separable split directory whose training rows ``plant`` ({row id: wrong labels})
    carry wrong labels; returns (directory, {row id: true labels})."""
    base = make_splits_dir(tmp_path / "split-base", multi_label=multi_label, n_train=n_train)
    dd = datasets.load_from_disk(str(base / "splits"))
    train = dd["train"].to_dict()
    truth = {}
    for row_id, wrong in (plant or {}).items():
        r = train["id"].index(row_id)
        truth[row_id] = train["labels"][r]
        assert sorted(wrong) != sorted(train["labels"][r])
        train["labels"][r] = wrong
    out = tmp_path / "split"
    parts = {k: v for k, v in dd.items() if k != "train"}
    parts["train"] = datasets.Dataset.from_dict(train, features=dd["train"].features)
    datasets.DatasetDict(parts).save_to_disk(str(out / "splits"))
    for f in ("slices.json", "labels.json", "manifest.json"):
        shutil.copyfile(base / f, out / f)
    return out, truth


def _csv_rows(ref):
    with (ref.dir / ISSUES_CSV).open(newline="") as f:
        return list(csv.DictReader(f))


def test_planted_mislabelled_row_is_flagged_with_its_true_label(tmp_path, caplog):
    # train-4 is a "feature" row (4 % 3 = 1) labelled "question"
    split_dir, truth = _planted_split(tmp_path, plant={"train-4": ["question"]})
    store = StageStore(tmp_path / "store")
    with caplog.at_level("INFO"):
        ref = run_quality(store, QualityConfig(**FAST), splits_ref(split_dir))
    # the log names the file where it is once the stage is built, not the temporary build
    (named,) = [r.getMessage() for r in caplog.records if "probably mislabelled" in r.getMessage()]
    assert named.endswith(str(ref.dir / ISSUES_CSV)) and (ref.dir / ISSUES_CSV).is_file()
    rows = _csv_rows(ref)
    flagged = {r["id"]: r for r in rows if "mislabelled" in r["issue"]}
    assert "train-4" in flagged
    row = flagged["train-4"]
    assert row["given_labels"] == "question" and row["suggested_labels"] == "feature"
    assert row["labels"] == "" and float(row["score"]) < 0.5
    # the planted row is the most suspicious one, and few clean rows are flagged with it
    assert rows[0]["id"] == "train-4"
    assert len(flagged) <= 3
    assert list(rows[0]) == CSV_COLUMNS
    facts = json.loads((ref.dir / "quality.json").read_text())
    assert facts["rows_checked"] == 60 and facts["folds"] == "5-fold stratified"
    issues = load_issues(ref)
    r = issues.filter(lambda x: x["id"] == "train-4")[0]
    assert r["flagged"] and r["suggested"] == ["feature"] and r["given"] == ["question"]
    assert r["prob_feature"] > r["prob_question"]
    summary = (ref.dir / "summary.md").read_text()
    assert "probably mislabelled" in summary and "train-4" in summary
    assert json.loads((ref.dir / "sample.json").read_text())[0]["id"] == "train-4"


def test_auto_method_is_prototype_on_a_gpu_and_hybrid_on_a_cpu(tmp_path):
    assert QualityConfig().method == "auto"
    assert resolve_method(QualityConfig(), "cuda").method == "prototype"
    assert resolve_method(QualityConfig(), "cpu").method == "hybrid"
    assert resolve_method(QualityConfig(method="knn"), "cuda").method == "knn"
    # this machine has no GPU: the default runs hybrid, and says why
    split_dir, _ = _planted_split(tmp_path, plant={"train-4": ["question"]})
    ref = run_quality(StageStore(tmp_path / "store"), QualityConfig(), splits_ref(split_dir))
    facts = json.loads((ref.dir / "quality.json").read_text())
    assert facts["method"] == "hybrid" and facts["method_requested"] == "auto"
    assert facts["device"] == "cpu"
    assert "`quality.method: auto` on cpu" in (ref.dir / "summary.md").read_text()
    assert "train-4" in {r["id"] for r in _csv_rows(ref) if "mislabelled" in r["issue"]}


def test_planted_multi_label_error_is_flagged(tmp_path):
    # train-3 is a "bug" row (single label) labelled "question"
    split_dir, _ = _planted_split(tmp_path, multi_label=True, plant={"train-3": ["question"]})
    ref = run_quality(StageStore(tmp_path / "store"), QualityConfig(**FAST), splits_ref(split_dir))
    flagged = {r["id"]: r for r in _csv_rows(ref) if "mislabelled" in r["issue"]}
    assert "train-3" in flagged
    assert "bug" in flagged["train-3"]["suggested_labels"].split(";")


def test_out_of_fold_probs_never_come_from_a_model_that_saw_the_row():
    # every text is unique and labelled by a word only it carries: a model that saw the row
    # would be sure of it, a model that did not can only guess
    texts = [f"token{i}" for i in range(30)]
    y = np.eye(3, dtype=np.int64)[[i % 3 for i in range(30)]]
    rows = LabelledTexts(texts, y, LABELS, False)
    oof = out_of_fold_probs(rows, "naive_bayes", {}, 5, 0, lambda: FitContext(seed=0))
    assert oof.ok and oof.folds == "5-fold stratified"
    assert oof.probs.shape == (30, 3)
    np.testing.assert_allclose(oof.probs.sum(axis=1), 1.0)
    assert oof.probs.max() < 0.5  # held-out texts share no word with the training folds
    assert len(oof.fold_info) == 5 and sum(f["held_out"] for f in oof.fold_info) == 30


def test_extra_rows_join_every_fold_and_are_not_scored():
    # the extra rows teach each scored text's own word with its label: the held-out rows,
    # unknowable from the other folds alone, become certain
    texts = [f"token{i}" for i in range(30)]
    y = np.eye(3, dtype=np.int64)[[i % 3 for i in range(30)]]
    rows = LabelledTexts(texts, y, LABELS, False)
    extra = LabelledTexts([f"{t} {t}" for t in texts], y.copy(), LABELS, False)
    oof = out_of_fold_probs(rows, "naive_bayes", {}, 5, 0, lambda: FitContext(seed=0), extra=extra)
    assert oof.probs.shape == (30, 3)
    assert (oof.probs.argmax(axis=1) == y.argmax(axis=1)).all() and oof.probs.max() > 0.5
    assert [f["train_rows"] for f in oof.fold_info] == [24 + 30] * 5


def test_quality_stage_fits_on_the_valid_rows_by_default(tmp_path):
    split_dir, _ = _planted_split(tmp_path, plant={"train-4": ["question"]})
    store = StageStore(tmp_path / "store")
    other = run_quality(
        store, QualityConfig(**FAST, valid_use="early_stopping"), splits_ref(split_dir)
    )
    assert json.loads((other.dir / "quality.json").read_text())["valid_rows_fitted"] == 0
    assert "fitted on the" not in (other.dir / "summary.md").read_text()
    ref = run_quality(store, QualityConfig(**FAST), splits_ref(split_dir))
    facts = json.loads((ref.dir / "quality.json").read_text())
    assert facts["valid_use"] == "fit" and facts["valid_rows_fitted"] == 30
    assert facts["rows_checked"] == 60  # the valid rows are fitted on, not checked
    assert "every fold also fitted on the 30 valid rows" in (ref.dir / "summary.md").read_text()
    assert "train-4" in {r["id"] for r in _csv_rows(ref) if "mislabelled" in r["issue"]}


def test_folds_shrink_to_the_smallest_label_and_stop_below_two():
    y = np.eye(3, dtype=np.int64)[[0] * 10 + [1] * 10 + [2] * 3]
    splits, how = stratified_folds(y, False, 5, 0)
    assert how == "3-fold stratified" and len(splits) == 3
    held = np.concatenate([te for _, te in splits])
    assert sorted(held.tolist()) == list(range(23))
    none, why = stratified_folds(np.eye(2, dtype=np.int64)[[0, 1]], False, 5, 0)
    assert none == [] and "cross-validation" in why
    ml, how_ml = stratified_folds(np.ones((6, 2), np.int64), True, 5, 0)
    assert ml == [] and "too few" in how_ml


def test_find_mislabelled_margin_and_suggestion():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9], [0.55, 0.45]] * 4)
    y = np.eye(2, dtype=np.int64)[[0, 0, 1, 1, 1] * 4]  # every 5th row: given 1, model 0
    verdict = find_mislabelled(y, probs, False)
    wrong = np.arange(4, 20, 5)
    assert set(np.flatnonzero(verdict.flagged)) <= set(wrong)
    assert all(verdict.suggested[i] == [0] for i in wrong)
    assert verdict.quality[wrong].max() < verdict.quality[np.arange(0, 20, 5)].min()
    strict = find_mislabelled(y, probs, False, min_margin=0.2)
    assert not strict.flagged.any()  # 0.55 - 0.45 < 0.2
    assert verdict.agreement == pytest.approx(0.8)


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("rule", ["prune_by_noise_rate", "prune_by_class", "both"])
def test_find_mislabelled_never_forks_a_process_pool(monkeypatch, multi_label, rule):
    """cleanlab's default n_jobs forks a multiprocessing pool; inside a Prefect run the forked
    workers inherit Prefect's SIGTERM handler and the pool's shutdown can hang the stage."""
    import multiprocessing

    def no_pool(*args, **kwargs):
        raise AssertionError("find_mislabelled started a multiprocessing pool")

    monkeypatch.setattr(multiprocessing, "Pool", no_pool)
    rng = np.random.default_rng(0)
    y = np.eye(3, dtype=np.int64)[np.arange(60) % 3]
    if multi_label:
        y[::4, 0] = 1
    probs = np.clip(y * 0.7 + rng.random(y.shape) * 0.3, 0.01, 0.99)
    if not multi_label:
        probs = probs / probs.sum(axis=1, keepdims=True)
    verdict = find_mislabelled(y, probs, multi_label, rule)
    assert verdict.flagged.shape == (60,)


def test_max_share_keeps_the_least_likely_labels():
    y = np.eye(3, dtype=np.int64)[np.arange(100) % 3]
    probs = np.where(y == 1, 0.8, 0.1)
    wrong = np.arange(0, 100, 7)  # 15 rows the model puts in the next label, surer and surer
    for rank, i in enumerate(wrong):
        given = int(y[i].argmax())
        probs[i] = 0.05
        probs[i, given] = 0.1 - 0.005 * rank
        probs[i, (given + 1) % 3] = 0.85 + 0.005 * rank
    probs = probs / probs.sum(axis=1, keepdims=True)
    free = find_mislabelled(y, probs, False)
    capped = find_mislabelled(y, probs, False, max_share=0.05)
    assert free.flagged.sum() > 5 and capped.flagged.sum() == 5
    assert set(np.flatnonzero(capped.flagged)) == set(wrong[-5:])  # lowest given-label probability
    assert capped.estimated_issues == free.estimated_issues


def test_conflict_issues_name_the_other_copy_and_its_labels():
    conflicts = [
        {"kind": "near", "ids": ["a", "b"], "labels": [["bug"], ["question"]], "similarity": 0.9},
        {"kind": "exact", "ids": ["c", "gone"], "labels": [["bug"], ["feature"]]},
    ]
    out = conflict_issues(conflicts, {"a", "b", "c"})
    assert out["a"] == "near duplicate (similarity 0.90) of b [question]"
    assert out["b"] == "near duplicate (similarity 0.90) of a [bug]"
    assert out["c"] == "same text of gone [feature]" and "gone" not in out


def test_conflicting_near_duplicates_from_the_clean_stage_are_listed(tmp_path):
    split_dir, _ = _planted_split(tmp_path)
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    (clean_dir / "conflicts.json").write_text(
        json.dumps(
            [
                {
                    "kind": "near",
                    "ids": ["train-0", "train-1"],
                    "labels": [["bug"], ["feature"]],
                    "texts": ["x", "y"],
                    "similarity": 0.88,
                    "action": "kept one copy per label set",
                }
            ]
        )
    )
    clean = StageRef(stage="clean", fingerprint="c", path=str(clean_dir))
    ref = run_quality(
        StageStore(tmp_path / "store"), QualityConfig(**FAST), splits_ref(split_dir), clean=clean
    )
    rows = {r["id"]: r for r in _csv_rows(ref)}
    assert "conflicting_duplicate" in rows["train-0"]["issue"]
    assert "train-1 [feature]" in rows["train-0"]["detail"]
    assert (
        json.loads((ref.dir / "quality.json").read_text())["issues_by_kind"][
            "conflicting_duplicate"
        ]
        == 2
    )


def test_label_name_check_flags_a_label_its_rows_do_not_match():
    rng = np.random.default_rng(0)
    y = np.eye(3, dtype=np.int64)[rng.integers(0, 3, 90)]
    scores = rng.random((90, 3)) * 0.2
    scores[:, 0] += 0.8 * y[:, 0]  # label 0's rows score high on its name
    scores[:, 1] += 0.8 * y[:, 1]
    scores[:, 2] += 0.8 * y[:, 0]  # label 2's name matches label 0's rows instead
    checks = {c["label"]: c for c in label_name_check(y, scores, LABELS)}
    assert checks["bug"]["auc"] > 0.95 and not checks["bug"]["disagrees"]
    assert checks["question"]["auc"] < 0.6 and checks["question"]["disagrees"]
    assert checks["question"]["top_share"] < 0.5 and checks["feature"]["top_share"] > 0.9


def test_zero_shot_stage_backend_scores_the_labelled_rows(tmp_path, tiny_mlm_dir):
    split_dir, _ = _planted_split(tmp_path)
    zs_dir = tmp_path / "zs"
    zs_dir.mkdir()
    cfg = {"backend": "embedding", "embedding_model": str(tiny_mlm_dir), "temperature": 0.05}
    (zs_dir / "manifest.json").write_text(
        json.dumps({"config": cfg, "backend": "embedding", "model": str(tiny_mlm_dir)})
    )
    zs = StageRef(stage="zero_shot", fingerprint="z", path=str(zs_dir))
    ref = run_quality(
        StageStore(tmp_path / "store"), QualityConfig(**FAST), splits_ref(split_dir), zero_shot=zs
    )
    checks = json.loads((ref.dir / "label_checks.json").read_text())
    assert [c["label"] for c in checks] == LABELS
    assert all(0.0 <= c["auc"] <= 1.0 and c["rows"] == 20 for c in checks)
    assert "Labels against their names" in (ref.dir / "summary.md").read_text()


def test_pool_agreement_counts_rows_with_a_pseudo_label():
    pseudo = [["bug"], ["feature"], [], ["question"], ["bug"]]
    predicted = [["bug"], ["question"], ["bug"], ["question"], ["bug"]]
    out = pool_agreement(pseudo, predicted, LABELS)
    assert out["rows"] == 4 and out["pool_rows"] == 5
    assert out["exact_agreement"] == pytest.approx(0.75)
    per = {p["label"]: p for p in out["per_label"]}
    assert per["bug"] == {"label": "bug", "pseudo": 2, "predicted": 2, "both": 2, "agreement": 1.0}
    assert per["feature"]["agreement"] == 0.0 and out["cohen_kappa"] is not None
    with pytest.raises(ValueError, match="pseudo-label rows"):
        pool_agreement(pseudo, predicted[:2], LABELS)


def test_quality_stage_errors_name_the_setting(tmp_path):
    split_dir, _ = _planted_split(tmp_path)
    store = StageStore(tmp_path / "store")
    with pytest.raises(ConfigError, match="unknown method"):
        run_quality(store, QualityConfig(method="nope"), splits_ref(split_dir))
    with pytest.raises(ConfigError, match="quality stage did not run"):
        run_train(
            store, TrainConfig(methods=["naive_bayes"], label_issues="drop"), splits_ref(split_dir)
        )


@pytest.mark.parametrize("policy", ["drop", "relabel"])
def test_train_drops_or_relabels_the_flagged_rows(tmp_path, policy):
    split_dir, _ = _planted_split(tmp_path, plant={"train-4": ["question"]})
    store = StageStore(tmp_path / "store")
    split = splits_ref(split_dir)
    quality = run_quality(store, QualityConfig(**FAST), split)
    flagged = sum(load_issues(quality)["flagged"])
    assert flagged >= 1
    kept = run_train(store, TrainConfig(methods=["naive_bayes"]), split, quality=quality)
    acted = run_train(
        store, TrainConfig(methods=["naive_bayes"], label_issues=policy), split, quality=quality
    )
    # keep leaves the quality stage out of the fingerprint; drop/relabel depend on it
    assert "quality" not in kept.manifest()["inputs"] and "quality" in acted.manifest()["inputs"]
    kept_run = json.loads((kept.dir / "runs.json").read_text())[0]
    run = json.loads((acted.dir / "runs.json").read_text())[0]
    fit = json.loads((acted.dir / "runs/naive_bayes/all/fit.json").read_text())
    assert fit["label_issues"] == {"policy": policy, "rows": flagged}
    assert run["label_issue_rows"] == flagged
    expected_rows = kept_run["train_rows"] - (flagged if policy == "drop" else 0)
    assert run["train_rows"] == expected_rows
    assert f"label issues: `{policy}`" in (acted.dir / "summary.md").read_text()
    # the rows the model learnt from: one "question" fewer; relabel: one "feature" more
    counts = {}
    for ref in (kept, acted):
        model = NaiveBayes.load(ref.dir / "runs/naive_bayes/all/model")
        counts[ref.fingerprint] = dict(zip(LABELS, model.clf_.single_.class_count_, strict=True))
    before, after = counts[kept.fingerprint], counts[acted.fingerprint]
    if flagged == 1:
        assert after["question"] == before["question"] - 1
        assert after["feature"] == before["feature"] + (1 if policy == "relabel" else 0)


def test_report_section_lists_the_issues_and_the_pool_agreement(tmp_path):
    from tasks.report import label_quality_section

    split_dir, _ = _planted_split(tmp_path, plant={"train-4": ["question"]})
    quality = run_quality(
        StageStore(tmp_path / "store"), QualityConfig(**FAST), splits_ref(split_dir)
    )
    ids = ["u-0", "u-1", "u-2", "u-3"]
    zs_dir, label_dir = tmp_path / "zs", tmp_path / "label"
    datasets.Dataset.from_dict(
        {"id": ids, "labels": [["bug"], ["feature"], [], ["question"]]}
    ).save_to_disk(str(zs_dir / "unlabeled"))
    datasets.Dataset.from_dict(
        {"id": ids[::-1], "predicted_labels": [["question"], ["bug"], ["bug"], ["bug"]]}
    ).save_to_disk(str(label_dir / "labelled"))
    (label_dir / "labels.json").write_text(json.dumps({"labels": LABELS, "multi_label": False}))
    refs = {
        "quality": quality,
        "zero_shot": StageRef(stage="zero_shot", fingerprint="z", path=str(zs_dir)),
        "label": StageRef(stage="label", fingerprint="l", path=str(label_dir)),
    }
    lines, out = label_quality_section(refs)
    md = "\n".join(lines)
    assert "## Label quality" in md and "train-4" in md and "label_issues.csv" in md
    # u-0 bug/bug, u-1 feature/bug, u-3 question/question (matched by id); u-2 has no pseudo-label
    assert out["pool_agreement"]["rows"] == 3
    assert out["pool_agreement"]["exact_agreement"] == pytest.approx(2 / 3)
    assert "66.7 %" in md


@pytest.mark.slow
def test_flow_runs_quality_before_train_and_reports_it(tmp_path, prefect_server):
    from flows.config import PipelineConfig
    from flows.label_pipeline import label_pipeline

    lines = ["text,labels"]
    words = {
        "bug": "crash error broken fails exception traceback wrong",
        "feature": "add support request would like option new",
        "question": "how why what help wondering possible explain",
    }
    rng = np.random.default_rng(0)
    for i in range(150):
        lab = LABELS[i % 3]
        text = " ".join(rng.choice(words[lab].split(), 4)) + f" w{rng.integers(10_000)} item {i}"
        given = "question" if i == 4 else lab  # row-4 is a feature row labelled question
        lines.append(f"{text},{given if i < 120 else ''}")
    (tmp_path / "tiny.csv").write_text("\n".join(lines) + "\n")
    cfg = PipelineConfig.model_validate(
        {
            "store": str(tmp_path / "store"),
            "reports_dir": str(tmp_path / "reports"),
            "run_name": "quality",
            "ingest": {"path": str(tmp_path / "tiny.csv")},
            "split": {"slice_sizes": [8]},
            "quality": {"method": "naive_bayes"},
            "train": {"methods": ["naive_bayes"], "label_issues": "drop"},
            **{s: {"enabled": False} for s in ("augment", "zero_shot", "adapt", "suggest")},
        }
    )
    out = label_pipeline(config=cfg)
    assert {"quality", "train", "label"} <= set(out)
    train_manifest = json.loads(
        (tmp_path / "store" / "train" / out["train"]["fingerprint"] / "manifest.json").read_text()
    )
    assert train_manifest["inputs"]["quality"]["fingerprint"] == out["quality"]["fingerprint"]
    issues = load_issues(StageRef(**out["quality"]))
    if "row-4" in issues["id"]:  # row-4 landed in train: flagged and left out
        assert train_manifest["label_issues"]["flagged_training_rows"] >= 1
    report = (tmp_path / "reports" / "quality" / "report.md").read_text()
    assert "## Label quality" in report and "train.label_issues `drop`" in report


def test_find_label_issues_is_a_plain_function_of_the_rows():
    """The quality stage's computation, called without a store: a planted wrong label is
    flagged with its true label, a conflict from the clean stage is listed, and the zero-shot
    scores check every label against its name."""
    from tasks.quality import find_label_issues

    words = {"bug": "crash error", "feature": "add option", "question": "how why"}
    true = [LABELS[i % 3] for i in range(45)]
    texts = [f"{words[lab]} {words[lab]} row{i}" for i, lab in enumerate(true)]
    given = list(true)
    given[4] = "question"  # a feature row labelled question
    y = np.eye(3, dtype=np.int64)[[LABELS.index(lab) for lab in given]]
    ids = [f"r{i}" for i in range(45)]
    rows = LabelledTexts(texts, y, LABELS, False, ids=ids)
    origin = ["train"] * 40 + ["valid"] * 5
    conflicts = [{"kind": "exact", "ids": ["r0", "r9"], "labels": [["bug"], ["feature"]]}]
    # the name "question" scores high on the bug rows instead of its own
    true_y = np.eye(3)[[LABELS.index(lab) for lab in true]]
    scores = true_y[:, [0, 1, 0]] * 0.8 + 0.1
    folds = []
    result = find_label_issues(
        rows,
        origin,
        QualityConfig(**FAST),
        conflicts=conflicts,
        score_names=lambda t: scores if t == texts else None,
        on_fold=lambda: folds.append(1),
    )
    assert len(folds) == 5 and result.oof.ok and result.rows_checked == 45
    first = result.issue_rows[0]
    assert first["id"] == "r4" and first["flagged"] and first["issue"] == "mislabelled"
    assert first["given_labels"] == "question" and first["suggested_labels"] == "feature"
    assert result.given[0] == ["question"] and result.suggested[0] == ["feature"]
    assert result.issue_probs.shape == (len(result.issue_rows), 3)
    assert result.issue_probs[0, 1] > result.issue_probs[0, 2]  # feature over question
    assert list(first) == [*CSV_COLUMNS, "flagged"]
    by_id = {r["id"]: r for r in result.issue_rows}
    assert (
        "conflicting_duplicate" in by_id["r0"]["issue"] and "r9 [feature]" in by_id["r0"]["detail"]
    )
    assert "r0 [bug]" in by_id["r9"]["detail"]  # both copies are listed
    assert result.issues_by_kind()["conflicting_duplicate"] == 2
    assert result.conflicts_read == 1 and result.zero_shot
    checks = {c["label"]: c for c in result.checks}
    assert checks["question"]["disagrees"] and not checks["feature"]["disagrees"]
    assert by_id["r4"]["zero_shot_top"] == "feature"
    # scores ascend: the most suspicious row first, rows without a score last
    scored = [r["score"] for r in result.issue_rows if r["score"] is not None]
    assert scored == sorted(scored)
