"""The `ingest` stage: a raw labelled/unlabelled text file in, canonical rows out.

Reads CSV, TSV, JSONL (or a JSON array), Parquet, a ``datasets.save_to_disk`` directory or
a raw GitHub REST API issue dump (JSONL of issue objects). The format is taken from the
extension (``.csv``, ``.tsv``, ``.jsonl``/``.json``, ``.parquet``, a directory; ``.gz``
allowed for the text formats) or set with ``format``; a JSONL file whose records look like
GitHub issues (``title``, ``body``, ``labels[].name``) is read as a GitHub dump.

Output directory:

- ``rows/``: ``id``, ``text``, ``labels`` (sorted list of label names, empty = unlabeled),
  ``split`` (the user's train/valid/test/unlabeled, "" when not given);
- ``labels.json`` (sorted label names, ``multi_label``);
- ``user_slices.json`` when a training-slice file is given (nested: each slice holds the
  ids of every smaller one);
- ``summary.md``, ``sample.json``.

Undecodable bytes are replaced (U+FFFD) and the line numbers are logged and listed in the
summary; ``encoding_errors="strict"`` fails instead, naming the line and the ``encoding``
option. Empty texts are kept here and dropped, with their reason, by the clean stage.
"""

from __future__ import annotations

import ast
import gzip
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import pandas as pd
import pyarrow
from pydantic import BaseModel, ConfigDict, Field, field_validator

from label_pipeline.artifacts import md_table
from label_pipeline.data import CANONICAL_FEATURES, SPLITS, save_dataset, write_label_info
from label_pipeline.errors import ConfigError, InputDataError
from label_pipeline.orchestration import write_summary
from label_pipeline.progress import stage_logger
from label_pipeline.store import BuildContext, StageRef, StageStore, file_fingerprint

STAGE = "ingest"
VERSION = "2"

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
    tried = ", ".join(str(c) for c in candidates)
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


def _read_text(path: Path, cfg: IngestConfig, warnings: list[str]) -> str:
    """Decode a text file; undecodable bytes are replaced (with a warning naming the lines)
    or, with ``encoding_errors='strict'``, fail naming the first bad line."""
    raw = path.read_bytes()
    if path.suffix.lower() == ".gz":
        try:
            raw = gzip.decompress(raw)
        except OSError as exc:
            raise InputDataError(f"{path}: not a valid gzip file ({exc})") from None
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
                f"{path}: line {n} is not valid JSON ({exc.msg}); a JSONL file holds one JSON "
                "object per line"
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
        "\n\n".join(_cell(v) for v in row)
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


def _cell(value: Any) -> str:
    return "" if _is_missing(value) else str(value).strip()


