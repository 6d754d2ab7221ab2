"""Row-wise stages in shards: split a dataset by row ranges, process each range as its own
cached unit (a Prefect task per shard inside a flow, a plain loop outside), then assemble.

Two layers:

- :func:`map_shards` runs any per-shard function ``fn(index, **kwargs)`` once per shard
  index as Prefect tasks on the configured runner (thread pool or Dask, see
  :mod:`label_pipeline.runners`). Each task's cache key is (stage fingerprint, shard index,
  number of shards), so a re-run skips finished shards. Stages that already write their
  own shard directories (``tasks.zero_shot.score_shard``) plug in here.
- :class:`ShardJob` + :func:`run_shards` / :func:`map_shard_job` + :func:`assemble_shards`
  is the whole recipe for a stage that applies a row function to a dataset: every shard
  is a directory in the stage store (``<store>/<stage>.shards/<fingerprint>/``, built
  atomically by :meth:`StageStore.build`), and the stage's builder concatenates them in
  order. A flow can compute the shards ahead of the stage task with :func:`map_shard_job`
  (in parallel, on Dask); the builder's :func:`run_shards` then finds them all cached.

A row function takes a ``datasets.Dataset`` (one shard's rows) and keyword arguments and
returns a ``Dataset``, a column mapping or a pandas DataFrame. It must be importable
(defined at module level) so that Dask workers in other processes can run it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from label_pipeline.errors import ConfigError
from label_pipeline.progress import stage_logger
from label_pipeline.runners import (
    RunnerConfig,
    current_task_runner,
    is_dask_runner,
    make_task_runner,
)
from label_pipeline.store import StageRef, StageStore, fingerprint_of

if TYPE_CHECKING:
    import datasets

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


# ---------------------------------------------------------------- row functions over a dataset


class ShardJob(BaseModel):
    """One row function applied to one dataset, shard by shard.

    Attributes:
        stage: the stage the shards belong to (shards live in ``<stage>.shards/``).
        version: the stage's code version.
        fingerprint: the stage fingerprint (what the assembled output is built under).
        source: the stage directory holding the input dataset.
        dataset: dataset directory inside ``source`` (``rows``, ``splits``...).
        split: split of a DatasetDict (``unlabeled``...), None for a plain Dataset.
        fn: the row function as ``"module:function"``.
        kwargs: keyword arguments for the row function (plain values).
        n_shards: number of row-range shards.
    """

    model_config = ConfigDict(extra="forbid")

    stage: str
    version: str
    fingerprint: str
    source: StageRef
    dataset: str = "rows"
    split: str | None = None
    fn: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    n_shards: int = Field(1, ge=1)

    @property
    def shard_stage(self) -> str:
        return self.stage + SHARD_SUFFIX

    def shard_config(self, index: int) -> dict[str, Any]:
        # the row function's arguments are covered by the stage fingerprint already;
        # a shard is (stage fingerprint, index, shard count)
        return {"stage": self.fingerprint, "shard": index, "n_shards": self.n_shards}

    def shard_fingerprint(self, index: int) -> str:
        return fingerprint_of(self.shard_stage, self.version, self.shard_config(index), {})

    def row_function(self) -> Callable[..., Any]:
        module, _, name = self.fn.partition(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"{self.stage}: row function {self.fn!r} cannot be imported ({exc}); give it as "
                "'package.module:function' of a module-level function"
            ) from exc


def function_path(fn: Callable[..., Any]) -> str:
    """``"module:function"`` for a module-level function (what :class:`ShardJob` stores)."""
    if "<locals>" in fn.__qualname__ or fn.__module__ == "__main__":
        raise ConfigError(
            f"row function {fn.__qualname__} must be defined at module level in an importable "
            "module, so that workers in other processes can load it"
        )
    return f"{fn.__module__}:{fn.__qualname__}"


def load_source(job: ShardJob, store: StageStore | None = None) -> datasets.Dataset:
    """The job's whole input dataset (from the local copy of its source stage)."""
    import datasets

    source = job.source
    if source.store is not None:  # a remote store: use (or fetch) this machine's copy
        source = (store or StageStore(source.store)).localize(source)
    obj = datasets.load_from_disk(str(source.dir / job.dataset))
    if isinstance(obj, datasets.DatasetDict):
        if job.split is None or job.split not in obj:
            raise ConfigError(
                f"{job.stage}: {source.dir / job.dataset} holds splits {sorted(obj)}; "
                f"the shard job's split must name one of them (got {job.split!r})"
            )
        return obj[job.split]
    return obj


