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
    """A link artifact to a stage directory (``file://``: only useful on the worker's own
    machine; :func:`publish_stage` publishes the directory as text instead)."""
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
    # the figure itself, no path: the worker's disk is not where the reader is
    publish_markdown(
        stage,
        name,
        f"### {caption or p.name}\n\n![{p.stem}](data:image/png;base64,{data})\n",
        description=f"{stage}: {caption or p.stem}",
    )


def _heading(stage: str, summary_md: str) -> tuple[str, str]:
    """The summary's own first heading (or ``# <stage>``) and the rest of it."""
    text = summary_md.lstrip("\n")
    first, _, rest = text.partition("\n")
    if re.match(r"#{1,6} ", first):
        return first, rest.lstrip("\n")
    return f"# {stage}", text


def cache_note(manifest: dict[str, Any] | None) -> str:
    """The line heading a cached stage's summary: a cache hit, and the run that built it."""
    manifest = manifest or {}
    built = manifest.get("flow_run") or {}
    when = manifest.get("created")
    host = manifest.get("host")
    note = "**Cache hit**: nothing recomputed in this run"
    if not (built.get("id") or when or host):
        return note
    if built.get("id"):
        name = built.get("name") or built["id"]
        # a relative link: it opens in the UI the reader is using, whatever its host
        by = [f"built by flow run [{name}](/runs/flow-run/{built['id']})"]
    else:
        by = ["built"]
    if when:
        by.append(f"at {when}")
    if host:
        by.append(f"on `{host}`")
    return f"{note}; {' '.join(by)}."


def where_text(stage: str, ref_path: str | Path, manifest: dict[str, Any] | None) -> str:
    """The stage directory as text: where it is, in which store, and how to open it."""
    manifest = manifest or {}
    p = Path(ref_path)
    lines = [f"- directory: `{p}`"]
    if manifest.get("store"):
        lines.append(f"- store: `{manifest['store']}`")
    if manifest.get("fingerprint"):
        lines.append(f"- fingerprint: `{manifest['fingerprint']}`")
    if manifest.get("host"):
        lines.append(f"- built on: `{manifest['host']}`")
    return "\n".join(lines) + "\n"


def publish_stage(
    stage: str,
    ref_path: str | Path,
    summary_md: str,
    sample_rows: list[dict[str, Any]] | None = None,
    cached: bool = False,
    manifest: dict[str, Any] | None = None,
) -> None:
    """What every stage publishes: its markdown summary (headed as a cache hit, naming the run
    that built it, when nothing was recomputed), a table of sample rows, and ``<stage>-dir``:
    the stage directory as text (a ``file://`` link would only open on the worker)."""
    heading, body = _heading(stage, summary_md)
    parts = [heading]
    if cached:
        parts.append(cache_note(manifest))
    parts.append(body.rstrip() + "\n" if body.strip() else "")
    parts.append("### Where\n\n" + where_text(stage, ref_path, manifest))
    markdown = "\n\n".join(x for x in parts if x)
    publish_markdown(stage, "summary", markdown, description=f"{stage} summary")
    if sample_rows:
        publish_table(stage, "sample", sample_rows, description=f"{stage}: sample rows")
    publish_markdown(
        stage,
        "dir",
        f"## {stage}: stage directory\n\n" + where_text(stage, ref_path, manifest),
        description=f"{stage}: where its outputs are",
    )


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
