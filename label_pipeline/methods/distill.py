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

from label_pipeline.devices import DeviceChoice
from label_pipeline.errors import ConfigError
from label_pipeline.methods.base import (
    REGISTRY,
    FitContext,
    LabelledTexts,
    Method,
    get_method,
    load_saved,
    register,
)
from label_pipeline.methods.finetune import (
    check_labelled,
    device_of,
    read_method_meta,
    write_method_meta,
)
from label_pipeline.methods.self_training import sample_pool, valid_score
from label_pipeline.progress import stage_logger

#: the student's parameters when none are given: ``finetune`` learning the pool's label mix
DEFAULT_STUDENT_PARAMS: dict[str, Any] = {"class_weighting": "none", "epochs": 4, "patience": 2}
MODEL_DIR = "model"


@register
class Distill(Method):
    """Teacher → pool probabilities → student (see the module docstring).

    Args:
        teacher: registered method name of the teacher (not ``distill``).
        teacher_params: the teacher's constructor parameters.
        student: registered method name of the student (not ``distill``).
        student_params: the student's constructor parameters (None =
            :data:`DEFAULT_STUDENT_PARAMS` for ``finetune``, ``{}`` otherwise).
        pool_size: most pool rows the teacher labels.
        weight: row weight of a pool row in the student's loss (labelled rows weigh 1).
        label_shift: ``pool`` reweights the teacher's pool probabilities to the pool's
            estimated label frequencies (single-label only), ``none`` leaves them.
        soft: True trains the student on the teacher's probabilities, False on its most
            probable label (single-label) or its labels at 0.5 (multi-label).
    """

    name = "distill"

    def __init__(
        self,
        teacher: str = "ensemble",
        teacher_params: dict[str, Any] | None = None,
        student: str = "finetune",
        student_params: dict[str, Any] | None = None,
        pool_size: int = 4000,
        weight: float = 1.0,
        label_shift: Literal["none", "pool"] = "none",
        soft: bool = True,
    ) -> None:
        self.teacher = teacher
        self.teacher_params = dict(teacher_params or {})
        self.student = student
        self.student_params = (
            dict(student_params)
            if student_params is not None
            else (dict(DEFAULT_STUDENT_PARAMS) if student == "finetune" else {})
        )
        self.pool_size = int(pool_size)
        self.weight = float(weight)
        self.label_shift = label_shift
        self.soft = bool(soft)

    def get_params(self) -> dict[str, Any]:
        return {
            "teacher": self.teacher,
            "teacher_params": self.teacher_params,
            "student": self.student,
            "student_params": self.student_params,
            "pool_size": self.pool_size,
            "weight": self.weight,
            "label_shift": self.label_shift,
            "soft": self.soft,
        }

    def _validate(self, multi_label: bool) -> None:
        p = f"train.method_params.{self.name}"
        for role in ("teacher", "student"):
            name = getattr(self, role)
            if name not in REGISTRY or name == self.name:
                raise ConfigError(
                    f"{p}.{role}={name!r} cannot be used; available: "
                    f"{', '.join(sorted(set(REGISTRY) - {self.name}))}"
                )
        if self.pool_size < 1:
            raise ConfigError(f"{p}.pool_size={self.pool_size} must be >= 1")
        if not 0.0 < self.weight <= 1.0:
            raise ConfigError(f"{p}.weight={self.weight} must lie in (0, 1]")
        if self.label_shift not in {"none", "pool"}:
            raise ConfigError(f"{p}.label_shift={self.label_shift!r} must be 'none' or 'pool'")
        if self.label_shift == "pool" and multi_label:
            raise ConfigError(
                f"{p}.label_shift='pool' applies to single-label tasks only; set it to 'none' "
                "(multi-label decisions are tuned per label on valid)"
            )

    def fit(self, train: LabelledTexts, valid: LabelledTexts | None, ctx: FitContext) -> Distill:
        """Fit the teacher, label the pool with it, fit the student on both."""
        self._validate(bool(train.multi_label))
        check_labelled(train, "train", self.name)
        if valid is not None and len(valid) == 0:
            valid = None
        self.label_names_ = list(train.label_names)
        self.multi_label_ = bool(train.multi_label)
        self.device_ = device_of(ctx)
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
        self = read_method_meta(cls, path, device)
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
