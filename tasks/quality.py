"""The `quality` stage: which labelled rows are probably mislabelled, before anything trains on them.

Runs after the split stage. The labelled rows of ``splits`` (default: the training split)
are scored out of fold by a fast method (``label_pipeline.label_quality``: stratified K-fold,
no row scored by a model that saw it), cleanlab flags the rows whose given labels are
probably wrong and the out-of-fold model suggests labels for them. With the optional inputs:

- ``clean``: copies of one text (exact or near duplicates) that carry different labels, from
  the clean stage's ``conflicts.json`` (with ``clean.conflicts: report`` both copies stay);
- ``zero_shot``: the labelled rows are scored by the zero-shot stage's backend against the
  label names; a label whose rows do not score higher on it than the other rows (ROC AUC
  below ``zero_shot_min_auc``) is reported.

The train stage acts on the result with ``train.label_issues`` (``keep``: report only;
``drop``: leave the flagged rows out; ``relabel``: train them with the suggested labels).

Output directory:

- ``label_issues.csv``: one row per labelled row with an issue, most suspicious first:
  ``id``, ``text``, ``split``, ``given_labels``, ``suggested_labels`` (joined by
  ``label_separator``), ``score`` (cleanlab's label quality score in [0, 1]: low = the given
  labels are probably wrong), ``issue`` (``mislabelled``, ``conflicting_duplicate``, both
  joined by ``;``), ``detail``, ``zero_shot_top`` (the label whose name the text matches
  best, when zero_shot ran) and a blank ``labels`` column: write the right labels there (or
  ``DROP`` to remove the row) and set ``ingest.label_fixes`` to the file; the next run
  relabels those rows where they are (``ingest.extra_labels`` only labels pool rows);
- ``issues/``: the same rows as an Arrow dataset, with ``given`` and ``suggested`` label
  lists, the out-of-fold ``prob_<label>`` columns and ``flagged`` (True where cleanlab
  flagged the row: the rows ``train.label_issues`` acts on);
- ``label_checks.json``: per label, the zero-shot check (AUC, share of its rows the
  label's name wins, mean scores), empty without zero_shot;
- ``quality.json``: rows checked, folds, method, counts per issue kind, cleanlab's estimate;
- ``labels.json``, ``summary.md``, ``sample.json`` (the most suspicious rows: the
  ``quality-sample`` table in the Prefect UI).
"""

from __future__ import annotations

import csv
import functools
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from label_pipeline.artifacts import md_table
from label_pipeline.artifacts import num as _f
from label_pipeline.devices import DeviceChoice, DeviceConfig, choose_device
from label_pipeline.errors import ConfigError, InputDataError
from label_pipeline.label_quality import (
    CONFLICT,
    MISLABELLED,
    Mislabelled,
    OutOfFold,
    conflict_issues,
    find_mislabelled,
    label_name_check,
    out_of_fold_probs,
)
from label_pipeline.methods.base import FitContext, LabelledTexts, get_method
from label_pipeline.models import DEFAULT_ENCODER, resolve_model
from label_pipeline.orchestration import write_summary
from label_pipeline.progress import Progress, stage_logger
from label_pipeline.store import BuildContext, StageRef, StageSpec, StageStore

SPEC = StageSpec("quality", "2", resolve=lambda cfg: resolve_method(cfg))
STAGE, VERSION = SPEC.name, SPEC.version
#: ``quality.method: auto``: the out-of-fold method on a GPU and on a CPU
AUTO = "auto"
AUTO_GPU_METHOD = "prototype"
AUTO_CPU_METHOD = "hybrid"
ISSUES_CSV = "label_issues.csv"
CSV_COLUMNS = [
    "id",
    "text",
    "split",
    "given_labels",
    "suggested_labels",
    "score",
    "issue",
    "detail",
    "zero_shot_top",
    "labels",
]
FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning")


