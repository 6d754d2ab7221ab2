"""What the Prefect UI shows of a stage: counts per label and split, the most and least
confident rows per label, a summary headed once (and as a cache hit naming the run that
built it), the directory as text, figures without worker paths."""

from __future__ import annotations

import datasets
import pytest

from label_pipeline import artifacts
from label_pipeline.stage_views import NO_LABEL, TOTAL, confidence_rows, label_counts


@pytest.fixture
def stage_dir(tmp_path):
    d = tmp_path / "split" / "abc"
    d.mkdir(parents=True)
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"id": ["a", "b", "c"], "labels": [["bug"], ["bug", "ui"], []]}
            ),
            "test": datasets.Dataset.from_dict({"id": ["d"], "labels": [["ui"]]}),
        }
    ).save_to_disk(str(d / "splits"))
    datasets.Dataset.from_dict(
        {
            "id": [f"p{i}" for i in range(6)],
            "text": [f"row {i}" for i in range(6)],
            "predicted_labels": [["bug"], ["bug"], ["bug"], ["ui"], ["ui"], []],
            "prob_bug": [0.9, 0.6, 0.7, 0.2, 0.1, 0.3],
            "prob_ui": [0.1, 0.2, 0.3, 0.8, 0.55, 0.4],
        }
    ).save_to_disk(str(d / "labelled"))
    return d


def test_counts_per_label_for_every_dataset_and_split(stage_dir):
    rows = {r["label"]: r for r in label_counts(stage_dir)}
    assert rows["bug"] == {"label": "bug", "labelled": 3, "train": 2, "test": 0}
    assert rows["ui"] == {"label": "ui", "labelled": 2, "train": 1, "test": 1}
    assert rows[NO_LABEL] == {"label": NO_LABEL, "labelled": 1, "train": 1, "test": 0}
    assert rows[TOTAL] == {"label": TOTAL, "labelled": 6, "train": 3, "test": 1}
    assert label_counts(stage_dir / "nothing-here") == []


def test_most_and_least_confident_rows_per_label(stage_dir):
    rows = confidence_rows(stage_dir, k=1)
    picked = {(r["label"], r["rank"]): (r["id"], r["probability"], r["text"]) for r in rows}
    assert picked == {
        ("bug", "most confident"): ("p0", 0.9, "row 0"),
        ("bug", "least confident"): ("p1", 0.6, "row 1"),
        ("ui", "most confident"): ("p3", 0.8, "row 3"),
        ("ui", "least confident"): ("p4", 0.55, "row 4"),
    }


@pytest.fixture
def published(monkeypatch):
    out: dict[str, str] = {}
    monkeypatch.setattr(artifacts, "in_prefect_run", lambda: True)
    monkeypatch.setattr(
        artifacts,
        "publish_markdown",
        lambda stage, name, markdown, description="": out.__setitem__(f"{stage}-{name}", markdown),
    )
    monkeypatch.setattr(artifacts, "publish_table", lambda *a, **k: None)
    return out


def test_summary_keeps_its_own_heading_and_names_the_run_that_built_a_cached_stage(published):
    manifest = {
        "flow_run": {"id": "1234", "name": "bright-fox"},
        "created": "2026-01-02T03:00:00+0000",
        "host": "gpu-1",
        "fingerprint": "abc",
        "store": "s3://bucket/store",
    }
    artifacts.publish_stage(
        "label", "/w/.store/label/abc", "# label\n\nrows: 5\n", cached=True, manifest=manifest
    )
    summary = published["label-summary"]
    assert summary.startswith("# label\n\n**Cache hit**")
    assert summary.count("# label") == 1
    assert "[bright-fox](/runs/flow-run/1234)" in summary and "`gpu-1`" in summary
    assert "rows: 5" in summary and "`/w/.store/label/abc`" in summary
    # the directory is text, not a file:// link to the worker's disk
    assert "file://" not in published["label-dir"] and "s3://bucket/store" in published["label-dir"]


def test_a_fresh_stage_gets_a_heading_and_no_cache_note(published):
    artifacts.publish_stage("clean", "/w/.store/clean/x", "rows in: 3\n", cached=False)
    assert published["clean-summary"].startswith("# clean\n\nrows in: 3")
    assert "Cache hit" not in published["clean-summary"]


def test_figures_carry_no_worker_path(published, tmp_path):
    png = tmp_path / "worker-only" / "curve.png"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 16)
    artifacts.publish_image("evaluate", "curve", png, caption="learning curve")
    assert str(tmp_path) not in published["evaluate-curve"]
    assert published["evaluate-curve"].startswith("### learning curve")
