"""Bad inputs and configs through the command line: one paragraph on stderr, no traceback.

Each case runs ``python -m flows.label_pipeline --config <yaml>`` as a subprocess and checks
the exit status, that stderr holds no traceback, that it ends with the one paragraph of the
error, and what the paragraph names (file, line, column, row, parameter). The runs use the
session's Prefect API (``PREFECT_API_URL``) so that each costs the imports, not a server
start; one test runs a case with Prefect's temporary server, as a user's run does.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_runs import GOOD_CSV, ROOT, api_url, last_paragraph, run_cli, small_config

__all__ = ["api_url"]  # the fixture

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# (id, files to write {name: str | bytes}, config (dict, raw text or None), extra CLI args,
#  exit status, strings the final paragraph holds)
CASES: list[tuple[str, dict[str, str | bytes], Any, list[str], int, list[str]]] = [
    (
        "missing_column",
        {"in.csv": GOOD_CSV},
        {"ingest": {"path": "{tmp}/in.csv", "text_column": "body"}},
        [],
        2,
        ["input data error", "{tmp}/in.csv", "no column 'body'", "ingest.text_column"],
    ),
    (
        "nested_list_labels",
        {
            "in.jsonl": "".join(
                json.dumps(
                    {"text": f"text {i}", "labels": [["l0"]] if i == 3 else ["a", "b"][i % 2]}
                )
                + "\n"
                for i in range(8)
            )
        },
        {"ingest": {"path": "{tmp}/in.jsonl"}},
        [],
        2,
        ["{tmp}/in.jsonl", "row 4", "'row-3'", "column 'labels'", "[['l0']]", "flat list"],
    ),
    (
        "duplicate_columns",
        {
            "in.csv": "text,text,labels\n"
            + "".join(f"title {i},body {i},{'ab'[i % 2]}\n" for i in range(9))
        },
        {"ingest": {"path": "{tmp}/in.csv"}},
        [],
        2,
        ["{tmp}/in.csv", "line 1", "'text' (columns 1, 2)", "own name"],
    ),
    (
        "empty_file",
        {"in.csv": ""},
        {"ingest": {"path": "{tmp}/in.csv"}},
        [],
        2,
        ["{tmp}/in.csv", "empty (0 bytes)"],
    ),
    (
        "binary_file",
        {"in.jsonl": bytes(range(256)) * 4},
        {"ingest": {"path": "{tmp}/in.jsonl"}},
        [],
        2,
        ["{tmp}/in.jsonl", "not a text file", "binary data"],
    ),
    (
        "xlsx_named_csv",
        {"in.csv": b"PK\x03\x04\x14\x00\x06\x00" + bytes(200)},
        {"ingest": {"path": "{tmp}/in.csv"}},
        [],
        2,
        ["{tmp}/in.csv", "ZIP archive", "xlsx", "export the data as CSV"],
    ),
    (
        "bad_json_line",
        {"in.jsonl": '{"text": "a", "labels": "x"}\n{"text": "b", labels: y}\n'},
        {"ingest": {"path": "{tmp}/in.jsonl"}},
        [],
        2,
        ["{tmp}/in.jsonl", "line 2 is not valid JSON (column 15"],
    ),
    (
        "unknown_extension",
        {"in.txt": GOOD_CSV},
        {"ingest": {"path": "{tmp}/in.txt"}},
        [],
        2,
        ["configuration error", "{tmp}/in.txt", "'.txt'", "ingest.format"],
    ),
    (
        "missing_input_relative",  # run from the project root: one place looked at, named once
        {},
        {"ingest": {"path": "no-such-dir/missing.csv"}},
        [],
        2,
        [
            "ingest.path",
            "'no-such-dir/missing.csv' not found",
            "(looked at {root}/no-such-dir/missing.csv)",
        ],
    ),
    (
        "missing_model",  # fails in the zero_shot stage, after ingest, clean and split ran
        {"in.csv": GOOD_CSV + "".join(f"unlabelled text {i},\n" for i in range(6))},
        {
            "ingest": {"path": "{tmp}/in.csv"},
            "zero_shot": {"enabled": True, "backend": "nli", "nli_model": "{tmp}/no-model"},
        },
        [],
        2,
        [
            "model not found",
            "zero_shot.nli_model",
            "'{tmp}/no-model'",
            "{tmp}/no-model: not found",
            "save_pretrained",
        ],
    ),
    (
        "only_one_label",
        {"in.csv": "text,labels\nfirst text,a\nsecond text,a\n"},
        {"ingest": {"path": "{tmp}/in.csv"}},
        [],
        2,
        ["only one label ('a')", "column 'labels'"],
    ),
    (
        "yaml_syntax",
        {},
        "store: {tmp}/store\ningest:\n  path: [a.csv, b.csv\n  format: csv\n",
        [],
        2,
        ["configuration error", "{tmp}/config.yaml: line 4, column 9", "not valid YAML"],
    ),
    (
        "json_syntax",
        {"config.json": '{"ingest": {"path": "x.csv",}}'},
        None,
        ["--config", "{tmp}/config.json"],
        2,
        ["{tmp}/config.json: line 1, column 29", "not valid JSON"],
    ),
    (
        "missing_config_file",
        {},
        None,
        ["--config", "{tmp}/nope.yaml"],
        2,
        ["--config {tmp}/nope.yaml: no such file", "YAML or JSON"],
    ),
    (
        "invalid_value",
        {},
        {"ingest": {"path": "x.csv", "sample_rows": 1000}, "split": {"seed": "seven"}},
        [],
        2,
        [
            "{tmp}/config.yaml: invalid configuration",
            "ingest.sample_rows",
            "less than or equal to 100",
            "(got 1000)",
            "split.seed",
        ],
    ),
    (
        "unknown_setting",
        {},
        {"ingest": {"path": "x.csv", "text_colum": "body"}},
        [],
        2,
        ["ingest.text_colum: unknown setting (did you mean 'text_column'?", "allowed here:"],
    ),
    (
        "config_not_a_mapping",
        {},
        "- ingest\n- clean\n",
        [],
        2,
        ["{tmp}/config.yaml: the config is a list, not a mapping"],
    ),
    (
        "bad_runner_option",
        {},
        {"ingest": {"path": "x.csv"}},
        ["--n-workers", "0"],
        2,
        [
            "the command line",
            "runner.n_workers",
            "greater than or equal to 1",
            "(got 0)",
            "--n-workers",
        ],
    ),
]


def _prepare(tmp: Path, files: dict, config: Any, args: list[str]) -> list[str]:
    def fill(s: str) -> str:
        return s.replace("{tmp}", str(tmp)).replace("{root}", str(ROOT))

    for name, content in files.items():
        path = tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(fill(content))
    if isinstance(config, dict):
        base = small_config(tmp, None)
        for key, value in config.items():
            base[key] = {**base.get(key, {}), **value}
        text = fill(yaml.safe_dump(base))
        (tmp / "config.yaml").write_text(text)
    elif isinstance(config, str):
        (tmp / "config.yaml").write_text(fill(config))
    if config is not None:
        args = ["--config", str(tmp / "config.yaml"), *args]
    return [fill(a) for a in args]


@pytest.mark.parametrize("name,files,config,args,status,expected", CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_paragraph(
    tmp_path, api_url, name, files, config, args, status, expected
):
    argv = _prepare(tmp_path, files, config, args)
    started = time.time()
    res = run_cli(argv, cwd=ROOT, api_url=api_url)
    took = time.time() - started
    assert res.returncode == status, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    para = last_paragraph(res.stderr)
    for want in expected:
        want = want.replace("{tmp}", str(tmp_path)).replace("{root}", str(ROOT))
        assert want in para, f"{want!r} not in:\n{para}"
    assert "\n\n" not in para and para.endswith("--debug shows the traceback)"), para
    assert took < 120, took


def test_user_error_with_temporary_server_ends_with_the_paragraph(tmp_path):
    """A user's run (no API URL): the temporary server stops before the paragraph is
    printed, and no Prefect line follows it."""
    argv = _prepare(tmp_path, *CASES[0][1:3], [])
    res = run_cli(argv, cwd=tmp_path, api_url=None)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    para = last_paragraph(res.stderr)
    assert "no column 'body'" in para and "Stopping temporary server" not in para
    assert "Stopping temporary server" in res.stderr
    # Prefect's failure lines carry the message on one line each, without a traceback
    assert "Finished in state Failed" in res.stderr


def test_debug_shows_the_traceback(tmp_path, api_url):
    argv = _prepare(tmp_path, *CASES[0][1:3], ["--debug"])
    res = run_cli(argv, cwd=ROOT, api_url=api_url)
    assert res.returncode == 2
    assert "Traceback" in res.stderr
    assert "no column 'body'" in last_paragraph(res.stderr)


def test_label_emptied_by_cleaning_is_a_logged_warning(tmp_path, api_url):
    rows = GOOD_CSV + "ok,tiny\nno,tiny\n"  # 'tiny' only on texts below clean.min_chars
    argv = _prepare(
        tmp_path,
        {"in.csv": rows},
        {"ingest": {"path": "{tmp}/in.csv"}, "clean": {"min_chars": 3}},
        [],
    )
    res = run_cli(argv, cwd=ROOT, api_url=api_url)
    assert res.returncode == 0, res.stderr[-3000:]
    warning = [line for line in res.stderr.splitlines() if "WARNING" in line and "'tiny'" in line]
    assert warning, res.stderr[-3000:]
    assert "no rows left after cleaning" in warning[0] and "too_short 2" in warning[0]