class QualityConfig(BaseModel):
    """The label-quality check of the labelled rows.

    Attributes:
        enabled: run the stage.
        method: registered method (``label_pipeline.methods``) fitted on each fold, or
            ``auto`` (the default): ``prototype`` when the stage runs on a GPU, ``hybrid`` on
            a CPU (the stage's summary names the method used). Fast ones:
            ``hybrid`` (TF-IDF word and character n-grams with sentence embeddings, one
            linear model), ``embed_lr``, ``tfidf_nb``, ``knn``; ``finetune`` or
            ``setfit`` are stronger and K times slower. The check is only as good as this
            model: on emotion (64 rows per label, 10 % of the labels flipped, three seeds,
            ``bench/bench_label_issues.py``) the out-of-fold ``hybrid`` fitted with the valid
            rows (``valid_use: fit``) is right on 63 % of the rows and the flags find 54 % of
            the flipped rows (without the valid rows: 51 % and 39 %; ``embed_lr``: 43 % and
            32 %; ``finetune``, two seeds, without the valid rows: 62 % and 49 % in 970-991 s
            instead of 11-46 s on two CPU cores). ``prototype`` with the valid rows is right
            on 74 % and its flags find 66 % of the flipped rows at a precision of 0.66, in
            1,067-1,308 s per seed on one CPU thread: the choice on a GPU worker.
        method_params: constructor keyword arguments of ``method`` (with ``auto``: of the
            method it resolves to).
        folds: at most this many folds (fewer when a label has fewer rows).
        splits: labelled splits whose rows are checked, scored together in the folds
            (``train``, ``valid``, ``test``). The train stage acts on the training rows only.
        filter_by: cleanlab's rule for flagging a row (``prune_by_noise_rate``: the rows
            least likely to carry their label, as many as the estimated noise;
            ``prune_by_class``, ``both``, ``confident_learning``).
        min_margin: single-label: also require the suggested label's out-of-fold probability
            to exceed the given label's by this much (0: cleanlab's verdict as is; higher:
            fewer, surer flags).
        max_flagged_share: flag at most this share of the checked rows, those with the lowest
            label quality score (None: as many as cleanlab flags). cleanlab's noise estimate
            counts the out-of-fold model's own errors as label noise, so with a weak model
            (few rows, hard labels) it flags a large part of the rows; the cap keeps the flags
            to the most suspicious ones.
        valid_use: what the out-of-fold models do with the valid split when its rows are not
            checked (``splits``): ``fit`` (the default: its rows join every fold's training
            rows, so the check learns from every labelled row the user gave; no early stopping
            on valid; on emotion with 64 valid rows per label it raises the flags' precision
            from 0.386 to 0.535, ``bench/bench_label_issues.py --valid-use``),
            ``early_stopping`` (handed to the method for early stopping or tuning) or
            ``none``.
        encoder: encoder of the embedding methods: ``base`` (all-MiniLM-L6-v2) or a model
            reference.
        zero_shot_min_auc: a label whose zero-shot score separates its rows from the others
            with a ROC AUC below this is reported as disagreeing with its name.
        label_separator: joins several labels in the CSV's label columns.
        sample_rows: most suspicious rows in ``sample.json``.
        seed: fold assignment and the method's seed.
        device: device, precision and batch sizes.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    method: str = AUTO
    method_params: dict[str, Any] = Field(default_factory=dict)
    folds: int = Field(5, ge=2, le=20)
    splits: list[Literal["train", "valid", "test"]] = Field(default_factory=lambda: ["train"])
    filter_by: Literal["prune_by_noise_rate", "prune_by_class", "both", "confident_learning"] = (
        "prune_by_noise_rate"
    )
    min_margin: float = Field(0.0, ge=0.0, le=1.0)
    max_flagged_share: float | None = Field(0.1, gt=0.0, le=1.0)
    valid_use: Literal["fit", "early_stopping", "none"] = "fit"
    encoder: str = "base"
    zero_shot_min_auc: float = Field(0.6, ge=0.0, le=1.0)
    label_separator: str = ";"
    sample_rows: int = Field(20, ge=0, le=200)
    seed: int = 0
    device: DeviceConfig = Field(default_factory=DeviceConfig)


# ---------------------------------------------------------------- inputs


def _labelled_rows(
    splits: Any, names: list[str], labels: list[str], multi_label: bool, path: Path
) -> tuple[LabelledTexts, list[str]]:
    """The labelled rows of the named splits (and which split each came from)."""
    from label_pipeline.data import label_matrix

    texts, ys, ids, origin = [], [], [], []
    for name in names:
        if name not in splits:
            raise ConfigError(
                f"quality.splits names {name!r}, but {path} has only {list(splits)}; "
                "remove it from quality.splits"
            )
        part = splits[name]
        keep = [i for i, lab in enumerate(part["labels"]) if len(lab) > 0]
        sub = part.select(keep)
        texts += [str(t) for t in sub["text"]]
        ys.append(label_matrix([list(x) for x in sub["labels"]], labels))
        ids += [str(i) for i in sub["id"]]
        origin += [name] * len(sub)
    y = np.concatenate(ys) if ys else np.zeros((0, len(labels)), np.int64)
    if not len(texts):
        stage_logger().warning(
            "quality: the split(s) %s of %s hold no labelled row; nothing to check "
            "(set quality.splits to splits with labels)",
            names,
            path,
        )
    return LabelledTexts(texts, y, labels, multi_label, ids=ids), origin


def _valid_rows(part: Any, labels: list[str], multi_label: bool) -> LabelledTexts | None:
    from label_pipeline.data import label_matrix

    keep = [i for i, lab in enumerate(part["labels"]) if len(lab) > 0]
    if not keep:
        return None
    sub = part.select(keep)
    y = label_matrix([list(x) for x in sub["labels"]], labels)
    return LabelledTexts([str(t) for t in sub["text"]], y, labels, multi_label)


def zero_shot_scores(zero_shot: StageRef, splits_dir: Path, texts: list[str]) -> np.ndarray:
    """Scores (rows x labels) of ``texts`` from the zero_shot stage's backend, with its
    configuration (label descriptions, template, temperature) as recorded in its manifest."""
    from label_pipeline.zeroshot.loading import ZeroShotConfig, label_spec, load_backend

    man = zero_shot.manifest()
    cfg = ZeroShotConfig.model_validate(man.get("config") or {})
    backend = man.get("backend") or cfg.backend
    cfg = cfg.model_copy(update={"backend": backend})
    encoder_dir = None
    model = Path(str(man.get("model", "")))
    if backend == "fill_mask" and model.name == "model" and model.is_dir():
        encoder_dir = model.parent  # the adapt stage's encoder it scored with
    spec = label_spec(splits_dir, cfg)
    scorer, _ = load_backend(cfg, encoder_dir)
    result = scorer.score(texts, spec.labels, spec.label_texts, spec.multi_label)
    return np.asarray(result.scores, dtype=np.float64)


def _conflicts(clean: StageRef | None) -> list[dict[str, Any]] | None:
    if clean is None:
        return None
    path = clean.dir / "conflicts.json"
    if not path.is_file():
        raise InputDataError(f"{path} is missing; re-run the clean stage (refresh clean)")
    return json.loads(path.read_text())


# ---------------------------------------------------------------- the check (no store, no Prefect)


@dataclass
class QualityResult:
    """What :func:`find_label_issues` found in the checked rows.

    Attributes:
        labels: the label names (columns of ``y`` and of the probabilities).
        multi_label: whether a row may carry several labels.
        origin: the split of every checked row.
        oof: the out-of-fold probabilities (``oof.ok``: every row was scored).
        verdict: cleanlab's verdict on them; None when no row was scored.
        flagged: per checked row, True where it is probably mislabelled.
        issue_rows: one dict per row with an issue (the ``CSV_COLUMNS`` and ``flagged``),
            most suspicious first.
        given, suggested: per issue row, the given and the suggested label names.
        issue_probs: per issue row, the out-of-fold probability of every label.
        checks: the zero-shot check of every label (empty without zero-shot scores).
        valid_rows_fitted: valid rows every fold also trained on.
        conflicts_read: conflict groups read from the clean stage (None: not passed in).
        zero_shot: whether the rows were scored against the label names.
    """

    labels: list[str]
    multi_label: bool
    origin: list[str]
    oof: OutOfFold
    verdict: Mislabelled | None
    flagged: np.ndarray
    issue_rows: list[dict[str, Any]]
    given: list[list[str]]
    suggested: list[list[str]]
    issue_probs: np.ndarray
    checks: list[dict[str, Any]]
    valid_rows_fitted: int
    conflicts_read: int | None
    zero_shot: bool

    @property
    def rows_checked(self) -> int:
        return len(self.origin)

    def issues_by_kind(self) -> dict[str, int]:
        return {
            MISLABELLED: int(self.flagged.sum()),
            CONFLICT: sum(1 for r in self.issue_rows if CONFLICT in r["issue"]),
        }


def find_label_issues(
    rows: LabelledTexts,
    origin: list[str],
    cfg: QualityConfig,
    *,
    device: DeviceChoice | None = None,
    encoder: str | None = None,
    valid: LabelledTexts | None = None,
    extra: LabelledTexts | None = None,
    conflicts: list[dict[str, Any]] | None = None,
    score_names: Callable[[list[str]], np.ndarray] | None = None,
    on_fold: Callable[[], None] | None = None,
) -> QualityResult:
    """The label issues of ``rows`` (``origin``: the split of each row).

    Out-of-fold probabilities of ``cfg.method`` (``valid``: handed to the method for early
    stopping; ``extra``: rows every fold also trains on), cleanlab's verdict on them, the
    ``conflicts`` of the clean stage among the rows, and, with ``score_names`` (texts ->
    rows x labels zero-shot scores of the label names), the check of every label against its
    name. ``on_fold`` is called after each fold."""
    labels, n = list(rows.label_names), len(rows)
    oof = _out_of_fold(rows, cfg, device, encoder, valid, extra, on_fold)
    verdict = None
    if oof.ok:
        verdict = find_mislabelled(
            rows.y,
            oof.probs,
            rows.multi_label,
            cfg.filter_by,
            cfg.min_margin,
            cfg.max_flagged_share,
        )
        flagged, quality, suggested = verdict.flagged, verdict.quality, verdict.suggested
    else:
        flagged, quality, suggested = np.zeros(n, bool), np.full(n, np.nan), [[] for _ in range(n)]
    conflict_of = conflict_issues(conflicts or [], set(rows.ids or []))
    zs_top: list[str] = [""] * n
    checks: list[dict[str, Any]] = []
    if score_names is not None and n:
        scores = score_names(rows.texts)
        zs_top = [labels[j] for j in scores.argmax(axis=1)]
        checks = label_name_check(rows.y, scores, labels, cfg.zero_shot_min_auc)
    found = _issue_rows(
        rows, origin, oof.probs, flagged, quality, suggested, conflict_of, zs_top, cfg
    )
    at = [r.pop("_row") for r in found]
    return QualityResult(
        labels=labels,
        multi_label=rows.multi_label,
        origin=origin,
        oof=oof,
        verdict=verdict,
        flagged=flagged,
        issue_rows=found,
        given=[[labels[j] for j in np.flatnonzero(rows.y[i])] for i in at],
        suggested=[[labels[j] for j in suggested[i]] for i in at],
        issue_probs=oof.probs[at].reshape(len(at), len(labels)),
        checks=checks,
        valid_rows_fitted=len(extra) if extra is not None else 0,
        conflicts_read=None if conflicts is None else len(conflicts),
        zero_shot=score_names is not None,
    )


def _out_of_fold(
    rows: LabelledTexts,
    cfg: QualityConfig,
    device: DeviceChoice | None,
    encoder: str | None,
    valid: LabelledTexts | None,
    extra: LabelledTexts | None,
    on_fold: Callable[[], None] | None,
) -> OutOfFold:
    """Out-of-fold probabilities of ``cfg.method``, each fold's scratch space in one temporary
    directory."""
    with tempfile.TemporaryDirectory(prefix="lp-quality-") as work:

        def context() -> FitContext:
            return FitContext(device=device, seed=cfg.seed, encoder=encoder, work_dir=Path(work))

        return out_of_fold_probs(
            rows,
            cfg.method,
            cfg.method_params,
            cfg.folds,
            cfg.seed,
            context,
            valid,
            on_fold=on_fold,
            extra=extra,
        )


def _issue_rows(
    rows: LabelledTexts,
    origin: list[str],
    probs: np.ndarray,
    flagged: np.ndarray,
    quality: np.ndarray,
    suggested: list[list[int]],
    conflict_of: dict[str, str],
    zs_top: list[str],
    cfg: QualityConfig,
) -> list[dict[str, Any]]:
    """The rows with an issue, most suspicious first; ``_row`` is each one's position."""
    labels, ids, sep = rows.label_names, rows.ids or [], cfg.label_separator
    out: list[dict[str, Any]] = []
    for i in range(len(rows)):
        kinds, details = [], []
        if flagged[i]:
            kinds.append(MISLABELLED)
            g = [j for j in np.flatnonzero(rows.y[i])]
            details.append(
                "out-of-fold probability of the given label(s) "
                + ", ".join(f"{labels[j]} {probs[i, j]:.2f}" for j in g)
                + "; suggested "
                + ", ".join(f"{labels[j]} {probs[i, j]:.2f}" for j in suggested[i])
            )
        if ids[i] in conflict_of:
            kinds.append(CONFLICT)
            details.append(conflict_of[ids[i]])
        if not kinds:
            continue
        out.append(
            {
                "id": ids[i],
                "text": rows.texts[i],
                "split": origin[i],
                "given_labels": _join([labels[j] for j in np.flatnonzero(rows.y[i])], sep),
                "suggested_labels": _join([labels[j] for j in suggested[i]], sep),
                "score": None if np.isnan(quality[i]) else round(float(quality[i]), 4),
                "issue": ";".join(kinds),
                "detail": " | ".join(details),
                "zero_shot_top": zs_top[i],
                "labels": "",
                "flagged": bool(flagged[i]),
                "_row": i,
            }
        )
    out.sort(key=lambda r: (r["score"] is None, r["score"] or 0.0, r["id"]))
    return out


