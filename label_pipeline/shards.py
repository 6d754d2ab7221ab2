"""Row-wise work in shards: split rows by range, run each range as its own cached unit (a
Prefect task per shard inside a flow, on the configured runner: thread pool or Dask, see
:mod:`label_pipeline.runners`), then let the stage assemble.

:func:`shard_ranges` cuts ``n`` rows into contiguous ranges; :func:`map_shards` runs a
per-shard function ``fn(index, **kwargs)`` once per shard index as Prefect tasks. Each task's
cache key is (stage fingerprint, shard index, number of shards), so a re-run skips finished
shards, and ``done(index)`` skips shards a stage already wrote itself. The zero_shot stage
maps its scoring this way (``tasks.zero_shot.map_zero_shot_shards``). A per-shard function
must be importable (defined at module level) so that Dask workers in other processes can
run it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from label_pipeline.errors import ConfigError
from label_pipeline.runners import (
    RunnerConfig,
    current_task_runner,
    is_dask_runner,
    make_task_runner,
)
from label_pipeline.store import StageRef

if TYPE_CHECKING:
    pass

SHARD_SUFFIX = ".shards"


def shard_ranges(n_rows: int, n_shards: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` row ranges covering ``n_rows`` rows in ``n_shards`` parts
    whose sizes differ by at most one (fewer parts when there are fewer rows than shards)."""
    if n_shards < 1:
        raise ConfigError(f"runner.n_shards must be >= 1, got {n_shards}")
    n_rows = max(int(n_rows), 0)
    n_shards = max(1, min(n_shards, n_rows))
    size, extra = divmod(n_rows, n_shards)
    out, start = [], 0
    for i in range(n_shards):
        stop = start + size + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def shard_cache_key(stage: str, fingerprint: str, index: int, n_shards: int) -> str:
    """The Prefect cache key of one shard task."""
    return f"{stage}-{fingerprint}-shard-{index}-of-{n_shards}"


# ---------------------------------------------------------------- any per-shard function


def _run_indexed(fn: Callable[..., Any], index: int, kwargs: dict[str, Any]) -> Any:
    return fn(index, **kwargs)


def _shard_task(stage: str) -> Any:
    from prefect import task

    return task(name=f"{stage}-shard", persist_result=True)(_run_indexed)


def _submit_all(
    fn: Callable[..., Any],
    stage: str,
    fingerprint: str,
    n_shards: int,
    kwargs: dict[str, Any],
    done: Callable[[int], bool] | None,
) -> list[Any]:
    base = _shard_task(stage)
    futures = []
    for i in range(n_shards):
        key = shard_cache_key(stage, fingerprint, i, n_shards)
        # a shard whose output vanished from the store must run even if Prefect remembers it
        fresh = done is not None and not done(i)
        t = base.with_options(
            task_run_name=f"{stage}-shard-{i}-of-{n_shards}",
            cache_key_fn=lambda *_a, _k=key, **_kw: _k,
            refresh_cache=fresh,
        )
        futures.append(t.submit(fn, i, kwargs))
    out = []
    for f in futures:
        result = f.result()  # re-raises the shard's error
        if isinstance(result, StageRef) and f.state.name == "Cached":
            result = result.model_copy(update={"cached": True})
        out.append(result)
    return out


def _shards_flow(
    fn: Callable[..., Any],
    stage: str,
    fingerprint: str,
    n_shards: int,
    kwargs: dict[str, Any],
    done: Callable[[int], bool] | None,
) -> list[Any]:
    return _submit_all(fn, stage, fingerprint, n_shards, kwargs, done)


def map_shards(
    fn: Callable[..., Any],
    /,
    *,
    stage: str,
    fingerprint: str,
    n_shards: int,
    runner: RunnerConfig | None = None,
    done: Callable[[int], bool] | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Run ``fn(index, **kwargs)`` for every shard index and return the results in order.

    Inside a flow run each call is a Prefect task keyed on (``fingerprint``, index,
    ``n_shards``). With ``runner.kind == "dask"`` and a flow not already on Dask, the tasks
    run in a subflow ``<stage>-shards`` on a Dask task runner built from ``runner``.
    ``done(index)`` tells whether a shard's output still exists (a missing one is recomputed
    even when Prefect's cache remembers it). Outside a flow run it is a plain loop.
    """
    if n_shards < 1:
        raise ConfigError(f"{stage}: n_shards must be >= 1, got {n_shards}")
    current = current_task_runner()
    if current is None:
        return [fn(i, **kwargs) for i in range(n_shards)]
    if runner is None or runner.kind == "default" or is_dask_runner(current):
        return _submit_all(fn, stage, fingerprint, n_shards, kwargs, done)
    from prefect import flow

    sub = flow(name=f"{stage}-shards".replace("_", "-"), validate_parameters=False)(_shards_flow)
    sub = sub.with_options(task_runner=make_task_runner(runner))
    return sub(fn, stage, fingerprint, n_shards, kwargs, done)
