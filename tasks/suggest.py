"""The `suggest` stage: which unlabeled pool rows to label next.

After the label stage has given every pool row probabilities, a query strategy
(``label_pipeline.active``: random, least-confidence / margin / entropy through
small-text's query strategies, per-label uncertainty for multi-label data, and the
diversity-aware ``diverse`` and ``k_center``) picks ``n`` distinct pool rows. With
``cover_rare_labels`` the labels rarest in the training split first get the pool rows most
likely to carry them. Rows a reviewer rejected at the review gate after the label stage
come first: the model got them wrong.

Fill the ``labels`` column of ``to_label.csv`` (labels joined by ``label_separator``) and
pass the file as ``ingest.extra_labels``: the next run moves those rows from the pool into
the training split with the provenance in the file's ``source`` column (``round-<n>``).

Output directory: ``to_label.csv`` (``rank``, ``id``, ``text``, ``labels`` (empty, for
you), ``guess`` (the model's labels), ``prob_<label>``, ``score`` (the strategy's
uncertainty, distance or probability), ``reason``, ``source``), ``suggestions.json``
(strategy, round, ids), ``summary.md``, ``sample.json`` (the rows to label).
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from label_pipeline.active import NEEDS_EMBEDDINGS, STRATEGIES, check_strategy, suggest
from label_pipeline.artifacts import md_table, publish_table
from label_pipeline.devices import DeviceConfig, choose_device
from label_pipeline.errors import InputDataError
from label_pipeline.models import DEFAULT_ENCODER
from label_pipeline.orchestration import write_summary
from label_pipeline.progress import Progress, stage_logger
from label_pipeline.store import BuildContext, StageRef, StageSpec, StageStore

SPEC = StageSpec("suggest", "1")
STAGE, VERSION = SPEC.name, SPEC.version
ROUND_SOURCE = re.compile(r"^round-(\d+)$")


class SuggestConfig(BaseModel):
    """Settings of the ``suggest`` stage (the next rows to label).

    Attributes:
        enabled: run the stage (it needs the label stage).
        n: pool rows to suggest (fewer when the pool is smaller).
        strategy: ``auto`` (``least_confidence`` for single-label, ``label_uncertainty``
            for multi-label data: the best of each kind in ``bench/bench_loop.py``),
            ``random`` (the control), ``least_confidence``, ``margin``, ``entropy``
            (single-label), ``label_uncertainty``, ``diverse`` (uncertain rows spread over
            k-means clusters of their embeddings) or ``k_center`` (greedy core-set over
            embeddings).
        cover_rare_labels: first give the labels with fewer labelled training rows than the
            median label the pool rows most likely to carry them.
        rare_rows_per_label: rows per rare label; None = half of ``n`` shared out.
        candidate_factor: ``diverse`` clusters the ``candidate_factor`` × n most uncertain rows.
        encoder: sentence encoder for ``diverse`` and ``k_center`` (hub id or directory).
        label_separator: joins several labels in the ``guess`` column; use the same as
            ``ingest.label_separator`` so the filled file reads back as extra labels.
        seed: random draws and k-means initialisation.
        device: device and batch size for the embeddings.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    n: int = Field(50, ge=1)
    strategy: Literal["auto", *STRATEGIES] = "auto"  # type: ignore[valid-type]
    cover_rare_labels: bool = False
    rare_rows_per_label: int | None = Field(None, ge=1)
    candidate_factor: int = Field(10, ge=1)
    encoder: str = DEFAULT_ENCODER
    label_separator: str = ";"
    seed: int = 0
    device: DeviceConfig = Field(default_factory=DeviceConfig)

    def resolved_strategy(self, multi_label: bool) -> str:
        if self.strategy != "auto":
            return self.strategy
        return "label_uncertainty" if multi_label else "least_confidence"


def next_round(sources: list[str]) -> int:
    """1 + the highest ``round-<n>`` among the training rows' sources."""
    rounds = [int(m.group(1)) for s in sources if (m := ROUND_SOURCE.match(str(s)))]
    return max(rounds, default=0) + 1