# ---------------------------------------------------------------- the stage


def _encoder(cfg: QualityConfig) -> str:
    ref = DEFAULT_ENCODER if cfg.encoder == "base" else cfg.encoder
    return str(resolve_model(ref, "quality.encoder"))


def _join(names: list[str], sep: str) -> str:
    return sep.join(names)


def _builder(
    cfg: QualityConfig,
    splits_ref: StageRef,
    clean: StageRef | None,
    zero_shot: StageRef | None,
    requested: str,
):
    def build(ctx: BuildContext) -> dict[str, Any]:
        from label_pipeline.data import load_splits, read_label_info

        labels, multi_label = read_label_info(splits_ref.dir)
        splits = load_splits(splits_ref.dir)
        rows, origin = _labelled_rows(
            splits, list(dict.fromkeys(cfg.splits)), labels, multi_label, splits_ref.dir
        )
        # the methods may tune or stop early on valid, or fit on it, unless its rows are
        # being checked
        valid = extra = None
        if "valid" not in cfg.splits and "valid" in splits and cfg.valid_use != "none":
            valid = _valid_rows(splits["valid"], labels, multi_label)
        if cfg.valid_use == "fit":
            valid, extra = None, valid
        device = choose_device(cfg.device)
        encoder = _encoder(cfg)
        score_names = None
        if zero_shot is not None:
            score_names = functools.partial(zero_shot_scores, zero_shot, splits_ref.dir)
        with Progress(cfg.folds, STAGE, f"out-of-fold {cfg.method}", unit="folds") as prog:
            result = find_label_issues(
                rows,
                origin,
                cfg,
                device=device,
                encoder=encoder,
                valid=valid,
                extra=extra,
                conflicts=_conflicts(clean),
                score_names=score_names,
                on_fold=lambda: prog.update(1),
            )
        if not result.oof.ok:
            stage_logger().warning("quality: no out-of-fold scores: %s", result.oof.folds)
        return _write(ctx, cfg, result, requested, device.device, clean is not None)

    return build


