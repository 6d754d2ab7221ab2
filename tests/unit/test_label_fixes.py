"""Correcting labelled rows: ingest.label_fixes (new labels, or DROP) read by the extra_labels
stage and applied by the split stage after the draw, so every row keeps its split; the
quality stage's own label_issues.csv read back as it is."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_extra_labels import LABELS, N_LABELLED, _config, _extra, _tiny_csv

from label_pipeline.errors import InputDataError


def _input_labels(truth):
    ids = list(truth)
    return ids, [[truth[i]] if n < N_LABELLED else [] for n, i in enumerate(ids)]


def _read(tmp_path, rows, name="fixes.csv", **kwargs):
    from tasks.extra_labels import IngestConfig, read_label_fixes

    data, truth = _tiny_csv(tmp_path / "tiny.csv")
    ids, labels = _input_labels(truth)
    fixes = [_extra(tmp_path / f"{k}-{name}", r) for k, r in enumerate(rows)]
    cfg = IngestConfig(path=str(data), label_fixes=fixes if len(fixes) > 1 else fixes[0])
    return read_label_fixes(cfg, ids, labels, LABELS, False, **kwargs)


def test_label_fixes_relabel_drop_and_skip(tmp_path):
    # row-n is labelled LABELS[n % 3]: row-0 bug, row-1 feature, row-3 bug, row-4 feature
    cols, facts = _read(
        tmp_path,
        [
            [
                ["row-0", "feature"],
                ["row-1", "DROP"],
                ["row-2", ""],
                ["row-3", "bug"],
                ["row-4", " drop "],
            ]
        ],
    )
    assert cols == {
        "id": ["row-0", "row-1", "row-4"],
        "action": ["relabel", "drop", "drop"],
        "labels": [["feature"], [], []],
        "given": [["bug"], ["feature"], ["feature"]],
        "source": ["fixed-1"] * 3,
    }
    assert facts["relabelled"] == 1 and facts["dropped"] == 2
    assert facts["skipped_empty"] == 1 and facts["unchanged"] == 1
    assert facts["per_source"] == {"fixed-1": 3}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [["row-0", "feature"], ["row-999", "bug"]],
            r"label_fixes: \S*fixes\.csv line 3: id 'row-999' \(column 'id'\) is not a row",
        ),
        (
            [["row-80", "bug"]],
            r"fixes\.csv line 2: id 'row-80' \(column 'id'\) carries no label in ingest\.path; "
            r"label pool rows through ingest\.extra_labels instead",
        ),
        (
            [["row-0", "bugg"]],
            r"fixes\.csv line 2: column 'labels' holds \['bugg'\], not a label of the input "
            r"\(bug, feature, question\).*write DROP to remove the row",
        ),
        (
            [["row-0", "feature;question"]],
            r"fixes\.csv line 2: id 'row-0' gets 2 labels .* \(column 'labels'\) but the data "
            r"is single-label",
        ),
        (
            [["row-0", "feature"], ["row-5", ""], ["row-0", "DROP"]],
            r"fixes\.csv line 4: id 'row-0' \(column 'id'\) was already fixed in \S*fixes\.csv "
            r"line 2",
        ),
        ([["", "bug"]], r"fixes\.csv line 2: column 'id' is empty"),
    ],
)
def test_label_fix_errors_name_file_line_and_column(tmp_path, rows, message):
    with pytest.raises(InputDataError, match=message):
        _read(tmp_path, [rows])


def test_the_same_id_fixed_in_two_files_names_both(tmp_path):
    with pytest.raises(
        InputDataError,
        match=r"1-fixes\.csv line 3: id 'row-6' \(column 'id'\) was already fixed in "
        r"\S*0-fixes\.csv line 2; keep one fix per id",
    ):
        _read(tmp_path, [[["row-6", "feature"]], [["row-7", "bug"], ["row-6", "question"]]])


def test_error_lines_count_the_lines_of_multi_line_cells(tmp_path):
    """label_issues.csv quotes texts with line breaks: a record starts further down."""
    from tasks.extra_labels import IngestConfig, read_label_fixes

    data, truth = _tiny_csv(tmp_path / "tiny.csv")
    ids, labels = _input_labels(truth)
    path = _extra(
        tmp_path / "issues.csv",
        [["row-0", "title\n\nbody line\nmore", "feature"], ["row-9", "one line", "nope"]],
        header=("id", "text", "labels"),
    )
    cfg = IngestConfig(path=str(data), label_fixes=path)
    with pytest.raises(
        InputDataError, match=r"issues\.csv line 6: column 'labels' holds \['nope'\]"
    ):
        read_label_fixes(cfg, ids, labels, LABELS, False)


def _stages(tmp_path, **ingest):
    """ingest -> clean -> (extra_labels) -> split in one store; returns the split's ref."""
    from label_pipeline.store import StageStore
    from tasks.clean import CleanConfig, run_clean
    from tasks.extra_labels import run_extra_labels
    from tasks.ingest import IngestConfig, run_ingest
    from tasks.split import SplitConfig, run_split

    store = StageStore(tmp_path / "store")
    cfg = IngestConfig(path=str(tmp_path / "tiny.csv"), **ingest)
    rows = run_ingest(store, cfg)
    clean = run_clean(store, CleanConfig(), rows)
    extra = run_extra_labels(store, cfg, rows) if cfg.has_label_feedback() else None
    return store, run_split(store, SplitConfig(slice_sizes=[8, 16]), clean, extra=extra), extra


