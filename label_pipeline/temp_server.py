"""A temporary Prefect API server that never outlives the process that started it.

Without ``PREFECT_API_URL``, Prefect starts a temporary API server (a uvicorn subprocess,
``prefect.server.api.server.SubprocessASGIServer``) on the first client call and stops it
at interpreter exit (``atexit``). A run killed with SIGKILL (or SIGTERM, which skips
``atexit``) left that server running, adopted by PID 1.

:func:`guard_temporary_server` registers, before Prefect creates its own, a
:class:`GuardedASGIServer` as the instance Prefect's client asks for. It starts the same
uvicorn command through a small bootstrap that runs a watchdog thread inside the server
process: as soon as the server's parent is no longer the process that started it, the
server stops itself (SIGTERM to itself, uvicorn's graceful shutdown; a hard exit 5 s
later). The parent is polled every 0.5 s, so nothing depends on which thread started the
server (``PR_SET_PDEATHSIG`` fires when the starting *thread* ends).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Any

#: the bootstrap the server process runs: argv[1] = the pid of its parent, the rest are
#: uvicorn's arguments
_BOOTSTRAP = r"""
import os, runpy, signal, sys, threading, time
parent = int(sys.argv[1])
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    os._exit(1)
threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()
sys.argv = ["uvicorn", *sys.argv[2:]]
runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)
"""


def _server_class() -> type:
    from prefect.server.api.server import SubprocessASGIServer

    class GuardedASGIServer(SubprocessASGIServer):
        """Prefect's temporary server, stopped when the process that started it is gone."""

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            import prefect
            from prefect.settings import get_current_settings

            server_env = {
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
            }
            return subprocess.Popen(
                args=[
                    sys.executable,
                    "-c",
                    _BOOTSTRAP,
                    str(os.getpid()),
                    "--app-dir",
                    str(prefect.__module_path__.parent),
                    "--factory",
                    "prefect.server.api.server:create_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "error",
                    "--lifespan",
                    "on",
                ],
                env={
                    **os.environ,
                    **server_env,
                    **get_current_settings().to_environment_variables(exclude_unset=True),
                },
            )

    return GuardedASGIServer


def guard_temporary_server() -> Any:
    """Make the temporary server Prefect starts (when no ``PREFECT_API_URL`` is set) one
    that stops when this process ends, however it ends. Returns the server object (not yet
    started; Prefect starts it on its first API call), or None when an API URL is set or
    Prefect already holds a temporary server."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    existing = SubprocessASGIServer._instances.get(None)
    if existing is not None:
        return existing if type(existing).__name__ == "GuardedASGIServer" else None
    return _server_class()()  # registers itself as the instance for port None


def stop_temporary_server() -> None:
    """Stop the temporary server now (when one runs), e.g. before the last message of a
    failed run, so that Prefect's "Stopping temporary server" line comes before it."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer._instances.get(None)
    if server is None or getattr(server, "server_process", None) is None:
        return
    # first send the run's logs and events still queued (Prefect does this at exit, before
    # its own atexit stop of the server; with the server gone they would be retried)
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            service.drain_all(timeout=5)
    with contextlib.suppress(Exception):
        server.stop()
