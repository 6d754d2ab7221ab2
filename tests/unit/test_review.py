"""Applying a reviewer's answer (tasks.review) without a Prefect server."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.review import (
    ReviewConfig,
    Reviewed,
    ReviewInputError,
    apply_review,
    decision_from_input,
    describe_for_review,
)

LABELS = ["a", "b", "c"]


def _reviewed(multi_label: bool, rule: dict) -> Reviewed:
    rng = np.random.default_rng(0)
    scores = rng.random((12, 3))
    vscores, vy = rng.random((9, 3)), np.eye(3, dtype=np.int64)[rng.integers(0, 3, 9)]
    auto = (scores >= 0.5).astype(np.int64)
    return Reviewed(
        "zero_shot",
        LABELS,
        multi_label,
        rule,
        [f"u{i}" for i in range(12)],
        [f"text {i}" for i in range(12)],
        scores,
        auto,
        vscores,
        vy,
        (vscores >= 0.5).astype(np.int64),
    )


def test_threshold_top_k_and_rejected_rows():
    scores = np.array([[0.9, 0.8, 0.1], [0.3, 0.2, 0.1], [0.6, 0.7, 0.75]])
    auto = np.array([[1, 0, 0], [0, 0, 0], [0, 0, 1]])
    assert (apply_review(scores, auto, True, None, None) == auto).all()
    assert apply_review(scores, auto, True, 0.65, None).tolist() == [
        [1, 1, 0],
        [0, 0, 0],
        [0, 1, 1],
    ]
    assert apply_review(scores, auto, True, 0.65, 1).tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert apply_review(scores, auto, True, None, 2).tolist() == [[1, 1, 0], [1, 1, 0], [0, 1, 1]]
    reject = np.array([True, False, False])
    assert apply_review(scores, auto, True, 0.65, None, reject)[0].sum() == 0
    # single-label: the top label when its score reaches the threshold
    assert apply_review(scores, auto, False, 0.7, None).tolist() == [
        [1, 0, 0],
        [0, 0, 0],
        [0, 0, 1],
    ]


def test_answer_left_at_the_automatic_values_means_the_automatic_rule():
    data = _reviewed(True, {"rule": "threshold", "value": 0.5, "valid_metrics": {}})
    assert data.initial() == {"threshold": 0.5}
    same = decision_from_input({"accept": True, "threshold": 0.5, "reject_ids": []}, data)
    assert same.threshold is None and same.top_k is None
    assert same.automatic == {"rule": "threshold", "value": 0.5}
    changed = decision_from_input({"threshold": 0.7, "reject_ids": [" u3 ", "u1", "u3"]}, data)
    assert changed.threshold == 0.7 and changed.reject_ids == ["u1", "u3"]
    assert changed.describe() == "threshold 0.7, 2 row(s) rejected (decided by reviewer)"
    text = describe_for_review(data, ReviewConfig(show_rows=3))
    assert "threshold 0.50" in text and "precision" in text and "u" in text


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"threshold": 1.5}, "threshold=1.5 is outside 0-1"),
        ({"top_k": 9}, "top_k=9 must be between 1 and 3"),
        ({"reject_ids": ["nope"]}, r"reject_ids \['nope'\] are not pool rows"),
    ],
)
def test_bad_answers_name_the_field(answer, message):
    data = _reviewed(True, {"rule": "top_k", "value": 1})
    with pytest.raises(ReviewInputError, match=message):
        decision_from_input(answer, data)


def test_top_k_is_refused_on_single_label_data():
    data = _reviewed(False, {"rule": "argmax", "value": 0.0})
    with pytest.raises(ReviewInputError, match="single-label"):
        decision_from_input({"top_k": 2}, data)
