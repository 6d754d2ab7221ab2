"""The label-pipeline flow through Prefect: caching, partial recompute, no network."""

from __future__ import annotations

import ipaddress
import random
import socket

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LABELS = ["bug", "feature", "question"]
WORDS = {
    "bug": "crash error broken fails exception traceback wrong",
    "feature": "add support request would like option new",
    "question": "how why what help wondering possible explain",
}


def _tiny_csv(path, n_labelled=72, n_unlabeled=40, seed=0):
    rng = random.Random(seed)
    lines = ["text,labels"]
    for i in range(n_labelled + n_unlabeled):
        lab = LABELS[i % 3]
        words = rng.sample(WORDS[lab].split(), 4) + [f"w{rng.randint(0, 10_000)}" for _ in range(4)]
        labels = lab if i < n_labelled else ""
        lines.append(f"{' '.join(words)} item {i},{labels}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(tmp_path, **split):
    from flows.config import PipelineConfig

    data = _tiny_csv(tmp_path / "tiny.csv")
    cfg = {
        "store": str(tmp_path / "store"),
        "reports_dir": str(tmp_path / "reports"),
        "ingest": {"path": str(data)},
        "split": {"slice_sizes": [8, 16], **split},
    }
    for stage in ("augment", "zero_shot", "adapt", "quality", "train", "report"):
        cfg[stage] = {"enabled": False}
    return PipelineConfig.model_validate(cfg)


@pytest.fixture
def no_network(monkeypatch):
    """Refuse every outbound connection that is not to a loopback address."""
    real_connect = socket.socket.connect
    attempts = []

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and self.family in (socket.AF_INET, socket.AF_INET6):
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                ip = ipaddress.ip_address(socket.gethostbyname(host))
            if not ip.is_loopback:
                attempts.append(host)
                raise ConnectionRefusedError(f"network blocked in test: {host}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    return attempts


def test_flow_caches_and_recomputes_only_downstream(tmp_path, prefect_server, no_network):
    from flows.label_pipeline import label_pipeline

    cfg = _config(tmp_path)
    first = label_pipeline(config=cfg)
    assert set(first) == {"ingest", "clean", "split"}
    assert not any(ref["cached"] for ref in first.values())

    second = label_pipeline(config=cfg)
    assert all(ref["cached"] for ref in second.values()), second
    assert {k: v["path"] for k, v in first.items()} == {k: v["path"] for k, v in second.items()}

    changed = label_pipeline(config=_config(tmp_path, seed=7))
    assert changed["ingest"]["cached"] and changed["clean"]["cached"]
    assert not changed["split"]["cached"]
    assert changed["split"]["path"] != first["split"]["path"]

    forced = label_pipeline(config=cfg.model_copy(update={"refresh": ["clean"]}))
    assert forced["ingest"]["cached"] and not forced["clean"]["cached"]
    assert forced["clean"]["path"] == first["clean"]["path"]
    assert no_network == []


def test_flow_publishes_stage_artifacts(tmp_path, prefect_server):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.label_pipeline import label_pipeline

    (tmp_path / "a").mkdir()
    label_pipeline(config=_config(tmp_path / "a"))

    async def keys():
        async with get_client() as client:
            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="-"))
            )
            return {a.key for a in arts}

    found = asyncio.run(keys())
    for stage in ("ingest", "clean", "split"):
        assert {f"{stage}-summary", f"{stage}-sample", f"{stage}-dir"} <= found, found


def test_label_bench_learning_curve_over_every_slice(tmp_path, prefect_server):
    import json
    from pathlib import Path

    from flows.label_bench import label_bench

    cfg = _config(tmp_path).model_copy(deep=True)
    cfg.train.enabled = True
    cfg.train.methods = ["naive_bayes", "tfidf_nb"]
    cfg.report.enabled = True
    out = label_bench(config=cfg, variants=[])
    curves = json.loads((Path(out["evaluate"]["path"]) / "learning_curves.json").read_text())
    for method in ("naive_bayes", "tfidf_nb"):
        curve = curves["methods"][method]
        assert curve["slice"] == ["8", "16", "all"] and curve["size"][:2] == [8, 16]
        assert all(0.0 <= f <= 1.0 for f in curve["micro_f1"] + curve["macro_f1"])
    report = Path(out["report"]) / "report.md"
    assert report.is_file() and "naive_bayes" in report.read_text()
    # a model chosen on valid at every slice, shown as its own curve and in the report
    assert [c["slice"] for c in out["chosen_per_slice"]] == ["8", "16", "all"]
    assert {c["method"] for c in out["chosen_per_slice"]} <= {"naive_bayes", "tfidf_nb", "average"}
    assert "Chosen per slice" in report.read_text() and "Why: chose" in report.read_text()
    metrics = json.loads((Path(out["report"]) / "metrics.json").read_text())
    assert metrics["run"] == Path(out["report"]).name


def test_fully_labelled_input_runs_end_to_end_without_a_pool(
    tmp_path, prefect_server, tiny_mlm_dir
):
    """Every row labelled: no unlabeled pool. The adapt stage (on by default) is skipped with
    a warning that says why, and train, evaluate, label and suggest still run."""
    import logging

    from flows.config import PipelineConfig
    from flows.label_pipeline import label_pipeline

    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    data = _tiny_csv(tmp_path / "labelled.csv", n_labelled=90, n_unlabeled=0)
    cfg = PipelineConfig.model_validate(
        {
            "store": str(tmp_path / "store"),
            "reports_dir": str(tmp_path / "reports"),
            "ingest": {"path": str(data)},
            "split": {"slice_sizes": [8]},
            "augment": {"enabled": False},
            "zero_shot": {"enabled": False},
            "quality": {"enabled": False},
            "adapt": {"model": str(tiny_mlm_dir), "max_steps": 2},
            "train": {"methods": ["naive_bayes"], "slices": ["all"]},
        }
    )
    flow_logger = logging.getLogger("prefect.flow_runs")  # the flow's run logger
    handler = Collect(logging.WARNING)
    flow_logger.addHandler(handler)
    try:
        out = label_pipeline(config=cfg)
    finally:
        flow_logger.removeHandler(handler)
    assert "adapt" not in out
    assert {"split", "train", "evaluate", "label", "suggest"} <= set(out)
    assert any("adapt: skipped, every row of the input is labelled" in m for m in seen), seen
    assert (tmp_path / "reports").is_dir()
