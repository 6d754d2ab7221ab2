"""The zero-shot settings and backend loading, shared by the ``zero_shot`` stage (which scores
the splits) and the ``quality`` stage (which re-scores the labelled rows with the backend the
zero-shot stage ran, from the config in its manifest).

:class:`ZeroShotConfig` is the ``zero_shot`` section of the pipeline config;
:func:`label_spec` reads the task's labels and what stands for each in prompts;
:func:`load_backend` resolves (``auto``: NLI when its model resolves, else embedding) and
loads a backend once per process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from label_pipeline.devices import DeviceChoice, DeviceConfig, choose_device
from label_pipeline.errors import ConfigError, InputDataError, ModelNotFoundError
from label_pipeline.models import DEFAULT_ENCODER, resolve_model
from label_pipeline.zeroshot.base import ZeroShotBackend, get_backend


class ZeroShotConfig(BaseModel):
    """Zero-shot pseudo-labelling.

    Attributes:
        enabled: run the stage.
        backend: ``auto`` (``nli`` if ``nli_model`` resolves, else ``embedding``), ``nli``,
            ``embedding``, ``fill_mask``, or any backend module added to ``label_pipeline.zeroshot``.
            The choice ``auto`` makes is not part of the cache key: set the backend explicitly
            (or refresh the stage) once an NLI model becomes reachable.
        nli_model: NLI cross-encoder (hub id or local directory) for the ``nli`` backend.
        embedding_model: sentence encoder for the ``embedding`` backend (offline default: the
            bundled all-MiniLM-L6-v2).
        fill_mask_model: masked LM for ``fill_mask`` when no adapted encoder is passed in.
        hypothesis_template: NLI hypothesis, ``{}`` = the label text.
        descriptions: label -> text standing for the label (NLI hypothesis, embedding target);
            labels not listed use their name.
        label_template: text around each label text before it is embedded (``{}`` = label text).
        temperature: softmax temperature of the embedding backend's single-label scores.
        fill_mask_prompt: appended to each text for ``fill_mask``, ``{}`` = the mask token.
        verbalizers: label -> the single word read at the mask by ``fill_mask`` (default: name).
        rule: multi-label selection: ``auto`` (best of threshold and top-k on valid),
            ``threshold`` or ``top_k``.
        metric: what the sweep maximises on the validation split: ``micro_f1`` or ``macro_f1``.
        per_label_thresholds: tune one threshold per label (threshold rule only).
        confidence_floor: single-label: rows whose best score is below it get no pseudo-label.
        calibration: calibrator of the scores, fitted on valid, for the expected precision of
            the pseudo-labels: ``auto`` (lowest cross-fitted log loss), ``temperature``,
            ``platt``, ``isotonic`` or ``none``.
        calibration_min_rows: fewer valid rows than this: no calibration (identity, reported).
        picked_calibration: multi-label top-k rule: the per-label calibrated probabilities of
            the labels the rule picks are calibrated once more on the labels it picks on valid
            (a label that outranks the row's other labels is more often right than its own
            score says; ``label_pipeline.expected_precision``). At least
            ``calibration_min_rows`` picked valid labels, otherwise skipped (reported).
        label_shift: single-label only. ``pool``: the valid rows were collected as N per label
            from a pool whose labels are not balanced, so the expected precision reweights the
            calibrated pool probabilities to the pool's label frequencies, estimated from the
            calibrated valid and pool scores (``label_pipeline.label_shift``; the pseudo-labels
            themselves are unchanged). ``none``: valid has the pool's label frequencies.
        label_shift_pool_rows: pool rows (a fixed-seed sample) the estimate uses.
        shard_size: rows scored per shard (memory bound and resume granularity).
        max_length: tokens per model input; None = the model's limit (at most 512).
        batch_size: model inputs per forward pass; None = ``device`` default.
        sample_rows: unlabeled rows shown in ``sample.json``.
        device: device, precision and default batch sizes.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    backend: str = "auto"
    nli_model: str = "facebook/bart-large-mnli"
    embedding_model: str = DEFAULT_ENCODER
    fill_mask_model: str = "distilroberta-base"
    hypothesis_template: str = "This text is about {}."
    descriptions: dict[str, str] = Field(default_factory=dict)
    label_template: str = "{}"
    temperature: float = Field(0.05, gt=0)
    fill_mask_prompt: str = "This text is about {}."
    verbalizers: dict[str, str] = Field(default_factory=dict)
    rule: Literal["auto", "threshold", "top_k"] = "auto"
    metric: Literal["micro_f1", "macro_f1"] = "micro_f1"
    per_label_thresholds: bool = False
    confidence_floor: float = Field(0.0, ge=0.0, le=1.0)
    calibration: Literal["auto", "temperature", "platt", "isotonic", "none"] = "auto"
    calibration_min_rows: int = Field(30, ge=2)
    picked_calibration: bool = True
    label_shift: Literal["none", "pool"] = "none"
    label_shift_pool_rows: int = Field(4000, ge=1)
    shard_size: int = Field(2048, ge=1)
    max_length: int | None = Field(None, ge=8)
    batch_size: int | None = Field(None, ge=1)
    sample_rows: int = Field(20, ge=0)
    device: DeviceConfig = Field(default_factory=DeviceConfig)


