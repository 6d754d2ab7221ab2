"""The input files: formats, columns and label cells, and the settings that describe them.

Shared by the ``ingest`` stage (the rows) and the ``extra_labels`` stage (label files of the
labelling loop): CSV, TSV, JSONL (or a JSON array), Parquet, a ``datasets.save_to_disk``
directory or a raw GitHub REST API issue dump, each read into a pandas frame; label cells
parsed into sorted label lists; training-slice files read and checked.
"""

from __future__ import annotations

import ast
import gzip
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import pandas as pd
import pyarrow
from pydantic import BaseModel, ConfigDict, Field, field_validator

from label_pipeline.errors import ConfigError, InputDataError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATH = "data/goemotions-ekman-sample.csv"
FORMATS = ("csv", "tsv", "jsonl", "parquet", "hf_disk", "github")
#: accepted spellings of the user's split names
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "validation": "valid",
    "val": "valid",
    "dev": "valid",
    "test": "test",
    "testing": "test",
    "unlabeled": "unlabeled",
    "unlabelled": "unlabeled",
    "": "",
}
_EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_TEXT_FORMATS = {"csv", "tsv", "jsonl", "github"}


def _path_list(value: str | list[str] | None) -> list[str]:
    """A path option that takes one path or a list, as a list (empty when unset)."""
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


class IngestConfig(BaseModel):
    """Settings of the ``ingest`` stage.

    Attributes:
        path: input file or ``save_to_disk`` directory, or a list of files of one format
            (rows concatenated in order). Relative paths are looked up in the current
            directory, then in the project root. Default: the embedded GoEmotions sample.
        format: ``auto`` (from the extension; JSONL records shaped like GitHub issues are
            read as ``github``), ``csv``, ``tsv``, ``jsonl``, ``parquet``, ``hf_disk`` or
            ``github`` (GitHub REST API issues: text = title + blank line + body, labels =
            ``labels[].name``).
        text_column: column holding the text (ignored for ``github``).
        label_column: column holding the labels: a string joined by ``label_separator``, a
            JSON-ish list (``["a", "b"]``) or a list value (JSONL/Parquet/datasets). Empty
            = unlabeled row. Ignored for ``github``.
        label_separator: separator of several labels in one string cell.
        id_column: column of unique row ids; ``None``: ids ``row-<n>`` (n = 0-based row
            number over all input files, so they are stable for a given file).
        split_column: column with the user's own split (train/valid/test/unlabeled;
            ``validation``/``dev`` read as valid, empty = let the split stage decide).
        header: CSV/TSV files have a header line; without one the columns are named
            ``"0"``, ``"1"``, ...
        label_map: rename labels (``{"kind/bug": "bug", "bug": "bug"}``); labels absent
            from the map are kept as they are unless ``keep_only_mapped``.
        keep_only_mapped: drop every label that ``label_map`` does not name (rows left
            without a label become unlabeled); counted and listed in the summary.
        multi_label: ``None`` detects it (any row with more than one label: multi-label);
            ``False`` fails on rows with several labels.
        slice_file: optional training slices: JSON ``{"8": [ids], "16": [ids], ...}`` or a
            CSV with columns ``id,slice``; slices are made nested (each holds every smaller
            one) and override the split stage's own.
        include_pull_requests: keep pull requests of a GitHub dump (default: issues only).
        text_columns: build the text from several columns instead of ``text_column`` (e.g.
            ``[title, body]``): the first is the title, written on the first line (its line
            breaks become spaces), the others follow, each after a blank line. For GitHub
            dumps the columns ``title`` and ``body`` (the default there).
        field_columns: columns written as ``name: value`` header lines, one per field, after
            the title (with a single text column: before the text), so that every method
            sees them (e.g. ``[repo]``). Empty values are left out. GitHub dumps also offer
            ``repo`` (``owner/name`` from ``repository_url``) and ``sections`` (the names of
            the body's ``#``-headings, the issue template's sections, joined by ``, ``);
            tabular files whose text is built from ``text_columns`` offer ``sections`` too
            (the headings of the columns after the title) unless they have such a column.
        encoding: text encoding of CSV/TSV/JSONL files.
        encoding_errors: ``replace`` undecodable bytes (logged with their line numbers) or
            ``strict`` (fail naming the first bad line).
        sample_rows: rows in ``sample.json``.
        extra_labels: labels added after the first run (the labelling loop): a file, or a
            list of files (one per round), with columns ``id`` (the row ids of this input)
            and ``labels`` (joined by ``label_separator``; empty = not labelled, skipped),
            CSV/TSV/JSONL/Parquet, e.g. the suggest stage's ``to_label.csv`` once filled in.
            An optional ``source`` column names the rows' provenance; without it the rows of
            the k-th file are ``round-<k>``. Read by the ``extra_labels`` stage (this input's
            rows stay cached); the split stage moves the rows from the pool into train.
        label_fixes: corrections of labelled rows: a file, or a list of files (one per
            round), with columns ``id`` and ``labels``, CSV/TSV/JSONL/Parquet, other columns
            ignored: fix the quality stage's ``label_issues.csv`` (write the right labels
            into its ``labels`` column), then set ``ingest.label_fixes: path/to/it``. A
            non-empty cell replaces the row's labels; the cell ``DROP`` (any case) removes
            the row from the labelled data (not trained on, not evaluated on, not in the
            pool); an empty cell changes nothing. A label literally named ``drop`` is given
            as a list: ``["drop"]``. Every row keeps the split and slices it had with its
            original labels (the split stage records the fixes per split); train's
            ``source`` of a relabelled row is ``fixed-<k>`` (k-th file) unless the file has
            a ``source`` column. Read by the ``extra_labels`` stage (ingest and clean stay
            cached).
    """

    model_config = ConfigDict(extra="forbid")

    path: str | list[str] = DEFAULT_PATH
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "hf_disk", "github"] = "auto"
    text_column: str = "text"
    label_column: str = "labels"
    label_separator: str = ";"
    id_column: str | None = None
    split_column: str | None = None
    header: bool = True
    label_map: dict[str, str] = Field(default_factory=dict)
    keep_only_mapped: bool = False
    multi_label: bool | None = None
    slice_file: str | None = None
    include_pull_requests: bool = False
    text_columns: list[str] | None = None
    field_columns: list[str] = Field(default_factory=list)
    encoding: str = "utf-8"
    encoding_errors: Literal["replace", "strict"] = "replace"
    sample_rows: int = Field(15, ge=0, le=100)
    extra_labels: str | list[str] | None = None
    label_fixes: str | list[str] | None = None

    @field_validator("path")
    @classmethod
    def _non_empty(cls, v: str | list[str]) -> str | list[str]:
        if not v:
            raise ValueError("ingest.path is empty: give an input file or directory")
        return v

    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)

    def extra_label_paths(self) -> list[str]:
        return _path_list(self.extra_labels)

    def label_fix_paths(self) -> list[str]:
        return _path_list(self.label_fixes)

    def for_rows(self) -> IngestConfig:
        """This config without ``extra_labels`` and ``label_fixes``: what the ingest stage's
        rows depend on."""
        if self.extra_labels or self.label_fixes:
            return self.model_copy(update={"extra_labels": None, "label_fixes": None})
        return self

    def has_label_feedback(self) -> bool:
        """Extra labels or label fixes are given: the ``extra_labels`` stage runs."""
        return bool(self.extra_label_paths() or self.label_fix_paths())


