"""Publishing stage results to the Prefect UI: one home for artifact keys and formats.

Outside a Prefect flow or task run every function here is a no-op, so the plain
stage functions stay usable from tests and notebooks.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from label_pipeline.data import to_jsonable

log = logging.getLogger(__name__)


def in_prefect_run() -> bool:
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except Exception:  # pragma: no cover - prefect always installed
        return False
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def artifact_key(*parts: str) -> str:
    """Stable lowercase-dash key, e.g. ``artifact_key("zero_shot", "sample")`` -> ``zero-shot-sample``."""
    key = "-".join(parts).lower()
    key = re.sub(r"[^a-z0-9-]+", "-", key)
    return re.sub(r"-+", "-", key).strip("-")


def _shorten(value: Any, limit: int = 300) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[: limit - 1] + "…"
    return value


def publish_table(stage: str, name: str, rows: list[dict[str, Any]], description: str = "") -> None:
    if not in_prefect_run() or not rows:
        return
    from prefect.artifacts import create_table_artifact

    clean = [{k: _shorten(to_jsonable(v)) for k, v in row.items()} for row in rows]
    try:
        create_table_artifact(table=clean, key=artifact_key(stage, name), description=description)
    except Exception as exc:  # the UI is a view; never fail a stage over it
        log.warning("could not publish table artifact %s: %s", artifact_key(stage, name), exc)


def publish_markdown(stage: str, name: str, markdown: str, description: str = "") -> None:
    if not in_prefect_run():
        return
    from prefect.artifacts import create_markdown_artifact

    try:
        create_markdown_artifact(
            markdown=markdown, key=artifact_key(stage, name), description=description
        )
    except Exception as exc:
        log.warning("could not publish markdown artifact %s: %s", artifact_key(stage, name), exc)


def publish_link(stage: str, path: str | Path, description: str = "") -> None:
    if not in_prefect_run():
        return
    from prefect.artifacts import create_link_artifact

    p = Path(path).resolve()
    try:
        create_link_artifact(
            link=p.as_uri(),
            link_text=str(p),
            key=artifact_key(stage, "dir"),
            description=description or f"Stage directory of `{stage}`",
        )
    except Exception as exc:
        log.warning("could not publish link artifact for %s: %s", stage, exc)


def publish_image(stage: str, name: str, png_path: str | Path, caption: str = "") -> None:
    """Embed a PNG in a markdown artifact (data URI; small figures only)."""
    import base64

    p = Path(png_path)
    if not in_prefect_run() or not p.is_file():
        return
    data = base64.b64encode(p.read_bytes()).decode()
    publish_markdown(
        stage,
        name,
        f"### {caption or p.name}\n\n![{p.name}](data:image/png;base64,{data})\n\n`{p}`",
    )


def publish_stage(
    stage: str,
    ref_path: str | Path,
    summary_md: str,
    sample_rows: list[dict[str, Any]] | None = None,
    cached: bool = False,
) -> None:
    """The standard trio every stage publishes: sample table, markdown summary, directory link."""
    header = f"## {stage}\n\n" + ("_cache hit: nothing recomputed_\n\n" if cached else "")
    publish_markdown(stage, "summary", header + summary_md, description=f"{stage} summary")
    if sample_rows:
        publish_table(stage, "sample", sample_rows, description=f"{stage}: sample rows")
    publish_link(stage, ref_path)


def num(v: Any, digits: int = 3) -> str:
    """A score for tables and summaries: ``digits`` decimals, "–" when missing or NaN."""
    return "–" if v is None or (isinstance(v, float) and v != v) else f"{v:.{digits}f}"


def md_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A small markdown table from a list of dicts."""
    if not rows:
        return "_none_\n"
    columns = columns or list(rows[0].keys())
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            v = to_jsonable(row.get(c, ""))
            if isinstance(v, float):
                v = f"{v:.4g}"
            cells.append(str(v).replace("|", "\\|").replace("\n", " "))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