def render_texts(
    frame: pd.DataFrame, text_columns: list[str], field_columns: list[str], path: str
) -> list[str]:
    """The canonical text of each row: the first text column on the first line (the
    title), ``name: value`` lines of the fields, then the other text columns, each after a
    blank line. With one text column the field lines come first. Deterministic."""
    for option, cols in (("text_columns", text_columns), ("field_columns", field_columns)):
        for col in cols:
            _column(frame, col, option, path)
    texts = []
    for row in zip(*(frame[c] for c in (*text_columns, *field_columns)), strict=True):
        parts = [_cell(v) for v in row[: len(text_columns)]]
        fields = [
            f"{name}: {' '.join(_cell(v).split())}"
            for name, v in zip(field_columns, row[len(text_columns) :], strict=True)
            if _cell(v)
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


def read_frame(
    path: Path, fmt: str, cfg: IngestConfig, warnings: list[str]
) -> tuple[pd.DataFrame, str, int]:
    """One input file as a DataFrame; returns (frame, format used, pull requests excluded)."""
    import io

    excluded = 0
    try:
        if fmt in _TEXT_FORMATS:
            text = _read_text(path, cfg, warnings)
            if fmt in {"csv", "tsv"}:
                import csv

                frame = pd.read_csv(
                    io.StringIO(text),
                    sep="," if fmt == "csv" else "\t",
                    dtype=str,
                    keep_default_na=False,
                    header=0 if cfg.header else None,
                    quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE,
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


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return False


def parse_labels(value: Any, separator: str) -> list[str]:
    """One label cell as a list of label names (no duplicates, empty = unlabeled)."""
    if _is_missing(value):
        return []
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        out = []
        for x in value:
            if isinstance(x, dict):
                x = x.get("name")
            if not _is_missing(x) and str(x).strip():
                out.append(_scalar_label(x))
        return list(dict.fromkeys(out))
    if isinstance(value, bool | int | float | np.integer | np.floating):
        return [_scalar_label(value)]
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


def _scalar_label(x: Any) -> str:
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


# ---------------------------------------------------------------- the stage


def _column(frame: pd.DataFrame, column: str, option: str, path: str) -> pd.Series:
    if column not in frame.columns:
        raise InputDataError(
            f"{path}: no column {column!r} (columns: {', '.join(map(str, frame.columns[:20]))}); "
            f"set ingest.{option} to the column that holds it"
        )
    return frame[column]


def ingest_rows(cfg: IngestConfig) -> tuple[dict[str, list], dict[str, Any]]:
    """Read every input file into canonical columns. Returns (columns ``id``, ``text``,
    ``labels``, ``split``; facts: format, labels, multi_label, counts, warnings)."""
    warnings: list[str] = []
    ids: list[str] = []
    texts: list[str] = []
    raw_labels: list[list[str]] = []
    splits: list[str] = []
    formats: list[str] = []
    excluded = 0
    files = [resolve_path(p) for p in cfg.paths()]
    for path in files:
        fmt = detect_format(path, cfg.format)
        frame, fmt, n_pr = read_frame(path, fmt, cfg, warnings)
        formats.append(fmt)
        excluded += n_pr
        if fmt == "github":
            text_cols = cfg.text_columns or ["title", "body"]
            label_col = frame["labels"]
        else:
            text_cols = cfg.text_columns or [cfg.text_column]
            option = "text_columns" if cfg.text_columns else "text_column"
            _column(frame, text_cols[0], option, str(path))
            label_col = _column(frame, cfg.label_column, "label_column", str(path))
            frame = with_derived_sections(frame, text_cols, cfg.field_columns)
        if len(text_cols) > 1 or cfg.field_columns:
            text_col = render_texts(frame, text_cols, cfg.field_columns, str(path))
        elif fmt == "github":
            text_col = [_cell(t) for t in frame[text_cols[0]]]
        else:
            text_col = frame[text_cols[0]]
        start = len(ids)
        if cfg.id_column:
            ids += [
                "" if _is_missing(v) else _scalar_label(v)
                for v in _column(frame, cfg.id_column, "id_column", str(path))
            ]
        else:
            ids += [f"row-{n}" for n in range(start, start + len(frame))]
        texts += ["" if _is_missing(t) else str(t) for t in text_col]
        raw_labels += [parse_labels(v, cfg.label_separator) for v in label_col]
        if cfg.split_column:
            values = _column(frame, cfg.split_column, "split_column", str(path))
            normalised = ["" if _is_missing(v) else str(v).strip().lower() for v in values]
            bad = [(start + i, v) for i, v in enumerate(normalised) if v not in SPLIT_ALIASES]
            if bad:
                raise InputDataError(
                    f"{path}: column {cfg.split_column!r} has values that are not a split name "
                    f"(rows {[r for r, _ in bad[:5]]}: {sorted({v for _, v in bad})[:5]}); use "
                    f"{', '.join(s for s in SPLITS)} or empty (or unset ingest.split_column)"
                )
            splits += [SPLIT_ALIASES[v] for v in normalised]
        else:
            splits += [""] * len(frame)
    source = ", ".join(str(f) for f in files)
    if not ids:
        raise InputDataError(f"{source}: no rows; give a file with a header and at least one row")

    if cfg.id_column:
        empty = [n for n, i in enumerate(ids) if not i]
        if empty:
            raise InputDataError(
                f"{source}: column {cfg.id_column!r} is empty in rows {empty[:5]}; every row needs an id"
            )
        dup = [i for i, c in Counter(ids).items() if c > 1]
        if dup:
            raise InputDataError(
                f"{source}: column {cfg.id_column!r} has {len(dup)} duplicated id(s) (e.g. {dup[:5]}); "
                "ids must be unique: fix the column or unset ingest.id_column to number the rows"
            )

    in_data = Counter(lab for labels in raw_labels for lab in labels)
    labels, unmapped = map_labels(raw_labels, cfg.label_map, cfg.keep_only_mapped)
    if cfg.label_map:
        unused = sorted(set(cfg.label_map) - set(in_data))
        if unused:
            warnings.append(f"label_map keys never seen in the data: {unused[:20]}")
        if unmapped:
            top = ", ".join(f"{k} ({v})" for k, v in unmapped.most_common(15))
            warnings.append(
                f"{sum(unmapped.values())} label(s) outside label_map removed (keep_only_mapped): {top}"
            )
    counts = Counter(lab for row in labels for lab in row)
    label_col_name = "labels[].name" if "github" in formats else repr(cfg.label_column)
    if not counts:
        hint = (
            f"none of its labels ({', '.join(sorted(in_data)[:10])}) is a label_map key: fix label_map "
            "or set keep_only_mapped=false"
            if in_data
            else f"check ingest.label_column (now {cfg.label_column!r}) and ingest.label_separator"
        )
        raise InputDataError(f"{source}: no labelled rows in column {label_col_name}; {hint}")
    if len(counts) < 2:
        only = next(iter(counts))
        raise InputDataError(
            f"{source}: only one label ({only!r}) occurs in column {label_col_name}; a classifier "
            "needs at least two: check ingest.label_separator / label_map, or add a label for the "
            "other rows (e.g. 'other')"
        )
    multi_rows = [n for n, row in enumerate(labels) if len(row) > 1]
    multi_label = bool(multi_rows) if cfg.multi_label is None else cfg.multi_label
    if cfg.multi_label is False and multi_rows:
        raise InputDataError(
            f"{source}: multi_label is false but {len(multi_rows)} row(s) carry several labels "
            f"(rows {multi_rows[:5]}, e.g. {labels[multi_rows[0]]}); set ingest.multi_label to "
            "null or true, or fix ingest.label_separator"
        )
    empty_text = [n for n, t in enumerate(texts) if not t.strip()]
    if len(empty_text) == len(texts):
        raise InputDataError(
            f"{source}: every text in column {cfg.text_columns or cfg.text_column!r} is empty; "
            "set ingest.text_column (or ingest.text_columns)"
        )
    if empty_text:
        warnings.append(
            f"{len(empty_text)} row(s) with an empty text (rows {empty_text[:10]}); the clean "
            "stage drops them"
        )
    facts = {
        "source": source,
        "format": formats[0] if len(set(formats)) == 1 else formats,
        "rows": len(ids),
        "labelled": sum(1 for row in labels if row),
        "multi_label": multi_label,
        "labels": sorted(counts),
        "label_counts": dict(sorted(counts.items())),
        "pull_requests_excluded": excluded,
        "user_splits": dict(Counter(s for s in splits if s)),
        "warnings": warnings,
    }
    return {"id": ids, "text": texts, "labels": labels, "split": splits}, facts


def _summary(facts: dict[str, Any], slices: dict[str, list[str]] | None) -> str:
    n, n_lab = facts["rows"], facts["labelled"]
    lines = [
        f"Source: `{facts['source']}` (format **{facts['format']}**).\n",
        f"Rows: **{n}** — labelled **{n_lab}**, unlabeled **{n - n_lab}**; "
        f"{len(facts['labels'])} labels, {'multi' if facts['multi_label'] else 'single'}-label.\n",
    ]
    if facts["pull_requests_excluded"]:
        lines.append(f"Pull requests excluded: {facts['pull_requests_excluded']}.\n")
    lines += [
        "### Label counts\n",
        md_table([{"label": k, "rows": v} for k, v in facts["label_counts"].items()]),
    ]
    if facts["user_splits"]:
        lines += [
            "### User-provided splits\n",
            md_table([{"split": k, "rows": v} for k, v in facts["user_splits"].items()]),
        ]
    if slices:
        lines += [
            "### User training slices (nested)\n",
            md_table([{"slice": k, "rows": len(v)} for k, v in slices.items()]),
        ]
    if facts["warnings"]:
        lines += ["### Warnings\n", "\n".join(f"- {w}" for w in facts["warnings"]) + "\n"]
    return "\n".join(lines)


def source_inputs(cfg: IngestConfig) -> dict[str, Any]:
    """Fingerprint inputs beyond the config: content hashes of the input file(s) and of the
    slice file, so an edited file gives a new fingerprint."""
    out: dict[str, Any] = {"source": [file_fingerprint(resolve_path(p)) for p in cfg.paths()]}
    if cfg.slice_file:
        out["slice_file"] = file_fingerprint(resolve_path(cfg.slice_file, "ingest.slice_file"))
    return out


def run_ingest(store: StageStore, cfg: IngestConfig, refresh: bool = False) -> StageRef:
    """Read ``cfg.path`` into canonical rows in the stage store (``extra_labels`` aside:
    :func:`run_extra_labels` reads them)."""
    cfg = cfg.for_rows()
    inputs = source_inputs(cfg)

    def builder(ctx: BuildContext) -> dict[str, Any]:
        log = stage_logger()
        columns, facts = ingest_rows(cfg)
        slices = None
        if cfg.slice_file:
            slices = read_slice_file(resolve_path(cfg.slice_file, "ingest.slice_file"))
            known = set(columns["id"])
            unknown = [i for ids in slices.values() for i in ids if i not in known]
            if unknown:
                raise InputDataError(
                    f"ingest.slice_file {cfg.slice_file}: {len(set(unknown))} id(s) are not row ids of "
                    f"the input (e.g. {unknown[:5]}); ids are the {cfg.id_column!r} column"
                    if cfg.id_column
                    else f"ingest.slice_file {cfg.slice_file}: {len(set(unknown))} id(s) are not row "
                    f"ids (e.g. {unknown[:5]}); without ingest.id_column rows are named row-<n> "
                    "(0-based), or set ingest.id_column"
                )
            (ctx.dir / "user_slices.json").write_text(json.dumps(slices))
        for w in facts["warnings"]:
            log.warning("ingest: %s", w)
        save_dataset(
            datasets.Dataset.from_dict(columns, features=CANONICAL_FEATURES), ctx.dir / "rows"
        )
        write_label_info(ctx.dir, facts["labels"], facts["multi_label"])
        labelled = [i for i, lab in enumerate(columns["labels"]) if lab]
        unlabelled = [i for i, lab in enumerate(columns["labels"]) if not lab]
        rng = np.random.default_rng(0)
        k = cfg.sample_rows
        picks = sorted(
            list(rng.choice(labelled, min(len(labelled), (k + 1) // 2), replace=False))
            + list(rng.choice(unlabelled, min(len(unlabelled), k // 2), replace=False))
        )
        sample = [{c: columns[c][i] for c in ("id", "text", "labels", "split")} for i in picks]
        write_summary(ctx.dir, _summary(facts, slices), sample)
        return {
            "rows_in": facts["rows"],
            "rows_out": facts["rows"],
            "labelled": facts["labelled"],
            "unlabeled": facts["rows"] - facts["labelled"],
            "n_labels": len(facts["labels"]),
            "multi_label": facts["multi_label"],
            "format": facts["format"],
            "warnings": len(facts["warnings"]),
        }

    return store.build(STAGE, VERSION, cfg, inputs, builder, refresh)


# ---------------------------------------------------------------- extra labels (the labelling loop)

EXTRA_STAGE = "extra_labels"
EXTRA_VERSION = "2"
EXTRA_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "labels": datasets.Sequence(datasets.Value("string")),
        "source": datasets.Value("string"),
    }
)
#: the ``labels`` cell of a label fix that removes the row (compared without case)
DROP = "DROP"
RELABEL_ACTION, DROP_ACTION = "relabel", "drop"
FIX_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "action": datasets.Value("string"),
        "labels": datasets.Sequence(datasets.Value("string")),
        "given": datasets.Sequence(datasets.Value("string")),
        "source": datasets.Value("string"),
    }
)
_FEEDBACK_FORMATS = {"csv", "tsv", "jsonl", "parquet"}


def extra_label_inputs(cfg: IngestConfig) -> dict[str, Any]:
    """Fingerprint inputs of the extra-labels stage: content hashes of the label files
    (extra labels and label fixes)."""
    out: dict[str, Any] = {
        "extra_labels": [
            file_fingerprint(resolve_path(p, "ingest.extra_labels"))
            for p in cfg.extra_label_paths()
        ]
    }
    fixes = cfg.label_fix_paths()
    if fixes:
        out["label_fixes"] = [
            file_fingerprint(resolve_path(p, "ingest.label_fixes")) for p in fixes
        ]
    return out


def _record_places(path: Path, fmt: str, cfg: IngestConfig, n_rows: int) -> list[str]:
    """Where each of a feedback file's ``n_rows`` records starts, for messages: ``line N``
    of a CSV/TSV/JSONL file (a quoted CSV cell may span lines; header = line 1),
    ``record N`` of a JSON array, ``row N`` of a Parquet file (1-based)."""
    import csv
    import io

    if fmt == "parquet":
        return [f"row {k}" for k in range(1, n_rows + 1)]
    text = _read_text(path, cfg, [])
    if fmt == "jsonl" and text.lstrip().startswith("["):
        return [f"record {k}" for k in range(1, n_rows + 1)]
    starts: list[int] = []
    if fmt == "csv":
        reader = csv.reader(io.StringIO(text))
        end = 0
        for record in reader:
            if record:  # blank lines are no records (pandas skips them too)
                starts.append(end + 1)
            end = reader.line_num
    else:
        starts = [n for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if fmt in {"csv", "tsv"}:
        starts = starts[1:]  # the header
    if len(starts) != n_rows:  # a file the two readers split differently: count records
        first = 2 if fmt in {"csv", "tsv"} else 1
        starts = list(range(first, first + n_rows))
    return [f"line {k}" for k in starts]


def _feedback_file(
    raw: str, option: str, cfg: IngestConfig
) -> tuple[Path, pd.DataFrame, list[str]]:
    """One extra-labels or label-fixes file: (path, frame, the place of each row). The
    file has a header whatever ``ingest.header`` says; columns ``id`` and ``labels``."""
    path = resolve_path(raw, f"ingest.{option}")
    fmt = detect_format(path, "auto")
    if fmt not in _FEEDBACK_FORMATS:
        raise ConfigError(
            f"ingest.{option}: {path} is read as {fmt}; give a CSV, TSV, JSONL or "
            "Parquet file with columns id and labels"
        )
    read_cfg = cfg.model_copy(update={"header": True, "format": fmt})
    frame, _, _ = read_frame(path, fmt, read_cfg, [])
    for col in ("id", "labels"):
        if col not in frame.columns:
            what = "an extra-labels" if option == "extra_labels" else "a label-fixes"
            raise InputDataError(
                f"ingest.{option}: {path} has no column {col!r} (columns: "
                f"{', '.join(map(str, frame.columns[:20]))}); {what} file needs "
                "columns 'id' (row ids of ingest.path) and 'labels'"
            )
    return path, frame, _record_places(path, fmt, read_cfg, len(frame))


def _feedback_rows(
    cfg: IngestConfig, option: str, files: list[str]
) -> Iterator[tuple[int, Path, str, str, str, Any, Any]]:
    """Every row of the ``ingest.<option>`` files (extra labels or label fixes), file by file:
    (file number from 1, path, place in the file, ``"ingest.<option>: <path> <place>"`` for
    messages, row id (checked not empty), labels cell, source cell or None). Appends each
    file's path to ``files``."""
    paths = cfg.extra_label_paths() if option == "extra_labels" else cfg.label_fix_paths()
    for k, raw in enumerate(paths, start=1):
        path, frame, places = _feedback_file(raw, option, cfg)
        files.append(str(path))
        sources = frame["source"] if "source" in frame.columns else [None] * len(frame)
        for place, rid, cell, src in zip(
            places, frame["id"], frame["labels"], sources, strict=True
        ):
            at = f"ingest.{option}: {path} {place}"
            yield k, path, place, at, _row_id(rid, at), cell, src


def _cell_labels(cell: Any, cfg: IngestConfig) -> list[str]:
    """The labels of a feedback file's ``labels`` cell, split and mapped like the input's."""
    labels = parse_labels(cell, cfg.label_separator)
    if labels and cfg.label_map:
        labels = map_labels([labels], cfg.label_map, cfg.keep_only_mapped)[0][0]
    return labels


def _check_known_id(at: str, rid: str, row_of: dict[str, int], cfg: IngestConfig) -> None:
    """Refuse a feedback-file row whose id is not a row of ``ingest.path``."""
    if rid not in row_of:
        hint = (
            f"ids are the {cfg.id_column!r} column of ingest.path"
            if cfg.id_column
            else "without ingest.id_column rows are named row-<n> (0-based)"
        )
        raise InputDataError(
            f"{at}: id {rid!r} (column 'id') is not a row of ingest.path; {hint}. "
            "Fix the id or remove the line"
        )


def _row_id(value: Any, at: str) -> str:
    rid = "" if _is_missing(value) else _scalar_label(value)
    if not rid:
        raise InputDataError(f"{at}: column 'id' is empty; every row needs the row's id")
    return rid


def read_extra_labels(
    cfg: IngestConfig,
    ids: list[str],
    input_labels: list[list[str]],
    names: list[str],
    multi_label: bool,
) -> tuple[dict[str, list], dict[str, Any]]:
    """Read and check ``cfg.extra_labels`` against the ingested rows.

    Returns (columns ``id``, ``labels``, ``source``; facts). Every id must be a row of the
    input that carries no label there, at most once over all files; every label one of the
    input's labels. Rows with an empty label cell are skipped (counted).
    """
    out, facts, _ = _read_extra_labels(cfg, ids, input_labels, names, multi_label)
    return out, facts


def _read_extra_labels(
    cfg: IngestConfig,
    ids: list[str],
    input_labels: list[list[str]],
    names: list[str],
    multi_label: bool,
) -> tuple[dict[str, list], dict[str, Any], dict[str, str]]:
    """:func:`read_extra_labels`, plus where each labelled id was read (file and line)."""
    row_of = {i: n for n, i in enumerate(ids)}
    seen: dict[str, str] = {}
    out: dict[str, list] = {"id": [], "labels": [], "source": []}
    skipped = 0
    per_source: Counter = Counter()
    files = []
    for k, path, place, at, rid, cell, src in _feedback_rows(cfg, "extra_labels", files):
        labels = _cell_labels(cell, cfg)
        if not labels:
            skipped += 1
            continue
        _check_known_id(at, rid, row_of, cfg)
        if rid in seen:
            raise InputDataError(
                f"{at}: id {rid!r} was already labelled in {seen[rid]}; keep one label "
                "row per id over all ingest.extra_labels files"
            )
        if input_labels[row_of[rid]]:
            raise InputDataError(
                f"{at}: id {rid!r} already carries labels {input_labels[row_of[rid]]} in "
                "ingest.path; extra labels are for unlabeled pool rows: remove the line, "
                "or correct the label with ingest.label_fixes (or in the input file)"
            )
        _check_label_names(at, rid, labels, names, multi_label, cfg)
        source = "" if _is_missing(src) else str(src).strip()
        source = source or f"round-{k}"
        seen[rid] = f"{path} {place}"
        out["id"].append(rid)
        out["labels"].append(sorted(labels))
        out["source"].append(source)
        per_source[source] += 1
    facts = {
        "files": files,
        "rows": len(out["id"]),
        "skipped_unlabelled": skipped,
        "per_source": dict(sorted(per_source.items())),
        "label_counts": dict(sorted(Counter(x for r in out["labels"] for x in r).items())),
    }
    return out, facts, seen


def _check_label_names(
    at: str,
    rid: str,
    labels: list[str],
    names: list[str],
    multi_label: bool,
    cfg: IngestConfig,
    fix: bool = False,
) -> None:
    unknown = [lab for lab in labels if lab not in names]
    if unknown:
        raise InputDataError(
            f"{at}: column 'labels' holds {unknown}, not a label of the input "
            f"({', '.join(names)}); fix the spelling (separator {cfg.label_separator!r}) or add "
            "the label through ingest.label_map"
            + (
                f"; write {DROP} to remove the row, leave the cell empty to keep its labels"
                if fix
                else ""
            )
        )
    if len(labels) > 1 and not multi_label:
        raise InputDataError(
            f"{at}: id {rid!r} gets {len(labels)} labels {labels} (column 'labels') but the "
            "data is single-label; keep one label per row"
        )


def is_drop(cell: Any) -> bool:
    """A label-fix cell that removes the row: the text ``DROP`` in any case."""
    return isinstance(cell, str) and cell.strip().upper() == DROP


def read_label_fixes(
    cfg: IngestConfig,
    ids: list[str],
    input_labels: list[list[str]],
    names: list[str],
    multi_label: bool,
    extra_labelled: dict[str, str] | None = None,
) -> tuple[dict[str, list], dict[str, Any]]:
    """Read and check ``cfg.label_fixes`` against the ingested rows.

    Returns (columns ``id``, ``action`` (``relabel`` / ``drop``), ``labels`` (the new
    labels; empty for ``drop``), ``given`` (the input's labels), ``source``; facts). Every
    id must be a row of the input that carries labels there, fixed at most once over all
    files; every label one of the input's labels. ``extra_labelled`` (id -> file and line)
    names where a pool row was labelled, for the message when such a row is "fixed". Empty
    cells and fixes equal to the input's labels change nothing (counted).
    """
    row_of = {i: n for n, i in enumerate(ids)}
    extra_labelled = extra_labelled or {}
    seen: dict[str, str] = {}
    out: dict[str, list] = {"id": [], "action": [], "labels": [], "given": [], "source": []}
    blank = unchanged = 0
    per_source: Counter = Counter()
    files = []
    for k, path, place, at, rid, cell, src in _feedback_rows(cfg, "label_fixes", files):
        drop = is_drop(cell)
        labels = [] if drop else _cell_labels(cell, cfg)
        if not drop and not labels:
            blank += 1
            continue
        _check_known_id(at, rid, row_of, cfg)
        if rid in seen:
            raise InputDataError(
                f"{at}: id {rid!r} (column 'id') was already fixed in {seen[rid]}; keep one "
                "fix per id over all ingest.label_fixes files: remove one of the lines or "
                "empty its 'labels' cell"
            )
        given = input_labels[row_of[rid]]
        if not given:
            where = extra_labelled.get(rid)
            raise InputDataError(
                f"{at}: id {rid!r} (column 'id') carries no label in ingest.path; "
                + (
                    f"it was labelled through ingest.extra_labels ({where}): correct the "
                    "label there"
                    if where
                    else "label pool rows through ingest.extra_labels instead"
                )
                + ", and remove the line or empty its 'labels' cell here"
            )
        if not drop:
            _check_label_names(at, rid, labels, names, multi_label, cfg, fix=True)
        seen[rid] = f"{path} {place}"
        if not drop and sorted(labels) == sorted(given):
            unchanged += 1
            continue
        source = "" if _is_missing(src) else str(src).strip()
        source = source or f"fixed-{k}"
        out["id"].append(rid)
        out["action"].append(DROP_ACTION if drop else RELABEL_ACTION)
        out["labels"].append(sorted(labels))
        out["given"].append(sorted(given))
        out["source"].append(source)
        per_source[source] += 1
    actions = Counter(out["action"])
    facts = {
        "files": files,
        "relabelled": actions[RELABEL_ACTION],
        "dropped": actions[DROP_ACTION],
        "skipped_empty": blank,
        "unchanged": unchanged,
        "per_source": dict(sorted(per_source.items())),
    }
    return out, facts


def _fix_lines(fixes: dict[str, list], facts: dict[str, Any], max_rows: int) -> list[str]:
    lines = [
        f"Label fixes from {', '.join(f'`{f}`' for f in facts['files'])}: **{facts['relabelled']}** "
        f"row(s) relabelled, **{facts['dropped']}** dropped (cell `{DROP}`); empty label cells: "
        f"{facts['skipped_empty']}, fixes equal to the input's labels: {facts['unchanged']}. "
        "Each row keeps its split; the split stage applies the fixes.\n",
    ]
    if fixes["id"]:
        shown = list(zip(*fixes.values(), strict=True))[:max_rows]
        lines += [
            "### Label fixes"
            + (f" (first {max_rows})" if len(fixes["id"]) > max_rows else "")
            + "\n",
            md_table(
                [
                    {
                        "id": rid,
                        "given": ";".join(given),
                        "now": DROP if action == DROP_ACTION else ";".join(labels),
                        "source": source,
                    }
                    for rid, action, labels, given, source in shown
                ]
            ),
        ]
    return lines


def run_extra_labels(
    store: StageStore, cfg: IngestConfig, rows: StageRef, refresh: bool = False
) -> StageRef:
    """Check and store ``cfg.extra_labels`` and ``cfg.label_fixes`` against the ingest
    stage's rows (``rows``): ``extra_labels/`` (pool rows labelled) and ``fixes/``
    (labelled rows relabelled or dropped)."""
    from label_pipeline.data import load_rows, read_label_info

    rows = store.localize(rows)
    inputs = {"rows": rows, **extra_label_inputs(cfg)}

    def builder(ctx: BuildContext) -> dict[str, Any]:
        data = load_rows(rows.dir)
        names, multi_label = read_label_info(rows.dir)
        ids, input_labels = [str(i) for i in data["id"]], list(data["labels"])
        columns, facts, where = _read_extra_labels(cfg, ids, input_labels, names, multi_label)
        fixes, fix_facts = read_label_fixes(cfg, ids, input_labels, names, multi_label, where)
        save_dataset(
            datasets.Dataset.from_dict(columns, features=EXTRA_FEATURES), ctx.dir / "extra_labels"
        )
        save_dataset(datasets.Dataset.from_dict(fixes, features=FIX_FEATURES), ctx.dir / "fixes")
        sample = [
            {"id": i, "labels": lab, "source": s, "change": "labelled"}
            for i, lab, s in list(zip(*columns.values(), strict=True))[: cfg.sample_rows]
        ]
        sample += [
            {"id": i, "labels": lab, "source": s, "change": f"{a}: was {g}"}
            for i, a, lab, g, s in list(zip(*fixes.values(), strict=True))[: cfg.sample_rows]
        ]
        if facts["files"]:
            lines = [
                f"Extra labels from {', '.join(f'`{f}`' for f in facts['files'])}: **{facts['rows']}** "
                f"rows (rows with an empty label cell skipped: {facts['skipped_unlabelled']}).\n",
                "### Rows per source\n",
                md_table([{"source": k, "rows": v} for k, v in facts["per_source"].items()]),
                "### Label counts\n",
                md_table([{"label": k, "rows": v} for k, v in facts["label_counts"].items()]),
            ]
        else:
            lines = ["No extra labels (ingest.extra_labels is not set).\n"]
        if fix_facts["files"]:
            lines += _fix_lines(fixes, fix_facts, 30)
        write_summary(ctx.dir, "\n".join(lines), sample)
        return {**facts, "label_fixes": fix_facts}

    return store.build(EXTRA_STAGE, EXTRA_VERSION, cfg, inputs, builder, refresh)
