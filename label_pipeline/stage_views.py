"""What a person sees of a stage's data in the Prefect UI, from any machine: tables computed
from the Arrow datasets in the stage directory, not links to a worker's disk.

- :func:`label_counts`: rows per label for every dataset of the stage (per split for a
  ``DatasetDict`` such as the split stage's ``splits/``), with the rows without a label and
  the total;
- :func:`confidence_rows`: for a dataset with ``prob_<label>`` columns (the label stage's
  labelled pool), the most and the least confident rows of every label, with their
  probability.

Both read the ``labels`` (or ``predicted_labels``) list column with pyarrow; they never load
the texts of the whole dataset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: the label column, in order of preference: given labels, else the predicted ones
LABEL_COLUMNS = ("labels", "predicted_labels")
NO_LABEL = "(no label)"
TOTAL = "all rows"


def stage_datasets(stage_dir: str | Path) -> list[tuple[str, Path]]:
    """The Arrow datasets directly inside a stage directory, as (name, directory): a
    ``DatasetDict`` gives one entry per split (named by the split)."""
    out: list[tuple[str, Path]] = []
    root = Path(stage_dir)
    if not root.is_dir():
        return out
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (sub / "dataset_dict.json").is_file():
            try:
                splits = json.loads((sub / "dataset_dict.json").read_text())["splits"]
            except (OSError, ValueError, KeyError):
                continue
            out.extend((s, sub / s) for s in splits if (sub / s / "state.json").is_file())
        elif (sub / "state.json").is_file():
            out.append((sub.name, sub))
    return out


def _table(directory: Path, columns: list[str] | None = None) -> Any:
    """The dataset's rows as one pyarrow Table (memory-mapped), only ``columns`` if given."""
    import pyarrow as pa

    state = json.loads((directory / "state.json").read_text())
    tables = []
    for f in state.get("_data_files", []):
        with pa.memory_map(str(directory / f["filename"])) as source:
            t = pa.ipc.open_stream(source).read_all()
        tables.append(t.select([c for c in columns if c in t.column_names]) if columns else t)
    if not tables:
        return None
    return pa.concat_tables(tables)


def _schema_names(directory: Path) -> list[str]:
    try:
        info = json.loads((directory / "dataset_info.json").read_text())
    except (OSError, ValueError):
        return []
    return list((info.get("features") or {}).keys())


def _label_column(names: list[str]) -> str | None:
    return next((c for c in LABEL_COLUMNS if c in names), None)


def _counts(table: Any, column: str) -> tuple[dict[str, int], int]:
    """Rows per label of a list-of-strings (or string) column, and the rows without one."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(column)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = pc.fill_null(pc.list_value_length(col), 0)
        empty = int(pc.sum(pc.equal(lengths, 0)).as_py() or 0)
        values = pc.list_flatten(col)
    else:
        empty = int(col.null_count)
        values = col
    counts = {}
    for item in pc.value_counts(values).to_pylist():
        if item["values"] not in (None, ""):
            counts[str(item["values"])] = int(item["counts"])
    return counts, empty


def label_counts(stage_dir: str | Path) -> list[dict[str, Any]]:
    """One row per label (then the rows without a label and the total), one column per
    dataset or split of the stage that has a label column. Empty when none has."""
    columns: dict[str, tuple[dict[str, int], int, int]] = {}
    for name, directory in stage_datasets(stage_dir):
        column = _label_column(_schema_names(directory))
        if column is None:
            continue
        table = _table(directory, [column])
        if table is None:
            continue
        counts, empty = _counts(table, column)
        key = name if name not in columns else f"{Path(directory).parent.name}/{name}"
        columns[key] = (counts, empty, table.num_rows)
    if not columns:
        return []
    labels = sorted({label for counts, _, _ in columns.values() for label in counts})
    rows = [
        {"label": label, **{k: c.get(label, 0) for k, (c, _, _) in columns.items()}}
        for label in labels
    ]
    rows.append({"label": NO_LABEL, **{k: e for k, (_, e, _) in columns.items()}})
    rows.append({"label": TOTAL, **{k: n for k, (_, _, n) in columns.items()}})
    return rows


def confidence_rows(
    stage_dir: str | Path, k: int = 3, text_chars: int = 200
) -> list[dict[str, Any]]:
    """For the first dataset of the stage with ``prob_<label>`` columns: per label, the ``k``
    rows given that label with the highest and the ``k`` with the lowest probability of it
    (a row is given a label when ``predicted_labels``/``labels`` hold it, else when it is
    the row's most probable label)."""
    import numpy as np

    for _name, directory in stage_datasets(stage_dir):
        names = _schema_names(directory)
        probs = [c for c in names if c.startswith("prob_")]
        if not probs:
            continue
        column = _label_column(names)
        wanted = [c for c in ("id", "text") if c in names] + probs + ([column] if column else [])
        table = _table(directory, wanted)
        if table is None or table.num_rows == 0:
            return []
        matrix = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in probs])
        given = table.column(column).to_pylist() if column else None
        top = matrix.argmax(axis=1)
        out: list[dict[str, Any]] = []
        for j, pcol in enumerate(probs):
            label = pcol[len("prob_") :]
            if given is not None:
                rows = np.array([i for i, g in enumerate(given) if g and label in g], dtype=int)
            else:
                rows = np.flatnonzero(top == j)
            if rows.size == 0:
                continue
            order = rows[np.argsort(-matrix[rows, j], kind="stable")]
            picks = [("most confident", i) for i in order[:k]]
            picks += [("least confident", i) for i in order[::-1][:k] if i not in order[:k]]
            for which, i in picks:
                row = {"label": label, "rank": which, "probability": round(float(matrix[i, j]), 4)}
                if "id" in table.column_names:
                    row["id"] = table.column("id")[int(i)].as_py()
                if "text" in table.column_names:
                    text = str(table.column("text")[int(i)].as_py() or "")
                    row["text"] = text if len(text) <= text_chars else text[: text_chars - 1] + "…"
                if given is not None:
                    row[column] = ", ".join(given[int(i)] or [])
                out.append(row)
        return out
    return []