def embed_with_progress(encoder_dir: Path, texts: list[str], device: Any, desc: str) -> np.ndarray:
    """Embeddings of ``texts`` in chunks, so long pools show progress."""
    from label_pipeline.embeddings import embed_texts

    chunk = 1024
    parts = []
    with Progress(len(texts), STAGE, desc=desc) as progress:
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            parts.append(embed_texts(encoder_dir, part, device))
            progress.update(len(part))
    if not parts:
        return embed_texts(encoder_dir, [], device)
    return np.concatenate(parts)


# ---------------------------------------------------------------- the choice (no store, no Prefect)


#: the reason given for the rows rejected at the review gate, which come first
REJECTED_REASON = "the reviewer rejected the model's labels"


@dataclass
class Suggestions:
    """The pool rows :func:`choose_rows` suggests, in rank order.

    Attributes:
        strategy: the query strategy that chose them (``auto`` resolved).
        round_no: the labelling round they are for (their ``source`` is ``round-<n>``).
        rows: one dict per row, the ``columns`` of ``to_label.csv``.
        columns: the columns of ``to_label.csv``.
        pool_rows: rows in the pool.
        rejected_first: rows rejected at the review gate, put first.
        labelled_counts: labelled training rows per label.
    """

    strategy: str
    round_no: int
    rows: list[dict[str, Any]]
    columns: list[str]
    pool_rows: int
    rejected_first: int
    labelled_counts: Counter[str]

    @property
    def source(self) -> str:
        return f"round-{self.round_no}"


def choose_rows(
    ids: list[str],
    texts: list[str],
    probs: np.ndarray,
    labels: list[str],
    multi_label: bool,
    cfg: SuggestConfig,
    *,
    guesses: list[list[str]] | None = None,
    thresholds: np.ndarray | float = 0.5,
    train_labels: list[list[str]] | None = None,
    train_sources: list[str] | None = None,
    train_texts: list[str] | None = None,
    rejected: list[str] | None = None,
    embed: Callable[[list[str], list[str]], tuple[np.ndarray, np.ndarray]] | None = None,
) -> Suggestions:
    """The next ``cfg.n`` pool rows to label.

    The pool rows are ``ids`` and ``texts`` with the label stage's ``probs`` (rows x
    ``labels``), ``guesses`` (its labels) and ``thresholds``; the training rows are given by
    their labels, sources (``round-<n>``) and texts. The ``rejected`` ids (the review gate's)
    come first, then the rows ``cfg.strategy`` picks; ``embed`` (pool texts, training texts ->
    their embeddings) serves the strategies that need embeddings."""
    strategy = cfg.resolved_strategy(multi_label)
    counts = Counter(lab for row in train_labels or [] for lab in row)
    round_no = next_round(list(train_sources or []))
    first = _rejected_first(ids, rejected or [], cfg.n)
    rest = np.setdiff1d(np.arange(len(ids)), first)
    embeddings = labelled_emb = None
    if strategy in NEEDS_EMBEDDINGS and len(rest) and embed is not None:
        strs = [str(t) for t in texts]
        embeddings, labelled_emb = embed([strs[i] for i in rest], list(train_texts or []))
    chosen = suggest(
        strategy,
        probs[rest],
        labels,
        multi_label,
        cfg.n - len(first),
        thresholds=thresholds,
        embeddings=embeddings,
        labelled_embeddings=labelled_emb,
        labelled_counts=dict(counts),
        cover_rare_labels=cfg.cover_rare_labels,
        rare_rows_per_label=cfg.rare_rows_per_label,
        candidate_factor=cfg.candidate_factor,
        seed=cfg.seed,
    )
    order = first + [int(rest[p]) for p in chosen.positions]
    reasons = [REJECTED_REASON] * len(first) + chosen.reasons
    score_of = [1.0] * len(first) + chosen.scores
    if len(set(order)) != len(order):  # the strategies promise distinct rows
        raise RuntimeError(f"suggest: strategy {strategy!r} returned a row twice")
    prob_cols = [f"prob_{name}" for name in labels]
    return Suggestions(
        strategy,
        round_no,
        _ranked_rows(
            ids,
            texts,
            probs,
            prob_cols,
            list(zip(order, reasons, score_of, strict=True)),
            guesses,
            cfg.label_separator,
            f"round-{round_no}",
        ),
        ["rank", "id", "text", "labels", "guess", *prob_cols, "score", "reason", "source"],
        len(ids),
        len(first),
        counts,
    )


