"""How a run ends on an error the user can fix: one paragraph on stderr, no traceback.

An error the user caused (bad input data, an invalid config, a missing file or model) is a
:class:`~label_pipeline.errors.LabelPipelineError`. The command-line entry points end such a
run with :func:`report_user_errors`: one paragraph on stderr (what is wrong, where, how to
fix it) and exit status 2. Prefect logs every failed task and flow run with its traceback;
:func:`quiet_user_error_tracebacks` drops those records for a user error (Prefect's
"Finished in state Failed(...)" lines, in the console and the UI, show the message on one
line). ``--debug`` or the
environment variable ``LABEL_PIPELINE_DEBUG=1`` keeps every traceback. Any other exception
is a bug and keeps its traceback.

:func:`config_error` turns a pydantic ``ValidationError`` of a config into a
:class:`~label_pipeline.errors.ConfigError` naming each field by its dotted path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from label_pipeline.errors import (
    ConfigError,
    EmptyPoolError,
    InputDataError,
    LabelPipelineError,
    ModelNotFoundError,
    ResourceMissingError,
    TrainingDivergedError,
)

DEBUG_ENV = "LABEL_PIPELINE_DEBUG"
#: exit status of a run ended by a user error (1 stays for crashes, 2 is also argparse's)
USER_ERROR_EXIT = 2
#: the loggers Prefect reports failed task and flow runs on
_PREFECT_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs", "prefect.engine")
_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (InputDataError, "input data error"),
    (ConfigError, "configuration error"),
    (ModelNotFoundError, "model not found"),
    (ResourceMissingError, "missing resource"),
    (EmptyPoolError, "no rows to work on"),
    (TrainingDivergedError, "training diverged"),
    (LabelPipelineError, "error"),
)


def debug_enabled() -> bool:
    """Tracebacks of user errors are wanted (``LABEL_PIPELINE_DEBUG`` set, not 0/false)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in {"", "0", "false", "no", "off"}


def is_user_error(exc: BaseException | None) -> bool:
    return isinstance(exc, LabelPipelineError)


def user_message(exc: BaseException, prog: str = "label-pipeline") -> str:
    """The paragraph that ends a run on a user error (no trailing newline)."""
    kind = next(k for cls, k in _KINDS if isinstance(exc, cls))
    # a message's own line breaks (a list of places tried) stay; blank lines would end the
    # paragraph
    text = "\n".join(line.rstrip() for line in str(exc).splitlines() if line.strip())
    text = text or type(exc).__name__
    return f"{prog}: {kind}: {text}\n({DEBUG_ENV}=1 or --debug shows the traceback)"


class UserErrorTracebackFilter(logging.Filter):
    """Drop Prefect's traceback records of a user error ("Task run failed with exception",
    "Encountered exception during execution"), unless debugging: the run's "Finished in
    state Failed(...)" lines that follow already carry the message, on one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        return not (exc is not None and is_user_error(exc) and not debug_enabled())


_FILTER = UserErrorTracebackFilter()


def quiet_user_error_tracebacks() -> None:
    """Install :class:`UserErrorTracebackFilter` on Prefect's run loggers (idempotent)."""
    for name in _PREFECT_RUN_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


@contextlib.contextmanager
def report_user_errors(
    prog: str = "label-pipeline", before_exit: Callable[[], Any] | None = None
) -> Iterator[None]:
    """End the program on a user error with one paragraph on stderr and exit status 2
    (with the traceback first when debugging); Ctrl-C ends it with status 130 and one line.
    Other exceptions pass through with their traceback. ``before_exit`` runs first (e.g. to
    stop the temporary Prefect server, so that the paragraph is the last thing printed)."""
    quiet_user_error_tracebacks()
    try:
        yield
    except LabelPipelineError as exc:
        if before_exit is not None:
            with contextlib.suppress(Exception):
                before_exit()
        if debug_enabled():
            traceback.print_exc()
        print(user_message(exc, prog), file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT) from None
    except KeyboardInterrupt:
        if before_exit is not None:
            with contextlib.suppress(Exception):
                before_exit()
        if debug_enabled():
            traceback.print_exc()
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


# ---------------------------------------------------------------- config validation


def _field_names(model: Any, loc: tuple[Any, ...]) -> list[str] | None:
    """The field names of the model that holds ``loc[-1]`` (None when not a model)."""
    from pydantic import BaseModel

    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if fields is None or not isinstance(part, str) or part not in fields:
            return None
        annotation = fields[part].annotation
        current = next(
            (
                a
                for a in (annotation, *getattr(annotation, "__args__", ()))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields is not None else None


def config_error(
    exc: Any, source: str, model: Any = None, prefix: tuple[str, ...] = (), fix: str = ""
) -> ConfigError:
    """A :class:`ConfigError` for a pydantic ``ValidationError``: every problem named by the
    field's dotted path (``ingest.sample_rows``; ``prefix`` is put before the paths of a
    section validated on its own), what is wrong and the value given; an unknown key gets
    the closest known one and the keys its section takes. ``source`` names where the config
    came from (the file); ``fix`` replaces the closing "fix the value(s) in <source>"."""
    import difflib

    problems = []
    errors = exc.errors(include_url=False)
    for err in errors[:8]:
        loc = tuple(err.get("loc") or ())
        where = ".".join(str(p) for p in (*prefix, *loc)) or "(top level)"
        if err.get("type") == "extra_forbidden":
            names = _field_names(model, loc) if model is not None else None
            close = difflib.get_close_matches(str(loc[-1]), names or [], n=1) if loc else []
            known = f"did you mean {close[0]!r}? " if close else ""
            known += f"allowed here: {', '.join(names)}" if names else ""
            problems.append(f"{where}: unknown setting" + (f" ({known.strip()})" if known else ""))
            continue
        value = err.get("input")
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        problems.append(f"{where}: {err.get('msg', 'invalid')} (got {shown})")
    more = f"; and {len(errors) - 8} more" if len(errors) > 8 else ""
    fix = fix or f"fix the value(s) in {source} (docs/config.md lists every setting)"
    return ConfigError(f"{source}: invalid configuration: {'; '.join(problems)}{more}; {fix}")
