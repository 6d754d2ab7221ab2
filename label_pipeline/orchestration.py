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
runs again. A cached stage publishes its artifacts again (from the flow run), its summary
headed as a cache hit naming the run that built it, so every run's page shows every stage.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from label_pipeline.artifacts import in_prefect_run, publish_image, publish_stage, publish_table
from label_pipeline.failures import quiet_user_error_tracebacks
from label_pipeline.stage_views import confidence_rows, label_counts
from label_pipeline.store import StageRef, StageSpec, StageStore, fingerprint_of

log = logging.getLogger(__name__)


def publish_stage_dir(ref: StageRef) -> None:
    """Publish what a stage wrote into its directory: the summary (a cache hit names the run
    that built it), the sample table, the rows per label and split, the most and least
    confident rows per label (a stage with ``prob_<label>`` columns), the figures, and the
    directory as text. Never fails the stage: the UI is a view."""
    d = ref.dir
    try:
        manifest = ref.manifest() if (d / "manifest.json").is_file() else {}
    except (OSError, ValueError):
        manifest = {}
    manifest = {**manifest, "store": ref.store or str(d.parent.parent)}
    summary = (d / "summary.md").read_text() if (d / "summary.md").is_file() else ""
    sample = json.loads((d / "sample.json").read_text()) if (d / "sample.json").is_file() else None
    publish_stage(ref.stage, d, summary, sample, cached=ref.cached, manifest=manifest)
    try:
        counts = label_counts(d)
        if counts:
            publish_table(ref.stage, "counts", counts, description=f"{ref.stage}: rows per label")
        confident = confidence_rows(d)
        if confident:
            publish_table(
                ref.stage,
                "confidence",
                confident,
                description=f"{ref.stage}: most and least confident rows per label",
            )
    except Exception as exc:  # never fail a stage over its view
        log.warning("%s: no counts or confidence table: %s", ref.stage, exc)
    for png in sorted((d / "figures").glob("*.png")) if (d / "figures").is_dir() else []:
        publish_image(ref.stage, png.stem, png, caption=png.stem.replace("_", " "))


def cache_key(stage: str, fingerprint: str, store: StageStore) -> str:
    """The Prefect cache key of a stage task: its store fingerprint (``SPEC.fingerprint``, the
    one function that owns a stage's identity) and the store it lives in."""
    store_id = fingerprint_of("store", "1", str(store.root), {})[:8]
    return f"{stage}-{fingerprint}-{store_id}"


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
        fp = spec.fingerprint(cfg, refs)  # once: ingest's hashes the input files
        key = cache_key(stage, fp, store)
        fresh = refresh or not store.is_complete(stage, fp)
        t = base.with_options(cache_key_fn=lambda *_a, **_k: key, refresh_cache=fresh)
        state = t(str(store.root), cfg, refresh=refresh, return_state=True, **refs)
        ref = state.result()  # re-raises the stage's error
        if state.name == "Cached":  # answered by Prefect's cache: no stage work at all
            ref = ref.model_copy(update={"cached": True})
            # the task body did not run, so publish here: every run shows every stage
            if in_prefect_run():
                publish_stage_dir(store.localize(ref))
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