# ---------------------------------------------------------------- outputs


def _facts(cfg: QualityConfig, r: QualityResult, requested: str, device: str) -> dict[str, Any]:
    """``quality.json`` and the manifest's facts."""
    n, origin, flagged = r.rows_checked, r.origin, r.flagged
    return {
        "rows_checked": n,
        "rows_by_split": {s: origin.count(s) for s in dict.fromkeys(origin)},
        "method": cfg.method,
        "method_requested": requested,
        "device": device,
        "folds": r.oof.folds,
        "valid_use": cfg.valid_use,
        "valid_rows_fitted": r.valid_rows_fitted,
        "fit_seconds": r.oof.fit_seconds,
        "issues": len(r.issue_rows),
        "issues_by_kind": r.issues_by_kind(),
        "flagged_by_split": {
            s: int(sum(flagged[i] for i in range(n) if origin[i] == s))
            for s in dict.fromkeys(origin)
        },
        "cleanlab_estimate": r.verdict.estimated_issues if r.verdict else None,
        "oof_agreement": r.verdict.agreement if r.verdict else None,
        "conflicts_read": r.conflicts_read,
        "zero_shot": r.zero_shot,
        "labels_disagreeing_with_name": [c["label"] for c in r.checks if c["disagrees"]],
    }


def _write(
    ctx: BuildContext,
    cfg: QualityConfig,
    result: QualityResult,
    requested: str,
    device: str,
    had_clean: bool,
) -> dict[str, Any]:
    from label_pipeline.data import write_label_info

    issue_rows = result.issue_rows
    _write_csv(ctx.dir / ISSUES_CSV, issue_rows)
    _save_issues(ctx.dir / "issues", result)
    (ctx.dir / "label_checks.json").write_text(json.dumps(result.checks, indent=1))
    write_label_info(ctx.dir, result.labels, result.multi_label)
    facts = _facts(cfg, result, requested, device)
    (ctx.dir / "quality.json").write_text(json.dumps(facts, indent=1))
    sample_keys = ("id", "given_labels", "suggested_labels", "score", "issue", "text")
    write_summary(
        ctx.dir,
        _summary(cfg, facts, issue_rows, result.checks, had_clean, result.oof.ok),
        [{k: r[k] for k in sample_keys} for r in issue_rows[: cfg.sample_rows]],
    )
    mislabelled = facts["issues_by_kind"][MISLABELLED]
    if mislabelled:
        stage_logger().info(
            "quality: %d of %d labelled rows are probably mislabelled; see %s",
            mislabelled,
            result.rows_checked,
            ctx.final(ISSUES_CSV),
        )
    return facts


