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

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd

from label_pipeline.artifacts import md_table
from label_pipeline.data import CANONICAL_FEATURES, SPLITS, save_dataset, write_label_info
from label_pipeline.errors import InputDataError
from label_pipeline.orchestration import write_summary
from label_pipeline.progress import stage_logger
from label_pipeline.reading import (
    SPLIT_ALIASES,
    IngestConfig,
    LabelCellError,
    cell_text,
    column_of,
    detect_format,
    is_missing,
    map_labels,
    parse_labels,
    read_frame,
    read_slice_file,
    render_texts,
    resolve_path,
    scalar_label,
    with_derived_sections,
)
from label_pipeline.store import BuildContext, StageRef, StageSpec, StageStore, file_fingerprint

SPEC = StageSpec(
    "ingest",
    "2",
    resolve=lambda cfg: cfg.for_rows(),
    select=lambda cfg, refs: source_inputs(cfg),
)
STAGE, VERSION = SPEC.name, SPEC.version


@dataclass
class FileRows:
    """The canonical columns read from one input file."""

    ids: list[str]
    texts: list[str]
    labels: list[list[str]]
    splits: list[str]
    format: str
    pull_requests_excluded: int


def read_rows(path: Path, cfg: IngestConfig, start: int, warnings: list[str]) -> FileRows:
    """One input file's rows as canonical columns; ``start`` numbers its rows after those of
    the files before it (ids ``row-N`` when no id column is set)."""
    fmt = detect_format(path, cfg.format)
    frame, fmt, n_pr = read_frame(path, fmt, cfg, warnings)
    if fmt == "github":
        text_cols = cfg.text_columns or ["title", "body"]
        label_col = frame["labels"]
    else:
        text_cols = cfg.text_columns or [cfg.text_column]
        option = "text_columns" if cfg.text_columns else "text_column"
        column_of(frame, text_cols[0], option, str(path))
        label_col = column_of(frame, cfg.label_column, "label_column", str(path))
        frame = with_derived_sections(frame, text_cols, cfg.field_columns)
    if len(text_cols) > 1 or cfg.field_columns:
        text_col = render_texts(frame, text_cols, cfg.field_columns, str(path))
    elif fmt == "github":
        text_col = [cell_text(t) for t in frame[text_cols[0]]]
    else:
        text_col = frame[text_cols[0]]
    if cfg.id_column:
        ids = [
            "" if is_missing(v) else scalar_label(v)
            for v in column_of(frame, cfg.id_column, "id_column", str(path))
        ]
    else:
        ids = [f"row-{n}" for n in range(start, start + len(frame))]
    texts = ["" if is_missing(t) else str(t) for t in text_col]
    col = "labels[].name" if fmt == "github" else repr(cfg.label_column)
    labels = []
    for n, v in enumerate(label_col):
        try:
            labels.append(parse_labels(v, cfg.label_separator))
        except LabelCellError as exc:
            raise InputDataError(
                f"{path}: row {n + 1} (id {ids[n]!r}), column {col}: {exc}; write "
                'each row\'s labels as one flat list of names (["a", "b"]) or as text '
                f"joined by {cfg.label_separator!r} (ingest.label_separator)"
            ) from None
    return FileRows(ids, texts, labels, _user_splits(frame, cfg, path, start), fmt, n_pr)


def _user_splits(frame: pd.DataFrame, cfg: IngestConfig, path: Path, start: int) -> list[str]:
    """The user's split of each row (``ingest.split_column``; "" when not set)."""
    if not cfg.split_column:
        return [""] * len(frame)
    values = column_of(frame, cfg.split_column, "split_column", str(path))
    normalised = ["" if is_missing(v) else str(v).strip().lower() for v in values]
    bad = [(start + i, v) for i, v in enumerate(normalised) if v not in SPLIT_ALIASES]
    if bad:
        raise InputDataError(
            f"{path}: column {cfg.split_column!r} has values that are not a split name "
            f"(rows {[r for r, _ in bad[:5]]}: {sorted({v for _, v in bad})[:5]}); use "
            f"{', '.join(s for s in SPLITS)} or empty (or unset ingest.split_column)"
        )
    return [SPLIT_ALIASES[v] for v in normalised]


def _check_ids(ids: list[str], cfg: IngestConfig, source: str) -> None:
    if not ids:
        raise InputDataError(f"{source}: no rows; give a file with a header and at least one row")
    if not cfg.id_column:
        return
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


def _mapped_labels(
    raw_labels: list[list[str]],
    cfg: IngestConfig,
    label_col_name: str,
    source: str,
    warnings: list[str],
) -> tuple[list[list[str]], Counter]:
    """The labels after ``label_map``, checked: at least two labels occur. Returns (labels
    of each row, count of each label)."""
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
    return labels, counts


def _check_texts(texts: list[str], cfg: IngestConfig, source: str, warnings: list[str]) -> None:
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


def ingest_rows(cfg: IngestConfig) -> tuple[dict[str, list], dict[str, Any]]:
    """Read every input file into canonical columns. Returns (columns ``id``, ``text``,
    ``labels``, ``split``; facts: format, labels, multi_label, counts, warnings)."""
    warnings: list[str] = []
    files = [resolve_path(p) for p in cfg.paths()]
    parts: list[FileRows] = []
    for path in files:
        parts.append(read_rows(path, cfg, sum(len(p.ids) for p in parts), warnings))
    ids = [i for p in parts for i in p.ids]
    texts = [t for p in parts for t in p.texts]
    splits = [s for p in parts for s in p.splits]
    formats = [p.format for p in parts]
    source = ", ".join(str(f) for f in files)
    _check_ids(ids, cfg, source)
    label_col_name = "labels[].name" if "github" in formats else repr(cfg.label_column)
    raw_labels = [lab for p in parts for lab in p.labels]
    labels, counts = _mapped_labels(raw_labels, cfg, label_col_name, source, warnings)
    multi_rows = [n for n, row in enumerate(labels) if len(row) > 1]
    multi_label = bool(multi_rows) if cfg.multi_label is None else cfg.multi_label
    if cfg.multi_label is False and multi_rows:
        raise InputDataError(
            f"{source}: multi_label is false but {len(multi_rows)} row(s) carry several labels "
            f"(rows {multi_rows[:5]}, e.g. {labels[multi_rows[0]]}); set ingest.multi_label to "
            "null or true, or fix ingest.label_separator"
        )
    _check_texts(texts, cfg, source, warnings)
    facts = {
        "source": source,
        "format": formats[0] if len(set(formats)) == 1 else formats,
        "rows": len(ids),
        "labelled": sum(1 for row in labels if row),
        "multi_label": multi_label,
        "labels": sorted(counts),
        "label_counts": dict(sorted(counts.items())),
        "pull_requests_excluded": sum(p.pull_requests_excluded for p in parts),
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
    cfg = SPEC.config(cfg)

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

    return store.build_stage(SPEC, cfg, {}, builder, refresh)