# ---------------------------------------------------------------- locating and reading


def resolve_path(path: str, what: str = "ingest.path") -> Path:
    """An existing file/directory: as given (relative to the current directory), else
    relative to the project root."""
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, PROJECT_ROOT / p]
    for c in candidates:
        if c.exists():
            return c.resolve()
    # the current directory may be the project root: name each place once
    tried = ", ".join(dict.fromkeys(str(c.absolute()) for c in candidates))
    raise InputDataError(
        f"{what}: {path!r} not found (looked at {tried}); set {what} to an existing file"
    )


def detect_format(path: Path, fmt: str = "auto") -> str:
    """The reader for ``path``: ``fmt`` when set, else from the extension or directory."""
    if fmt != "auto":
        return fmt
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return "hf_disk"
        raise ConfigError(
            f"ingest.path: directory {path} is not a datasets.save_to_disk directory (no "
            "dataset_info.json / dataset_dict.json); point ingest.path at a file or set ingest.format"
        )
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext not in _EXTENSIONS:
        raise ConfigError(
            f"ingest.format: cannot tell the format of {path} from its extension {ext or '(none)'!r}; "
            f"set ingest.format to one of {', '.join(FORMATS)}"
        )
    return _EXTENSIONS[ext]


#: the first bytes of common non-text files: (magic, what it is, what to do)
_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"PAR1", "a Parquet file", "set ingest.format: parquet (or name it .parquet)"),
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx or Word .docx file is one)", ""),
    (b"\xd0\xcf\x11\xe0", "a Microsoft Office file (.xls / .doc)", ""),
    (b"%PDF", "a PDF document", ""),
    (b"\x89PNG", "a PNG image", ""),
    (b"\xff\xd8\xff", "a JPEG image", ""),
    (b"GIF8", "a GIF image", ""),
    (b"\x1f\x8b", "a gzip-compressed file", "name it with a .gz ending (e.g. data.csv.gz)"),
    (b"BZh", "a bzip2-compressed file", "decompress it first"),
    (b"\xfd7zXZ", "an xz-compressed file", "decompress it first"),
    (b"\x28\xb5\x2f\xfd", "a zstd-compressed file", "decompress it first"),
    (b"7z\xbc\xaf", "a 7-Zip archive", "unpack it first"),
    (b"SQLite format 3\x00", "an SQLite database", "export the table as CSV"),
    (b"ARROW1", "an Arrow IPC file", "write it as Parquet or CSV"),
    (b"\x7fELF", "an executable (ELF)", ""),
)