def _save_issues(path: Path, result: QualityResult) -> None:
    """The issue rows as an Arrow dataset, with label lists and out-of-fold probabilities."""
    import datasets

    from label_pipeline.data import save_dataset

    rows = result.issue_rows
    probs_cols = {
        f"prob_{name}": [float(p) for p in result.issue_probs[:, j]]
        for j, name in enumerate(result.labels)
    }
    feats = {c: datasets.Value("string") for c in CSV_COLUMNS}
    feats["score"] = datasets.Value("float32")
    feats["flagged"] = datasets.Value("bool")
    feats["given"] = datasets.Sequence(datasets.Value("string"))
    feats["suggested"] = datasets.Sequence(datasets.Value("string"))
    feats.update({c: datasets.Value("float32") for c in probs_cols})
    table = {c: [r[c] for r in rows] for c in [*CSV_COLUMNS, "flagged"]}
    table["given"] = result.given
    table["suggested"] = result.suggested
    table.update(probs_cols)
    save_dataset(datasets.Dataset.from_dict(table, features=datasets.Features(feats)), path)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if r[k] is None else r[k] for k in CSV_COLUMNS})


#: below this out-of-fold agreement with the given labels the summary warns about the flags
WEAK_AGREEMENT = 0.6


def _agreement_lines(agreement: float | None) -> list[str]:
    if agreement is None:
        return []
    line = (
        f"- the out-of-fold model predicts the given labels on {100 * agreement:.1f} % of the rows"
    )
    if agreement < WEAK_AGREEMENT:
        line += (
            ": a weak model for these labels, so many flags are its own errors; read the "
            "flags as rows to look at first, and prefer train.label_issues `keep` or a "
            f"stronger quality.method ({AUTO_GPU_METHOD}, what `auto` runs on a GPU worker: "
            "K fits of the encoder, 20 minutes or more on a CPU)"
        )
    return [line]


