"""A row function applied to a dataset shard by shard, each shard a directory in the stage
store: the tests' exercise of :func:`label_pipeline.shards.map_shards` and of the store (local,
remote, Dask) with a stage-shaped job."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from label_pipeline.errors import ConfigError
from label_pipeline.progress import stage_logger
from label_pipeline.runners import (
    RunnerConfig,
)
from label_pipeline.store import StageRef, StageStore, fingerprint_of

if TYPE_CHECKING:
    import datasets

from label_pipeline.shards import SHARD_SUFFIX, map_shards, shard_ranges

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
