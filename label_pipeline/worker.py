"""A Prefect process worker that stops promptly on Ctrl-C (``make worker``, ``make worker-gpu``).

``prefect worker start`` (Prefect 3.8) answers the first Ctrl-C with "Sending SIGINT to the
process worker" and then keeps running, idle, for tens of seconds or more while its
connections wind down; only a second Ctrl-C (SIGKILL) ends it. This launcher runs the same
command as a child in a process group of its own and, on Ctrl-C or SIGTERM, passes SIGINT
on to it, waits ``--grace-s`` seconds (default 5) for Prefect's own shutdown, then kills the
worker's process group. A second Ctrl-C kills it at once. Runs the worker had started keep
their own process groups (Prefect isolates them) and report their end to the server.

    python -m label_pipeline.worker --pool label-pipeline-cpu
    python -m label_pipeline.worker --pool label-pipeline-gpu --work-queue gpu

Any other argument goes to ``prefect worker start`` unchanged.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path


def worker_command(pool: str, work_queue: str | None, extra: list[str]) -> list[str]:
    prefect = str(Path(sys.executable).with_name("prefect"))
    cmd = [prefect, "worker", "start", "--pool", pool, "--type", "process"]
    if work_queue:
        cmd += ["--work-queue", work_queue]
    return cmd + extra


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def run_worker(cmd: list[str], grace_s: float = 5.0) -> int:
    """Run ``cmd`` (a ``prefect worker start`` command) until it ends or is stopped; returns
    its exit code (0 when stopped by Ctrl-C or SIGTERM)."""
    proc = subprocess.Popen(cmd, start_new_session=True)
    stop: dict[str, float] = {}

    def on_signal(signum: int, _frame: object) -> None:
        if "at" not in stop:
            stop["at"] = time.monotonic()
            print(
                f"\nlabel-pipeline: stopping the worker (killed after {grace_s:g} s; "
                "Ctrl-C again to kill it now)",
                file=sys.stderr,
                flush=True,
            )
            _signal_group(proc, signal.SIGINT)
        else:
            _signal_group(proc, signal.SIGKILL)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if "at" in stop and time.monotonic() - stop["at"] > grace_s:
                    _signal_group(proc, signal.SIGKILL)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if "at" in stop:
        print(
            f"label-pipeline: worker stopped after {time.monotonic() - stop['at']:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        return 0
    return rc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m label_pipeline.worker", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--pool", required=True, help="the work pool to serve")
    parser.add_argument("--work-queue", default=None, help="only this queue of the pool")
    parser.add_argument(
        "--grace-s",
        type=float,
        default=float(os.environ.get("LABEL_PIPELINE_WORKER_GRACE_S", "5")),
        help="seconds Prefect's own shutdown gets after Ctrl-C (default 5)",
    )
    args, extra = parser.parse_known_args(argv)
    return run_worker(worker_command(args.pool, args.work_queue, extra), args.grace_s)


if __name__ == "__main__":
    raise SystemExit(main())
