"""``distill``: a teacher labels the unlabeled pool with probabilities, a student learns them.

1. The teacher (any registered method with its parameters, by default an ``ensemble``) is
   fitted on the labelled rows.
2. It predicts up to ``pool_size`` rows of the unlabeled pool (``ctx.unlabeled_texts``, the
   training texts and repeats left out, sampled with the seed). With ``label_shift="pool"``
   (single-label) its pool probabilities are first reweighted to the pool's label frequencies,
   estimated from its own validation and pool predictions
   (:func:`label_pipeline.label_shift.estimate_label_shift`): labelled rows picked as "N per
   label" teach the teacher a balanced label mix the pool does not have.
3. The student (by default ``finetune`` without class weighting, so it learns the pool's label
   mix from the teacher) is trained on the labelled rows plus the pool rows, whose targets are
   the teacher's probabilities (``LabelledTexts.soft_y``; methods that cannot train on
   probabilities take the teacher's most probable label) at row weight ``weight``.

The student alone predicts and is what ``save`` writes; the teacher's and the student's
validation scores, the pool size and the label-shift estimate go to ``ctx.info["distill"]``
(the train stage's ``fit.json``). With no unlabeled text the student step is skipped, reported
as a warning and in ``ctx.info``, and the teacher predicts.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from label_pipeline.devices import DeviceChoice
from label_pipeline.errors import ConfigError
from label_pipeline.methods.base import (
    METHODS,
    FitContext,
    LabelledTexts,
    Method,
    MethodSettings,
    get_method,
    load_saved,
    nested_settings_errors,
    register,
)
from label_pipeline.methods.self_training import sample_pool, valid_score
from label_pipeline.methods.transformer import TransformerMethod, write_method_meta
from label_pipeline.progress import stage_logger
from label_pipeline.registry import setting_error

#: the student's parameters when none are given: ``finetune`` learning the pool's label mix
DEFAULT_STUDENT_PARAMS: dict[str, Any] = {"class_weighting": "none", "epochs": 4, "patience": 2}
MODEL_DIR = "model"


def other_methods(exclude: str) -> list[str]:
    """Every registered method name but ``exclude``, sorted."""
    return [m for m in METHODS.names() if m != exclude]


class DistillSettings(MethodSettings):
    """Settings of ``distill`` (``train.method_params.distill``)."""

    teacher: str = Field(
        "ensemble", description="registered method name of the teacher (not ``distill``)"
    )
    teacher_params: dict[str, Any] = Field(
        default_factory=dict, description="the teacher's settings (see its section)"
    )
    student: str = Field(
        "finetune", description="registered method name of the student (not ``distill``)"
    )
    student_params: dict[str, Any] | None = Field(
        None,
        description="the student's settings (see its section); None = "
        f"``{DEFAULT_STUDENT_PARAMS}`` for ``finetune``, none otherwise",
    )
    pool_size: int = Field(4000, ge=1, description="most pool rows the teacher labels")
    weight: float = Field(
        1.0,
        description="row weight of a pool row in the student's loss, in (0, 1] (labelled "
        "rows weigh 1)",
    )
    label_shift: Literal["none", "pool"] = Field(
        "none",
        description="``pool`` reweights the teacher's pool probabilities to the pool's estimated "
        "label frequencies (single-label only), ``none`` leaves them",
    )
    soft: bool = Field(
        True,
        description="True trains the student on the teacher's probabilities, False on its most "
        "probable label (single-label) or its labels at 0.5 (multi-label)",
    )

    @field_validator("teacher_params", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("teacher", "student")
    @classmethod
    def _usable(cls, value: str, info: ValidationInfo) -> str:
        if value == Distill.name or value not in METHODS.names():
            raise setting_error(
                f"{info.field_name}={value!r} cannot be used; available: "
                f"{', '.join(other_methods(Distill.name))}"
            )
        return value

    @field_validator("weight")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise setting_error(f"weight={value} must lie in (0, 1]")
        return value

    @model_validator(mode="after")
    def _roles(self, info: ValidationInfo) -> DistillSettings:
        """The student's default settings; the teacher's and the student's settings, each
        through its own model."""
        if self.student_params is None:
            self.student_params = dict(DEFAULT_STUDENT_PARAMS) if self.student == "finetune" else {}
        errors = [
            *nested_settings_errors(self.teacher, self.teacher_params, info, "teacher_params"),
            *nested_settings_errors(self.student, self.student_params, info, "student_params"),
        ]
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self


@register
class Distill(TransformerMethod):
    """A teacher labels the unlabeled pool with probabilities, a student learns them.

    Settings: :class:`DistillSettings`; the steps: the module docstring.
    """

    name = "distill"
    Settings = DistillSettings

    def _check_task(self, multi_label: bool) -> None:
        if self.label_shift == "pool" and multi_label:
            raise ConfigError(
                f"train.method_params.{self.name}.label_shift='pool' applies to single-label "
                "tasks only; set it to 'none' (multi-label decisions are tuned per label on valid)"
            )

    def fit(self, train: LabelledTexts, valid: LabelledTexts | None, ctx: FitContext) -> Distill:
        """Fit the teacher, label the pool with it, fit the student on both."""
        self._check_task(bool(train.multi_label))
        valid, _ = self._start_fit(train, valid, ctx, encoder=False)
        log = stage_logger()
        facts: dict[str, Any] = {}
        ctx.info["distill"] = facts

        started = time.time()
        teacher_ctx = dataclasses.replace(ctx, info={})
        teacher = get_method(self.teacher)(**self.teacher_params).fit(train, valid, teacher_ctx)
        facts["teacher"] = {
            "fit_seconds": round(time.time() - started, 2),
            "info": teacher_ctx.info,
        }
        self.teacher_ = teacher  # kept for inspection (benchmarks); not saved
        teacher_valid = None
        if valid is not None:
            teacher_valid = np.asarray(teacher.predict_proba(list(valid.texts)), np.float64)
            facts["teacher"]["valid"] = round(valid_score(teacher_valid, valid), 4)

        pool = [t for t in (ctx.unlabeled_texts or []) if t and t.strip()]
        pool = sample_pool(pool, train.texts, self.pool_size, np.random.default_rng(ctx.seed))
        if not pool:
            facts["skipped"] = "no unlabeled texts were given; the teacher predicts"
            log.warning("%s: no unlabeled texts; the teacher predicts without a student", self.name)
            self._keep(teacher, self.teacher, teacher.source_prior(train), facts)
            return self

        log.info("%s: teacher %s labels %d pool rows", self.name, self.teacher, len(pool))
        pool_probs = np.asarray(teacher.predict_proba(pool), np.float64)
        facts["pool_rows"] = len(pool)
        if self.label_shift == "pool":
            pool_probs = self._shift(teacher, train, valid, teacher_valid, pool_probs, facts)
        rows = self._student_rows(train, pool, pool_probs)

        started = time.time()
        student_ctx = dataclasses.replace(ctx, info={})
        student = get_method(self.student)(**self.student_params).fit(rows, valid, student_ctx)
        facts["student"] = {
            "fit_seconds": round(time.time() - started, 2),
            "info": student_ctx.info,
        }
        if valid is not None:
            score = valid_score(np.asarray(student.predict_proba(list(valid.texts))), valid)
            facts["student"]["valid"] = round(score, 4)
            ctx.info["valid"] = round(score, 4)
        self._keep(student, self.student, student.source_prior(rows), facts)
        return self

    def _keep(self, model: Method, name: str, prior: np.ndarray, facts: dict[str, Any]) -> None:
        """``model`` (registered as ``name``, calibrated for ``prior``) is the one that
        predicts."""
        self.model_, self.model_name_ = model, name
        self.prior_ = np.asarray(prior, dtype=np.float64)
        self.history_ = {
            "distill": _plain(facts),
            "model": name,
            "source_prior": [float(x) for x in self.prior_],
        }

    def _shift(
        self,
        teacher: Method,
        train: LabelledTexts,
        valid: LabelledTexts | None,
        valid_probs: np.ndarray | None,
        pool_probs: np.ndarray,
        facts: dict[str, Any],
    ) -> np.ndarray:
        """The teacher's pool probabilities reweighted to the pool's estimated label mix."""
        from label_pipeline.label_shift import estimate_label_shift

        if valid is None or valid_probs is None:
            facts["label_shift_skipped"] = "no validation rows to estimate the pool's label mix"
            stage_logger().warning("%s: label_shift skipped (no validation rows)", self.name)
            return pool_probs
        shift = estimate_label_shift(
            valid_probs,
            valid.y,
            pool_probs,
            teacher.source_prior(train),
        )
        facts["label_shift"] = shift.to_json()
        return shift.apply(pool_probs)

    def _student_rows(
        self, train: LabelledTexts, pool: list[str], pool_probs: np.ndarray
    ) -> LabelledTexts:
        """Labelled rows (weight 1, their 0/1 labels as targets) plus the pool rows."""
        k = pool_probs.shape[1]
        if self.multi_label_:
            hard = (pool_probs >= 0.5).astype(np.int64)
        else:
            hard = np.eye(k, dtype=np.int64)[pool_probs.argmax(axis=1)]
        gold_w = (
            np.ones(len(train)) if train.sample_weight is None else np.asarray(train.sample_weight)
        )
        return LabelledTexts(
            texts=list(train.texts) + list(pool),
            y=np.vstack([train.y, hard]).astype(np.int64),
            label_names=list(train.label_names),
            multi_label=bool(train.multi_label),
            sample_weight=np.concatenate([gold_w, np.full(len(pool), self.weight)]),
            soft_y=np.vstack([train.y.astype(np.float64), np.clip(pool_probs, 0.0, 1.0)])
            if self.soft
            else None,
        )

    def source_prior(self, train: LabelledTexts) -> np.ndarray:
        """The label mix the predicting model was trained for: for the student, that of the
        labelled rows plus the teacher's pool targets (not of ``train`` alone)."""
        return np.asarray(self.prior_, dtype=np.float64)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """The student's probabilities (the teacher's when no student was trained)."""
        return self.model_.predict_proba(list(texts))

    def save(self, path: Path) -> None:
        """``path/model/`` (the predicting model) and ``path/method.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model_.save(path / MODEL_DIR)
        write_method_meta(self, path)

    @classmethod
    def load(cls, path: Path, device: DeviceChoice | None = None) -> Distill:
        path = Path(path)
        self = cls._start_load(path, device)
        self.model_name_ = self.history_["model"]
        self.prior_ = np.asarray(self.history_["source_prior"], dtype=np.float64)
        self.model_ = load_saved(self.model_name_, path / MODEL_DIR, self.device_)
        return self


def _plain(facts: dict[str, Any]) -> dict[str, Any]:
    """``facts`` without the nested method reports (kept in ``ctx.info``, not in method.json)."""
    return {
        k: ({kk: vv for kk, vv in v.items() if kk != "info"} if isinstance(v, dict) else v)
        for k, v in facts.items()
    }
