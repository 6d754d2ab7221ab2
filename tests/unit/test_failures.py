"""How a run ends on a user error: the paragraph, the log filter, config validation."""

from __future__ import annotations

import logging

import pytest

from label_pipeline.errors import ConfigError, InputDataError
from label_pipeline.failures import (
    DEBUG_ENV,
    USER_ERROR_EXIT,
    UserErrorTracebackFilter,
    config_error,
    report_user_errors,
    user_message,
)


def _record(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        import sys

        return logging.LogRecord(
            "prefect.task_runs", logging.ERROR, "", 0, "failed", (), sys.exc_info()
        )


def test_user_error_ends_with_one_paragraph_and_exit_2(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    stopped = []
    with pytest.raises(SystemExit) as ended:
        with report_user_errors("prog", before_exit=lambda: stopped.append(1)):
            raise InputDataError("data.csv: row 3 is bad; fix row 3")
    assert ended.value.code == USER_ERROR_EXIT and stopped == [1]
    err = capsys.readouterr().err
    assert err.startswith("prog: input data error: data.csv: row 3 is bad; fix row 3\n")
    assert "Traceback" not in err and err.count("\n") == 2


def test_debug_prints_the_traceback_first(capsys, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(SystemExit):
        with report_user_errors("prog"):
            raise ConfigError("x: bad")
    err = capsys.readouterr().err
    assert err.index("Traceback") < err.index("prog: configuration error: x: bad")


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        with report_user_errors("prog"):
            1 / 0  # noqa: B018


def test_prefect_records_of_user_errors_are_dropped_unless_debugging(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    f = UserErrorTracebackFilter()
    assert not f.filter(_record(InputDataError("bad row")))
    assert f.filter(_record(KeyError("bug")))  # a bug's traceback stays
    monkeypatch.setenv(DEBUG_ENV, "1")
    assert f.filter(_record(InputDataError("bad row")))


def test_validation_error_names_each_field_path():
    from pydantic import ValidationError

    from flows.config import PipelineConfig

    with pytest.raises(ValidationError) as caught:
        PipelineConfig.model_validate(
            {"ingest": {"sample_rows": 1000, "text_colum": "x"}, "train": {"enabled": "maybe"}}
        )
    msg = str(config_error(caught.value, "my.yaml", PipelineConfig))
    assert msg.startswith("my.yaml: invalid configuration: ")
    assert "ingest.sample_rows: Input should be less than or equal to 100 (got 1000)" in msg
    assert "ingest.text_colum: unknown setting (did you mean 'text_column'?" in msg
    assert "train.enabled:" in msg and "(got 'maybe')" in msg


def test_message_is_one_paragraph():
    text = user_message(InputDataError("a\n\nb  \n"), "prog")
    assert text.split("\n")[:2] == ["prog: input data error: a", "b"] and "\n\n" not in text
