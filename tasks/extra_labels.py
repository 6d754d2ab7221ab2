"""The `extra_labels` stage: the labelling loop's label files checked against the rows.

``ingest.extra_labels`` (pool rows a person labelled: they join the training split) and
``ingest.label_fixes`` (labelled rows relabelled or dropped, e.g. from the quality stage's
``label_issues.csv``) are read, every id checked against the ingest stage's rows and every
label against the known names, and stored:

- ``extra_labels/``: ``id``, ``labels``, ``source`` (the file it came from);
- ``fixes/``: ``id``, ``action`` (relabel / drop), ``labels``, ``given``, ``source``;
- ``summary.md``, ``sample.json``.

The split stage applies both. The stage runs only when either option is set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pandas as pd

from label_pipeline.artifacts import md_table
from label_pipeline.data import save_dataset
from label_pipeline.errors import ConfigError, InputDataError
from label_pipeline.orchestration import write_summary
from label_pipeline.reading import (
    IngestConfig,
    LabelCellError,
    detect_format,
    is_missing,
    map_labels,
    parse_labels,
    read_frame,
    read_text,
    resolve_path,
    scalar_label,
)
from label_pipeline.store import BuildContext, StageRef, StageSpec, StageStore, file_fingerprint

SPEC = StageSpec(
    "extra_labels",
    "2",
    select=lambda cfg, refs: {"rows": refs["rows"], **extra_label_inputs(cfg)},
)
STAGE, VERSION = SPEC.name, SPEC.version
FEATURES = datasets.Features(
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
    text = read_text(path, cfg, [])
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


def _cell_labels(cell: Any, cfg: IngestConfig, at: str = "") -> list[str]:
    """The labels of a feedback file's ``labels`` cell, split and mapped like the input's
    (``at`` names the file and line in messages)."""
    try:
        labels = parse_labels(cell, cfg.label_separator)
    except LabelCellError as exc:
        raise InputDataError(
            f"{at}: column 'labels': {exc}; write the labels as one flat list of names "
            f"or as text joined by {cfg.label_separator!r}"
        ) from None
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
    rid = "" if is_missing(value) else scalar_label(value)
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
        labels = _cell_labels(cell, cfg, at)
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
        source = "" if is_missing(src) else str(src).strip()
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
        labels = [] if drop else _cell_labels(cell, cfg, at)
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
        source = "" if is_missing(src) else str(src).strip()
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

    def builder(ctx: BuildContext) -> dict[str, Any]:
        data = load_rows(rows.dir)
        names, multi_label = read_label_info(rows.dir)
        ids, input_labels = [str(i) for i in data["id"]], list(data["labels"])
        columns, facts, where = _read_extra_labels(cfg, ids, input_labels, names, multi_label)
        fixes, fix_facts = read_label_fixes(cfg, ids, input_labels, names, multi_label, where)
        save_dataset(
            datasets.Dataset.from_dict(columns, features=FEATURES), ctx.dir / "extra_labels"
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

    return store.build_stage(SPEC, cfg, {"rows": rows}, builder, refresh)
