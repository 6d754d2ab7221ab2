"""The `zero_shot` stage: score every unlabeled (and valid/test) row against every label with
a zero-shot backend, choose a selection rule on the validation split, and write pseudo-labels.

Backends (``label_pipeline.zeroshot``): ``nli`` (NLI cross-encoder), ``embedding``
(sentence-encoder similarity, works offline with the bundled all-MiniLM-L6-v2) and
``fill_mask`` (masked-LM prompt, e.g. on the adapt stage's encoder). ``auto`` takes ``nli``
when its model resolves, else ``embedding``.

Scoring runs in shards (``shard_size`` rows): each finished shard is written atomically to
``<store>/zero_shot/.shards-<fingerprint>/shard-NNNNN/`` and reused by the next attempt, so a
crash resumes from the last finished shard. :func:`plan_shards` and :func:`score_shard` are
the units another runner (Prefect mapped tasks, Dask) can map over before calling
:func:`run_zero_shot`, which then only assembles.

Output directory:

- ``unlabeled/``: ``id``, ``text``, ``score_<label>`` (scores in [0, 1], see the backend),
  ``labels`` (selected pseudo-labels, empty = none), ``confidence`` (the row's top score),
  ``truncated`` (text cut to the model's input limit);
- ``valid/``, ``test/``: the same scores with the gold ``labels`` and the selected ``predicted``;
- ``metrics.json`` (valid and test micro/macro-F1, accuracy), ``selection.json`` (rule,
  value, per-label thresholds, valid metrics), ``selection_curve.json`` and
  ``figures/selection_curve.png``, ``labels.json``, ``summary.md``, ``sample.json``;
- ``calibration.json``: the scores are not probabilities, so a calibrator
  (``label_pipeline.calibration``) is fitted on the valid scores (``calibration``), with its
  cross-fitted valid ECE / Brier / log loss before and after, and for a multi-label top-k rule
  the second calibrator of the labels the rule picks (``picked``, ``picked_calibration``);
- ``expected_precision.json``: from the calibrated pool scores, the expected precision and
  expected number of wrong pseudo-labels of the selected rule, per label and overall, with an
  interval, beside the precision the rule reaches on valid
  (``label_pipeline.expected_precision``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from label_pipeline.errors import ConfigError
from label_pipeline.orchestration import write_summary
from label_pipeline.progress import Progress, stage_logger
from label_pipeline.runners import RunnerConfig
from label_pipeline.shards import map_shards
from label_pipeline.store import BuildContext, StageRef, StageSpec, StageStore, atomic_directory
from label_pipeline.zeroshot import get_backend
from label_pipeline.zeroshot.base import ZeroShotBackend
from label_pipeline.zeroshot.loading import (
    LabelSpec,
    ResolvedBackend,
    ZeroShotConfig,
    label_spec,
    load_backend,
    release_backends,
)
from label_pipeline.zeroshot.selection import (
    Selection,
    apply_selection,
    choose_selection,
    f1_scores,
)

SPEC = StageSpec("zero_shot", "4")
STAGE, VERSION = SPEC.name, SPEC.version
SCORED_SPLITS = ("valid", "test", "unlabeled")
SHARD_DONE = "shard.json"


# ---------------------------------------------------------------- labels and inputs


def score_columns(labels: list[str]) -> list[str]:
    return [f"score_{name}" for name in labels]


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of one split; shard ``index`` counts over valid, test, unlabeled."""

    index: int
    split: str
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


def plan_shards(splits_dir: str | Path, shard_size: int) -> list[Shard]:
    """Deterministic shard plan: valid, then test, then the unlabeled pool, ``shard_size`` rows
    per shard (each split starts a new shard)."""
    from label_pipeline.data import load_splits

    dd = load_splits(splits_dir)
    shards: list[Shard] = []
    for split in SCORED_SPLITS:
        n = len(dd[split]) if split in dd else 0
        for start in range(0, n, shard_size):
            shards.append(Shard(len(shards), split, start, min(start + shard_size, n)))
    return shards


def shards_dir_for(store: StageStore, fingerprint: str) -> Path:
    """Where the finished shards of one stage fingerprint persist between attempts."""
    return store.root / STAGE / f".shards-{fingerprint}"


# ---------------------------------------------------------------- backends


