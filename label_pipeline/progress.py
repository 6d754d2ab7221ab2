"""Progress for long stages: a terminal bar, a Prefect progress artifact and an ETA."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from types import TracebackType

from tqdm.auto import tqdm

from label_pipeline.artifacts import artifact_key, in_prefect_run

log = logging.getLogger("label_pipeline.progress")

#: set by :func:`quiet_progress_bars`: no terminal bars (the progress artifact and the ETA
#: log lines stay)
_BARS_OFF = False


def quiet_progress_bars(force: bool = False) -> bool:
    """Turn off the terminal progress bars (ours and those of ``datasets``, ``transformers``
    and ``huggingface_hub``, e.g. one "Saving the dataset" bar per shard) when stderr is not
    a terminal, as in a Prefect worker, whose log would fill with them. Returns whether they
    are off. The progress artifact and the ETA log lines are unaffected."""
    global _BARS_OFF
    import sys

    if not force and sys.stderr is not None and sys.stderr.isatty():
        return False
    _BARS_OFF = True
    import contextlib

    with contextlib.suppress(Exception):
        import datasets

        datasets.disable_progress_bars()
    with contextlib.suppress(Exception):
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return True


class Progress:
    """Count work done towards ``total`` units.

    Use as a context manager; call ``update(n)`` as work completes. In a Prefect run
    it keeps a progress artifact (key ``<stage>-progress``) up to date and logs the
    estimated time remaining at most every ``log_every_s`` seconds.
    """

    def __init__(
        self, total: int, stage: str, desc: str = "", unit: str = "rows", log_every_s: float = 15.0
    ):
        self.total = max(int(total), 0)
        self.stage = stage
        self.desc = desc or stage
        self.unit = unit
        self.log_every_s = log_every_s
        self.done = 0
        self._bar: tqdm | None = None
        self._artifact_id = None
        self._started = 0.0
        self._last_log = 0.0

    def __enter__(self) -> Progress:
        self._started = self._last_log = time.time()
        self._bar = tqdm(
            total=self.total,
            desc=self.desc,
            unit=self.unit,
            leave=False,
            mininterval=1.0,
            disable=_BARS_OFF,
        )
        if in_prefect_run():
            try:
                from prefect.artifacts import create_progress_artifact

                self._artifact_id = create_progress_artifact(
                    progress=0.0, key=artifact_key(self.stage, "progress"), description=self.desc
                )
            except Exception as exc:
                log.debug("no progress artifact: %s", exc)
        return self

    def eta_seconds(self) -> float | None:
        """Seconds left if every unit left takes as long as the units done so far did."""
        if self.done <= 0:
            return None
        elapsed = time.time() - self._started
        return elapsed / self.done * (self.total - self.done)

    def update(self, n: int = 1, eta: float | None = None) -> None:
        """Count ``n`` more units done. ``eta``: the caller's own estimate of the seconds left,
        for work whose units differ in cost (see :func:`eta_by_kind`); by default every unit
        left is taken to cost the mean of those done."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            if eta is not None and self.done < self.total:
                self._bar.set_postfix_str(f"about {eta:.0f}s left", refresh=False)
        now = time.time()
        if now - self._last_log >= self.log_every_s or self.done >= self.total:
            self._last_log = now
            eta = self.eta_seconds() if eta is None else eta
            pct = 100.0 * self.done / self.total if self.total else 100.0
            msg = f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f}%)"
            if eta is not None and self.done < self.total:
                msg += f", about {eta:.0f}s left"
            _run_logger().info(msg)
            if self._artifact_id is not None:
                try:
                    from prefect.artifacts import update_progress_artifact

                    update_progress_artifact(artifact_id=self._artifact_id, progress=pct)
                except Exception as exc:
                    log.debug("progress artifact update failed: %s", exc)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()
        if exc_type is None and self._artifact_id is not None:
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(artifact_id=self._artifact_id, progress=100.0)
            except Exception:
                pass


def eta_by_kind(seconds: Mapping[str, float], remaining: Sequence[str]) -> float | None:
    """Seconds left for the units of work ``remaining`` (each named by its kind, e.g. the method
    a training run fits) when units of one kind cost about the same and kinds differ widely:
    each unit is taken to cost what the last unit of its kind took (``seconds``); a kind not
    yet timed, the mean of the kinds that were. None before anything is timed."""
    if not seconds:
        return None
    mean = sum(seconds.values()) / len(seconds)
    return float(sum(seconds.get(kind, mean) for kind in remaining))


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    if in_prefect_run():
        try:
            from prefect import get_run_logger

            return get_run_logger()
        except Exception:
            pass
    return log


def stage_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a run, the module logger outside."""
    return _run_logger()
