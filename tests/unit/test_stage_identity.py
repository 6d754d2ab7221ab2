"""One identity per stage: the Prefect cache key of every stage task carries exactly the
fingerprint its stage builds under (so Prefect's cache answers an unchanged re-run), and the
layers point one way (the library imports no stage or flow; no stage imports another)."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pytest

from label_pipeline.store import StageRef, StageStore

ROOT = Path(__file__).resolve().parents[2]


class _Built(Exception):
    """Raised by the patched store once a stage asks to build: carries its fingerprint."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint


def _stage_configs():
    """(task, the stage config the flow passes it) for every stage task of the flow, with the
    default pipeline config."""
    from flows import label_pipeline as flow
    from flows.config import PipelineConfig
    from tasks.review import ReviewDecision

    cfg = PipelineConfig()
    configs = {
        "ingest": cfg.ingest.for_rows(),
        "extra_labels": cfg.ingest,
        "review": ReviewDecision(after="label", decided_by="timeout"),
    }
    for name in ("clean", "split", "augment", "zero_shot", "adapt", "quality", "train"):
        configs[name] = flow.with_device(getattr(cfg, name), cfg.device)
    for name in ("evaluate", "label", "suggest"):
        configs[name] = flow.with_device(getattr(cfg, name), cfg.device)
    tasks = {
        name: getattr(flow, f"{name}_task") for name in configs if hasattr(flow, f"{name}_task")
    }
    assert set(tasks) == set(configs), "a stage task of the flow has no config in this test"
    return [(tasks[n], configs[n]) for n in configs]


@pytest.mark.parametrize("task_and_cfg", _stage_configs(), ids=lambda tc: tc[0].stage)
def test_prefect_cache_key_is_the_store_fingerprint(task_and_cfg, tmp_path, monkeypatch):
    from label_pipeline.orchestration import cache_key

    task, cfg = task_and_cfg
    splits_dir = tmp_path / "splits"
    splits_dir.mkdir()
    (splits_dir / "labels.json").write_text(
        json.dumps({"labels": ["anger", "joy", "sadness"], "multi_label": True})
    )
    # every input the flow can pass this stage, present (unread ones must not count)
    refs = {
        name: StageRef(stage=name, fingerprint=f"fp-{name}", path=str(splits_dir))
        for name in inspect.signature(_run_fn_of(task)).parameters
        if name not in {"store", "cfg", "refresh"}
    }

    def capture(self, stage, version, config, inputs, builder, refresh=False):
        from label_pipeline.store import fingerprint_of

        raise _Built(fingerprint_of(stage, version, config, inputs))

    monkeypatch.setattr(StageStore, "build", capture)
    store = StageStore(tmp_path / "store")
    with pytest.raises(_Built) as built:
        _run_fn_of(task)(store, cfg, **refs)
    key = cache_key(task.stage, task.spec.fingerprint(cfg, refs), store)
    assert key.split("-")[1] == built.value.fingerprint == task.spec.fingerprint(cfg, refs)


def _run_fn_of(task):
    from flows import label_pipeline as flow

    module = getattr(flow, task.stage)
    return getattr(module, f"run_{task.stage}")


def test_train_identity_leaves_out_inputs_it_does_not_read():
    from tasks.train import SPEC, TrainConfig

    splits = StageRef(stage="split", fingerprint="s", path="/nowhere")
    other = StageRef(stage="augment", fingerprint="a", path="/nowhere")
    cfg = TrainConfig(methods=["naive_bayes"], encoder="base")
    assert SPEC.fingerprint(cfg, {"splits": splits, "augmented": other}) == SPEC.fingerprint(
        cfg, {"splits": splits}
    )
    cfg = TrainConfig(methods=["naive_bayes", "naive_bayes+aug"], encoder="base")
    assert SPEC.fingerprint(cfg, {"splits": splits, "augmented": other}) != SPEC.fingerprint(
        cfg, {"splits": splits}
    )


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            if node.module in {"tasks", "flows"}:
                out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_the_library_imports_no_stage_and_no_flow():
    bad = {
        str(p.relative_to(ROOT)): sorted(
            m for m in _imports(p) if m.split(".")[0] in {"tasks", "flows"}
        )
        for p in (ROOT / "label_pipeline").rglob("*.py")
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_no_stage_imports_another_stage():
    bad = {
        p.name: sorted(m for m in _imports(p) if m.split(".")[0] == "tasks")
        for p in (ROOT / "tasks").glob("*.py")
    }
    assert {k: v for k, v in bad.items() if v} == {}
