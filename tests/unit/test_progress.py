"""The time-left estimate of long stages: a run's cost depends on its method."""

from __future__ import annotations

import logging
import re

from label_pipeline.progress import Progress, eta_by_kind


def test_time_left_counts_each_unit_at_the_last_time_of_its_kind():
    # the train stage after one slice: prototype took 400 s, naive Bayes 1 s, finetune 60 s
    seconds = {"prototype": 400.0, "naive_bayes": 1.0, "finetune": 60.0}
    two_slices_left = ["naive_bayes", "finetune", "prototype"] * 2
    assert eta_by_kind(seconds, two_slices_left) == 2 * (1.0 + 60.0 + 400.0)
    # a kind not timed yet is taken at the mean of those that were
    assert eta_by_kind({"a": 10.0, "b": 30.0}, ["a", "c"]) == 10.0 + 20.0
    assert eta_by_kind({}, ["a"]) is None
    assert eta_by_kind(seconds, []) == 0.0


def test_progress_logs_the_callers_estimate_over_the_mean_per_unit(caplog):
    with caplog.at_level(logging.INFO, logger="label_pipeline.progress"):
        with Progress(4, "train", "training", unit="runs", log_every_s=0.0) as progress:
            progress.update(1)  # no estimate given: the units left at the mean so far
            progress.update(1, eta=1234.0)
    lines = [r.getMessage() for r in caplog.records if "training:" in r.getMessage()]
    assert len(lines) == 2
    first = re.search(r"about (\d+)s left", lines[0])
    assert lines[0].startswith("training: 1/4 runs (25%)") and first
    assert int(first.group(1)) < 60  # three runs left at the (near-zero) time of the first
    assert lines[1] == "training: 2/4 runs (50%), about 1234s left"