def _rejected_first(ids: list[str], rejected: list[str], n: int) -> list[int]:
    """Positions of the ``rejected`` ids still in the pool, at most ``n``."""
    pos = {i: k for k, i in enumerate(ids)}
    first: list[int] = []
    for rid in rejected:
        if str(rid) in pos and len(first) < n:
            first.append(pos[str(rid)])
    return first


def _ranked_rows(
    ids: list[str],
    texts: list[str],
    probs: np.ndarray,
    prob_cols: list[str],
    chosen: list[tuple[int, str, float]],
    guesses: list[list[str]] | None,
    sep: str,
    source: str,
) -> list[dict[str, Any]]:
    """The rows of ``to_label.csv``: the ``chosen`` (pool position, reason, score), ranked
    from 1."""
    rows = []
    for rank, (p, why, sc) in enumerate(chosen, start=1):
        row: dict[str, Any] = {
            "rank": rank,
            "id": ids[p],
            "text": texts[p],
            "labels": "",
            "guess": sep.join(guesses[p]) if guesses is not None else "",
        }
        row.update({c: round(float(probs[p, j]), 4) for j, c in enumerate(prob_cols)})
        row.update({"score": round(float(sc), 4), "reason": why, "source": source})
        rows.append(row)
    return rows


# ---------------------------------------------------------------- the stage


def _read_review(review: StageRef | None) -> list[str]:
    """The ids the reviewer rejected at the review gate (none without it)."""
    if review is None or not (review.dir / "review.json").is_file():
        return []
    return json.loads((review.dir / "review.json").read_text()).get("reject_ids", [])


def _read_pool(labelled: StageRef, labels: list[str], held: set[str]) -> tuple[Any, np.ndarray]:
    """The label stage's pool rows that are still unlabelled, and their probabilities."""
    import datasets

    path = labelled.dir / "labelled"
    if not path.is_dir():
        raise InputDataError(f"{labelled.dir}: no labelled/ dataset; re-run the label stage")
    pool = datasets.load_from_disk(str(path))
    prob_cols = [f"prob_{name}" for name in labels]
    missing = [c for c in prob_cols if c not in pool.column_names]
    if missing:
        raise InputDataError(
            f"{path}: columns {missing} missing for the split stage's labels; re-run label"
        )
    ids = [str(i) for i in pool["id"]]
    keep = [k for k, i in enumerate(ids) if i not in held]
    if len(keep) < len(ids):  # the label stage labelled an older pool
        stage_logger().warning(
            "suggest: %d labelled rows are no longer in the pool", len(ids) - len(keep)
        )
        pool = pool.select(keep)
    probs = (
        np.stack([np.asarray(pool[c], dtype=np.float64) for c in prob_cols], axis=1)
        if len(pool)
        else np.zeros((0, len(labels)))
    )
    return pool, probs


def _read_thresholds(labelled: StageRef, labels: list[str]) -> np.ndarray | float:
    """The label stage's decision thresholds (0.5 when it has none per label)."""
    thresholds: np.ndarray | float = 0.5
    decision_path = labelled.dir / "model" / "decision.json"
    if decision_path.is_file():
        thr = json.loads(decision_path.read_text()).get("thresholds") or []
        if len(thr) == len(labels):
            thresholds = np.asarray(thr, dtype=np.float64)
    return thresholds


