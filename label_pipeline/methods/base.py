"""The interface every classification method implements (baselines and fine-tuning).

A method is a small class registered under a name with a typed settings model
(``Settings``, a :class:`MethodSettings`: ``train.method_params.<name>``); add one by adding
one module to ``label_pipeline/methods/`` that decorates its class with :func:`register`.
The settings are checked when the config is loaded (:func:`check_method_params`) and when the
method is built: ``Method(**settings)`` sets each setting as an attribute of the same name.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from label_pipeline.devices import DeviceChoice
from label_pipeline.errors import ConfigError
from label_pipeline.registry import (
    UNKNOWN,
    PluginSettings,
    Registry,
    checked_settings,
    relocated,
    validate_settings,
)

#: validation context of settings the train stage fits with (config load, not a saved
#: model's): an ``ensemble`` may not list itself as a member
CONFIGURED = {"configured": True}


@dataclass
class LabelledTexts:
    """Texts with a multi-hot label matrix.

    Attributes:
        texts: the texts.
        y: int array (n_rows, n_labels), 1 where the row carries the label. For single-label
            tasks each row has exactly one 1.
        label_names: column names of ``y``.
        multi_label: True for multi-label tasks (sigmoid outputs), False for single-label (softmax).
        sample_weight: optional per-row weight (e.g. down-weighted pseudo-labels); None = all 1.
        ids: optional row ids.
        soft_y: optional float targets (n_rows, n_labels), e.g. a teacher's probabilities for
            distillation: methods that train on probabilities (``finetune``) use them instead
            of ``y``; the others train on ``y``.
    """

    texts: list[str]
    y: np.ndarray
    label_names: list[str]
    multi_label: bool
    sample_weight: np.ndarray | None = None
    ids: list[str] | None = None
    soft_y: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def y_index(self) -> np.ndarray:
        """Single-label class indices (argmax of ``y``)."""
        return self.y.argmax(axis=1)


@dataclass
class FitContext:
    """What a method may use besides its training rows."""

    device: DeviceChoice | None = None
    seed: int = 0
    encoder: str | None = None  # resolved directory of the encoder to start from
    #: when ``encoder`` is the adapt stage's domain-adapted encoder: the resolved directory of
    #: the encoder the adaptation started from (None: ``encoder`` was not adapted)
    base_encoder: str | None = None
    unlabeled_texts: list[str] | None = None
    work_dir: Path | None = None  # scratch space for checkpoints
    #: the valid micro-F1 a run must reach to be chosen or join its slice's ``average``, from
    #: the slice's runs fitted before it (None: no bar yet); a method may skip extra training
    #: that cannot lift it there (``self_training.cannot_win``)
    valid_bar: float | None = None
    info: dict[str, Any] = field(default_factory=dict)  # facts the method reports back


class MethodSettings(PluginSettings):
    """Base of a method's settings model (``train.method_params.<method>``)."""


class Method(ABC):
    """fit / predict_proba / save / load, scikit-learn style: no work in ``__init__``,
    ``fit`` returns self, fitted state ends in ``_``.

    ``Method(**settings)`` checks the keyword arguments through ``Settings`` (a
    :class:`ConfigError` names each bad one as ``train.method_params.<name>.<setting>``)
    and sets each setting as an attribute; the class's signature lists the settings. A
    method without ``Settings`` defines its own ``__init__``.
    """

    name: ClassVar[str]
    #: the method's settings model; None: its own ``__init__`` (not checked at config load)
    Settings: ClassVar[type[MethodSettings] | None] = None
    #: whether the method reads the label names, so that it can predict a label the training
    #: rows hold no example of (the train stage's ``average`` takes such a label from these
    #: methods only)
    reads_label_names: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.Settings is not None:
            cls.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
                [
                    inspect.Parameter(
                        key,
                        inspect.Parameter.KEYWORD_ONLY,
                        default=info.get_default(call_default_factory=True),
                        annotation=info.annotation,
                    )
                    for key, info in cls.Settings.model_fields.items()
                ]
            )

    def __init__(self, **params: Any) -> None:
        if self.Settings is None:
            if params:
                raise TypeError(f"{type(self).__name__} takes no settings, got {sorted(params)}")
            return
        settings = checked_settings(self.Settings, params, f"train.method_params.{self.name}")
        for key in type(settings).model_fields:
            setattr(self, key, getattr(settings, key))

    def get_params(self) -> dict[str, Any]:
        """The settings, by name (what ``Method(**settings)`` rebuilds this method from)."""
        return {key: getattr(self, key) for key in (self.Settings or MethodSettings).model_fields}

    @abstractmethod
    def fit(self, train: LabelledTexts, valid: LabelledTexts | None, ctx: FitContext) -> Method:
        """Train on ``train`` (``valid`` for early stopping or tuning only)."""

    @abstractmethod
    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Probabilities (n_texts, n_labels): sigmoid for multi-label, softmax for single-label."""

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write everything needed to predict into the directory ``path``."""

    @classmethod
    @abstractmethod
    def load(cls, path: Path) -> Method:
        """Inverse of :meth:`save`."""

    def balances_labels(self) -> bool:
        """True when the method weights its loss by inverse label frequency (single-label), so
        its probabilities are calibrated for balanced labels; methods with such an option
        override this."""
        return False

    def source_prior(self, train: LabelledTexts) -> np.ndarray:
        """The label distribution this method's probabilities are calibrated for after
        fitting on ``train``: uniform when :meth:`balances_labels` on a single-label task,
        else the (weighted) training label frequencies. Used by label-shift correction
        (:mod:`label_pipeline.label_shift`)."""
        if self.balances_labels() and not train.multi_label:
            k = len(train.label_names)
            return np.full(k, 1.0 / k)
        return label_frequencies(train)


