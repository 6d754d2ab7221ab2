"""The `train` stage: fit every configured method on every configured training slice.

For each method × slice: build the training rows from the split stage (``splits/train``
restricted to the slice's ids in ``slices.json``), optionally add augmented rows whose
``parent_id`` is in the slice and zero-shot pseudo-labelled pool rows, fit, predict
probabilities on valid and test, and tune the decision rule on valid.

Method names may carry modifiers: ``naive_bayes+aug`` adds augmented rows and
``naive_bayes+pseudo`` pseudo-labels for that entry only (the bench compares variants this
way); ``use_augmented`` / ``use_pseudo`` switch them on for every method.

Output directory:

- ``runs/<method>/<slice>/``: ``model/`` (the method's ``save``), ``valid_probs.npy``,
  ``test_probs.npy`` (rows in ``splits/valid`` and ``splits/test`` order, columns in
  ``labels.json`` order), ``decision.json`` (see ``label_pipeline.decision``), ``fit.json``
  (seconds, training rows, what the method reported, fallbacks);
- ``runs.json``: one entry per run (method, slice, slice size, rows, directory, valid
  micro/macro-F1, decision, fallback notes); ``labels.json``; ``summary.md``; ``sample.json``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from label_pipeline.artifacts import md_table, num
from label_pipeline.calibration import (
    CalibrationFit,
    calibration_scores,
    fit_calibration,
    save_calibrator,
)
from label_pipeline.choice import AVERAGE
from label_pipeline.decision import Decision, apply_decision, tune_decision
from label_pipeline.devices import DeviceChoice, DeviceConfig, choose_device
from label_pipeline.errors import ConfigError, InputDataError, TrainingDivergedError
from label_pipeline.methods.base import FitContext, LabelledTexts, check_method_params, get_method
from label_pipeline.metrics import f1_micro_macro
from label_pipeline.models import DEFAULT_ENCODER, resolve_model
from label_pipeline.orchestration import write_summary
from label_pipeline.progress import Progress, eta_by_kind, stage_logger
from label_pipeline.store import BuildContext, StageRef, StageSpec, StageStore

SPEC = StageSpec("train", "15", select=lambda cfg, refs: reads(cfg, refs))
STAGE, VERSION = SPEC.name, SPEC.version

BASELINES = ["naive_bayes", "tfidf_nb", "embed_lr", "knn"]
#: the run that averages the best runs of a slice (``TrainConfig.average_top``)
MODIFIERS = {"aug": "augmented rows", "pseudo": "pseudo-labelled rows"}
#: every slice listed in the split stage's slices.json
ALL_SLICES = "*"


class TrainConfig(BaseModel):
    """Training of the classifiers.

    Attributes:
        enabled: run the stage.
        methods: registered method names (``label_pipeline.methods``), optionally with
            ``+aug`` / ``+pseudo`` modifiers (e.g. ``naive_bayes+aug``). Default: the four
            baselines, ``hybrid``, ``finetune`` and ``prototype`` (the last measured on
            NLBSE'24 issue reports, where it is the best model at 16 rows per label).
        method_params: settings per base method name (each method's in "Method settings" of
            ``docs/config.md``), checked as the config loads.
        slices: training slices (keys of the split stage's ``slices.json``, e.g. ``"8"``,
            ``"all"``); ``["*"]`` = every slice.
        use_augmented: add the augment stage's rows whose ``parent_id`` is in the slice.
        use_pseudo: add zero-shot pseudo-labelled pool rows.
        pseudo_min_confidence: only pseudo-labels with ``confidence`` >= this.
        pseudo_weight: sample weight of pseudo-labelled rows (gold rows weigh 1).
        encoder: ``adapted`` (the adapt stage's encoder when it ran, else the base encoder),
            ``base`` (all-MiniLM-L6-v2), or a model reference.
        threshold: multi-label decision, tuned on valid for micro-F1: one ``global``
            threshold, one ``per_label`` (every label with a validation positive), or
            ``auto`` (a label's own threshold only when valid has at least
            ``min_label_positives`` of its positives, the global one for the others).
        min_valid_rows: fewer valid rows than this: no tuning, threshold 0.5 (reported).
        min_label_positives: validation positives a label needs for its own threshold in
            ``auto`` mode.
        label_shift: single-label only. ``pool``: estimate the unlabeled pool's label
            frequencies from each model's predictions and reweight its probabilities to them
            (``label_pipeline.label_shift``); for labelled rows collected as N per label from
            a pool whose labels are not balanced. ``none``: probabilities as trained.
        label_shift_pool_rows: pool rows (sampled with ``seed``) the estimate uses.
        calibration: calibration of each run's probabilities on valid
            (``label_pipeline.calibration``): ``auto`` (temperature, Platt, isotonic or none,
            whichever has the lowest cross-fitted valid log loss), ``temperature``, ``platt``,
            ``isotonic`` or ``none``. The calibrator is saved with the model (loading it
            applies it); valid probabilities are cross-fitted, test gets the calibrator fitted
            on all of valid. With ``label_shift: pool`` the probabilities are calibrated first
            and the shift is estimated from the calibrated ones.
        calibration_min_rows: fewer valid rows than this: no calibration (identity, reported).
        label_issues: the training rows the quality stage flags as probably mislabelled:
            ``keep`` (train on them as given; the quality stage only reports them), ``drop``
            (leave them and their augmented copies out) or ``relabel`` (train them with the
            suggested labels, without their augmented copies). Needs the quality stage
            unless ``keep``; the rows affected are counted in ``fit.json``, ``runs.json`` and
            the summary.
        average_top: after each slice's runs, one more run, ``average``: the mean of the
            probabilities of the ``average_top`` runs best on valid (valid micro-F1, then
            macro-F1; fallback runs left out, one run per base method), calibrated and decided
            on valid like every run, saved as an ``ensemble`` model of the members' saved
            models (nothing is refitted). The evaluate stage may ship it
            (``evaluate.prefer_average``). 0 or 1: no average; never with
            ``label_shift: pool``.
        seed: random seed handed to every method.
        device: device, precision and batch sizes.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    methods: list[str] = Field(
        default_factory=lambda: [*BASELINES, "hybrid", "finetune", "prototype"]
    )
    method_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    slices: list[str] = Field(default_factory=lambda: ["all"])
    use_augmented: bool = False
    use_pseudo: bool = False
    pseudo_min_confidence: float = Field(0.5, ge=0.0, le=1.0)
    pseudo_weight: float = Field(0.5, gt=0.0)
    encoder: str = "adapted"
    threshold: Literal["global", "per_label", "auto"] = "global"
    min_valid_rows: int = Field(10, ge=1)
    min_label_positives: int = Field(5, ge=1)
    label_shift: Literal["none", "pool"] = "none"
    label_shift_pool_rows: int = Field(4000, ge=1)
    calibration: Literal["auto", "temperature", "platt", "isotonic", "none"] = "auto"
    calibration_min_rows: int = Field(30, ge=2)
    label_issues: Literal["keep", "drop", "relabel"] = "keep"
    average_top: int = Field(3, ge=0)
    seed: int = 0
    device: DeviceConfig = Field(default_factory=DeviceConfig)

    @field_validator("method_params")
    @classmethod
    def _method_settings(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Each method's settings through its settings model (``label_pipeline.methods``), so
        a typo fails as the config loads, naming method and setting; kept as given."""
        if value:
            check_method_params(value)
        return value


def parse_method(spec: str) -> tuple[str, set[str]]:
    """``"naive_bayes+aug"`` -> ``("naive_bayes", {"aug"})``; unknown modifiers raise."""
    base, *mods = [p.strip() for p in spec.split("+")]
    unknown = sorted(set(mods) - set(MODIFIERS))
    if unknown:
        raise ConfigError(
            f"train.methods: {spec!r} has unknown modifier(s) {unknown}; "
            f"use {', '.join('+' + m for m in MODIFIERS)}"
        )
    return base, set(mods)


def check_methods(cfg: TrainConfig) -> None:
    """Every method name is registered and every method_params key names a used method."""
    if not cfg.methods:
        raise ConfigError("train.methods is empty: name at least one method, e.g. naive_bayes")
    bases = set()
    for spec in cfg.methods:
        base, _ = parse_method(spec)
        get_method(base)  # raises ConfigError listing the available ones
        bases.add(base)
    extra = sorted(set(cfg.method_params) - bases)
    if extra:
        raise ConfigError(
            f"train.method_params has parameters for {extra}, which are not in train.methods "
            f"({cfg.methods}); remove them or add the method"
        )


def _adapted_model(cfg: TrainConfig, adapted: StageRef | None) -> Path | None:
    """The adapt stage's encoder directory when the train stage reads it (``encoder:
    adapted`` and the adapt stage ran), else None."""
    if cfg.encoder != "adapted" or adapted is None or not (adapted.dir / "model").is_dir():
        return None
    return adapted.dir / "model"


def resolve_encoder(cfg: TrainConfig, adapted: StageRef | None) -> tuple[str, str]:
    """(local encoder directory, how it was chosen)."""
    model = _adapted_model(cfg, adapted)
    if model is not None:
        return str(resolve_model(model, "train.encoder")), "adapted encoder"
    if cfg.encoder == "adapted":
        return str(resolve_model(DEFAULT_ENCODER, "train.encoder")), (
            "base encoder (the adapt stage did not run)"
        )
    if cfg.encoder == "base":
        return str(resolve_model(DEFAULT_ENCODER, "train.encoder")), "base encoder"
    return str(resolve_model(cfg.encoder, "train.encoder")), f"encoder {cfg.encoder}"


def adaptation_start(cfg: TrainConfig, adapted: StageRef | None) -> str | None:
    """When the train stage reads the adapt stage's encoder (see :func:`resolve_encoder`): the
    local directory of the encoder the adaptation started from, for the methods that start
    there (``encoder: base`` of ``prototype`` and ``finetune``); else None."""
    if _adapted_model(cfg, adapted) is None:
        return None
    start = adapted.manifest().get("config", {}).get("model") or DEFAULT_ENCODER
    return str(resolve_model(start, "adapt.model"))


# ---------------------------------------------------------------- reading the inputs


def _texts_and_y(ds: Any, labels: list[str]) -> tuple[list[str], np.ndarray, list[str]]:
    from label_pipeline.data import label_matrix

    return (
        [str(t) for t in ds["text"]],
        label_matrix([list(x) for x in ds["labels"]], labels),
        [str(i) for i in ds["id"]],
    )


def _find_dataset(directory: Path, names: tuple[str, ...], need: set[str]) -> Any | None:
    import datasets

    for name in names:
        p = directory / name
        if (p / "dataset_info.json").is_file() or (p / "state.json").is_file():
            ds = datasets.load_from_disk(str(p))
            if need <= set(ds.column_names):
                return ds
    return None


def load_augmented(ref: StageRef) -> Any:
    """The augment stage's rows (``id``, ``text``, ``labels``, ``parent_id``)."""
    ds = _find_dataset(ref.dir, ("augmented", "rows", "train"), {"text", "labels", "parent_id"})
    if ds is None:
        raise InputDataError(
            f"{ref.dir}: no augmented dataset with columns text, labels, parent_id "
            "(looked for augmented/, rows/, train/); re-run the augment stage"
        )
    return ds


def load_pseudo(ref: StageRef, min_confidence: float) -> Any:
    """Zero-shot pool rows with a non-empty pseudo-label set and ``confidence`` >= floor."""
    ds = _find_dataset(ref.dir, ("unlabeled", "scores"), {"text", "labels", "confidence"})
    if ds is None:
        raise InputDataError(
            f"{ref.dir}: no zero-shot scores with columns text, labels, confidence "
            "(looked for unlabeled/, scores/); re-run the zero_shot stage"
        )
    keep = [
        i
        for i, (lab, conf) in enumerate(zip(ds["labels"], ds["confidence"], strict=True))
        if len(lab) > 0 and conf is not None and float(conf) >= min_confidence
    ]
    return ds.select(keep)


@dataclass
class ExtraRows:
    """Rows a slice's training rows may be joined by: the augment stage's (``parent_ids``:
    the training row each was made from) or zero-shot pseudo-labelled pool rows."""

    texts: list[str]
    y: np.ndarray
    ids: list[str]
    parent_ids: list[str] = field(default_factory=list)


def _extra_rows(ds: Any, labels: list[str], parents: bool = False) -> ExtraRows:
    """``ds`` as plain rows (augmented rows without ``id`` are named by their position)."""
    from label_pipeline.data import label_matrix

    if parents:
        ids = (
            [str(i) for i in ds["id"]]
            if "id" in ds.column_names
            else list(map(str, range(len(ds))))
        )
    else:
        ids = [str(i) for i in ds["id"]] if len(ds) else []
    return ExtraRows(
        texts=[str(t) for t in ds["text"]],
        y=label_matrix([list(x) for x in ds["labels"]], labels)
        if len(ds)
        else np.zeros((0, len(labels)), dtype=np.int64),
        ids=ids,
        parent_ids=[str(p) for p in ds["parent_id"]] if parents else [],
    )


@dataclass
class TrainData:
    """What the train stage reads (:func:`read_train_data`), as plain values: the labels,
    the slices to train (``names``, smallest first, of ``slices``), the train split's rows
    (``y`` as trained: relabelled under ``label_issues: relabel``), valid and test, the
    unlabeled pool, the quality stage's suggested labels by row id (``fixes``), the extra
    rows asked for and the pool rows label-shift estimation uses (``shift_pool``).
    ``source`` names the slices file in errors."""

    labels: list[str]
    multi_label: bool
    slices: dict[str, list[str]]
    names: list[str]
    texts: list[str]
    y: np.ndarray
    ids: list[str]
    valid: LabelledTexts
    test_texts: list[str]
    unlabeled: list[str] = field(default_factory=list)
    fixes: dict[str, list[str]] = field(default_factory=dict)
    augmented: ExtraRows | None = None
    pseudo: ExtraRows | None = None
    shift_pool: list[str] | None = None
    source: str = "slices.json"


def read_train_data(
    cfg: TrainConfig,
    splits_ref: StageRef,
    augmented: StageRef | None,
    pseudo: StageRef | None,
    quality: StageRef | None,
    warnings: list[str],
) -> TrainData:
    """Read the inputs of a run of ``cfg`` and check them against it (unknown slices,
    missing splits, extra rows asked for from a stage that did not run); the notes for the
    summary go into ``warnings``."""
    from label_pipeline.data import load_slices, load_splits, read_label_info

    labels, multi_label = read_label_info(splits_ref.dir)
    splits = load_splits(splits_ref.dir)
    slices = load_slices(splits_ref.dir)
    names = slice_names(cfg, slices, splits_ref.dir / "slices.json")
    warnings += [
        f"slice {left!r} holds the same rows as slice {kept!r}: trained once, as {kept!r}"
        for left, kept in repeated_slices(slices, names).items()
    ]
    for split in ("train", "valid", "test"):
        if split not in splits:
            raise InputDataError(f"{splits_ref.dir / 'splits'} has no {split!r} split")
    tr_texts, tr_y, tr_ids = _texts_and_y(splits["train"], labels)
    row_of = {i: r for r, i in enumerate(tr_ids)}
    fixes = label_issue_fixes(quality, labels) if quality is not None else {}
    tr_y = _relabel(tr_y, row_of, fixes, labels) if cfg.label_issues == "relabel" else tr_y
    va_texts, va_y, _ = _texts_and_y(splits["valid"], labels)
    te_texts, _, _ = _texts_and_y(splits["test"], labels)
    unlabeled = [str(t) for t in splits["unlabeled"]["text"]] if "unlabeled" in splits else []
    data = TrainData(
        labels=labels,
        multi_label=multi_label,
        slices=slices,
        names=names,
        texts=tr_texts,
        y=tr_y,
        ids=tr_ids,
        valid=LabelledTexts(va_texts, va_y, labels, multi_label),
        test_texts=te_texts,
        unlabeled=unlabeled,
        fixes=fixes,
        shift_pool=_label_shift_pool(cfg, multi_label, unlabeled, warnings),
        source=str(splits_ref.dir / "slices.json"),
    )
    data.augmented, data.pseudo = _read_extra_rows(cfg, augmented, pseudo, labels)
    return data


def _read_extra_rows(
    cfg: TrainConfig, augmented: StageRef | None, pseudo: StageRef | None, labels: list[str]
) -> tuple[ExtraRows | None, ExtraRows | None]:
    """The augmented and pseudo-labelled rows, when a method asks for them."""
    mods = [parse_method(spec)[1] for spec in cfg.methods]
    wants_aug = cfg.use_augmented or any("aug" in m for m in mods)
    wants_pseudo = cfg.use_pseudo or any("pseudo" in m for m in mods)
    if wants_aug and augmented is None:
        raise ConfigError(
            "train: augmented rows requested (use_augmented or a '+aug' method) but the "
            "augment stage did not run; enable augment or drop the request"
        )
    if wants_pseudo and pseudo is None:
        raise ConfigError(
            "train: pseudo-labels requested (use_pseudo or a '+pseudo' method) but the "
            "zero_shot stage did not run; enable zero_shot or drop the request"
        )
    aug = _extra_rows(load_augmented(augmented), labels, parents=True) if wants_aug else None
    pse = (
        _extra_rows(load_pseudo(pseudo, cfg.pseudo_min_confidence), labels)
        if wants_pseudo
        else None
    )
    return aug, pse


def slice_names(cfg: TrainConfig, slices: dict[str, list[str]], path: Path) -> list[str]:
    """The configured slices, smallest first; ``*`` expands to every slice in slices.json
    that does not hold the same rows as a smaller one (e.g. ``all`` when the largest slice
    of the user's slice file is the whole training split)."""
    names = list(slices) if ALL_SLICES in cfg.slices else list(dict.fromkeys(cfg.slices))
    unknown = [s for s in names if s not in slices]
    if unknown:
        raise ConfigError(
            f"train.slices: {unknown} not in {path} (available: {', '.join(slices)}); "
            "set train.slices to those names or ['*'] for all"
        )
    names = sorted(names, key=lambda s: (len(slices[s]), s))
    if ALL_SLICES in cfg.slices:
        seen: set[frozenset[str]] = set()
        unique = []
        for name in names:
            ids = frozenset(slices[name])
            if ids not in seen:
                seen.add(ids)
                unique.append(name)
        names = unique
    return names


def repeated_slices(slices: dict[str, list[str]], names: list[str]) -> dict[str, str]:
    """Slices of slices.json left out because they hold the same rows as a trained one
    (``*`` expands to distinct slices only): ``{left out: trained instead}``."""
    trained = {frozenset(slices[n]): n for n in names}
    return {
        n: trained[frozenset(ids)]
        for n, ids in slices.items()
        if n not in names and frozenset(ids) in trained
    }


# ---------------------------------------------------------------- one run


def label_prior(train: LabelledTexts, n_rows: int) -> np.ndarray:
    """Fallback probabilities: the weighted training frequency of every label."""
    w = np.ones(len(train)) if train.sample_weight is None else np.asarray(train.sample_weight)
    prior = (train.y * w[:, None]).sum(axis=0) / max(w.sum(), 1e-12)
    if not train.multi_label:
        prior = prior / max(prior.sum(), 1e-12)
    return np.tile(prior, (n_rows, 1))


def _check_probs(probs: np.ndarray, n: int, n_labels: int, what: str) -> None:
    probs = np.asarray(probs)
    if probs.shape != (n, n_labels):
        raise ValueError(
            f"{what}: predict_proba returned shape {probs.shape}, expected {(n, n_labels)}"
        )
    if not np.isfinite(probs).all():
        raise TrainingDivergedError(
            f"{what}: {int((~np.isfinite(probs)).sum())} probabilities are NaN/inf"
        )


@dataclass
class FittedRun:
    """One method fitted and its valid/test probabilities (:func:`fit_method`).

    ``model`` is None when the fit fell back to the label prior (``facts["fallback"]``);
    ``calibration``, when not None, is saved with the model; ``uncalibrated`` holds the
    ``valid`` and ``test`` probabilities before calibration."""

    model: Any | None
    valid_probs: np.ndarray
    test_probs: np.ndarray
    facts: dict[str, Any]
    uncalibrated: dict[str, np.ndarray] = field(default_factory=dict)
    calibration: CalibrationFit | None = None


def fit_method(
    method_name: str,
    params: dict[str, Any],
    train: LabelledTexts,
    valid: LabelledTexts,
    test_texts: list[str],
    ctx: FitContext,
    shift_pool: list[str] | None = None,
    calibration: str = "none",
    calibration_min_rows: int = 30,
    keep_uncalibrated: bool = True,
) -> FittedRun:
    """Fit one method and predict valid/test probabilities; nothing is written.

    With ``calibration`` other than ``none`` the probabilities are calibrated on valid
    (``label_pipeline.calibration.fit_calibration``): valid gets the cross-fitted ones, test the
    calibrator fitted on all of valid (returned to be saved with the model, applied by
    ``load_saved``); the facts carry the choice under ``calibration``. With
    ``keep_uncalibrated`` the run keeps the ``valid`` and ``test`` probabilities without
    calibration (label-shift corrected on their own when ``shift_pool`` is set).

    With ``shift_pool`` (single-label), the pool's label frequencies are estimated from the
    model's probabilities on those texts and valid/test probabilities are reweighted to them;
    the estimate is in the facts under ``label_shift`` (see ``label_pipeline.label_shift``).

    A method that diverges (``TrainingDivergedError`` or ``FloatingPointError`` in ``fit``,
    or non-finite probabilities) is replaced by the training label prior; the facts say so
    under ``fallback``. Any other error propagates.
    """
    cls = get_method(method_name)
    facts: dict[str, Any] = {}
    started = time.time()
    try:
        with np.errstate(all="ignore"):
            model = cls(**params).fit(train, valid, ctx)
        facts["fit_seconds"] = round(time.time() - started, 3)
        t0 = time.time()
        fitted = _predict(
            model,
            method_name,
            train,
            valid,
            test_texts,
            ctx.seed,
            (shift_pool, calibration, calibration_min_rows, keep_uncalibrated),
            facts,
        )
        facts["predict_seconds"] = round(time.time() - t0, 3)
        return fitted
    except (TrainingDivergedError, FloatingPointError) as exc:
        facts["fit_seconds"] = round(time.time() - started, 3)
        facts["fallback"] = (
            f"{method_name} did not converge ({exc}); its predictions are replaced by the "
            "training label frequencies (a no-skill baseline). Lower the learning rate, "
            "change the seed or use more training rows."
        )
        valid_probs = label_prior(train, len(valid))
        test_probs = label_prior(train, len(test_texts))
        raw = {"valid": valid_probs, "test": test_probs} if keep_uncalibrated else {}
        clip = np.clip(valid_probs, 0.0, 1.0), np.clip(test_probs, 0.0, 1.0)
        return FittedRun(None, *clip, facts, raw)


def _predict(
    model: Any,
    method_name: str,
    train: LabelledTexts,
    valid: LabelledTexts,
    test_texts: list[str],
    seed: int,
    how: tuple[list[str] | None, str, int, bool],
    facts: dict[str, Any],
) -> FittedRun:
    """:func:`fit_method` after the fit: predict, calibrate, correct for label shift
    (``how``: shift pool, calibration, its minimum rows, keep uncalibrated)."""
    shift_pool, calibration, calibration_min_rows, keep_uncalibrated = how
    n_labels = train.y.shape[1]
    valid_probs = np.asarray(model.predict_proba(valid.texts), dtype=np.float64)
    _check_probs(valid_probs, len(valid), n_labels, f"{method_name} on valid")
    test_probs = np.asarray(model.predict_proba(test_texts), dtype=np.float64)
    _check_probs(test_probs, len(test_texts), n_labels, f"{method_name} on test")
    raw_valid, raw_test = np.clip(valid_probs, 0.0, 1.0), np.clip(test_probs, 0.0, 1.0)
    cal = fit_calibration(
        raw_valid,
        valid.y,
        train.multi_label,
        calibration,
        min_rows=calibration_min_rows,
        seed=seed,
        labels=train.label_names,
        what=f"valid ({method_name})",
    )
    valid_probs, test_probs = cal.valid_probs, cal.calibrator.apply(raw_test)
    if calibration != "none":
        facts["calibration"] = cal.facts()
    if shift_pool:
        from label_pipeline.label_shift import estimate_label_shift

        pool_probs = np.asarray(model.predict_proba(shift_pool), dtype=np.float64)
        _check_probs(pool_probs, len(shift_pool), n_labels, f"{method_name} on pool")
        prior = model.source_prior(train)
        # calibrate first, then estimate the shift from calibrated probabilities
        shift = estimate_label_shift(
            valid_probs, valid.y, cal.calibrator.apply(np.clip(pool_probs, 0, 1)), prior
        )
        valid_probs, test_probs = shift.apply(valid_probs), shift.apply(test_probs)
        facts["label_shift"] = shift.to_json()
        if keep_uncalibrated and cal.method != "none":
            raw_shift = estimate_label_shift(raw_valid, valid.y, pool_probs, prior)
            raw_valid, raw_test = raw_shift.apply(raw_valid), raw_shift.apply(raw_test)
        elif keep_uncalibrated:
            raw_valid, raw_test = valid_probs, test_probs
    return FittedRun(
        model,
        np.clip(valid_probs, 0.0, 1.0),
        np.clip(test_probs, 0.0, 1.0),
        facts,
        {"valid": raw_valid, "test": raw_test} if keep_uncalibrated else {},
        cal if cal.method != "none" else None,
    )


def _save_model(model: Any, calibration: CalibrationFit | None, model_dir: Path) -> None:
    """A fitted method's ``save`` and its calibrator (when it has one) into ``model_dir``."""
    model.save(model_dir)
    if calibration is not None:
        save_calibrator(calibration.calibrator, model_dir, calibration.facts())


def fit_and_predict(
    method_name: str,
    params: dict[str, Any],
    train: LabelledTexts,
    valid: LabelledTexts,
    test_texts: list[str],
    ctx: FitContext,
    model_dir: Path,
    shift_pool: list[str] | None = None,
    calibration: str = "none",
    calibration_min_rows: int = 30,
    uncalibrated: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """:func:`fit_method`, then save the model (and its calibrator) into ``model_dir`` (a
    fallback saves nothing): valid probabilities, test probabilities and the facts.
    ``uncalibrated``, when given, receives the probabilities before calibration."""
    fitted = fit_method(
        method_name,
        params,
        train,
        valid,
        test_texts,
        ctx,
        shift_pool,
        calibration,
        calibration_min_rows,
        keep_uncalibrated=uncalibrated is not None,
    )
    if fitted.model is not None:
        _save_model(fitted.model, fitted.calibration, model_dir)
    if uncalibrated is not None:
        uncalibrated.update(fitted.uncalibrated)
    return fitted.valid_probs, fitted.test_probs, fitted.facts


@dataclass
class RunResult:
    """One run of the train stage, computed, to be written into ``runs/<method>/<slice>/``
    (``dir``): ``fit.json`` (``facts``), the valid/test probabilities (and before
    calibration, when calibrated), ``decision.json`` and ``model/``; ``entry`` is its
    ``runs.json`` entry. ``model/`` holds the fitted ``model`` (with ``calibration``), or
    for an average the ``ensemble`` of the ``members``' saved models (base method, run
    directory), or nothing after a fallback."""

    dir: str
    facts: dict[str, Any]
    probs: dict[str, np.ndarray]
    uncalibrated: dict[str, np.ndarray]
    decision: Decision
    entry: dict[str, Any]
    model: Any | None = None
    calibration: CalibrationFit | None = None
    ensemble: Any | None = None
    members: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class SliceRows:
    """The training rows of one slice: its ids, the flagged ones among them
    (``issue_ids``), the rows trained (``rows``, positions in the train split) and the
    labels without an example there (``absent``)."""

    name: str
    ids: list[str]
    issue_ids: set[str]
    rows: list[int]
    absent: list[str]


def slice_rows(data: TrainData, name: str, label_issues: str) -> SliceRows:
    """The rows of slice ``name`` (``label_issues: drop`` leaves the flagged ones out)."""
    row_of = {i: r for r, i in enumerate(data.ids)}
    ids = data.slices[name]
    missing_ids = [i for i in ids if i not in row_of]
    if missing_ids:
        raise InputDataError(
            f"{data.source}: slice {name!r} names {len(missing_ids)} id(s) not in the train "
            f"split (first: {missing_ids[0]!r}); re-run the split stage"
        )
    issue_ids = {i for i in ids if i in data.fixes}
    left_out = issue_ids if label_issues == "drop" else set()
    rows = [row_of[i] for i in ids if i not in left_out]
    absent = [data.labels[j] for j in np.flatnonzero(data.y[rows].sum(axis=0) == 0)]
    return SliceRows(name, ids, issue_ids, rows, absent)


def train_runs(
    data: TrainData,
    cfg: TrainConfig,
    device: DeviceChoice,
    encoder: str | None,
    warnings: list[str],
    base_encoder: str | None = None,
) -> Iterator[RunResult]:
    """Fit every method of ``cfg`` on every slice of ``data`` (slice by slice, in the
    configured order), each slice's runs followed by their average (see
    ``TrainConfig.average_top``); notes for the summary go into ``warnings``. ``encoder``:
    the encoder the fits start from; ``base_encoder``: the one its adaptation started from,
    when ``encoder`` is the adapt stage's (``FitContext.base_encoder``).

    Yields each run as it is done, so the caller saves one model before the next is fitted
    (an average is made of saved members); a run's ``model`` is let go once the caller
    resumes. Each fit has a scratch directory that lasts until then."""
    log = stage_logger()
    for slice_name in data.names:
        rows = slice_rows(data, slice_name, cfg.label_issues)
        if rows.absent:
            msg = (
                f"slice {slice_name!r} ({len(rows.rows)} rows) has no example of label(s) "
                f"{rows.absent}: no method can learn them from this slice"
            )
            log.warning("train: %s", msg)
            warnings.append(msg)
        slice_runs = []
        for spec in cfg.methods:
            with tempfile.TemporaryDirectory(prefix="lp-train-") as work:
                earlier = [r.entry for r in slice_runs]
                fit_ctx = run_context(data, cfg, device, encoder, base_encoder, work, earlier)
                run = fit_run(data, cfg, rows, spec, fit_ctx, warnings)
                yield run
                run.model = None
            slice_runs.append(run)
        if data.shift_pool is None:
            average = average_run(slice_runs, cfg, data, warnings)
            if average is not None:
                yield average


def run_context(
    data: TrainData,
    cfg: TrainConfig,
    device: DeviceChoice,
    encoder: str | None,
    base_encoder: str | None,
    work_dir: str | Path,
    earlier: list[dict[str, Any]],
) -> FitContext:
    """The context of one run of a slice (see :func:`train_runs`): ``earlier``, the
    ``runs.json`` entries of the slice's runs fitted before it, set its valid bar."""
    return FitContext(
        device=device,
        seed=cfg.seed,
        encoder=encoder,
        base_encoder=base_encoder,
        unlabeled_texts=data.unlabeled,
        work_dir=Path(work_dir),
        valid_bar=slice_bar(data, cfg, earlier),
    )


def slice_bar(data: TrainData, cfg: TrainConfig, earlier: list[dict[str, Any]]) -> float | None:
    """:func:`valid_bar` of a run after ``earlier`` in its slice: to join the slice's average,
    or with a label-shift pool (no average) to be the best run."""
    return valid_bar(earlier, cfg.average_top if data.shift_pool is None else 1)


def fit_run(
    data: TrainData,
    cfg: TrainConfig,
    rows: SliceRows,
    spec: str,
    ctx: FitContext,
    warnings: list[str],
) -> RunResult:
    """Fit the method ``spec`` (with its modifiers) on one slice's rows, predict, calibrate
    and tune its decision on valid."""
    base, mods = parse_method(spec)
    train = _training_rows(
        data,
        rows.rows,
        data.augmented if (cfg.use_augmented or "aug" in mods) else None,
        data.pseudo if (cfg.use_pseudo or "pseudo" in mods) else None,
        set(rows.ids) - rows.issue_ids,
        cfg.pseudo_weight,
    )
    fitted = fit_method(
        base,
        cfg.method_params.get(base, {}),
        train,
        data.valid,
        data.test_texts,
        ctx,
        data.shift_pool,
        cfg.calibration,
        cfg.calibration_min_rows,
    )
    if "fallback" in fitted.facts:
        stage_logger().warning("train: %s / %s: %s", spec, rows.name, fitted.facts["fallback"])
        warnings.append(f"{spec} / slice {rows.name}: {fitted.facts['fallback']}")
    fit_facts = {
        "method": spec,
        "base_method": base,
        "params": cfg.method_params.get(base, {}),
        "slice": rows.name,
        "slice_size": len(rows.ids),
        "train_rows": len(train),
        "augmented_rows": int(train.info_aug),
        "pseudo_rows": int(train.info_pseudo),
        "labels_without_examples": rows.absent,
        "label_issues": {"policy": cfg.label_issues, "rows": len(rows.issue_ids)},
        "info": ctx.info,
        "valid_bar": ctx.valid_bar,
        **fitted.facts,
    }
    probs = {"valid": fitted.valid_probs, "test": fitted.test_probs}
    run = score_run(
        fit_facts, probs, fitted.uncalibrated, data.valid.y, cfg, data.multi_label, warnings
    )
    run.model, run.calibration = fitted.model, fitted.calibration
    return run


def score_run(
    fit_facts: dict[str, Any],
    probs: dict[str, np.ndarray],
    uncalibrated: dict[str, np.ndarray],
    va_y: np.ndarray,
    cfg: TrainConfig,
    multi_label: bool,
    warnings: list[str],
) -> RunResult:
    """Tune a fitted run's decision rule on valid, score it there (calibration before and
    after, micro/macro-F1) and make its ``runs.json`` entry."""
    spec, slice_name = fit_facts["method"], fit_facts["slice"]
    valid_probs = probs["valid"]
    decision = tune_decision(
        valid_probs,
        va_y,
        multi_label,
        cfg.threshold,
        cfg.min_valid_rows,
        min_label_positives=cfg.min_label_positives,
    )
    decision.label_shift = fit_facts.get("label_shift")
    if decision.fallback:
        stage_logger().warning("train: %s / %s: %s", spec, slice_name, decision.note)
    cal_facts = fit_facts.get("calibration")
    saved_uncalibrated: dict[str, np.ndarray] = {}
    if cal_facts is not None and len(va_y):
        saved_uncalibrated = dict(uncalibrated)
        cal_facts["valid_before"] = calibration_scores(va_y, uncalibrated["valid"], multi_label)
        cal_facts["valid_after"] = calibration_scores(va_y, valid_probs, multi_label)
        for note in cal_facts["notes"]:
            if not note.startswith("no calibrator"):
                warnings.append(f"{spec} / slice {slice_name}: calibration: {note}")
    valid_f1 = (
        f1_micro_macro(va_y, apply_decision(valid_probs, decision))
        if len(va_y)
        else {"micro_f1": None, "macro_f1": None}
    )
    run_dir = str(Path("runs") / spec / slice_name)
    entry = {
        **{k: fit_facts[k] for k in ("method", "base_method", "slice", "slice_size")},
        "train_rows": fit_facts["train_rows"],
        "dir": run_dir,
        "valid_micro_f1": valid_f1["micro_f1"],
        "valid_macro_f1": valid_f1["macro_f1"],
        "decision": decision.describe(),
        "decision_fallback": decision.note if decision.fallback else "",
        "fallback": fit_facts.get("fallback", ""),
        "fit_seconds": fit_facts.get("fit_seconds"),
        "encoder": (fit_facts.get("info") or {}).get("encoder"),
        "label_issue_rows": fit_facts["label_issues"]["rows"],
        "unlearnable": fit_facts["labels_without_examples"],
        "calibration": _calibration_entry(cal_facts),
    }
    return RunResult(run_dir, fit_facts, probs, saved_uncalibrated, decision, entry)


def write_run(stage_dir: Path, run: RunResult) -> None:
    """Write one run into its directory under ``stage_dir`` (see :class:`RunResult`)."""
    run_dir = stage_dir / run.dir
    run_dir.mkdir(parents=True)
    model_dir = run_dir / "model"
    if run.model is not None:
        _save_model(run.model, run.calibration, model_dir)
    elif run.ensemble is not None:
        from label_pipeline.methods.ensemble import MEMBERS_DIR
        from label_pipeline.methods.finetune import write_method_meta

        model_dir.mkdir()
        write_method_meta(run.ensemble, model_dir)
        for base, member_dir in run.members:
            _link_tree(stage_dir / member_dir / "model", model_dir / MEMBERS_DIR / base)
        if run.calibration is not None:
            save_calibrator(run.calibration.calibrator, model_dir, run.calibration.facts())
    np.save(run_dir / "valid_probs.npy", run.probs["valid"].astype(np.float32))
    np.save(run_dir / "test_probs.npy", run.probs["test"].astype(np.float32))
    for split, raw in run.uncalibrated.items():
        np.save(run_dir / f"{split}_probs_uncalibrated.npy", raw.astype(np.float32))
    (run_dir / "decision.json").write_text(json.dumps(run.decision.to_json(), indent=2))
    (run_dir / "fit.json").write_text(json.dumps(_jsonable(run.facts), indent=2))


def _builder(
    cfg: TrainConfig,
    splits_ref: StageRef,
    augmented: StageRef | None,
    pseudo: StageRef | None,
    adapted: StageRef | None,
    quality: StageRef | None = None,
):
    def build(ctx: BuildContext) -> dict[str, Any]:
        from label_pipeline.data import write_label_info

        check_methods(cfg)
        warnings: list[str] = []
        data = read_train_data(cfg, splits_ref, augmented, pseudo, quality, warnings)
        needs_encoder = any(
            parse_method(spec)[0] not in {"naive_bayes", "tfidf_nb"} for spec in cfg.methods
        )
        encoder_dir, encoder_note = resolve_encoder(cfg, adapted) if needs_encoder else (None, "")
        base_encoder = adaptation_start(cfg, adapted) if needs_encoder else None
        device = choose_device(cfg.device)

        runs: list[dict[str, Any]] = []
        order = [spec for _ in data.names for spec in cfg.methods]
        # methods differ in cost by a hundredfold (a self-training prototype against naive
        # Bayes), so the time left counts each run left at its method's last time
        seconds: dict[str, float] = {}
        with Progress(len(order), STAGE, "training", unit="runs") as progress:
            started = time.perf_counter()
            for run in train_runs(data, cfg, device, encoder_dir, warnings, base_encoder):
                write_run(ctx.dir, run)
                runs.append(run.entry)
                if run.ensemble is None:
                    now = time.perf_counter()
                    seconds[run.entry["method"]] = now - started
                    started = now
                    eta = eta_by_kind(seconds, order[progress.done + 1 :])
                    progress.update(1, eta=eta)

        write_label_info(ctx.dir, data.labels, data.multi_label)
        (ctx.dir / "runs.json").write_text(json.dumps(_jsonable(runs), indent=2))
        n_valid = len(data.valid.y)
        from_base = sorted(
            {r["method"] for r in runs if base_encoder and r.get("encoder") == base_encoder}
        )
        if from_base:
            encoder_note += f"; {', '.join(from_base)} started from the encoder before adaptation"
        _write_summary(ctx.dir, cfg, runs, warnings, encoder_note, device.describe(), n_valid)
        return {
            "label_issues": {"policy": cfg.label_issues, "flagged_training_rows": len(data.fixes)},
            "runs": len(runs),
            "methods": cfg.methods,
            "slices": data.names,
            "encoder": encoder_dir,
            "encoder_choice": encoder_note,
            "device": device.describe(),
            "warnings": warnings,
        }

    return build


def _link_tree(src: Path, dst: Path) -> None:
    """Copy the directory ``src`` to ``dst``, hard-linking the files where the file system
    allows (a trained model is not copied byte by byte into the same store)."""
    import os

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def average_members(slice_runs: list[dict[str, Any]], top: int) -> list[dict[str, Any]]:
    """The runs an ``average`` of one slice averages: the ``top`` best on valid (micro-F1, then
    macro-F1, then training order), leaving out fallback runs and a second run of a base
    method already in (``naive_bayes+aug`` after ``naive_bayes``). Fewer than two: none."""
    members = best_per_method(slice_runs)[:top]
    return members if len(members) >= 2 else []


def best_per_method(slice_runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A slice's runs that may be averaged (no fallback, a valid score, not an average), the
    best on valid first (micro-F1, then macro-F1, then training order), one per base method."""
    eligible = [
        r
        for r in slice_runs
        if not r["fallback"] and r["valid_micro_f1"] is not None and r["method"] != AVERAGE
    ]
    ranked = sorted(
        eligible, key=lambda r: (-float(r["valid_micro_f1"]), -float(r["valid_macro_f1"] or 0.0))
    )
    out: list[dict[str, Any]] = []
    for r in ranked:
        if r["base_method"] not in {m["base_method"] for m in out}:
            out.append(r)
    return out


def valid_bar(slice_runs: list[dict[str, Any]], top: int) -> float | None:
    """The valid micro-F1 the next run of a slice must reach to join its ``average`` (the
    ``top``-th best of the slice's runs so far, see :func:`average_members`) or, with no
    average (``top`` < 2), to be the best run; None while fewer runs than that are done.
    A run below it cannot win, so a method may skip extra training (``FitContext.valid_bar``).
    """
    ranked = best_per_method(slice_runs)
    k = top if top >= 2 else 1
    return float(ranked[k - 1]["valid_micro_f1"]) if len(ranked) >= k else None


def unseen_label_members(
    members: list[dict[str, Any]], unseen: list[str]
) -> dict[str, list[str]] | None:
    """The ``label_members`` of an average of ``members`` (``runs.json`` entries): each label
    of ``unseen`` (no training example in the slice) is averaged over the members whose method
    reads the label names (``Method.reads_label_names``). The others can only guess at such a
    label, and their guesses pulled the mean down: on NLU++ at 32 rows, 13 intents unseen,
    the shipped average gained 2.3 points of test micro-F1 and 8.2 of macro-F1 once they were
    left out (docs/benchmarks.md). None when no label is unseen or no member (or every member)
    reads the names."""
    readers = [m["base_method"] for m in members if get_method(m["base_method"]).reads_label_names]
    if not unseen or not readers or len(readers) == len(members):
        return None
    return {label: readers for label in unseen}


def average_run(
    slice_runs: list[RunResult], cfg: TrainConfig, data: TrainData, warnings: list[str]
) -> RunResult | None:
    """The ``average`` run of one slice's runs (see ``TrainConfig.average_top``), or None.

    Its probabilities are the mean of the members' saved (calibrated, float32) ones,
    calibrated again on valid like every run (cross-fitted on valid, the calibrator fitted
    on all of valid for test) and decided on valid. Its model is an ``ensemble`` of the
    members' saved models, so ``load_saved("ensemble", model)`` gives the same
    probabilities."""
    from label_pipeline.methods.ensemble import Ensemble

    va_y, labels, multi_label = data.valid.y, data.labels, data.multi_label
    if cfg.average_top < 2 or not len(va_y):
        return None
    members = average_members([r.entry for r in slice_runs], cfg.average_top)
    if not members:
        return None
    started = time.time()
    first = members[0]
    probs_of = {r.dir: r.probs for r in slice_runs}
    ensemble = Ensemble(
        members=[m["base_method"] for m in members],
        label_members=unseen_label_members(members, first["unlearnable"]),
    )
    ensemble.label_names_, ensemble.multi_label_ = list(labels), multi_label
    ensemble.history_ = {"averaged_runs": [m["dir"] for m in members]}
    raw = {
        split: ensemble.combine(
            [probs_of[m["dir"]][split].astype(np.float32).astype(np.float64) for m in members]
        )
        for split in ("valid", "test")
    }
    cal = fit_calibration(
        raw["valid"],
        va_y,
        multi_label,
        cfg.calibration,
        min_rows=cfg.calibration_min_rows,
        seed=cfg.seed,
        labels=labels,
        what=f"valid ({AVERAGE})",
    )
    facts: dict[str, Any] = {
        "method": AVERAGE,
        "base_method": Ensemble.name,
        "params": {"members": ensemble.members, "label_members": ensemble.label_members},
        "slice": first["slice"],
        "slice_size": first["slice_size"],
        "train_rows": max(m["train_rows"] for m in members),
        "augmented_rows": 0,
        "pseudo_rows": 0,
        "labels_without_examples": first["unlearnable"],
        "label_issues": {"policy": cfg.label_issues, "rows": first["label_issue_rows"]},
        "info": {
            "members": [
                {k: m[k] for k in ("method", "dir", "valid_micro_f1", "valid_macro_f1")}
                for m in members
            ]
        },
        "fit_seconds": round(time.time() - started, 3),
    }
    if cfg.calibration != "none":
        facts["calibration"] = cal.facts()
    probs = {"valid": cal.valid_probs, "test": cal.calibrator.apply(raw["test"])}
    probs = {k: np.clip(v, 0.0, 1.0) for k, v in probs.items()}
    run = score_run(facts, probs, raw, va_y, cfg, multi_label, warnings)
    run.ensemble = ensemble
    run.members = [(m["base_method"], m["dir"]) for m in members]
    run.calibration = cal if cal.method != "none" else None
    return run


def _calibration_entry(cal: dict[str, Any] | None) -> dict[str, Any] | None:
    """The runs.json view of a run's calibration: method and valid ECE / log loss before and
    after (the valid figures are cross-fitted)."""
    if not cal:
        return None
    out: dict[str, Any] = {"method": cal["method"], "describe": cal["describe"]}
    out["fallback"] = cal["fallback"]
    for when in ("before", "after"):
        scores = cal.get(f"valid_{when}") or {}
        for key in ("ece", "log_loss"):
            out[f"valid_{key}_{when}"] = scores.get(key)
    return out


def _calibration_cells(cal: dict[str, Any] | None) -> dict[str, str]:
    if not cal:
        return {}
    return {
        "calibration": cal["describe"] + (" (fallback)" if cal["fallback"] else ""),
        "valid ECE before → after": f"{num(cal.get('valid_ece_before'))} → "
        f"{num(cal.get('valid_ece_after'))}",
    }


def _label_shift_pool(
    cfg: TrainConfig, multi_label: bool, unlabeled: list[str], warnings: list[str]
) -> list[str] | None:
    """The pool rows label-shift estimation uses, or None when it is off or impossible."""
    if cfg.label_shift == "none":
        return None
    if multi_label:
        raise ConfigError(
            "train.label_shift='pool' applies to single-label tasks; for multi-label data set "
            "train.label_shift: none (train.threshold: per_label tunes each label's rate)"
        )
    texts = [t for t in unlabeled if t.strip()]
    if not texts:
        msg = "train.label_shift='pool' but the split stage has no unlabeled rows: not applied"
        stage_logger().warning("train: %s", msg)
        warnings.append(msg)
        return None
    if len(texts) > cfg.label_shift_pool_rows:
        rng = np.random.default_rng(cfg.seed)
        keep = np.sort(rng.choice(len(texts), cfg.label_shift_pool_rows, replace=False))
        texts = [texts[i] for i in keep]
    return texts


def label_issue_fixes(quality: StageRef, labels: list[str]) -> dict[str, list[str]]:
    """Training row id -> suggested labels, for the rows the quality stage flagged as
    probably mislabelled (``issues/`` rows with ``flagged`` from the ``train`` split)."""
    from label_pipeline.label_quality import load_issues

    out: dict[str, list[str]] = {}
    for row in load_issues(quality):
        if row["flagged"] and row["split"] == "train":
            suggestion = [x for x in row["suggested"] if x in labels]
            if suggestion:
                out[str(row["id"])] = suggestion
    return out


def _relabel(
    y: np.ndarray, row_of: dict[str, int], fixes: dict[str, list[str]], labels: list[str]
) -> np.ndarray:
    """``y`` with the rows named in ``fixes`` carrying the suggested labels instead."""
    from label_pipeline.data import label_matrix

    y = y.copy()
    for row_id, suggestion in fixes.items():
        if row_id in row_of:
            y[row_of[row_id]] = label_matrix([suggestion], labels)[0]
    return y


class _TrainRows(LabelledTexts):
    info_aug: int = 0
    info_pseudo: int = 0


def _training_rows(
    data: TrainData,
    rows: list[int],
    aug: ExtraRows | None,
    pseudo: ExtraRows | None,
    slice_ids: set[str],
    pseudo_weight: float,
) -> _TrainRows:
    """A slice's training rows, joined by the augmented rows made from them and the
    pseudo-labelled rows (weighted ``pseudo_weight``)."""
    labels, multi_label = data.labels, data.multi_label
    out_texts = [data.texts[r] for r in rows]
    out_y = [data.y[rows]]
    out_ids = [data.ids[r] for r in rows]
    weights = [np.ones(len(rows))]
    n_aug = n_pseudo = 0
    if aug is not None and len(aug.texts):
        keep = [i for i, p in enumerate(aug.parent_ids) if p in slice_ids]
        if keep:
            out_texts += [aug.texts[i] for i in keep]
            out_y.append(aug.y[keep])
            out_ids += [aug.ids[i] for i in keep]
            weights.append(np.ones(len(keep)))
            n_aug = len(keep)
    if pseudo is not None and len(pseudo.texts):
        out_texts += pseudo.texts
        py = pseudo.y
        if not multi_label:  # one label per row: keep the first (the selected one)
            first = py.argmax(axis=1)
            py = np.eye(len(labels), dtype=np.int64)[first]
        out_y.append(py)
        out_ids += pseudo.ids
        weights.append(np.full(len(pseudo.texts), pseudo_weight))
        n_pseudo = len(pseudo.texts)
    weight = np.concatenate(weights)
    rows_out = _TrainRows(
        texts=out_texts,
        y=np.concatenate(out_y).astype(np.int64),
        label_names=labels,
        multi_label=multi_label,
        sample_weight=None if np.all(weight == 1.0) else weight,
        ids=out_ids,
    )
    rows_out.info_aug, rows_out.info_pseudo = n_aug, n_pseudo
    return rows_out


def _jsonable(value: Any) -> Any:
    from label_pipeline.data import to_jsonable

    return to_jsonable(value)


def _label_issues_line(cfg: TrainConfig, runs: list[dict[str, Any]]) -> str:
    if cfg.label_issues == "keep":
        return "- label issues: `keep` (training rows used as labelled; see the quality stage)"
    counts = ", ".join(
        f"{s} {n}" for s, n in dict.fromkeys((r["slice"], r["label_issue_rows"]) for r in runs)
    )
    what = "left out" if cfg.label_issues == "drop" else "relabelled with the suggestion"
    return f"- label issues: `{cfg.label_issues}`: flagged training rows {what} per slice: {counts}"


def unlearnable_by_slice(runs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Slice name -> labels without a training example in that slice (only slices with some)."""
    out: dict[str, list[str]] = {}
    for r in runs:
        if r.get("unlearnable"):
            out.setdefault(r["slice"], list(r["unlearnable"]))
    return out


def unlearnable_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Markdown lines naming the labels no method could learn, per slice (none: no lines)."""
    by_slice = unlearnable_by_slice(runs)
    if not by_slice:
        return []
    return [
        "- **unlearnable labels** (no training example in the slice; every model predicts them "
        "from nothing, add labelled rows for them): "
        + "; ".join(f"slice `{s}`: {', '.join(labs)}" for s, labs in by_slice.items())
    ]


def _write_summary(
    directory: Path,
    cfg: TrainConfig,
    runs: list[dict[str, Any]],
    warnings: list[str],
    encoder_note: str,
    device: str,
    n_valid: int,
) -> None:
    table = [
        {
            "method": r["method"],
            "slice": r["slice"],
            "train rows": r["train_rows"],
            "valid micro-F1": num(r["valid_micro_f1"]),
            "valid macro-F1": num(r["valid_macro_f1"]),
            "decision": r["decision"],
            "fit s": r["fit_seconds"],
            **_calibration_cells(r.get("calibration")),
            "note": "FALLBACK: label prior" if r["fallback"] else "",
        }
        for r in runs
    ]
    lines = [
        f"- methods: {', '.join(cfg.methods)}; slices: {', '.join(dict.fromkeys(r['slice'] for r in runs))}",
        f"- device: {device}" + (f"; encoder: {encoder_note}" if encoder_note else ""),
        f"- decision rule tuned on {n_valid} valid rows "
        f"({'argmax' if runs and runs[0]['decision'] == 'argmax' else cfg.threshold + ' threshold'})",
        _label_issues_line(cfg, runs),
        *unlearnable_lines(runs),
        "",
        md_table(table),
    ]
    if warnings:
        lines += ["", "**Warnings**", ""] + [f"- {w}" for w in warnings]
    fallbacks = sorted({r["decision_fallback"] for r in runs if r["decision_fallback"]})
    if fallbacks:
        lines += ["", "**Decision fallbacks**", ""] + [f"- {f}" for f in fallbacks]
    sample = [
        {
            k: r[k]
            for k in (
                "method",
                "slice",
                "train_rows",
                "valid_micro_f1",
                "valid_macro_f1",
                "decision",
            )
        }
        for r in runs
    ]
    write_summary(directory, "\n".join(lines) + "\n", sample)


def reads(cfg: TrainConfig, refs: dict[str, Any]) -> dict[str, Any]:
    """The inputs a run of ``cfg`` reads: the others stay out of its fingerprint, so a run
    does not retrain for an input it ignores."""
    mods = set().union(*(parse_method(m)[1] for m in cfg.methods))
    return {
        "splits": refs["splits"],
        "augmented": refs.get("augmented") if cfg.use_augmented or "aug" in mods else None,
        "pseudo": refs.get("pseudo") if cfg.use_pseudo or "pseudo" in mods else None,
        "adapted": refs.get("adapted") if cfg.encoder == "adapted" else None,
        "quality": refs.get("quality") if cfg.label_issues != "keep" else None,
    }


def run_train(
    store: StageStore,
    cfg: TrainConfig,
    splits: StageRef,
    augmented: StageRef | None = None,
    pseudo: StageRef | None = None,
    adapted: StageRef | None = None,
    quality: StageRef | None = None,
    refresh: bool = False,
) -> StageRef:
    """Fit every method on every slice of the split stage; see the module docstring."""
    check_methods(cfg)  # fail before any work, with the list of available methods
    if cfg.label_issues != "keep" and quality is None:
        raise ConfigError(
            f"train.label_issues={cfg.label_issues!r} acts on the quality stage's flagged rows, "
            "but the quality stage did not run; enable it (quality.enabled: true) or set "
            "train.label_issues: keep"
        )
    given = {
        "splits": splits,
        "augmented": augmented,
        "pseudo": pseudo,
        "adapted": adapted,
        "quality": quality,
    }
    read = {k: store.localize(v) for k, v in SPEC.inputs(cfg, given).items()}
    splits = read["splits"]
    augmented, pseudo = read.get("augmented"), read.get("pseudo")
    adapted, quality = read.get("adapted"), read.get("quality")
    return store.build_stage(
        SPEC,
        cfg,
        read,
        _builder(cfg, splits, augmented, pseudo, adapted, quality),
        refresh,
    )
