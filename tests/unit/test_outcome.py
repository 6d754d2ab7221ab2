"""`make run` ends with the result in three lines."""

from __future__ import annotations

import json

from label_pipeline.outcome import result_lines


def test_three_lines_name_the_model_and_score_the_rows_and_the_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evaluate, label, suggest = (
        tmp_path / ".store" / s / "fp" for s in ("evaluate", "label", "suggest")
    )
    for d in (evaluate, label, suggest):
        d.mkdir(parents=True)
    (evaluate / "best.json").write_text(
        json.dumps(
            {
                "method": "hybrid",
                "slice": "all",
                "metric": "valid micro_f1",
                "test": {"micro_f1": 0.5723, "interval_95": {"micro_f1": [0.51, 0.63]}},
            }
        )
    )
    (label / "manifest.json").write_text(
        json.dumps({"rows": 1200, "predicted_per_label": {"joy": 700, "anger": 300}})
    )
    (label / "labelled.jsonl").write_text("")
    (label / "labelled.parquet").write_text("")
    (suggest / "to_label.csv").write_text("id,text,labels\n")
    result = {
        s: {"path": str(d)}
        for s, d in (("evaluate", evaluate), ("label", label), ("suggest", suggest))
    }
    assert result_lines(result) == [
        "final model: hybrid (training slice all), test micro_f1 0.572 (95 % interval 0.510-0.630)",
        "rows labelled: 1200 pool rows (joy 700, anger 300)",
        "files: labelled rows .store/label/fp/labelled.jsonl (and labelled.parquet); "
        "rows to label next .store/suggest/fp/to_label.csv",
    ]


def test_a_run_without_the_model_stages_says_so():
    lines = result_lines({"ingest": {"path": "/x"}})
    assert len(lines) == 3 and all("did not run" in line for line in lines)