def label_frequencies(train: LabelledTexts) -> np.ndarray:
    """Weighted share of each label among the rows' targets (``soft_y`` where given, else
    ``y``; sums to 1)."""
    w = np.ones(len(train)) if train.sample_weight is None else np.asarray(train.sample_weight)
    target = train.y if train.soft_y is None else train.soft_y
    freq = (np.asarray(target, dtype=np.float64) * w[:, None]).sum(axis=0)
    total = freq.sum()
    k = freq.shape[0]
    return freq / total if total > 0 else np.full(k, 1.0 / k)


METHODS: Registry[Method] = Registry(
    "label_pipeline.methods", "train.methods: unknown method {name!r}; available: {choices}"
)
#: the registered method classes by name (``METHODS.classes``)
REGISTRY: dict[str, type[Method]] = METHODS.classes


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name``."""
    return METHODS.add(cls)


def check_method_params(method_params: Mapping[str, Mapping[str, Any]]) -> None:
    """Check ``train.method_params`` (settings by method name) through each method's
    ``Settings``, as the config is loaded: a :class:`ValidationError` locates every bad
    setting at (method, setting, ...) and every unknown method at (method,). A method
    without ``Settings`` is not checked."""
    errors: list[InitErrorDetails] = []
    for name, params in method_params.items():
        try:
            settings = METHODS.settings(name)
        except ConfigError as exc:  # an unknown method: the message lists the available ones
            msg = str(exc).removeprefix("train.methods: ")
            kind = PydanticCustomError(UNKNOWN, "{message}", {"message": msg})
            errors.append(InitErrorDetails(type=kind, loc=(name,), input=params))
            continue
        if settings is None:
            continue
        try:
            validate_settings(settings, params, CONFIGURED)
        except ValidationError as exc:
            errors.extend(relocated(exc, name))
    if errors:
        raise ValidationError.from_exception_data("method_params", errors)


def nested_settings_errors(
    name: str, params: Mapping[str, Any] | None, info: Any, *loc: str
) -> list[InitErrorDetails]:
    """The errors of ``params`` as the settings of the method ``name``, located under
    ``loc``: for a method whose settings hold other methods' (an ensemble's members, a
    distillation's teacher and student). ``info``: the enclosing validator's
    ``ValidationInfo`` (its context is passed on)."""
    settings = METHODS.settings(name)
    if settings is None:
        return []
    try:
        validate_settings(settings, params, getattr(info, "context", None))
    except ValidationError as exc:
        return relocated(exc, *loc)
    return []


def load_saved(name: str, path: Path, device: DeviceChoice | None = None) -> Method:
    """The method ``name`` loaded from its ``save`` directory ``path``, on ``device`` when
    its ``load`` takes one. When the train stage saved a calibrator with it
    (``calibration.json``), its ``predict_proba`` returns calibrated probabilities
    (:class:`label_pipeline.calibration.CalibratedMethod`)."""
    import inspect

    from label_pipeline.calibration import CalibratedMethod, load_calibrator

    cls = get_method(name)
    if device is not None and "device" in inspect.signature(cls.load).parameters:
        model = cls.load(path, device=device)
    else:
        model = cls.load(path)
    calibrator = load_calibrator(path)
    return model if calibrator is None else CalibratedMethod(model, calibrator)  # type: ignore[return-value]


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name`` (a :class:`ConfigError` lists the others)."""
    return METHODS.get(name)