def _summary(
    cfg: QualityConfig,
    facts: dict[str, Any],
    issue_rows: list[dict[str, Any]],
    checks: list[dict[str, Any]],
    had_clean: bool,
    scored: bool,
) -> str:
    lines = _overview_lines(cfg, facts, had_clean, scored)
    if issue_rows:
        lines += _suspicious_lines(issue_rows)
    if checks:
        lines += _name_check_lines(cfg, checks)
    return "\n".join(lines) + "\n"


def _method_line(cfg: QualityConfig, facts: dict[str, Any], scored: bool) -> str:
    return (
        f"- out-of-fold model: `{cfg.method}`"
        + (
            f" (`quality.method: auto` on {facts['device']}: {AUTO_GPU_METHOD} on a GPU, "
            f"{AUTO_CPU_METHOD} on a CPU)"
            if facts.get("method_requested") == AUTO
            else ""
        )
        + f", {facts['folds']}"
        + (f", {facts['fit_seconds']:.1f} s" if scored else " (no mislabel check)")
        + (
            f"; every fold also fitted on the {facts['valid_rows_fitted']} valid rows"
            if facts["valid_rows_fitted"]
            else ""
        )
    )


def _flagged_line(cfg: QualityConfig, facts: dict[str, Any]) -> str:
    return (
        f"- probably mislabelled (cleanlab `{cfg.filter_by}`"
        + (f", margin >= {cfg.min_margin:g}" if cfg.min_margin else "")
        + (
            f", at most {100 * cfg.max_flagged_share:g} % of the rows"
            if cfg.max_flagged_share
            else ""
        )
        + f"): **{facts['issues_by_kind'][MISLABELLED]}**"
        + (
            f" (cleanlab flagged {facts['cleanlab_estimate']})"
            if facts["cleanlab_estimate"] is not None
            else ""
        )
    )


