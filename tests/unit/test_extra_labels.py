"""Feeding labels back: ingest.extra_labels, the split stage moving rows into train, and a
re-run recomputing only what follows."""

from __future__ import annotations

import csv
import random

import pytest

from label_pipeline.errors import InputDataError

LABELS = ["bug", "feature", "question"]
WORDS = {
    "bug": "crash error broken fails exception traceback wrong",
    "feature": "add support request would like option new",
    "question": "how why what help wondering possible explain",
}
N_LABELLED, N_UNLABELED = 72, 40


def _tiny_csv(path, seed=0):
    rng = random.Random(seed)
    lines, truth = ["text,labels"], {}
    for i in range(N_LABELLED + N_UNLABELED):
        lab = LABELS[i % 3]
        words = rng.sample(WORDS[lab].split(), 4) + [f"w{rng.randint(0, 10_000)}" for _ in range(4)]
        lines.append(f"{' '.join(words)} item {i},{lab if i < N_LABELLED else ''}")
        truth[f"row-{i}"] = lab
    path.write_text("\n".join(lines) + "\n")
    return path, truth


def _extra(path, rows, header=("id", "labels")):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def _read(tmp_path, rows, **cfg):
    from tasks.extra_labels import IngestConfig, read_extra_labels

    data, truth = _tiny_csv(tmp_path / "tiny.csv")
    ids = list(truth)
    labels = [[truth[i]] if n < N_LABELLED else [] for n, i in enumerate(ids)]
    c = IngestConfig(path=str(data), extra_labels=_extra(tmp_path / "extra.csv", rows), **cfg)
    return read_extra_labels(c, ids, labels, LABELS, False)


def test_extra_labels_file_is_read_with_provenance(tmp_path):
    cols, facts = _read(tmp_path, [["row-80", "bug"], ["row-81", ""], ["row-90", "question"]])
    assert cols == {
        "id": ["row-80", "row-90"],
        "labels": [["bug"], ["question"]],
        "source": ["round-1", "round-1"],
    }
    assert facts["skipped_unlabelled"] == 1 and facts["per_source"] == {"round-1": 2}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [["row-80", "bug"], ["row-999", "bug"]],
            r"extra\.csv line 3: id 'row-999' \(column 'id'\)",
        ),
        ([["row-80", "bugg"]], r"line 2: column 'labels' holds \['bugg'\].*bug, feature, question"),
        ([["row-3", "bug"]], r"line 2: id 'row-3' already carries labels \['bug'\]"),
        ([["row-80", "bug"], ["row-80", "feature"]], r"line 3: id 'row-80' was already labelled"),
        ([["row-80", "bug;feature"]], r"line 2: id 'row-80' gets 2 labels.*single-label"),
        ([["", "bug"]], r"line 2: column 'id' is empty"),
    ],
)
def test_extra_label_errors_name_file_line_and_column(tmp_path, rows, message):
    with pytest.raises(InputDataError, match=message):
        _read(tmp_path, rows)


def test_extra_labels_needs_id_and_labels_columns(tmp_path):
    from tasks.extra_labels import IngestConfig, read_extra_labels

    path = _extra(tmp_path / "bad.csv", [["row-80", "bug"]], header=("row", "labels"))
    cfg = IngestConfig(extra_labels=path)
    with pytest.raises(InputDataError, match=r"bad\.csv has no column 'id'"):
        read_extra_labels(cfg, ["row-80"], [[]], LABELS, False)


def _config(tmp_path, data, **ingest):
    from flows.config import PipelineConfig

    cfg = {
        "store": str(tmp_path / "store"),
        "reports_dir": str(tmp_path / "reports"),
        "ingest": {"path": str(data), **ingest},
        "split": {"slice_sizes": [8, 16]},
        "train": {"methods": ["naive_bayes"], "slices": ["8", "all"]},
        "suggest": {"n": 6, "strategy": "margin"},
    }
    for stage in ("augment", "zero_shot", "adapt", "quality", "report"):
        cfg[stage] = {"enabled": False}
    return PipelineConfig.model_validate(cfg)


def test_labelled_rows_move_to_train_and_only_downstream_stages_rerun(tmp_path, prefect_server):
    import datasets

    from flows.label_pipeline import label_pipeline
    from label_pipeline.data import load_slices, load_splits

    data, truth = _tiny_csv(tmp_path / "tiny.csv")
    first = label_pipeline(config=_config(tmp_path, data))
    assert "review" not in first  # no review option: nothing paused
    assert "extra_labels" not in first
    with open(f"{first['suggest']['path']}/to_label.csv", newline="") as fh:
        suggested = list(csv.DictReader(fh))
    assert len(suggested) == 6
    # the person labels five of the six suggested rows (the file read back as it is)
    for row in suggested[:5]:
        row["labels"] = truth[row["id"]]
    filled = tmp_path / "round-1.csv"
    with open(filled, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(suggested[0]))
        w.writeheader()
        w.writerows(suggested)
    moved = {r["id"] for r in suggested[:5]}

    second = label_pipeline(config=_config(tmp_path, data, extra_labels=str(filled)))
    cached = {k for k, v in second.items() if v["cached"]}
    assert cached == {"ingest", "clean"}, second
    assert set(second) - cached == {
        "extra_labels",
        "split",
        "train",
        "evaluate",
        "label",
        "suggest",
    }

    before, after = load_splits(first["split"]["path"]), load_splits(second["split"]["path"])
    for part in ("valid", "test"):
        assert after[part]["id"] == before[part]["id"]
    assert set(before["unlabeled"]["id"]) - set(after["unlabeled"]["id"]) == moved
    assert set(after["unlabeled"]["id"]) <= set(before["unlabeled"]["id"])
    train = {r["id"]: r for r in after["train"]}
    assert set(train) == set(before["train"]["id"]) | moved
    for i in moved:
        assert train[i]["source"] == "round-1" and train[i]["labels"] == [truth[i]]
    assert {r["source"] for i, r in train.items() if i not in moved} == {"input"}
    slices_before, slices_after = (
        load_slices(first["split"]["path"]),
        load_slices(second["split"]["path"]),
    )
    for name, ids in slices_before.items():  # the drawn slices stay; the new rows join each
        assert slices_after[name] == ids + sorted(moved, key=slices_after[name].index)
    extra = datasets.load_from_disk(f"{second['extra_labels']['path']}/extra_labels")
    assert sorted(extra["id"]) == sorted(moved)
    assert second["split"]["path"] != first["split"]["path"]
    # the next suggestions are a new round and never the rows just labelled
    with open(f"{second['suggest']['path']}/to_label.csv", newline="") as fh:
        again = list(csv.DictReader(fh))
    assert {r["source"] for r in again} == {"round-2"} and not moved & {r["id"] for r in again}

    third = label_pipeline(config=_config(tmp_path, data, extra_labels=str(filled)))
    assert all(v["cached"] for v in third.values()), third
