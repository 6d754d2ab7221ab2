"""Where the pipeline's tasks run: Prefect's thread pool, or a Dask cluster.

A flow's task runner is fixed by its decorator, so the choice is applied at call time:
:func:`run_with_runner` runs a flow under the configured runner (the CLI does this), and
the sharded row-wise stages run their shard tasks in a subflow that uses the configured
runner (see :mod:`label_pipeline.shards`), which also works inside a deployment run.

The Dask runner needs the optional extra: ``pip install '.[dask]'``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from label_pipeline.errors import ConfigError


class RunnerConfig(BaseModel):
    """How tasks are executed.

    Attributes:
        kind: ``default`` runs tasks on Prefect's thread pool in the flow's process;
            ``dask`` runs them on a Dask cluster (a local one, or ``address``).
        address: scheduler of an existing Dask cluster, e.g. ``tcp://10.0.0.5:8786``;
            None starts a local cluster for the run and stops it afterwards.
        n_workers: workers of the local cluster (ignored with ``address``).
        threads_per_worker: threads per local worker (1 keeps model work from
            oversubscribing the cores; torch already uses several threads itself).
        processes: local workers as separate processes (True, real parallelism for
            Python code) or threads of the flow's process (False, cheaper to start).
        max_workers: thread pool size for ``default`` (None: Prefect's default).
        n_shards: how many row-range shards the row-wise stages split their input into
            (None: one per Dask worker, 1 with the default runner).
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["default", "dask"] = "default"
    address: str | None = None
    n_workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    processes: bool = True
    max_workers: int | None = Field(None, ge=1)
    n_shards: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _address_needs_dask(self) -> RunnerConfig:
        if self.address and self.kind != "dask":
            # a ValueError becomes a pydantic ValidationError naming the field
            raise ValueError(
                f"runner.address={self.address!r} is only used with runner.kind='dask'; "
                "set runner.kind: dask or remove runner.address"
            )
        return self

    def shard_count(self) -> int:
        """Shards for the row-wise stages: ``n_shards``, else one per Dask worker, else 1."""
        if self.n_shards is not None:
            return self.n_shards
        return self.n_workers if self.kind == "dask" else 1


def make_task_runner(cfg: RunnerConfig | None = None) -> Any:
    """A Prefect task runner for ``cfg``: ``ThreadPoolTaskRunner`` or ``DaskTaskRunner``."""
    cfg = cfg or RunnerConfig()
    if cfg.kind == "default":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=cfg.max_workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise ConfigError(
            "runner.kind='dask' needs prefect-dask and dask.distributed: "
            "pip install 'label-pipeline[dask]' (or set runner.kind: default)"
        ) from exc
    if cfg.address:
        return DaskTaskRunner(address=cfg.address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": cfg.n_workers,
            "threads_per_worker": cfg.threads_per_worker,
            "processes": cfg.processes,
            # the scheduler's HTTP server on a free loopback port: no clash between runs,
            # nothing exposed to the network
            "dashboard_address": "127.0.0.1:0",
        }
    )


def is_dask_runner(runner: Any) -> bool:
    """True when ``runner`` is a prefect-dask ``DaskTaskRunner``."""
    return type(runner).__name__ == "DaskTaskRunner"


def current_task_runner() -> Any | None:
    """The task runner of the flow run in progress, or None outside a flow run."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx.task_runner if ctx is not None else None


def run_with_runner(flow: Any, cfg: RunnerConfig | None = None, **parameters: Any) -> Any:
    """Call ``flow(**parameters)`` with the task runner chosen by ``cfg``."""
    return flow.with_options(task_runner=make_task_runner(cfg))(**parameters)