def _overview_lines(
    cfg: QualityConfig, facts: dict[str, Any], had_clean: bool, scored: bool
) -> list[str]:
    return [
        f"- labelled rows checked: **{facts['rows_checked']}** "
        f"({', '.join(f'{k} {v}' for k, v in facts['rows_by_split'].items())})",
        _method_line(cfg, facts, scored),
        _flagged_line(cfg, facts),
        *_agreement_lines(facts.get("oof_agreement")),
        f"- conflicting duplicates among them: **{facts['issues_by_kind'][CONFLICT]}**"
        + ("" if had_clean else " (the clean stage's conflicts were not passed in)"),
        f"- every issue, with a blank `labels` column to fill in: `{ISSUES_CSV}` (then set "
        "`ingest.label_fixes` to the filled file)",
        "",
    ]


def _suspicious_lines(issue_rows: list[dict[str, Any]]) -> list[str]:
    return [
        "### Most suspicious rows",
        "",
        md_table(
            [
                {
                    "id": r["id"],
                    "given": r["given_labels"],
                    "suggested": r["suggested_labels"],
                    "score": r["score"],
                    "issue": r["issue"],
                    "text": r["text"][:80],
                }
                for r in issue_rows[:15]
            ]
        ),
    ]


def _name_check_lines(cfg: QualityConfig, checks: list[dict[str, Any]]) -> list[str]:
    bad = [c["label"] for c in checks if c["disagrees"]]
    return [
        "### Labels against their names (zero-shot score of the label's name)",
        "",
        md_table(
            [
                {
                    "label": c["label"],
                    "rows": c["rows"],
                    "AUC": _f(c["auc"]),
                    "name wins": _f(c["top_share"]),
                    "score own rows": _f(c["mean_score_own"]),
                    "score other rows": _f(c["mean_score_other"]),
                    "disagrees": "yes" if c["disagrees"] else "",
                }
                for c in checks
            ]
        ),
        (
            f"Label(s) {bad}: their rows do not score higher on the label's name than the "
            f"other rows (AUC < {cfg.zero_shot_min_auc:g}): the name does not describe "
            "them (give zero_shot.descriptions) or their rows are labelled inconsistently."
            if bad
            else "Every label's rows score higher on its name than the other rows."
        ),
        "",
    ]


def resolve_method(cfg: QualityConfig, device: str | None = None) -> QualityConfig:
    """``cfg`` with ``method: auto`` replaced by the method it stands for on ``device``
    (``cuda``, ``mps`` or ``cpu``; None: the device ``cfg.device`` chooses here):
    ``prototype`` on a GPU, where its five out-of-fold fits take minutes and its flags are the
    most precise (``bench/bench_label_issues.py``), ``hybrid`` on a CPU, where they would take
    20 minutes or more."""
    if cfg.method != AUTO:
        return cfg
    if device is None:
        device = choose_device(cfg.device).device
    method = AUTO_GPU_METHOD if device in ("cuda", "mps") else AUTO_CPU_METHOD
    return cfg.model_copy(update={"method": method})


def run_quality(
    store: StageStore,
    cfg: QualityConfig,
    splits: StageRef,
    clean: StageRef | None = None,
    zero_shot: StageRef | None = None,
    refresh: bool = False,
) -> StageRef:
    """Check the labelled rows of the split stage; see the module docstring."""
    requested = cfg.method
    cfg = SPEC.config(cfg)
    get_method(cfg.method)  # fail before any work, listing the available methods
    splits = store.localize(splits)
    clean = store.localize(clean) if clean is not None else None
    zero_shot = store.localize(zero_shot) if zero_shot is not None else None
    inputs = {"splits": splits, "clean": clean, "zero_shot": zero_shot}
    return store.build_stage(
        SPEC, cfg, inputs, _builder(cfg, splits, clean, zero_shot, requested), refresh
    )
