"""Thin Prefect wrappers around plain stage functions.

A stage module exposes ``STAGE``, ``VERSION``, a pydantic config class and a
``run_<stage>(store, cfg, refresh=False, **inputs) -> StageRef`` function that
reads its inputs from disk and writes its outputs into the stage store. Its
builder also writes ``summary.md`` (markdown) and ``sample.json`` (a list of
plain-JSON rows) into the stage directory; :func:`stage_task` publishes them.

The Prefect cache key of a stage task is its store fingerprint, so an unchanged
re-run is answered by Prefect's cache without running the task at all; when the
stage directory is missing (deleted store, refresh asked), the task runs again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from label_pipeline.artifacts import publish_image, publish_stage
from label_pipeline.store import StageRef, StageStore, fingerprint_of

ExtraInputs = Callable[[Any], Mapping[str, Any]]


def stage_inputs(refs: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Inputs that enter a fingerprint: the given (non-None) upstream refs plus extra keys."""
    out = {k: v for k, v in refs.items() if v is not None}
    out.update(extra or {})
    return out


def publish_stage_dir(ref: StageRef) -> None:
    """Publish the summary, sample table, figures and link a stage wrote into its directory."""
    d = ref.dir
    summary = (d / "summary.md").read_text() if (d / "summary.md").is_file() else ""
    sample = json.loads((d / "sample.json").read_text()) if (d / "sample.json").is_file() else None
    publish_stage(ref.stage, d, summary, sample, cached=ref.cached)
    for png in sorted((d / "figures").glob("*.png")) if (d / "figures").is_dir() else []:
        publish_image(ref.stage, png.stem, png, caption=png.stem.replace("_", " "))


def stage_task(
    run_fn: Callable[..., StageRef],
    stage: str,
    version: str,
    extra_inputs: ExtraInputs | None = None,
    **task_options: Any,
) -> Callable[..., StageRef]:
    """Wrap ``run_fn`` as a Prefect task keyed on the stage fingerprint.

    Returns a callable ``(store_root, cfg, refresh=False, **refs) -> StageRef`` to be
    called inside a flow.
    """
    from prefect import task

    def _body(store_root: str, cfg: Any, refresh: bool = False, **refs: Any) -> StageRef:
        ref = run_fn(StageStore(store_root), cfg, refresh=refresh, **refs)
        publish_stage_dir(ref)
        return ref

    _body.__name__ = f"{stage}_task"
    base = task(name=stage, persist_result=True, **task_options)(_body)

    def call(store_root: str, cfg: Any, refresh: bool = False, **refs: Any) -> StageRef:
        store = StageStore(store_root)
        inputs = stage_inputs(refs, extra_inputs(cfg) if extra_inputs else None)
        fp = fingerprint_of(stage, version, cfg, inputs)
        key = f"{stage}-{fp}-{fingerprint_of('store', '1', str(store.root), {})[:8]}"
        fresh = refresh or not store.is_complete(stage, fp)
        t = base.with_options(cache_key_fn=lambda *_a, **_k: key, refresh_cache=fresh)
        state = t(str(store.root), cfg, refresh=refresh, return_state=True, **refs)
        ref = state.result()  # re-raises the stage's error
        if state.name == "Cached":  # answered by Prefect's cache: no stage work at all
            ref = ref.model_copy(update={"cached": True})
        return ref

    call.task = base  # type: ignore[attr-defined]
    call.stage = stage  # type: ignore[attr-defined]
    return call


def write_summary(
    directory: Path, markdown: str, sample: list[dict[str, Any]] | None = None
) -> None:
    """Helper for builders: write ``summary.md`` and ``sample.json``."""
    from label_pipeline.data import to_jsonable

    (Path(directory) / "summary.md").write_text(markdown)
    if sample is not None:
        (Path(directory) / "sample.json").write_text(json.dumps(to_jsonable(sample), indent=1))