def test_extra_labelled_row_is_fixed_where_it_was_labelled(tmp_path):
    _tiny_csv(tmp_path / "tiny.csv")
    extra = _extra(tmp_path / "round-1.csv", [["row-75", "bug"], ["row-80", "bug"]])
    fixes = _extra(tmp_path / "fixes.csv", [["row-0", "feature"], ["row-80", "question"]])
    with pytest.raises(
        InputDataError,
        match=r"fixes\.csv line 3: id 'row-80' \(column 'id'\) carries no label in ingest\.path; "
        r"it was labelled through ingest\.extra_labels \(\S*round-1\.csv line 3\): correct the "
        r"label there",
    ):
        _stages(tmp_path, extra_labels=extra, label_fixes=fixes)


def _class_counts(train_ref):
    from label_pipeline.methods.baselines import NaiveBayes

    model = NaiveBayes.load(train_ref.dir / "runs/naive_bayes/all/model")
    return dict(zip(LABELS, model.clf_.single_.class_count_, strict=True))


def test_fixed_rows_keep_their_split_and_dropped_rows_leave_everything(tmp_path):
    from label_pipeline.data import load_slices, load_splits
    from tasks.train import TrainConfig, run_train

    data, truth = _tiny_csv(tmp_path / "tiny.csv")
    store, before_ref, _ = _stages(tmp_path)
    before, slices_before = load_splits(before_ref.dir), load_slices(before_ref.dir)
    small = slices_before["8"]
    relabel_train, drop_train = small[0], small[1]
    relabel_valid, drop_test = before["valid"]["id"][0], before["test"]["id"][0]
    other = {lab: next(x for x in LABELS if x != lab) for lab in LABELS}
    fixes = _extra(
        tmp_path / "fixes.csv",
        [
            [relabel_train, other[truth[relabel_train]]],
            [drop_train, "DROP"],
            [relabel_valid, other[truth[relabel_valid]]],
            [drop_test, "Drop"],
            [before["train"]["id"][5], ""],
        ],
    )
    _, after_ref, extra = _stages(tmp_path, label_fixes=fixes)
    after, slices_after = load_splits(after_ref.dir), load_slices(after_ref.dir)

    dropped = {drop_train, drop_test}
    for part in ("train", "valid", "test", "unlabeled"):  # same rows, less the dropped ones
        assert after[part]["id"] == [i for i in before[part]["id"] if i not in dropped]
    for name, ids in slices_before.items():
        assert slices_after[name] == [i for i in ids if i not in dropped]
    train = {r["id"]: r for r in after["train"]}
    assert train[relabel_train]["labels"] == [other[truth[relabel_train]]]
    assert train[relabel_train]["source"] == "fixed-1" and train[relabel_train]["min_slice"] == 8
    assert {r["source"] for i, r in train.items() if i != relabel_train} == {"input"}
    valid = dict(zip(after["valid"]["id"], after["valid"]["labels"], strict=True))
    assert valid[relabel_valid] == [other[truth[relabel_valid]]]
    untouched = set(before["valid"]["id"]) - {relabel_valid}
    assert all(valid[i] == [truth[i]] for i in untouched)

    facts = after_ref.manifest()
    assert facts["label_fixes"] == {
        "relabelled": {"train": 1, "valid": 1},
        "dropped": {"train": 1, "test": 1},
    }
    assert facts["rows_out"] == facts["rows_in"] - 2 == before_ref.manifest()["rows_out"] - 2
    summary = (after_ref.dir / "summary.md").read_text()
    assert "Label fixes (ingest.label_fixes) per split" in summary
    assert "2 row(s) relabelled (train 1, valid 1), 2 dropped (train 1, test 1)" in summary
    assert json.loads((extra.dir / "manifest.json").read_text())  # a complete stage
    assert "**2** row(s) relabelled, **2** dropped" in (extra.dir / "summary.md").read_text()
    from tasks.report import _facts

    assert any(line.startswith("- label fixes per split: ") for line in _facts("split", after_ref))
    assert not any("label fixes" in line for line in _facts("split", before_ref))

    # the model learns the relabelled row with its new label and never sees the dropped one
    train_cfg = TrainConfig(methods=["naive_bayes"], slices=["all"])
    counts = {
        k: _class_counts(run_train(store, train_cfg, ref))
        for k, ref in (("before", before_ref), ("after", after_ref))
    }
    expected = dict(counts["before"])
    expected[truth[relabel_train]] -= 1
    expected[other[truth[relabel_train]]] += 1
    expected[truth[drop_train]] -= 1
    assert counts["after"] == expected


def _plant(path, row_id, label):
    """The tiny input with ``row_id`` labelled ``label`` (a wrong label)."""
    n = int(row_id.split("-")[1])
    lines = path.read_text().splitlines()
    text, _ = lines[n + 1].rsplit(",", 1)
    lines[n + 1] = f"{text},{label}"
    path.write_text("\n".join(lines) + "\n")