def _as_dataset(out: Any, job: ShardJob, index: int) -> datasets.Dataset:
    import datasets

    if isinstance(out, datasets.Dataset):
        return out
    if isinstance(out, Mapping):
        return datasets.Dataset.from_dict(dict(out))
    try:
        import pandas as pd

        if isinstance(out, pd.DataFrame):
            return datasets.Dataset.from_pandas(out, preserve_index=False)
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    raise TypeError(
        f"{job.stage}: row function {job.fn} returned {type(out).__name__} for shard {index}; "
        "return a datasets.Dataset, a dict of columns or a pandas DataFrame"
    )


def run_shard(store_root: str, job: ShardJob, index: int) -> StageRef:
    """Build (or find) shard ``index`` of ``job``: its rows through the row function, saved
    as ``rows/`` in ``<store>/<stage>.shards/<shard fingerprint>/``."""
    import time

    store = StageStore(store_root)
    ranges = None

    def build(ctx: Any) -> dict[str, Any]:
        nonlocal ranges
        rows = load_source(job, store)
        ranges = shard_ranges(len(rows), job.n_shards)
        if index >= len(ranges):  # more shards than rows: this one is empty
            part = rows.select([])
            start = stop = len(rows)
        else:
            start, stop = ranges[index]
            part = rows.select(range(start, stop))
        started = time.time()
        out = _as_dataset(job.row_function()(part, **job.kwargs), job, index)
        out.save_to_disk(str(ctx.dir / "rows"))
        return {
            "shard": index,
            "n_shards": job.n_shards,
            "row_range": [start, stop],
            "rows_in": len(part),
            "rows_out": len(out),
            "fn": job.fn,
            "fn_seconds": round(time.time() - started, 3),
        }

    return store.build(job.shard_stage, job.version, job.shard_config(index), {}, build)


def _run_shard_at(index: int, store_root: str, job: ShardJob) -> StageRef:
    return run_shard(store_root, job, index)


def run_shards(store: StageStore, job: ShardJob) -> list[StageRef]:
    """Every shard of ``job`` in order, built in this process where not already complete."""
    return [run_shard(str(store.url or store.root), job, i) for i in range(job.n_shards)]


def map_shard_job(
    store: StageStore, job: ShardJob, runner: RunnerConfig | None = None
) -> list[StageRef]:
    """Every shard of ``job`` as Prefect tasks (on Dask when ``runner`` says so); see
    :func:`map_shards`. Skipped entirely when the stage itself is already complete."""
    if store.is_complete(job.stage, job.fingerprint):
        return []
    refs = map_shards(
        _run_shard_at,
        stage=job.stage,
        fingerprint=job.fingerprint,
        n_shards=job.n_shards,
        runner=runner,
        done=lambda i: store.is_complete(job.shard_stage, job.shard_fingerprint(i)),
        store_root=str(store.url or store.root),
        job=job,
    )
    stage_logger().info(
        "%s: %d shards ready (%d from cache)", job.stage, len(refs), sum(r.cached for r in refs)
    )
    return refs


def assemble_shards(refs: Sequence[StageRef], store: StageStore | None = None) -> datasets.Dataset:
    """Concatenate the shards' ``rows/`` datasets in shard order."""
    import datasets

    parts = []
    for ref in refs:
        local = store.localize(ref) if store is not None else ref
        parts.append(datasets.load_from_disk(str(local.dir / "rows")))
    nonempty = [p for p in parts if len(p)] or parts[:1]
    if not nonempty:
        raise ConfigError("assemble_shards needs at least one shard")
    return datasets.concatenate_datasets(nonempty) if len(nonempty) > 1 else nonempty[0]


def apply_sharded(store: StageStore, job: ShardJob) -> datasets.Dataset:
    """What a stage builder calls: all shards (built or cached) assembled in order."""
    return assemble_shards(run_shards(store, job), store)


