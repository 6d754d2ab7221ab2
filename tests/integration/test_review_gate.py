"""The review gate on a real Prefect API (loopback): the run pauses after zero_shot, is
resumed through the API with the reviewer's input, and applies and records it; a timeout
ends as configured."""

from __future__ import annotations

import contextvars
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from review_fixtures import LABELS, WORDS, tiny_csv

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    from label_pipeline.testing import make_tiny_bert

    corpus = [" ".join(WORDS.values()), *LABELS]
    return make_tiny_bert(tmp_path_factory.mktemp("enc"), "base", corpus=corpus)


def review_config(root: Path, encoder: Path, **review):
    from flows.config import PipelineConfig

    cfg = {
        "store": str(root / "store"),
        "reports_dir": str(root / "reports"),
        "ingest": {"path": str(tiny_csv(root / "tiny.csv"))},
        "split": {"slice_sizes": [8]},
        "zero_shot": {"backend": "embedding", "embedding_model": str(encoder)},
        "train": {"methods": ["naive_bayes"], "use_pseudo": True, "pseudo_min_confidence": 0.0},
        "suggest": {"enabled": False},
        "review": {"after": "zero_shot", "poll_interval_s": 1, **review},
    }
    for stage in ("augment", "adapt", "quality", "report"):
        cfg[stage] = {"enabled": False}
    return PipelineConfig.model_validate(cfg)


def start_in_thread(cfg) -> tuple[threading.Thread, dict]:
    """Run the flow in a thread that sees this test's Prefect API settings."""
    from flows.label_pipeline import label_pipeline

    out: dict = {}

    def body() -> None:
        try:
            out["result"] = label_pipeline(config=cfg)
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    ctx = contextvars.copy_context()
    thread = threading.Thread(target=ctx.run, args=(body,), daemon=True)
    thread.start()
    return thread, out


def wait_until_paused(out: dict, timeout_s: float = 240):
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    deadline = time.time() + timeout_s
    with get_client(sync_client=True) as client:
        while time.time() < deadline:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                )
            )
            if runs:
                return runs[0]
            if "error" in out or "result" in out:
                raise AssertionError(f"the flow ended without pausing: {out}")
            time.sleep(0.5)
    raise AssertionError("the flow run did not pause")


def form_description(flow_run) -> str:
    from prefect import get_client
    from prefect.input.run_input import keyset_from_paused_state

    keyset = keyset_from_paused_state(flow_run.state)
    with get_client(sync_client=True) as client:
        return json.loads(client.read_flow_run_input(flow_run.id, keyset["description"]))


def test_paused_run_resumes_with_the_reviewers_threshold(tmp_path, prefect_server, encoder):
    import datasets
    from prefect.flow_runs import resume_flow_run

    cfg = review_config(tmp_path, encoder, timeout_s=300)
    thread, out = start_in_thread(cfg)
    run = wait_until_paused(out)
    text = form_description(run)
    assert "Rule chosen on the validation split" in text and "precision" in text
    assert "### If you set a threshold" in text

    (zs_dir,) = [p for p in (tmp_path / "store" / "zero_shot").iterdir() if p.is_dir()]
    pool = datasets.load_from_disk(str(zs_dir / "unlabeled"))
    conf = np.asarray(pool["confidence"], dtype=float)
    threshold = round(float(np.median(conf)), 4)
    rejected = str(pool["id"][int(np.argmax(conf))])
    resume_flow_run(
        run.id,
        run_input={
            "accept": True,
            "threshold": threshold,
            "reject_ids": [rejected],
            "comment": "t",
        },
    )
    thread.join(300)
    assert "error" not in out, out.get("error")
    result = out["result"]

    review = json.loads(Path(result["review"]["path"], "manifest.json").read_text())
    assert review["config"]["threshold"] == threshold
    assert review["config"]["decided_by"] == "reviewer"
    assert review["config"]["reject_ids"] == [rejected]
    reviewed = datasets.load_from_disk(str(Path(result["review"]["path"]) / "unlabeled"))
    expected = {str(i) for i, c in zip(pool["id"], conf, strict=True) if c >= threshold - 1e-9} - {
        rejected
    }
    assert {str(i) for i, lab in zip(reviewed["id"], reviewed["labels"], strict=True) if lab} == (
        expected
    )
    train = json.loads(Path(result["train"]["path"], "manifest.json").read_text())
    assert train["inputs"]["pseudo"]["fingerprint"] == result["review"]["fingerprint"]
    runs = json.loads(Path(result["train"]["path"], "runs.json").read_text())
    fits = [
        json.loads(Path(result["train"]["path"], r["dir"], "fit.json").read_text()) for r in runs
    ]
    assert {f["pseudo_rows"] for f in fits} == {len(expected)}

    # a timeout that continues keeps the automatic choice: a different decision, so the
    # review and training stages are recomputed while everything before them is cached
    again = review_config(tmp_path, encoder, timeout_s=2, on_timeout="continue")
    thread, out2 = start_in_thread(again)
    thread.join(300)
    assert "error" not in out2, out2.get("error")
    second = out2["result"]
    assert second["zero_shot"]["cached"] and second["split"]["cached"]
    assert not second["review"]["cached"] and not second["train"]["cached"]
    decision = json.loads(Path(second["review"]["path"], "review.json").read_text())
    assert decision["decided_by"] == "timeout" and decision["threshold"] is None
    assert decision["rows_changed"] == 0
    assert "automatic choice was kept" in Path(second["review"]["path"], "summary.md").read_text()


def test_timeout_fails_the_run_when_configured(tmp_path, prefect_server, encoder):
    from tasks.review import ReviewTimeoutError

    cfg = review_config(tmp_path, encoder, timeout_s=2, on_timeout="fail")
    thread, out = start_in_thread(cfg)
    thread.join(300)
    assert isinstance(out.get("error"), ReviewTimeoutError), out
    assert "review.timeout_s=2s" in str(out["error"])
    assert not (tmp_path / "store" / "review").exists()
    assert not (tmp_path / "store" / "train").exists()