def _builder(cfg: SuggestConfig, splits: StageRef, labelled: StageRef, review: StageRef | None):
    def build(ctx: BuildContext) -> dict[str, Any]:
        from label_pipeline.data import load_splits, read_label_info

        labels, multi_label = read_label_info(splits.dir)
        check_strategy(cfg.resolved_strategy(multi_label), multi_label)
        dd = load_splits(splits.dir)
        train = dd["train"]
        held = {str(i) for part in ("train", "valid", "test") for i in dd[part]["id"]}
        pool, probs = _read_pool(labelled, labels, held)
        device = choose_device(cfg.device)

        def embed(pool_texts: list[str], train_texts: list[str]) -> tuple[Any, Any]:
            from label_pipeline.models import resolve_model

            enc = resolve_model(cfg.encoder, "suggest.encoder")
            return (
                embed_with_progress(enc, pool_texts, device, "embed the pool"),
                embed_with_progress(enc, train_texts, device, "embed the training rows"),
            )

        result = choose_rows(
            [str(i) for i in pool["id"]],
            pool["text"],
            probs,
            labels,
            multi_label,
            cfg,
            guesses=pool["predicted_labels"] if "predicted_labels" in pool.column_names else None,
            thresholds=_read_thresholds(labelled, labels),
            train_labels=train["labels"],
            train_sources=train["source"] if "source" in train.column_names else [],
            train_texts=[str(t) for t in train["text"]],
            rejected=_read_review(review),
            embed=embed,
        )
        return _write(ctx, cfg, labels, result)

    return build


# ---------------------------------------------------------------- outputs


def _write(
    ctx: BuildContext, cfg: SuggestConfig, labels: list[str], result: Suggestions
) -> dict[str, Any]:
    rows = result.rows
    with open(ctx.dir / "to_label.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=result.columns)
        writer.writeheader()
        writer.writerows(rows)
    (ctx.dir / "suggestions.json").write_text(
        json.dumps(
            {"strategy": result.strategy, "round": result.round_no, "ids": [r["id"] for r in rows]},
            indent=1,
        )
    )
    publish_table(
        STAGE, "to-label", rows, description=f"next {len(rows)} rows to label ({result.strategy})"
    )
    if result.pool_rows < cfg.n:
        stage_logger().warning(
            "suggest: the pool holds %d rows, fewer than suggest.n=%d", result.pool_rows, cfg.n
        )
    write_summary(ctx.dir, _summary(cfg, labels, result), rows[:50])
    return {
        "strategy": result.strategy,
        "round": result.round_no,
        "suggested": len(rows),
        "pool_rows": result.pool_rows,
        "rejected_first": result.rejected_first,
    }


def _summary(cfg: SuggestConfig, labels: list[str], result: Suggestions) -> str:
    rows, counts, sep = result.rows, result.labelled_counts, cfg.label_separator
    guessed = Counter(lab for r in rows for lab in r["guess"].split(sep) if lab)
    label_rows = [
        {"label": name, "labelled (train)": counts.get(name, 0), "guessed": guessed[name]}
        for name in labels
    ]
    why_counts = Counter(r["reason"].split(":")[0].split(" (")[0] for r in rows)
    first = result.rejected_first
    return "\n".join(
        [
            f"# suggest (round {result.round_no})\n",
            f"- strategy: **{result.strategy}**"
            + (", rarest labels first" if cfg.cover_rare_labels else ""),
            f"- suggested **{len(rows)}** of {result.pool_rows} pool rows"
            + (f" ({first} rejected at review first)" if first else ""),
            "- fill the `labels` column of `to_label.csv` "
            f"(labels joined by `{sep}`) and pass it as "
            f"`ingest.extra_labels`: the rows join training as `{result.source}`\n",
            "### Labelled rows per label and the model's guesses for the suggested rows\n",
            md_table(label_rows),
            "### Why rows were chosen\n",
            md_table([{"reason": k, "rows": v} for k, v in why_counts.most_common()]),
        ]
    )


def run_suggest(
    store: StageStore,
    cfg: SuggestConfig,
    splits: StageRef,
    labelled: StageRef,
    review: StageRef | None = None,
    refresh: bool = False,
) -> StageRef:
    """Choose the next ``cfg.n`` pool rows to label from the label stage's probabilities."""
    splits, labelled = store.localize(splits), store.localize(labelled)
    review = store.localize(review) if review is not None else None
    inputs = {"splits": splits, "labelled": labelled, "review": review}
    return store.build_stage(SPEC, cfg, inputs, _builder(cfg, splits, labelled, review), refresh)