def describe_binary(head: bytes, encoding: str = "utf-8") -> tuple[str, str] | None:
    """What a non-text file is, from its first bytes: (description, hint), or None when
    the bytes look like text in ``encoding``."""
    for magic, what, hint in _MAGIC:
        if head.startswith(magic):
            return what, hint
    wide = encoding.lower().replace("_", "-").startswith(("utf-16", "utf-32", "utf16", "utf32"))
    if not wide and head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "a UTF-16 text file", "set ingest.encoding: utf-16"
    if wide:
        return None
    sample = head[:8192]
    control = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
    if b"\x00" in sample or control > max(8, len(sample) // 20):
        return "binary data, not text", ""
    return None


def check_text_file(path: Path, raw: bytes, encoding: str = "utf-8") -> None:
    """Fail naming what the file is when ``raw`` (its bytes) is not text."""
    found = describe_binary(raw[:8192], encoding)
    if found is None:
        return
    what, hint = found
    raise InputDataError(
        f"{path}: not a text file: it looks like {what} (first bytes {raw[:8]!r}); ingest reads "
        "CSV, TSV and JSONL text, Parquet and datasets.save_to_disk directories: "
        + (hint or "export the data as CSV (a text column and a labels column)")
        + ", or fix ingest.path"
    )


def read_text(path: Path, cfg: IngestConfig, warnings: list[str]) -> str:
    """Decode a text file; undecodable bytes are replaced (with a warning naming the lines)
    or, with ``encoding_errors='strict'``, fail naming the first bad line."""
    raw = path.read_bytes()
    if path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except OSError as exc:
            raise InputDataError(f"{path}: not a valid gzip file ({exc})") from None
    if not raw or (len(raw) < 65536 and not raw.strip()):
        what = "empty (0 bytes)" if not raw else "blank (only whitespace)"
        raise InputDataError(
            f"{path}: the file is {what}; give a file with a header line and at least one "
            "row, or fix ingest.path"
        )
    check_text_file(path, raw, cfg.encoding)
    encoding = (
        "utf-8-sig" if cfg.encoding.lower().replace("_", "-") in {"utf-8", "utf8"} else cfg.encoding
    )
    try:
        return raw.decode(encoding)
    except LookupError:
        raise ConfigError(
            f"ingest.encoding: unknown encoding {cfg.encoding!r}; use e.g. 'utf-8' or 'latin-1'"
        ) from None
    except UnicodeDecodeError:
        pass
    bad = []
    for n, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode(encoding)
        except UnicodeDecodeError:
            bad.append(n)
    shown = ", ".join(map(str, bad[:10])) + (
        f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
    )
    if cfg.encoding_errors == "strict":
        raise InputDataError(
            f"{path}: line {bad[0] if bad else '?'} is not valid {cfg.encoding} (bad lines: {shown}); "
            "set ingest.encoding to the file's encoding (e.g. 'latin-1', 'cp1252') or "
            "ingest.encoding_errors='replace'"
        )
    warnings.append(
        f"{path.name}: {len(bad)} line(s) not valid {cfg.encoding} (lines {shown}); undecodable "
        "bytes replaced by U+FFFD (set ingest.encoding if the file uses another encoding)"
    )
    return raw.decode(encoding, errors="replace")


def _json_records(path: Path, text: str) -> list[Any]:
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array (e.g. one page of the REST API)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputDataError(
                f"{path}: not valid JSON at line {exc.lineno}: {exc.msg}"
            ) from None
        return list(data)
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InputDataError(
                f"{path}: line {n} is not valid JSON (column {exc.colno}: {exc.msg}); a JSONL file "
                "holds one JSON object per line"
            ) from None
    return records


def _check_objects(path: Path, records: list[Any]) -> None:
    for n, r in enumerate(records, start=1):
        if not isinstance(r, dict):
            raise InputDataError(f"{path}: record {n} is a {type(r).__name__}, not a JSON object")


def _looks_like_github(records: list[Any]) -> bool:
    first = next((r for r in records if isinstance(r, dict)), None)
    if first is None or not {"title", "labels"} <= set(first):
        return False
    labels = first.get("labels")
    return isinstance(labels, list) and all(isinstance(x, dict) and "name" in x for x in labels)


def _github_frame(path: Path, records: list[Any], cfg: IngestConfig) -> tuple[pd.DataFrame, int]:
    """GitHub issues to a frame with ``text`` and ``labels``; returns (frame, PRs excluded)."""
    _check_objects(path, records)
    keep = [r for r in records if cfg.include_pull_requests or not r.get("pull_request")]
    labels = [
        [x.get("name") if isinstance(x, dict) else x for x in (r.get("labels") or [])] for r in keep
    ]
    frame = pd.DataFrame(
        {
            "title": [str(r.get("title") or "") for r in keep],
            "body": [str(r.get("body") or "") for r in keep],
            "labels": labels,
            "repo": [_github_repo(r) for r in keep],
            "sections": [", ".join(section_names(str(r.get("body") or ""))) for r in keep],
        }
    )
    for col in (cfg.id_column, cfg.split_column, *cfg.field_columns, *(cfg.text_columns or [])):
        if col and col not in frame:
            frame[col] = [r.get(col) if col in r else None for r in keep]
    return frame, len(records) - len(keep)


_SECTION = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.M)
_FENCE = re.compile(r"^\s*(```|~~~).*?^\s*\1", re.M | re.S)