def remove_shards(store: StageStore, job: ShardJob) -> int:
    """Delete the job's shard directories from the local store (after the stage is built);
    returns how many were removed."""
    import shutil

    removed = 0
    for i in range(job.n_shards):
        d = store.path(job.shard_stage, job.shard_fingerprint(i))
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
    return removed


# ---------------------------------------------------------------- ready-made row functions


def text_features(rows: datasets.Dataset, lowercase: bool = True) -> dict[str, list[Any]]:
    """Deterministic per-row text features: ``id``, normalised ``text``, ``n_chars``,
    ``n_words``. Cheap and exact, so sharded and unsharded runs can be compared bit for bit."""
    texts = [" ".join(t.split()) for t in rows["text"]]
    if lowercase:
        texts = [t.lower() for t in texts]
    return {
        "id": [str(i) for i in rows["id"]],
        "text": texts,
        "n_chars": [len(t) for t in texts],
        "n_words": [len(t.split()) for t in texts],
    }


def embedding_scores(
    rows: datasets.Dataset,
    labels: Iterable[str],
    model: str = "sentence-transformers/all-MiniLM-L6-v2",
    multi_label: bool = True,
    batch_size: int | None = None,
    device: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Zero-shot scores of every row against every label with the embedding backend:
    ``id`` and ``score_<label>`` in [0, 1] (see ``label_pipeline.zeroshot.embedding``)."""
    import numpy as np

    labels = list(labels)
    backend = _embedding_backend(model, batch_size, tuple(sorted((device or {}).items())))
    res = backend.score(rows["text"], labels, labels, multi_label)
    out: dict[str, Any] = {"id": [str(i) for i in rows["id"]]}
    scores = np.asarray(res.scores, dtype=np.float32)
    for j, name in enumerate(labels):
        out[f"score_{name}"] = scores[:, j]
    return out


_BACKENDS: dict[tuple[Any, ...], Any] = {}


def _embedding_backend(model: str, batch_size: int | None, device_items: tuple[Any, ...]) -> Any:
    # one model per process: every shard a worker runs reuses it
    key = (model, batch_size, device_items)
    if key not in _BACKENDS:
        from label_pipeline.devices import DeviceConfig, choose_device
        from label_pipeline.models import resolve_model
        from label_pipeline.zeroshot import get_backend

        choice = choose_device(DeviceConfig(**dict(device_items)))
        path = resolve_model(model)
        _BACKENDS[key] = get_backend("embedding")(
            path, choice, batch_size=batch_size or choice.batch_size
        )
    return _BACKENDS[key]


# ---------------------------------------------------------------- stage adapters


def call_with_index(index: int, target: Callable[..., Any], index_arg: str, **kwargs: Any) -> Any:
    """``target(**{index_arg: index}, **kwargs)``: maps a function whose shard index is a
    named argument (``tasks.zero_shot.score_shard(..., shard_index=...)``) with
    :func:`map_shards`."""
    return target(**{index_arg: index}, **kwargs)


def map_zero_shot_shards(
    store_root: str,
    cfg: Any,
    splits: StageRef,
    runner: RunnerConfig | None = None,
    encoder: StageRef | None = None,
) -> int:
    """Score the zero_shot stage's shards as mapped tasks (on Dask when ``runner`` says so)
    ahead of its stage task, which then finds every shard done and only assembles.
    Returns the number of shards scored or found; 0 when the stage is already complete."""
    from tasks import zero_shot

    store = StageStore(store_root)
    fp = zero_shot.stage_fingerprint(cfg, splits, encoder)
    if store.is_complete(zero_shot.STAGE, fp):
        return 0
    splits = store.localize(splits)
    plan = zero_shot.plan_shards(splits.dir, cfg.shard_size)
    shards_dir = zero_shot.shards_dir_for(store, fp)
    map_shards(
        call_with_index,
        stage=zero_shot.STAGE,
        fingerprint=fp,
        n_shards=len(plan),
        runner=runner,
        done=lambda i: (shards_dir / plan[i].name / zero_shot.SHARD_DONE).is_file(),
        target=zero_shot.score_shard,
        index_arg="shard_index",
        cfg=cfg,
        splits_dir=str(splits.dir),
        shards_dir=str(shards_dir),
        encoder_dir=str(encoder.dir) if encoder is not None else None,
    )
    return len(plan)
