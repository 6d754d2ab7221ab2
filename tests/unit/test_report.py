"""The report exists, agrees with the evaluate stage's metrics and omits absent stages."""

from __future__ import annotations

import json

import pytest
from train_fixtures import make_splits_dir, splits_ref

from flows.config import PipelineConfig
from label_pipeline.store import StageStore
from tasks.evaluate import EvaluateConfig, run_evaluate
from tasks.report import run_report
from tasks.train import TrainConfig, run_train


@pytest.mark.slow
def test_report_agrees_with_metrics(tmp_path):
    split_dir = make_splits_dir(tmp_path / "split")
    store = StageStore(tmp_path / "store")
    split = splits_ref(split_dir)
    trained = run_train(store, TrainConfig(methods=["naive_bayes"], slices=["8", "all"]), split)
    evaluated = run_evaluate(store, EvaluateConfig(), split, trained)
    cfg = PipelineConfig(
        store=str(tmp_path / "store"), reports_dir=str(tmp_path / "reports"), run_name="toy run"
    )
    out = run_report(
        cfg.report,
        {"split": split, "train": trained, "evaluate": evaluated, "zero_shot": None},
        cfg.report_dir(),
    )
    assert out == tmp_path / "reports" / "toy-run"
    md = (out / "report.md").read_text()
    ev = json.loads((evaluated.dir / "metrics.json").read_text())
    rep = json.loads((out / "metrics.json").read_text())
    assert rep["evaluation"]["runs"][0]["test"]["micro_f1"] == ev["runs"][0]["test"]["micro_f1"]
    for r in ev["runs"]:
        assert f"{r['test']['micro_f1']:.3f}" in md
    best = json.loads((evaluated.dir / "best.json").read_text())
    assert f"Final model: **{best['method']}**" in md
    lo, hi = best["test"]["interval_95"]["macro_f1"]
    assert f"macro-F1 {best['test']['macro_f1']:.3f} [{lo:.3f}–{hi:.3f}]" in md
    (more,) = ev["label_more"]
    assert (
        f"- 8 → {more['to_rows']} rows (`8` → `all`): {more['micro_f1']['difference']:+.3f}" in md
    )
    assert trained.fingerprint in md and "## zero_shot" not in md
    assert (out / "figures" / "evaluate-learning_curve_micro.png").is_file()
    assert "](figures/evaluate-learning_curve_micro.png)" in md
    assert not list((tmp_path / "reports").glob(".tmp-*"))


def test_bench_config_adds_variants_and_all_slices():
    from flows.label_bench import bench_config
    from label_pipeline.errors import ConfigError

    base = PipelineConfig.model_validate({"train": {"methods": ["naive_bayes", "knn"]}})
    cfg = bench_config(base, ["aug"], ["naive_bayes"])
    assert cfg.train.methods == ["naive_bayes", "knn", "naive_bayes+aug"]
    assert cfg.train.slices == ["*"] and not cfg.label.enabled and cfg.evaluate.enabled
    assert cfg.augment.enabled
    with pytest.raises(ConfigError, match="unknown variant"):
        bench_config(base, ["mixup"], None)
    with pytest.raises(ConfigError, match="not in train.methods"):
        bench_config(base, ["pseudo"], ["embed_lr"])


def test_compose_report_from_plain_inputs(tmp_path):
    """The report's compute part: markdown and metrics from what was read, no files."""
    from tasks.report import ReportInputs, StageView, compose_report

    def view(fingerprint, facts=(), figures=(), **manifest):
        return StageView(
            fingerprint,
            False,
            f"/store/{fingerprint}",
            manifest,
            list(facts),
            [tmp_path / f for f in figures],
        )

    run = {
        "method": "naive_bayes",
        "slice": "all",
        "train_rows": 48,
        "fallback": "",
        "test": {"micro_f1": 0.9, "macro_f1": 0.8, "log_loss": 0.3},
        "valid": {"micro_f1": 0.85, "macro_f1": 0.75},
    }
    best = {
        "method": "naive_bayes",
        "slice": "all",
        "metric": "valid micro_f1",
        "valid": {"micro_f1": 0.85, "macro_f1": 0.75},
        "test": {"micro_f1": 0.9, "macro_f1": 0.8, "interval_95": {"macro_f1": [0.7, 0.9]}},
        "reason": "it is the best baseline",
    }
    inputs = ReportInputs(
        # given out of stage order: the report lists them in pipeline order
        stages={
            "evaluate": view("ev1", figures=["curve.png"], seconds=1.5),
            "split": view("sp1", facts=["- rows: `108`"]),
        },
        evaluation={"multi_label": True, "runs": [run], "unlearnable": {"8": ["question"]}},
        best=best,
        calibration=(["", "## Calibration"], {"final": None}),
    )
    report = compose_report("My report", "toy", "2024-01-01 00:00:00", inputs)
    md = report.markdown
    assert md.startswith("# My report: toy\n\nGenerated 2024-01-01 00:00:00.")
    assert md.index("| split | sp1 |") < md.index("| evaluate | ev1 |")
    assert "## split\n\n- rows: `108`" in md and "## evaluate" not in md  # no facts, no section
    assert "Final model: **naive_bayes** trained on slice `all`" in md
    assert "macro-F1 0.800 [0.700–0.900]" in md and "Why: it is the best baseline." in md
    assert "slice `8`: question" in md and "## Calibration" in md
    assert md.endswith("## Figures\n\n![evaluate-curve.png](figures/evaluate-curve.png)\n")
    assert report.figures == {"evaluate-curve.png": tmp_path / "curve.png"}
    assert [r["test micro-F1"] for r in report.results] == ["0.900"]
    assert list(report.metrics) == [
        "run",
        "stages",
        "evaluation",
        "best",
        "calibration",
        "label_quality",
    ]
    assert report.metrics["stages"]["evaluate"]["seconds"] == 1.5
    assert not list(tmp_path.iterdir())  # nothing written