@dataclass(frozen=True)
class LabelSpec:
    """The label set of the task and what stands for each label in prompts."""

    labels: list[str]
    label_texts: list[str]
    multi_label: bool


def label_spec(splits_dir: str | Path, cfg: ZeroShotConfig) -> LabelSpec:
    """Read ``labels.json`` and check it and the per-label config against each other."""
    path = Path(splits_dir) / "labels.json"
    if not path.is_file():
        raise InputDataError(
            f"{path} is missing: the zero_shot stage needs the split stage's labels.json"
        )
    info = json.loads(path.read_text())
    labels = [str(x) for x in info.get("labels", [])]
    if not labels:
        raise InputDataError(
            f"{path} lists no labels: zero-shot scoring needs the label names. Check the "
            "ingest stage's label column (rows with labels must exist)."
        )
    if any(not name.strip() for name in labels):
        raise InputDataError(f"{path}: a label name is empty; remove or rename it ({labels})")
    dupes = sorted({name for name in labels if labels.count(name) > 1})
    if dupes:
        raise InputDataError(f"{path}: duplicate label names {dupes}; every label must appear once")
    for field_name in ("descriptions", "verbalizers"):
        mapping: dict[str, str] = getattr(cfg, field_name)
        unknown = sorted(set(mapping) - set(labels))
        if unknown:
            raise ConfigError(
                f"zero_shot.{field_name} names labels {unknown} that are not in {path} "
                f"(labels: {labels}); fix the spelling or remove them"
            )
        empty = sorted(k for k, v in mapping.items() if not str(v).strip())
        if empty:
            raise ConfigError(
                f"zero_shot.{field_name}[{empty[0]!r}] is empty; give a non-empty text or remove "
                "the entry to use the label name"
            )
    texts = [cfg.descriptions.get(name, name) for name in labels]
    return LabelSpec(
        labels=labels, label_texts=texts, multi_label=bool(info.get("multi_label", True))
    )


@dataclass(frozen=True)
class ResolvedBackend:
    name: str
    model_ref: str
    model_dir: Path
    note: str = ""


def resolve_backend(cfg: ZeroShotConfig, encoder_dir: str | Path | None = None) -> ResolvedBackend:
    """Which backend and model directory this config runs (``auto`` tries NLI first)."""
    name = cfg.backend
    if name == "auto":
        try:
            path = resolve_model(cfg.nli_model, purpose="zero_shot.nli_model")
            return ResolvedBackend("nli", cfg.nli_model, path, "auto: NLI model resolved")
        except ModelNotFoundError as exc:
            why = str(exc).splitlines()[0]
            path = resolve_model(cfg.embedding_model, purpose="zero_shot.embedding_model")
            return ResolvedBackend(
                "embedding", cfg.embedding_model, path, f"auto: embedding, because {why}"
            )
    cls = get_backend(name)
    if name == "fill_mask" and encoder_dir is not None:
        model = Path(encoder_dir) / "model"
        if not (model / "config.json").is_file():
            raise InputDataError(
                f"adapt stage output {encoder_dir} has no model/config.json; rebuild it "
                "(refresh adapt) or run fill_mask without the adapted encoder"
            )
        return ResolvedBackend(name, str(model), model, "adapted encoder from the adapt stage")
    ref = getattr(cfg, cls.model_field)
    return ResolvedBackend(name, ref, resolve_model(ref, purpose=f"zero_shot.{cls.model_field}"))


@lru_cache(maxsize=2)
def _cached_backend(
    name: str,
    model_dir: str,
    device: DeviceChoice,
    batch_size: int,
    max_length: int | None,
    options: str,
) -> ZeroShotBackend:
    # cached per process: mapped shard tasks on one worker load the model once
    cls = get_backend(name)
    return cls(
        model_dir, device, batch_size=batch_size, max_length=max_length, **json.loads(options)
    )


def load_backend(
    cfg: ZeroShotConfig, encoder_dir: str | Path | None = None
) -> tuple[ZeroShotBackend, ResolvedBackend]:
    """The loaded backend for ``cfg`` (reused within a process) and how it was resolved."""
    resolved = resolve_backend(cfg, encoder_dir)
    device = choose_device(cfg.device)
    batch = cfg.batch_size or device.batch_size
    options = json.dumps(get_backend(resolved.name).options_from_config(cfg), sort_keys=True)
    backend = _cached_backend(
        resolved.name, str(resolved.model_dir), device, batch, cfg.max_length, options
    )
    return backend, resolved


def release_backends() -> None:
    """Drop the loaded backends of this process (frees the model memory)."""
    _cached_backend.cache_clear()
