"""Input files that cannot be read say what they are and where the problem is."""

from __future__ import annotations

import json

import pytest

from label_pipeline.errors import InputDataError
from label_pipeline.reading import (
    IngestConfig,
    LabelCellError,
    describe_binary,
    parse_labels,
    read_frame,
    resolve_path,
)
from tasks.ingest import ingest_rows


def _read(path, fmt):
    return read_frame(path, fmt, IngestConfig(path=str(path)), [])


@pytest.mark.parametrize(
    "head,what",
    [
        (b"PK\x03\x04rest", "ZIP archive"),
        (b"PAR1\x00\x00", "Parquet"),
        (b"%PDF-1.7", "PDF"),
        (b"\xff\xfet\x00e\x00", "UTF-16"),
        (bytes(range(256)), "binary data"),
    ],
)
def test_binary_files_are_named(head, what):
    assert what in describe_binary(head)[0]


def test_text_is_not_binary():
    assert describe_binary("text,labels\nété,a\n".encode()) is None
    assert describe_binary("a\tb\r\n".encode("utf-16"), "utf-16") is None


def test_empty_and_binary_files(tmp_path):
    empty = tmp_path / "e.csv"
    empty.write_bytes(b"")
    with pytest.raises(InputDataError, match=r"e\.csv: the file is empty \(0 bytes\)"):
        _read(empty, "csv")
    blank = tmp_path / "b.jsonl"
    blank.write_text("\n  \n")
    with pytest.raises(InputDataError, match="blank"):
        _read(blank, "jsonl")
    xlsx = tmp_path / "x.csv"
    xlsx.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(InputDataError, match=r"not a text file: it looks like a ZIP archive"):
        _read(xlsx, "csv")
    not_parquet = tmp_path / "p.parquet"
    not_parquet.write_text("text,labels\n")
    with pytest.raises(InputDataError, match="not a Parquet file .* looks like text"):
        _read(not_parquet, "parquet")


def test_duplicate_header_names(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("text\tlabels\ttext\nx\ta\ty\n")
    with pytest.raises(InputDataError, match=r"'text' \(columns 1, 3\)"):
        _read(path, "tsv")


def test_nested_label_lists_name_row_and_value(tmp_path):
    with pytest.raises(LabelCellError, match=r"\[\['l0'\]\]"):
        parse_labels([["l0"]], ";")
    with pytest.raises(LabelCellError):
        parse_labels('[["a", "b"]]', ";")
    assert parse_labels([{"name": "bug"}, "x"], ";") == ["bug", "x"]
    path = tmp_path / "n.jsonl"
    rows = [{"text": "t0", "labels": ["a"]}, {"text": "t1", "labels": [["l0"]]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputDataError, match=r"n\.jsonl: row 2 \(id 'row-1'\), column 'labels'"):
        ingest_rows(IngestConfig(path=str(path)))


def test_missing_path_names_each_place_once(tmp_path, monkeypatch):
    from label_pipeline.reading import PROJECT_ROOT

    monkeypatch.chdir(PROJECT_ROOT)
    with pytest.raises(InputDataError) as caught:
        resolve_path("nowhere/x.csv")
    assert str(caught.value).count(str(PROJECT_ROOT / "nowhere/x.csv")) == 1
