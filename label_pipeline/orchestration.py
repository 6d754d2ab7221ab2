"""Thin Prefect wrappers around plain stage functions.

A stage module exposes ``SPEC`` (its :class:`~label_pipeline.store.StageSpec`: name, code
version, what of its config and inputs enters its fingerprint), a pydantic config class and a
``run_<stage>(store, cfg, refresh=False, **inputs) -> StageRef`` function that reads its
inputs from disk and writes its outputs into the stage store under ``SPEC``. Its builder
also writes ``summary.md`` (markdown) and ``sample.json`` (a list of plain-JSON rows) into
the stage directory; :func:`stage_task` publishes them.

The Prefect cache key of a stage task is its store fingerprint (:func:`cache_key`, from the
same ``SPEC``), so an unchanged re-run is answered by Prefect's cache without running the
task at all; when the stage directory is missing (deleted store, refresh asked), the task
runs again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from label_pipeline.artifacts import publish_image, publish_stage
from label_pipeline.failures import quiet_user_error_tracebacks
from label_pipeline.store import StageRef, StageSpec, StageStore, fingerprint_of


def publish_stage_dir(ref: StageRef) -> None:
    """Publish the summary, sample table, figures and link a stage wrote into its directory."""
    d = ref.dir
    summary = (d / "summary.md").read_text() if (d / "summary.md").is_file() else ""
    sample = json.loads((d / "sample.json").read_text()) if (d / "sample.json").is_file() else None
    publish_stage(ref.stage, d, summary, sample, cached=ref.cached)
    for png in sorted((d / "figures").glob("*.png")) if (d / "figures").is_dir() else []:
        publish_image(ref.stage, png.stem, png, caption=png.stem.replace("_", " "))


def cache_key(spec: StageSpec, store: StageStore, cfg: Any, refs: Mapping[str, Any]) -> str:
    """The Prefect cache key of a stage task: its store fingerprint (``spec.fingerprint``, the
    one function that owns a stage's identity) and the store it lives in."""
    store_id = fingerprint_of("store", "1", str(store.root), {})[:8]
    return f"{spec.name}-{spec.fingerprint(cfg, refs)}-{store_id}"


def stage_task(
    run_fn: Callable[..., StageRef], spec: StageSpec, **task_options: Any
) -> Callable[..., StageRef]:
    """Wrap ``run_fn`` (which builds under ``spec``) as a Prefect task keyed on the stage
    fingerprint.

    Returns a callable ``(store_root, cfg, refresh=False, **refs) -> StageRef`` to be
    called inside a flow.
    """
    stage = spec.name
    from prefect import task

    def _body(store_root: str, cfg: Any, refresh: bool = False, **refs: Any) -> StageRef:
        quiet_user_error_tracebacks()  # also in a Dask worker process: the message, no traceback
        ref = run_fn(StageStore(store_root), cfg, refresh=refresh, **refs)
        publish_stage_dir(ref)
        return ref

    _body.__name__ = f"{stage}_task"
    base = task(name=stage, persist_result=True, **task_options)(_body)

    def call(store_root: str, cfg: Any, refresh: bool = False, **refs: Any) -> StageRef:
        store = StageStore(store_root)
        key = cache_key(spec, store, cfg, refs)
        fresh = refresh or not store.is_complete(stage, spec.fingerprint(cfg, refs))
        t = base.with_options(cache_key_fn=lambda *_a, **_k: key, refresh_cache=fresh)
        state = t(str(store.root), cfg, refresh=refresh, return_state=True, **refs)
        ref = state.result()  # re-raises the stage's error
        if state.name == "Cached":  # answered by Prefect's cache: no stage work at all
            ref = ref.model_copy(update={"cached": True})
        return ref

    call.task = base  # type: ignore[attr-defined]
    call.stage = stage  # type: ignore[attr-defined]
    call.spec = spec  # type: ignore[attr-defined]
    return call


def write_summary(
    directory: Path, markdown: str, sample: list[dict[str, Any]] | None = None
) -> None:
    """Helper for builders: write ``summary.md`` and ``sample.json``."""
    from label_pipeline.data import to_jsonable

    (Path(directory) / "summary.md").write_text(markdown)
    if sample is not None:
        (Path(directory) / "sample.json").write_text(json.dumps(to_jsonable(sample), indent=1))