def test_quality_label_issues_fed_back_as_label_fixes(tmp_path, prefect_server):
    from flows.label_pipeline import label_pipeline
    from label_pipeline.data import load_splits

    data, truth = _tiny_csv(tmp_path / "tiny.csv")
    planted = "row-4"  # a "feature" row
    _plant(data, planted, "question")

    def config(**ingest):
        cfg = _config(tmp_path, data, **ingest)
        quality = {"enabled": True, "method": "naive_bayes", "splits": ["train", "valid", "test"]}
        return cfg.model_copy(update={"quality": cfg.quality.model_copy(update=quality)})

    first = label_pipeline(config=config())
    issues_csv = f"{first['quality']['path']}/label_issues.csv"
    with open(issues_csv, newline="") as fh:
        issues = list(csv.DictReader(fh))
    columns = list(issues[0])
    flagged = {r["id"]: r for r in issues}
    assert planted in flagged and flagged[planted]["suggested_labels"] == "feature"
    # the person writes the right label into the file's own labels column and keeps the rest
    flagged[planted]["labels"] = truth[planted]
    fixes = tmp_path / "label_issues.csv"
    with open(fixes, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(issues)

    second = label_pipeline(config=config(label_fixes=str(fixes)))
    assert {k for k, v in second.items() if v["cached"]} == {"ingest", "clean"}, second
    assert {"extra_labels", "split", "quality", "train", "evaluate"} <= set(second)
    before, after = load_splits(first["split"]["path"]), load_splits(second["split"]["path"])
    for part in ("train", "valid", "test", "unlabeled"):
        assert after[part]["id"] == before[part]["id"]
    part = next(p for p in ("train", "valid", "test") if planted in before[p]["id"])
    row = after[part][after[part]["id"].index(planted)]
    assert row["labels"] == [truth[planted]]
    assert second["split"]["path"] != first["split"]["path"]

    # only the fix file changes (a DROP added): extra_labels, split and what follows re-run
    test_row = before["test"]["id"][3]
    with open(fixes, "a", newline="") as fh:
        csv.writer(fh).writerow([{"id": test_row, "labels": "drop"}.get(c, "") for c in columns])
    third = label_pipeline(config=config(label_fixes=str(fixes)))
    assert {k for k, v in third.items() if v["cached"]} == {"ingest", "clean"}, third
    assert third["extra_labels"]["path"] != second["extra_labels"]["path"]
    final = load_splits(third["split"]["path"])
    assert test_row not in {i for p in final.values() for i in p["id"]}
    assert final["test"]["id"] == [i for i in before["test"]["id"] if i != test_row]
    split_facts = json.loads((Path(third["split"]["path"]) / "manifest.json").read_text())
    assert split_facts["label_fixes"]["dropped"] == {"test": 1}


def test_a_label_named_drop_is_given_as_a_list(tmp_path):
    from tasks.extra_labels import IngestConfig, read_label_fixes

    path = _extra(tmp_path / "fixes.csv", [["a", '["drop"]'], ["b", "Drop"]])
    cfg = IngestConfig(path=path, label_fixes=path)
    cols, _ = read_label_fixes(cfg, ["a", "b"], [["keep"], ["keep"]], ["drop", "keep"], False)
    assert cols["action"] == ["relabel", "drop"] and cols["labels"] == [["drop"], []]


@pytest.mark.parametrize(
    ("suffix", "place"), [("jsonl", "line 3"), ("tsv", "line 3"), ("parquet", "row 2")]
)
def test_label_fixes_in_other_formats_name_the_place(tmp_path, suffix, place):
    import pandas as pd

    from tasks.extra_labels import IngestConfig, read_label_fixes

    data, truth = _tiny_csv(tmp_path / "tiny.csv")
    ids, labels = _input_labels(truth)
    rows = [{"id": "row-0", "labels": "feature", "score": 0.1}, {"id": "row-1", "labels": "nope"}]
    path = tmp_path / f"fixes.{suffix}"
    if suffix == "jsonl":  # a blank line between the records
        path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    elif suffix == "tsv":
        path.write_text("id\tlabels\tscore\nrow-0\tfeature\t0.1\nrow-1\tnope\t\n")
    else:
        pd.DataFrame(rows).to_parquet(path)
    cfg = IngestConfig(path=str(data), label_fixes=str(path))
    with pytest.raises(
        InputDataError, match=rf"fixes\.{suffix} {place}: column 'labels' holds \['nope'\]"
    ):
        read_label_fixes(cfg, ids, labels, LABELS, False)
    good = path.with_name(f"good.{suffix}")
    if suffix == "parquet":
        pd.DataFrame(rows[:1]).to_parquet(good)
    else:
        good.write_text(path.read_text().replace("nope", "DROP"))
    cols, _ = read_label_fixes(
        cfg.model_copy(update={"label_fixes": str(good)}), ids, labels, LABELS, False
    )
    assert cols["id"] == (["row-0"] if suffix == "parquet" else ["row-0", "row-1"])