# ---------------------------------------------------------------- scoring one shard


def _shard_features(labels: list[str]) -> Any:
    import datasets

    feats = {"id": datasets.Value("string"), "text": datasets.Value("string")}
    feats.update({c: datasets.Value("float32") for c in score_columns(labels)})
    feats["truncated"] = datasets.Value("bool")
    return datasets.Features(feats)


def score_shard(
    cfg: ZeroShotConfig,
    splits_dir: str | Path,
    shard_index: int,
    shards_dir: str | Path,
    encoder_dir: str | Path | None = None,
    progress: Progress | None = None,
    wait: bool = True,
) -> Path | None:
    """Score shard ``shard_index`` of :func:`plan_shards` and write it to
    ``<shards_dir>/shard-NNNNN/`` (a Dataset: ``id``, ``text``, ``score_<label>``, ``truncated``,
    plus ``shard.json``). Written to a temporary sibling and renamed when complete; a shard
    already there is reused, not recomputed. Returns the shard directory.

    Concurrent runs (and threads) claim a shard before scoring it (:func:`claim_shard`), so
    each shard is scored once: a shard another run is scoring is waited for and then reused,
    or with ``wait=False`` left to it (returns None).
    """
    shards = plan_shards(splits_dir, cfg.shard_size)
    if not 0 <= shard_index < len(shards):
        raise ValueError(
            f"shard_index {shard_index} out of range: the plan has {len(shards)} shards"
        )
    shard = shards[shard_index]
    out = Path(shards_dir) / shard.name
    if (out / SHARD_DONE).is_file() or _stage_complete(Path(shards_dir)):
        return out
    with claim_shard(Path(shards_dir), shard.name, wait) as claimed:
        if not claimed:
            return None
        # scored by another run while this one waited, or the stage is already complete
        if (out / SHARD_DONE).is_file() or _stage_complete(Path(shards_dir)):
            return out
        _score_into(cfg, splits_dir, shard, out, encoder_dir, progress)
    return out