def section_names(body: str) -> list[str]:
    """The markdown ``#``-headings of an issue body (outside code fences), in order, once
    each: the sections of the issue template it was written from."""
    names = _SECTION.findall(_FENCE.sub("", body))
    return list(dict.fromkeys(n.strip() for n in names if n.strip()))


def with_derived_sections(
    frame: pd.DataFrame, text_columns: list[str], field_columns: list[str]
) -> pd.DataFrame:
    """``frame`` with a ``sections`` column derived like a GitHub dump's when ``field_columns``
    asks for one that the file does not have and the text is built from several columns: the
    ``#``-headings of the columns after the title (the body), in order, joined by ``, ``. A
    file's own ``sections`` column is kept as it is."""
    if "sections" not in field_columns or "sections" in frame or len(text_columns) < 2:
        return frame
    if any(c not in frame for c in text_columns[1:]):
        return frame  # render_texts names the missing column
    bodies = [
        "\n\n".join(cell_text(v) for v in row)
        for row in zip(*(frame[c] for c in text_columns[1:]), strict=True)
    ]
    return frame.assign(sections=[", ".join(section_names(b)) for b in bodies])


def _github_repo(record: dict) -> str:
    """``owner/name`` of an issue's repository (``repository_url`` or ``repository``)."""
    repo = record.get("repository")
    if isinstance(repo, dict) and repo.get("full_name"):
        return str(repo["full_name"])
    url = str(record.get("repository_url") or "")
    return "/".join(url.rstrip("/").split("/")[-2:]) if "/repos/" in url else ""


def cell_text(value: Any) -> str:
    return "" if is_missing(value) else str(value).strip()


def column_of(frame: pd.DataFrame, column: str, option: str, path: str) -> pd.Series:
    """The frame's column ``column``; a missing one names the option that sets it."""
    if column not in frame.columns:
        raise InputDataError(
            f"{path}: no column {column!r} (columns: {', '.join(map(str, frame.columns[:20]))}); "
            f"set ingest.{option} to the column that holds it"
        )
    return frame[column]


