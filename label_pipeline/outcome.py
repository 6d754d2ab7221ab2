"""A run's result in three lines, for the end of ``make run``: the final model and its test
score, the rows labelled, and where the labelled file and ``to_label.csv`` are.

Read from the stage directories the run returned (``{stage: {"path": ...}}``): the evaluate
stage's ``best.json``, the label stage's manifest and files, the suggest stage's CSV.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _dir(result: Mapping[str, Any], stage: str) -> Path | None:
    ref = result.get(stage)
    path = ref.get("path") if isinstance(ref, Mapping) else None
    return Path(path) if path else None


def _read(path: Path | None) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}


def _show(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


def _model_line(result: Mapping[str, Any]) -> str:
    evaluate = _dir(result, "evaluate")
    best = _read(evaluate / "best.json") if evaluate else {}
    if not best.get("method"):
        return "final model: none (the train and evaluate stages did not run)"
    metric = str(best.get("metric") or "").split()[-1] or "micro_f1"
    test = best.get("test") or {}
    score = test.get(metric)
    line = f"final model: {best['method']} (training slice {best.get('slice', '?')})"
    if score is None:
        return line + ", no test score"
    line += f", test {metric} {score:.3f}"
    interval = (test.get("interval_95") or {}).get(metric)
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        line += f" (95 % interval {interval[0]:.3f}-{interval[1]:.3f})"
    return line


def _labelled_line(result: Mapping[str, Any]) -> str:
    label = _dir(result, "label")
    if label is None:
        return "rows labelled: none (the label stage did not run)"
    manifest = _read(label / "manifest.json")
    rows = manifest.get("rows")
    per_label = manifest.get("predicted_per_label") or {}
    counts = ", ".join(f"{k} {v}" for k, v in sorted(per_label.items(), key=lambda kv: -kv[1]))
    line = f"rows labelled: {rows if rows is not None else '?'} pool rows"
    if counts:
        line += f" ({counts}"
        if manifest.get("rows_without_label"):
            line += f"; {manifest['rows_without_label']} with no label"
        line += ")"
    return line


def _files_line(result: Mapping[str, Any]) -> str:
    parts = []
    label = _dir(result, "label")
    if label is not None:
        for name in ("labelled.jsonl", "labelled.parquet", "labelled"):
            if (label / name).exists():
                also = (
                    " (and labelled.parquet)"
                    if name.endswith(".jsonl") and (label / "labelled.parquet").is_file()
                    else ""
                )
                parts.append(f"labelled rows {_show(label / name)}{also}")
                break
    suggest = _dir(result, "suggest")
    if suggest is not None and (suggest / "to_label.csv").is_file():
        parts.append(f"rows to label next {_show(suggest / 'to_label.csv')}")
    return "files: " + (
        "; ".join(parts) if parts else "none (the label and suggest stages did not run)"
    )


def result_lines(result: Mapping[str, Any]) -> list[str]:
    """Three lines: the final model and its test score, the rows labelled, the files."""
    return [_model_line(result), _labelled_line(result), _files_line(result)]
