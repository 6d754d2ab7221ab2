"""``ensemble``: several methods fitted on the same rows, their probabilities averaged.

Members are registered method names with their own parameters (``member_params``); each is
fitted with the same training and validation rows, seed, encoder and unlabeled pool. The
ensemble's probability of a label is the weighted mean of the members' probabilities (so it
stays a probability: rows sum to 1 for single-label tasks, each entry lies in [0, 1] for
multi-label ones). Each member's validation score and what it reported go to
``ctx.info["members"]``; the saved directory holds one ``members/<name>/`` per member.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

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
    checked_proba,
    device_of,
    read_method_meta,
    write_method_meta,
)
from label_pipeline.methods.self_training import valid_score
from label_pipeline.progress import stage_logger

MEMBERS_DIR = "members"


@register
class Ensemble(Method):
    """Average of several methods' probabilities.

    Args:
        members: registered method names (each at most once; not ``ensemble``).
        member_params: constructor parameters per member name.
        weights: one positive weight per member (default: equal).
    """

    name = "ensemble"

    def __init__(
        self,
        members: list[str] | None = None,
        member_params: dict[str, dict[str, Any]] | None = None,
        weights: list[float] | None = None,
    ) -> None:
        self.members = list(members) if members is not None else ["setfit", "finetune"]
        self.member_params = dict(member_params or {})
        self.weights = None if weights is None else [float(w) for w in weights]

    def get_params(self) -> dict[str, Any]:
        return {
            "members": self.members,
            "member_params": self.member_params,
            "weights": self.weights,
        }

    def _validate(self) -> None:
        p = f"train.method_params.{self.name}"
        if not self.members:
            raise ConfigError(f"{p}.members is empty; name two or more methods")
        if len(set(self.members)) != len(self.members):
            raise ConfigError(f"{p}.members lists a method twice: {self.members}")
        bad = [m for m in self.members if m not in REGISTRY or m == self.name]
        if bad:
            raise ConfigError(
                f"{p}.members: {bad} cannot be members; available: "
                f"{', '.join(sorted(set(REGISTRY) - {self.name}))}"
            )
        extra = sorted(set(self.member_params) - set(self.members))
        if extra:
            raise ConfigError(f"{p}.member_params names {extra}, which are not in members")
        if self.weights is not None and (
            len(self.weights) != len(self.members) or min(self.weights) <= 0
        ):
            raise ConfigError(
                f"{p}.weights must hold one positive weight per member ({len(self.members)}), "
                f"got {self.weights}"
            )

    def _weights(self) -> np.ndarray:
        w = np.ones(len(self.members)) if self.weights is None else np.asarray(self.weights)
        return w / w.sum()

    def fit(self, train: LabelledTexts, valid: LabelledTexts | None, ctx: FitContext) -> Ensemble:
        """Fit every member on the same rows; record each one's validation score."""
        self._validate()
        check_labelled(train, "train", self.name)
        self.label_names_ = list(train.label_names)
        self.multi_label_ = bool(train.multi_label)
        self.device_ = device_of(ctx)
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
                fact["valid"] = round(valid_score(valid_probs[-1], valid), 4)
            self.history_["members"][name] = dict(fact)
            facts[name] = {**fact, "info": sub.info}
            log.info("%s: member %s fitted in %.1fs", self.name, name, fact["fit_seconds"])
        if has_valid:
            score = valid_score(self._average(valid_probs), valid)
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
        return self._average(
            [np.asarray(self.members_[m].predict_proba(texts), np.float64) for m in self.members]
        )

    def _average(self, member_probs: list[np.ndarray]) -> np.ndarray:
        """Weighted mean of the members' probabilities, in ``members`` order."""
        out = np.zeros_like(member_probs[0])
        for wi, probs in zip(self._weights(), member_probs, strict=True):
            out += wi * probs
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
        self = read_method_meta(cls, path, device)
        self.members_ = {
            name: load_saved(name, path / MEMBERS_DIR / name, self.device_) for name in self.members
        }
        return self