@contextlib.contextmanager
def claim_shard(shards_dir: Path, name: str, wait: bool = True) -> Iterator[bool]:
    """Hold shard ``name``'s lock file (``<shards_dir>/.<name>.lock``, ``flock``) for the
    block: yields True once held, or False at once when another run (or thread) holds it and
    ``wait`` is False. The kernel releases the lock of a killed run."""
    import fcntl

    shards_dir.mkdir(parents=True, exist_ok=True)
    with open(shards_dir / f".{name}.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            stage_logger().info(
                "zero_shot: waiting for %s, which another run is scoring, to reuse it", name
            )
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _scored_by_this_process(shard_dir: Path) -> bool:
    try:
        meta = json.loads((shard_dir / SHARD_DONE).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("pid") == os.getpid() and meta.get("host") == socket.gethostname()


def _stage_complete(shards_dir: Path) -> bool:
    """The stage whose shards live in ``shards_dir`` (``.shards-<fp>``) is complete (the run
    that completed it removes the shards)."""
    fp = shards_dir.name.removeprefix(".shards-")
    return (shards_dir.parent / fp / "manifest.json").is_file()


def _score_into(
    cfg: ZeroShotConfig,
    splits_dir: str | Path,
    shard: Shard,
    out: Path,
    encoder_dir: str | Path | None,
    progress: Progress | None,
) -> None:
    """Score ``shard`` and write it to ``out`` (the caller holds its claim)."""
    import datasets

    from label_pipeline.data import load_splits

    spec = label_spec(splits_dir, cfg)
    backend, resolved = load_backend(cfg, encoder_dir)
    rows = load_splits(splits_dir)[shard.split].select(range(shard.start, shard.stop))
    texts, ids = rows["text"], [str(i) for i in rows["id"]]

    started = time.time()
    chunk = max(256, 4 * backend.batch_size)  # progress granularity within a shard
    scores, truncated = [], []
    for start in range(0, len(texts), chunk):
        res = backend.score(
            texts[start : start + chunk], spec.labels, spec.label_texts, spec.multi_label
        )
        scores.append(res.scores)
        truncated.append(res.truncated)
        if progress is not None:
            progress.update(len(res.scores))
    score_mat = np.concatenate(scores) if scores else np.zeros((0, len(spec.labels)), np.float32)
    trunc = np.concatenate(truncated) if truncated else np.zeros(0, bool)

    data: dict[str, Any] = {"id": ids, "text": texts}
    data.update({c: score_mat[:, j] for j, c in enumerate(score_columns(spec.labels))})
    data["truncated"] = trunc
    # the temporary directory names its writer, so a killed run's is swept (store.py)
    with atomic_directory(out) as tmp:
        datasets.Dataset.from_dict(data, features=_shard_features(spec.labels)).save_to_disk(
            str(tmp)
        )
        meta = {
            "split": shard.split,
            "start": shard.start,
            "stop": shard.stop,
            "rows": len(ids),
            "truncated": int(trunc.sum()),
            "seconds": round(time.time() - started, 3),
            "backend": resolved.name,
            "model": resolved.model_ref,
            "device": backend.device.describe(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        (tmp / SHARD_DONE).write_text(json.dumps(meta, indent=2))
        # an unfinished copy from an older attempt (no shard.json) is replaced
    stage_logger().info(
        "zero_shot: scored %s (%s rows %d-%d) in %.1f s",
        shard.name,
        shard.split,
        shard.start,
        shard.stop,
        meta["seconds"],
    )


# ---------------------------------------------------------------- assembling the stage


def _load_split_scores(shards_dir: Path, shards: list[Shard], split: str, labels: list[str]) -> Any:
    import datasets

    parts = [datasets.load_from_disk(str(shards_dir / s.name)) for s in shards if s.split == split]
    if not parts:
        return datasets.Dataset.from_dict(
            {k: [] for k in _shard_features(labels)}, features=_shard_features(labels)
        )
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def _save(ds: Any, path: Path) -> None:
    # a zero-row dataset saved with the default sharding writes no arrow file and cannot be
    # loaded back; one explicit shard keeps its schema
    ds.save_to_disk(str(path), num_shards=1 if len(ds) == 0 else None)


def _score_matrix(ds: Any, labels: list[str]) -> np.ndarray:
    cols = score_columns(labels)
    if len(ds) == 0:
        return np.zeros((0, len(labels)), dtype=np.float32)
    table = ds.with_format("numpy", columns=cols)
    return np.stack([table[c] for c in cols], axis=1).astype(np.float32)


def _with_selection(ds: Any, sel: Selection, labels: list[str], column: str) -> Any:
    """Add the selected labels (as ``column``) and ``confidence``, batch by batch."""
    import datasets

    cols = score_columns(labels)

    def add(batch: dict[str, list]) -> dict[str, list]:
        scores = np.stack([np.asarray(batch[c], dtype=np.float32) for c in cols], axis=1)
        picked = apply_selection(sel, scores, labels)
        return {
            column: [[labels[j] for j in np.flatnonzero(row)] for row in picked],
            "confidence": scores.max(axis=1).astype(np.float32).tolist() if len(scores) else [],
        }

    feats = ds.features.copy()
    feats[column] = datasets.Sequence(datasets.Value("string"))
    feats["confidence"] = datasets.Value("float32")
    if len(ds) == 0:  # map skips zero-row datasets and would not add the columns
        return datasets.Dataset.from_dict({k: [] for k in feats}, features=feats)
    return ds.map(add, batched=True, batch_size=4096, features=feats, desc=None)


def _LABELS_FEATURE() -> Any:  # noqa: N802
    import datasets

    return datasets.Sequence(datasets.Value("string"))


def _gold(splits: Any, split: str, ids: list[str], labels: list[str]) -> np.ndarray:
    from label_pipeline.data import label_matrix

    if split not in splits or len(splits[split]) == 0:
        return np.zeros((0, len(labels)), dtype=np.int64)
    ds = splits[split]
    by_id = dict(zip([str(i) for i in ds["id"]], ds["labels"], strict=True))
    return label_matrix([by_id[i] for i in ids], labels)


def _plot_curves(sel: Selection, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = sel.curves
    panels = [k for k in ("threshold", "top_k", "floor") if k in curves]
    fig, axes = plt.subplots(
        1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 4), squeeze=False
    )
    xlabel = {"threshold": "threshold", "top_k": "k (labels per row)", "floor": "confidence floor"}
    for ax, name in zip(axes[0], panels, strict=False):
        c = curves[name]
        for m in ("micro_f1", "macro_f1", "coverage"):
            if m in c:
                ax.plot(
                    c["value"],
                    c[m],
                    marker="." if name == "top_k" else None,
                    label=m.replace("_", "-"),
                )
        if sel.rule == name or (sel.rule == "argmax" and name == "floor"):
            ax.axvline(sel.value, color="grey", linestyle="--", label=f"chosen {sel.value:g}")
        ax.set_xlabel(xlabel[name])
        ax.set_ylabel("validation score")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if not panels:
        axes[0][0].text(0.5, 0.5, "no labelled validation rows", ha="center", va="center")
        axes[0][0].set_axis_off()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _distribution(rows: list[list[str]], labels: list[str]) -> dict[str, float]:
    n = max(len(rows), 1)
    return {name: sum(name in r for r in rows) / n for name in labels}


def _fmt(metrics: dict[str, float] | None) -> str:
    if not metrics:
        return "not measured (no labelled rows)"
    return ", ".join(f"{k.replace('_', '-')} {v:.3f}" for k, v in metrics.items())


def _eval(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float] | None:
    from label_pipeline.zeroshot.selection import accuracy

    if y_true.shape[0] == 0 or not y_true.any():
        return None
    out = f1_scores(y_true, y_pred)
    out["accuracy"] = accuracy(y_true, y_pred)
    return out


def _build(
    ctx: BuildContext,
    store: StageStore,
    cfg: ZeroShotConfig,
    splits_dir: Path,
    encoder_dir: Path | None,
) -> dict[str, Any]:
    from label_pipeline.data import load_splits

    log = stage_logger()
    spec = label_spec(splits_dir, cfg)
    splits = load_splits(splits_dir)
    if "unlabeled" not in splits or len(splits["unlabeled"]) == 0:
        log.warning(
            "zero_shot: the unlabeled pool of %s has no rows; nothing to pseudo-label", splits_dir
        )
    shards = plan_shards(splits_dir, cfg.shard_size)
    shards_dir = shards_dir_for(store, ctx.fingerprint)
    done = [s for s in shards if (shards_dir / s.name / SHARD_DONE).is_file()]
    todo = [s for s in shards if s not in done]
    if done:
        log.info(
            "zero_shot: resuming, %d of %d shards already scored in %s",
            len(done),
            len(shards),
            shards_dir,
        )

    started = time.time()
    # resolve (and load) before scoring so the summary names the backend even when resumed
    backend, resolved = load_backend(cfg, encoder_dir)
    if resolved.note:
        log.info("zero_shot: %s", resolved.note)
    with Progress(sum(s.stop - s.start for s in todo), STAGE, "zero-shot scoring") as progress:
        # the shards no other run is scoring first, then wait for (and reuse) the others
        elsewhere = [
            s
            for s in todo
            if score_shard(
                cfg, splits_dir, s.index, shards_dir, encoder_dir, progress=progress, wait=False
            )
            is None
        ]
        for s in elsewhere:
            score_shard(cfg, splits_dir, s.index, shards_dir, encoder_dir, progress=progress)
    if elsewhere:  # those another run scored count as reused
        mine = {s for s in todo if _scored_by_this_process(shards_dir / s.name)}
        done, todo = done + [s for s in todo if s not in mine], [s for s in todo if s in mine]
    score_seconds = time.time() - started
    return _assemble(
        ctx,
        cfg,
        spec,
        splits,
        splits_dir,
        shards,
        shards_dir,
        resolved,
        backend,
        todo,
        done,
        score_seconds,
    )


@dataclass
class Selected:
    """The selection rule chosen on valid and what it gives: per split, the scored rows with
    the selected labels (``valid`` / ``test``: ``predicted`` and the gold ``labels``;
    ``unlabeled``: ``labels``), the metrics, and the pseudo-labels' calibration and expected
    precision."""

    sel: Selection
    metrics: dict[str, Any]
    outputs: dict[str, Any]
    calibration: dict[str, Any]
    expected: dict[str, Any]


def select_pseudo_labels(
    scored: dict[str, Any], splits: Any, cfg: ZeroShotConfig, spec: LabelSpec
) -> Selected:
    """Choose the selection rule on the valid scores and apply it to every scored split
    (``scored``: split -> Dataset of ``id``, ``text``, ``score_<label>``, ``truncated``)."""
    labels = spec.labels
    valid_scores = _score_matrix(scored["valid"], labels)
    valid_true = _gold(splits, "valid", [str(i) for i in scored["valid"]["id"]], labels)
    sel = choose_selection(
        valid_scores,
        valid_true,
        labels,
        spec.multi_label,
        metric=cfg.metric,
        rule=cfg.rule,
        per_label=cfg.per_label_thresholds,
        confidence_floor=cfg.confidence_floor,
    )
    metrics: dict[str, Any] = {
        "selection": {"rule": sel.rule, "value": sel.value, "metric": sel.metric}
    }
    outputs: dict[str, Any] = {}
    for split in ("valid", "test"):
        ds = scored[split]
        y_true = _gold(splits, split, [str(i) for i in ds["id"]], labels)
        y_pred = apply_selection(sel, _score_matrix(ds, labels), labels)
        metrics[split] = _eval(y_true, y_pred)
        metrics[f"n_{split}"] = len(ds)
        ds = _with_selection(ds, sel, labels, "predicted")
        gold = [[labels[j] for j in np.flatnonzero(row)] for row in y_true]
        outputs[split] = ds.add_column("labels", gold, feature=_LABELS_FEATURE())
    outputs["unlabeled"] = _with_selection(scored["unlabeled"], sel, labels, "labels")
    calibration, expected = pseudo_label_precision(
        cfg, sel, valid_scores, valid_true, scored["unlabeled"], labels, spec.multi_label
    )
    return Selected(sel, metrics, outputs, calibration, expected)


def _write_selected(directory: Path, res: Selected, labels: list[str], multi_label: bool) -> None:
    from label_pipeline.data import write_label_info

    for split in ("valid", "test", "unlabeled"):
        _save(res.outputs[split], directory / split)
    (directory / "calibration.json").write_text(json.dumps(res.calibration, indent=2))
    (directory / "expected_precision.json").write_text(json.dumps(res.expected, indent=2))
    write_label_info(directory, labels, multi_label)
    (directory / "metrics.json").write_text(json.dumps(res.metrics, indent=2))
    (directory / "selection.json").write_text(
        json.dumps({"labels": labels, **res.sel.to_json()}, indent=2)
    )
    (directory / "selection_curve.json").write_text(json.dumps(res.sel.curves, indent=1))


def _assemble(
    ctx: BuildContext,
    cfg: ZeroShotConfig,
    spec: LabelSpec,
    splits: Any,
    splits_dir: Path,
    shards: list[Shard],
    shards_dir: Path,
    resolved: ResolvedBackend,
    backend: ZeroShotBackend,
    todo: list[Shard],
    done: list[Shard],
    score_seconds: float,
) -> dict[str, Any]:
    log = stage_logger()
    labels = spec.labels
    scored = {
        split: _load_split_scores(shards_dir, shards, split, labels) for split in SCORED_SPLITS
    }
    res = select_pseudo_labels(scored, splits, cfg, spec)
    sel, metrics, calibration, expected = res.sel, res.metrics, res.calibration, res.expected
    if sel.note:
        log.warning("zero_shot: %s", sel.note)
    for note in calibration["notes"]:
        log.warning("zero_shot: calibration: %s", note)
    _write_selected(ctx.dir, res, labels, spec.multi_label)
    title = (
        f"zero-shot ({resolved.name}): validation {cfg.metric.replace('_', '-')} by selection rule"
    )
    _plot_curves(sel, ctx.dir / "figures" / "selection_curve.png", title)
    n_truncated = {
        split: int(np.sum(scored[split]["truncated"])) if len(scored[split]) else 0
        for split in SCORED_SPLITS
    }
    unlabeled = res.outputs["unlabeled"]
    pseudo = unlabeled["labels"] if len(unlabeled) else []
    labelled = [
        list(r)
        for split in ("train", "valid", "test")
        if split in splits
        for r in splits[split]["labels"]
    ]
    summary, sample = _summary(
        cfg, spec, sel, metrics, resolved, backend, n_truncated, pseudo, labelled, unlabeled
    )
    write_summary(ctx.dir, summary + _precision_summary(calibration, expected), sample)
    scored_now = sum(s.stop - s.start for s in todo)
    return {
        "rows": {split: len(scored[split]) for split in SCORED_SPLITS},
        "rows_scored_now": scored_now,
        "shards": len(shards),
        "shards_reused": len(done),
        "truncated": n_truncated,
        "backend": resolved.name,
        "model": resolved.model_ref,
        "device": backend.device.describe(),
        "selection": {"rule": sel.rule, "value": sel.value},
        "test": metrics.get("test"),
        "rows_per_second": round(scored_now / score_seconds, 2)
        if todo and score_seconds > 0
        else None,
        "rows_total": sum(s.stop - s.start for s in shards),
        "calibration": calibration["describe"],
        "expected_precision": expected["overall"]["expected_precision"],
        "expected_precision_interval": expected["overall"]["interval"],
        "expected_wrong": expected["overall"]["expected_wrong"],
        "valid_precision": expected["overall"]["valid_precision"],
    }


def pseudo_label_precision(
    cfg: ZeroShotConfig,
    sel: Selection,
    valid_scores: np.ndarray,
    valid_true: np.ndarray,
    pool: Any,
    labels: list[str],
    multi_label: bool,
    chunk: int = 8192,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Calibrate the scores on valid, then state the expected precision of the selected rule's
    pseudo-labels on the pool (read ``chunk`` rows at a time). Returns (calibration facts,
    expected precision; see ``label_pipeline.expected_precision``)."""
    from label_pipeline.calibration import calibration_scores, fit_calibration
    from label_pipeline.expected_precision import (
        RANK_RULES,
        PrecisionAccumulator,
        fit_selected_calibration,
    )

    fit = fit_calibration(
        valid_scores,
        valid_true,
        multi_label,
        cfg.calibration,
        min_rows=cfg.calibration_min_rows,
        labels=labels,
        what="valid (zero-shot scores)",
        min_rows_param="zero_shot.calibration_min_rows",
    )
    calibration = {**fit.facts(), "calibrator": fit.calibrator.to_json()}
    if len(valid_true):
        calibration["valid_before"] = calibration_scores(valid_true, valid_scores, multi_label)
        calibration["valid_after"] = calibration_scores(valid_true, fit.valid_probs, multi_label)
    shift = _pool_label_shift(cfg, fit, valid_true, pool, labels, multi_label)
    if shift is not None:
        calibration["label_shift"] = shift.to_json()
    valid_probs = fit.valid_probs
    valid_pred = apply_selection(sel, valid_scores, labels) if len(valid_true) else None
    picked = None
    if (
        cfg.picked_calibration
        and multi_label
        and sel.rule in RANK_RULES
        and valid_pred is not None
        and cfg.calibration != "none"
        and not fit.fallback
    ):
        picked, valid_probs = fit_selected_calibration(
            fit.valid_probs,
            valid_pred,
            valid_true,
            cfg.calibration_min_rows,
            "zero_shot.calibration_min_rows",
        )
        calibration["picked"] = picked.facts()
        calibration["notes"] += picked.fit.notes
    acc = PrecisionAccumulator(len(labels))
    plain = PrecisionAccumulator(len(labels)) if picked is not None else None
    for start in range(0, len(pool), chunk):
        scores = _score_matrix(pool.select(range(start, min(start + chunk, len(pool)))), labels)
        probs = fit.calibrator.apply(scores)
        if shift is not None:
            probs = shift.apply(probs)
        pred = apply_selection(sel, scores, labels)
        if picked is not None:
            plain.add(probs, pred)
            probs = picked.apply(probs, pred)
        acc.add(probs, pred)
    if plain is not None:
        calibration["picked"]["expected_precision_per_label_calibration_only"] = plain.result(
            labels
        )["overall"]["expected_precision"]
    if valid_pred is not None:
        expected = acc.result(labels, valid_probs, valid_pred, valid_true)
    else:
        expected = acc.result(labels)
    return calibration, expected


def _pool_label_shift(
    cfg: ZeroShotConfig,
    fit: Any,
    valid_true: np.ndarray,
    pool: Any,
    labels: list[str],
    multi_label: bool,
) -> Any:
    """The label-shift estimate (``zero_shot.label_shift: pool``) from calibrated scores, or
    None when it is off."""
    if cfg.label_shift == "none":
        return None
    if multi_label:
        raise ConfigError(
            "zero_shot.label_shift='pool' applies to single-label tasks; set it to none"
        )
    if not len(pool) or not len(valid_true):
        stage_logger().warning(
            "zero_shot: label_shift='pool' needs valid and pool rows; not applied"
        )
        return None
    from label_pipeline.label_shift import estimate_label_shift

    rows = np.arange(len(pool))
    if len(rows) > cfg.label_shift_pool_rows:
        rows = np.sort(np.random.default_rng(0).choice(rows, cfg.label_shift_pool_rows, False))
    pool_probs = fit.calibrator.apply(_score_matrix(pool.select(rows), labels))
    # calibrated on valid: valid's label frequencies are the probabilities' source prior
    source = valid_true.sum(axis=0) / max(valid_true.sum(), 1)
    return estimate_label_shift(fit.valid_probs, valid_true, pool_probs, source)


def _precision_summary(calibration: dict[str, Any], expected: dict[str, Any]) -> str:
    from label_pipeline.expected_precision import precision_summary

    lines = ["", "## Expected precision of the pseudo-labels", ""]
    before, after = calibration.get("valid_before"), calibration.get("valid_after")
    cal = f"- scores calibrated on valid: {calibration['describe']}"
    if before and after:
        cal += (
            f" (cross-fitted valid ECE {before['ece']:.3f} → {after['ece']:.3f}, log loss "
            f"{before['log_loss']:.3f} → {after['log_loss']:.3f})"
        )
    lines.append(cal)
    picked = calibration.get("picked")
    if (
        picked
        and not picked["fallback"]
        and picked.get("expected_precision_per_label_calibration_only") is not None
    ):
        lines.append(
            f"- the top-k rule picks labels by rank: their probabilities recalibrated on the "
            f"{picked['cells']} labels it picks on valid ({picked['describe']}); per-label "
            "calibration alone would state "
            f"{100 * picked['expected_precision_per_label_calibration_only']:.1f} %"
        )
    lines += [f"- {n}" for n in calibration["notes"]]
    if calibration.get("label_shift"):
        q = calibration["label_shift"]["target_prior"]
        lines.append(
            "- label shift (zero_shot.label_shift: pool): probabilities reweighted to the pool's "
            "estimated label frequencies "
            + ", ".join(
                f"{name} {v:.2f}"
                for name, v in zip((r["label"] for r in expected["per_label"]), q, strict=False)
            )
        )
    return "\n".join([*lines, "", *precision_summary(expected, "pseudo-label")])


def _summary(
    cfg: ZeroShotConfig,
    spec: LabelSpec,
    sel: Selection,
    metrics: dict[str, Any],
    resolved: ResolvedBackend,
    backend: ZeroShotBackend,
    n_truncated: dict[str, int],
    pseudo: list[list[str]],
    labelled: list[list[str]],
    unlabeled: Any,
) -> tuple[str, list[dict[str, Any]]]:
    labels = spec.labels
    if sel.rule == "threshold":
        rule = f"threshold {sel.value:.2f}"
        if sel.per_label_thresholds:
            rule += (
                " (per label: "
                + ", ".join(f"{k} {v:.2f}" for k, v in sel.per_label_thresholds.items())
                + ")"
            )
    elif sel.rule == "top_k":
        rule = f"top-{int(sel.value)}"
    else:
        rule = "argmax" + (f" with confidence floor {sel.value:.2f}" if sel.value > 0 else "")
    with_label = sum(bool(r) for r in pseudo)
    dist_p, dist_l = _distribution(pseudo, labels), _distribution(labelled, labels)
    lines = [
        "# Zero-shot pseudo-labels",
        "",
        f"- backend: **{resolved.name}**, model `{resolved.model_ref}`, device {backend.device.describe()}"
        + (f" ({resolved.note})" if resolved.note else ""),
        f"- task: {'multi' if spec.multi_label else 'single'}-label, {len(labels)} labels",
        f"- selection rule (chosen on valid by {sel.metric.replace('_', '-')}): **{rule}**"
        + (f" — {sel.note}" if sel.note else ""),
        f"- valid: {_fmt(metrics.get('valid'))} ({metrics.get('n_valid', 0)} rows)",
        f"- test (the zero-shot line of the learning curve): {_fmt(metrics.get('test'))} "
        f"({metrics.get('n_test', 0)} rows)",
        f"- unlabeled rows scored: {len(pseudo)}; with at least one pseudo-label: {with_label}",
        "- rows truncated to the model's input limit: "
        + ", ".join(f"{k} {v}" for k, v in n_truncated.items()),
        "",
        "| label | share of pseudo-labelled pool | share of labelled rows |",
        "|---|---|---|",
        *[f"| {name} | {dist_p[name]:.1%} | {dist_l[name]:.1%} |" for name in labels],
        "",
    ]
    sample = []
    cols = score_columns(labels)
    for row in unlabeled.select(range(min(cfg.sample_rows, len(unlabeled)))):
        ranked = sorted(
            ((row[c], name) for c, name in zip(cols, labels, strict=True)), reverse=True
        )
        sample.append(
            {
                "id": row["id"],
                "text": row["text"],
                "pseudo_labels": ", ".join(row["labels"]),
                "confidence": round(float(row["confidence"]), 4),
                "top_scores": ", ".join(f"{name} {s:.3f}" for s, name in ranked[:3]),
            }
        )
    return "\n".join(lines), sample


@contextlib.contextmanager
def _quiet_datasets() -> Any:
    """Silence datasets' per-save progress bars: the stage shows one bar for its scoring."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def run_zero_shot(
    store: StageStore,
    cfg: ZeroShotConfig,
    splits: StageRef,
    encoder: StageRef | None = None,
    refresh: bool = False,
) -> StageRef:
    """Score the split stage's valid/test/unlabeled rows, choose the selection rule on valid and
    write pseudo-labels (see the module docstring for the output directory).

    ``encoder``: optional adapt-stage output whose ``model/`` is a masked LM, used by ``fill_mask``.
    """
    inputs = {"splits": splits, "encoder": encoder}
    encoder_dir = encoder.dir if encoder is not None else None
    # validate cheap things before anything is loaded or built
    label_spec(splits.dir, cfg)
    if cfg.backend != "auto":
        get_backend(cfg.backend)
    with _quiet_datasets():
        ref = store.build_stage(
            SPEC,
            cfg,
            inputs,
            lambda ctx: _build(ctx, store, cfg, splits.dir, encoder_dir),
            refresh,
        )
    # the finished stage holds everything the shards did
    shutil.rmtree(shards_dir_for(store, ref.fingerprint), ignore_errors=True)
    release_backends()  # free the model: later stages in this process need the memory
    return ref


def stage_fingerprint(
    cfg: ZeroShotConfig, splits: StageRef, encoder: StageRef | None = None
) -> str:
    """The fingerprint :func:`run_zero_shot` builds under (names the shard directory)."""
    return SPEC.fingerprint(cfg, {"splits": splits, "encoder": encoder})


# ---------------------------------------------------------------- shards as mapped tasks


def call_with_index(index: int, target: Callable[..., Any], index_arg: str, **kwargs: Any) -> Any:
    """``target(**{index_arg: index}, **kwargs)``: maps a function whose shard index is a
    named argument (:func:`score_shard`'s ``shard_index``) with
    :func:`map_shards`."""
    return target(**{index_arg: index}, **kwargs)


def map_zero_shot_shards(
    store_root: str,
    cfg: Any,
    splits: StageRef,
    runner: RunnerConfig | None = None,
    encoder: StageRef | None = None,
) -> int:
    """Score the zero_shot stage's shards as mapped tasks (on Dask when ``runner`` says so)
    ahead of its stage task, which then finds every shard done and only assembles.
    Returns the number of shards scored or found; 0 when the stage is already complete."""
    store = StageStore(store_root)
    fp = stage_fingerprint(cfg, splits, encoder)
    if store.is_complete(STAGE, fp):
        return 0
    splits = store.localize(splits)
    plan = plan_shards(splits.dir, cfg.shard_size)
    shards_dir = shards_dir_for(store, fp)
    map_shards(
        call_with_index,
        stage=STAGE,
        fingerprint=fp,
        n_shards=len(plan),
        runner=runner,
        done=lambda i: (shards_dir / plan[i].name / SHARD_DONE).is_file(),
        target=score_shard,
        index_arg="shard_index",
        cfg=cfg,
        splits_dir=str(splits.dir),
        shards_dir=str(shards_dir),
        encoder_dir=str(encoder.dir) if encoder is not None else None,
    )
    return len(plan)
