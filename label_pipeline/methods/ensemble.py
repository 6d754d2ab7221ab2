"""``ensemble``: several methods fitted on the same rows, their probabilities averaged.

Members are registered method names with their own parameters (``member_params``); each is
fitted with the same training and validation rows, seed, encoder and unlabeled pool. The
ensemble's probability of a label is the weighted mean of the members' probabilities (so it
stays a probability: rows sum to 1 for single-label tasks, each entry lies in [0, 1] for
multi-label ones). A label named in ``label_members`` takes the weighted mean of only the
members listed for it (single-label rows are then rescaled to sum to 1): the train stage's
``average`` uses it for a label its slice has no example of, which only a member that reads
the label names can predict. Each member's validation score (accuracy; multi-label, micro-F1 with
every label's threshold tuned on valid, as the train stage decides) and what it reported go to
``ctx.info["members"]``; the saved directory holds one ``members/<name>/`` per member.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

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
from label_pipeline.methods.self_training import reachable_score
from label_pipeline.methods.transformer import TransformerMethod, checked_proba, write_method_meta
from label_pipeline.progress import stage_logger
from label_pipeline.registry import field_error, setting_error

MEMBERS_DIR = "members"


def _cannot_be_members(bad: list[str]) -> str:
    others = [m for m in METHODS.names() if m != Ensemble.name]
    return f"members: {bad} cannot be members; available: {', '.join(others)}"


class EnsembleSettings(MethodSettings):
    """Settings of ``ensemble`` (``train.method_params.ensemble``)."""

    members: list[str] = Field(
        default_factory=lambda: ["setfit", "finetune"],
        description="registered method names (each at most once; not ``ensemble``)",
    )
    member_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="settings per member name (see each method's section)",
    )
    weights: list[float] | None = Field(
        None, description="one positive weight per member (default: equal)"
    )
    label_members: dict[str, list[str]] | None = Field(
        None,
        description="labels whose probability is the weighted mean of only the members named "
        "here (the others cannot speak for them, e.g. a label the training rows hold no "
        "example of); single-label rows are then rescaled to sum to 1. The train stage's "
        "``average`` sets it for such labels to the members that read the label names",
    )

    @field_validator("members", "member_params", mode="before")
    @classmethod
    def _none_is_default(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            return value
        return ["setfit", "finetune"] if info.field_name == "members" else {}

    @field_validator("members")
    @classmethod
    def _known_once(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if not value:
            raise setting_error("members is empty; name two or more methods")
        if len(set(value)) != len(value):
            raise setting_error(f"members lists a method twice: {value}")
        itself = Ensemble.name if (info.context or {}).get("configured") else None
        bad = [m for m in value if m not in METHODS.names() or m == itself]
        if bad:
            raise setting_error(_cannot_be_members(bad))
        return value

    @model_validator(mode="after")
    def _per_member(self, info: ValidationInfo) -> EnsembleSettings:
        """Member settings name members and pass their own models; one weight each."""
        title = type(self).__name__
        extra = sorted(set(self.member_params) - set(self.members))
        if extra:
            raise field_error(
                title,
                "member_params",
                f"member_params names {extra}, which are not in members",
                self.member_params,
            )
        odd = {
            label: names
            for label, names in (self.label_members or {}).items()
            if not names or set(names) - set(self.members)
        }
        if odd:
            raise field_error(
                title,
                "label_members",
                f"label_members must name one or more of the members {self.members} per "
                f"label, got {odd}",
                self.label_members,
            )
        if self.weights is not None and (
            len(self.weights) != len(self.members) or min(self.weights) <= 0
        ):
            raise field_error(
                title,
                "weights",
                f"weights must hold one positive weight per member ({len(self.members)}), "
                f"got {self.weights}",
                self.weights,
            )
        errors = [
            error
            for name, params in self.member_params.items()
            for error in nested_settings_errors(name, params, info, "member_params", name)
        ]
        if errors:
            raise ValidationError.from_exception_data(title, errors)
        return self


@register
class Ensemble(TransformerMethod):
    """Average of several methods' probabilities.

    Settings: :class:`EnsembleSettings`.
    """

    name = "ensemble"
    Settings = EnsembleSettings

    def _check_members(self) -> None:
        """An ensemble that is fitted cannot list itself (a saved one, an ``average`` run,
        may hold an ``ensemble`` model)."""
        if self.name in self.members:
            raise ConfigError(f"train.method_params.{self.name}.{_cannot_be_members([self.name])}")

    def _weights(self) -> np.ndarray:
        w = np.ones(len(self.members)) if self.weights is None else np.asarray(self.weights)
        return w / w.sum()

    def fit(self, train: LabelledTexts, valid: LabelledTexts | None, ctx: FitContext) -> Ensemble:
        """Fit every member on the same rows; record each one's validation score."""
        self._check_members()
        self._start_fit(train, valid, ctx, encoder=False)  # members get valid as it is
        unknown = sorted(set(self.label_members or {}) - set(self.label_names_))
        if unknown:
            raise ConfigError(
                f"train.method_params.{self.name}.label_members names {unknown}, which are "
                f"not labels of the data ({', '.join(self.label_names_)})"
            )
        self.history_: dict[str, Any] = {"members": {}}
        self.members_: dict[str, Method] = {}
        facts: dict[str, Any] = {}
        ctx.info["members"] = facts
        log = stage_logger()
        has_valid = valid is not None and len(valid) > 0
        valid_probs: list[np.ndarray] = []
        for name in self.members:
            sub = FitContext(
                device=ctx.device,
                seed=ctx.seed,
                encoder=ctx.encoder,
                unlabeled_texts=ctx.unlabeled_texts,
                work_dir=ctx.work_dir,
            )
            started = time.time()
            model = get_method(name)(**self.member_params.get(name, {})).fit(train, valid, sub)
            self.members_[name] = model
            fact: dict[str, Any] = {"fit_seconds": round(time.time() - started, 2)}
            if has_valid:
                valid_probs.append(np.asarray(model.predict_proba(list(valid.texts)), np.float64))
                fact["valid"] = round(reachable_score(valid_probs[-1], valid), 4)
            self.history_["members"][name] = dict(fact)
            facts[name] = {**fact, "info": sub.info}
            log.info("%s: member %s fitted in %.1fs", self.name, name, fact["fit_seconds"])
        if has_valid:
            score = reachable_score(self.combine(valid_probs), valid)
            self.history_["valid"] = round(score, 4)
            ctx.info["valid"] = round(score, 4)
        return self

    def source_prior(self, train: LabelledTexts) -> np.ndarray:
        """The weighted mean of the members' source priors."""
        priors = np.stack([self.members_[m].source_prior(train) for m in self.members])
        return self._weights() @ priors

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Weighted mean of the members' probabilities (n_texts, n_labels)."""
        texts = list(texts)
        return self.combine(
            [np.asarray(self.members_[m].predict_proba(texts), np.float64) for m in self.members]
        )

    def combine(self, member_probs: list[np.ndarray]) -> np.ndarray:
        """Weighted mean of the members' probabilities, in ``members`` order; a label of
        ``label_members`` takes the mean of its members only. The train stage's ``average``
        combines its members' saved probabilities with it, so the saved model predicts the same."""
        weights = self._weights()
        out = np.zeros_like(member_probs[0], dtype=np.float64)
        for wi, probs in zip(weights, member_probs, strict=True):
            out += wi * probs
        if self.label_members:
            for label, names in self.label_members.items():
                j = self.label_names_.index(label)
                at = [self.members.index(n) for n in names]
                w = weights[at] / weights[at].sum()
                out[:, j] = sum(wk * member_probs[k][:, j] for wk, k in zip(w, at, strict=True))
            if not self.multi_label_:
                out /= np.maximum(out.sum(axis=1, keepdims=True), 1e-12)
        return checked_proba(out, self.name)

    def save(self, path: Path) -> None:
        """``path/members/<name>/`` per member, ``path/method.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for name, model in self.members_.items():
            model.save(path / MEMBERS_DIR / name)
        write_method_meta(self, path)

    @classmethod
    def load(cls, path: Path, device: DeviceChoice | None = None) -> Ensemble:
        path = Path(path)
        self = cls._start_load(path, device)
        self.members_ = {
            name: load_saved(name, path / MEMBERS_DIR / name, self.device_) for name in self.members
        }
        return self