def render_texts(
    frame: pd.DataFrame, text_columns: list[str], field_columns: list[str], path: str
) -> list[str]:
    """The canonical text of each row: the first text column on the first line (the
    title), ``name: value`` lines of the fields, then the other text columns, each after a
    blank line. With one text column the field lines come first. Deterministic."""
    for option, cols in (("text_columns", text_columns), ("field_columns", field_columns)):
        for col in cols:
            column_of(frame, col, option, path)
    texts = []
    for row in zip(*(frame[c] for c in (*text_columns, *field_columns)), strict=True):
        parts = [cell_text(v) for v in row[: len(text_columns)]]
        fields = [
            f"{name}: {' '.join(cell_text(v).split())}"
            for name, v in zip(field_columns, row[len(text_columns) :], strict=True)
            if cell_text(v)
        ]
        if len(text_columns) == 1:
            head, rest = fields, parts
        else:
            head = [" ".join(parts[0].split())] if parts[0] else []
            head, rest = head + fields, parts[1:]
        blocks = ["\n".join(head)] + rest
        texts.append("\n\n".join(b for b in blocks if b))
    return texts


def _hf_frame(path: Path) -> pd.DataFrame:
    try:
        obj = datasets.load_from_disk(str(path))
    except Exception as exc:  # a broken or foreign directory: say which and why
        raise InputDataError(
            f"{path}: cannot be read as a datasets.save_to_disk directory ({exc})"
        ) from None
    parts = list(obj.values()) if isinstance(obj, datasets.DatasetDict) else [obj]
    frames = []
    for ds in parts:
        frame = ds.to_pandas()
        # class-label ids become their names
        for name, feat in ds.features.items():
            inner = getattr(feat, "feature", None)
            if isinstance(feat, datasets.ClassLabel):
                frame[name] = [
                    None if v is None or v < 0 else feat.int2str(int(v)) for v in frame[name]
                ]
            elif isinstance(inner, datasets.ClassLabel):
                frame[name] = [
                    [] if v is None else [inner.int2str(int(x)) for x in v] for v in frame[name]
                ]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _check_header(path: Path, text: str, sep: str, quoting: int) -> None:
    """Fail when the header line names a column twice (pandas would rename the second
    ``text`` to ``text.1`` and read the first without a word)."""
    import csv
    import io

    header = next(csv.reader(io.StringIO(text), delimiter=sep, quoting=quoting), [])
    names = [h.strip() for h in header]
    dup = [n for n, k in Counter(names).items() if k > 1]
    if dup:
        where = ", ".join(
            f"{n!r} (columns {', '.join(str(i + 1) for i, m in enumerate(names) if m == n)})"
            for n in dup
        )
        raise InputDataError(
            f"{path}: line 1 (the header) names the same column more than once: {where}; "
            f"header: {sep.join(names)}; give every column its own name (and point "
            "ingest.text_column / ingest.label_column at the right one)"
        )


def read_frame(
    path: Path, fmt: str, cfg: IngestConfig, warnings: list[str]
) -> tuple[pd.DataFrame, str, int]:
    """One input file as a DataFrame; returns (frame, format used, pull requests excluded)."""
    import io

    excluded = 0
    try:
        if fmt in _TEXT_FORMATS:
            text = read_text(path, cfg, warnings)
            if fmt in {"csv", "tsv"}:
                import csv

                sep = "," if fmt == "csv" else "\t"
                quoting = csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE
                if cfg.header:
                    _check_header(path, text, sep, quoting)
                frame = pd.read_csv(
                    io.StringIO(text),
                    sep=sep,
                    dtype=str,
                    keep_default_na=False,
                    header=0 if cfg.header else None,
                    quoting=quoting,
                )
                frame.columns = [str(c) for c in frame.columns]
            else:
                records = _json_records(path, text)
                if fmt == "github" or (cfg.format == "auto" and _looks_like_github(records)):
                    frame, excluded = _github_frame(path, records, cfg)
                    fmt = "github"
                else:
                    _check_objects(path, records)
                    frame = pd.DataFrame.from_records(records)
        elif fmt == "parquet":
            if path.is_file():
                with open(path, "rb") as fh:
                    head = fh.read(8192)
                if not head:
                    raise InputDataError(
                        f"{path}: the file is empty (0 bytes); give a Parquet file with rows, "
                        "or fix ingest.path"
                    )
                if not head.startswith(b"PAR1"):
                    found = describe_binary(head)
                    what = found[0] if found else "text"
                    raise InputDataError(
                        f"{path}: not a Parquet file (no PAR1 header): it looks like {what}; "
                        "set ingest.format to the file's format (csv, tsv, jsonl) or fix ingest.path"
                    )
            frame = pd.read_parquet(path)
        elif fmt == "hf_disk":
            frame = _hf_frame(path)
        else:
            raise ConfigError(
                f"ingest.format: unknown format {fmt!r}; use one of {', '.join(FORMATS)}"
            )
    except (InputDataError, ConfigError):
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputDataError(
            f"{path}: cannot be parsed as {fmt} ({str(exc).strip()}); check ingest.format"
        ) from None
    except (OSError, ValueError, pyarrow.ArrowException) as exc:
        raise InputDataError(
            f"{path}: cannot be read as {fmt} ({exc}); check ingest.format"
        ) from None
    return frame, fmt, excluded


# ---------------------------------------------------------------- labels


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return False


class LabelCellError(InputDataError):
    """A label cell that is not a label name or a flat list of them (the caller names the
    file and row)."""


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_labels(value: Any, separator: str) -> list[str]:
    """One label cell as a list of label names (no duplicates, empty = unlabeled)."""
    if is_missing(value):
        return []
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        out = []
        for x in value:
            if isinstance(x, dict) and "name" in x:  # a GitHub label object
                x = x["name"]
            if isinstance(x, np.ndarray):
                x = x.tolist()
            if isinstance(x, list | tuple | dict | set):
                raise LabelCellError(
                    f"the label cell {_short(value)} holds a {type(x).__name__} "
                    f"({_short(x)}) where a label name belongs"
                )
            if not is_missing(x) and str(x).strip():
                out.append(scalar_label(x))
        return list(dict.fromkeys(out))
    if isinstance(value, bool | int | float | np.integer | np.floating):
        return [scalar_label(value)]
    s = str(value).strip()
    if not s:
        return []
    if s[0] == "[" and s[-1] == "]":  # a JSON-ish list written into a text cell
        for loader in (json.loads, ast.literal_eval):
            try:
                parsed = loader(s)
            except (ValueError, SyntaxError):
                continue
            if isinstance(parsed, list):
                return parse_labels(parsed, separator)
    parts = s.split(separator) if separator else [s]
    return list(dict.fromkeys(p.strip() for p in parts if p.strip()))


def scalar_label(x: Any) -> str:
    if isinstance(x, float | np.floating) and float(x).is_integer():
        return str(int(x))
    return str(x).strip()


def map_labels(
    rows: list[list[str]], label_map: dict[str, str], keep_only_mapped: bool
) -> tuple[list[list[str]], Counter]:
    """Rename labels through ``label_map``; with ``keep_only_mapped`` drop the others.
    Returns (sorted label lists, counts of the labels dropped)."""
    dropped: Counter = Counter()
    out = []
    for labels in rows:
        kept = []
        for lab in labels:
            if lab in label_map:
                kept.append(label_map[lab])
            elif keep_only_mapped:
                dropped[lab] += 1
            else:
                kept.append(lab)
        out.append(sorted(set(kept)))
    return out, dropped


def _slice_sort_key(name: str) -> tuple[int, int]:
    return (1, 0) if name == "all" else (0, int(name))


def read_slice_file(path: Path) -> dict[str, list[str]]:
    """A training-slice file (JSON ``{"8": [ids]}`` or CSV ``id,slice``) as nested slices,
    smallest first: each slice also holds the ids of every smaller slice."""
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
                raise InputDataError(
                    f"ingest.slice_file {path}: expected a JSON object of slice name -> list of ids "
                    '(e.g. {"8": ["row-1", ...], "16": [...]})'
                )
            raw = {str(k): [str(i) for i in v] for k, v in data.items()}
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            if not {"id", "slice"} <= set(frame.columns):
                raise InputDataError(
                    f"ingest.slice_file {path}: a CSV slice file needs columns 'id' and 'slice' "
                    f"(found {list(frame.columns)})"
                )
            raw = {}
            for sid, name in zip(frame["id"], frame["slice"], strict=True):
                raw.setdefault(str(name).strip(), []).append(str(sid).strip())
    except (json.JSONDecodeError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputDataError(f"ingest.slice_file {path}: cannot be parsed ({exc})") from None
    bad = [k for k in raw if k != "all" and not k.isdigit()]
    if bad:
        raise InputDataError(
            f"ingest.slice_file {path}: slice names must be row counts like '8' or 'all' (found {bad})"
        )
    out: dict[str, list[str]] = {}
    acc: dict[str, None] = {}
    for name in sorted(raw, key=_slice_sort_key):
        acc.update(dict.fromkeys(raw[name]))
        out[name] = list(acc)
    return out
