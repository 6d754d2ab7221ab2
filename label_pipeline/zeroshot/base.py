"""The zero-shot backend interface and its registry.

A backend turns texts and a label set into a (rows x labels) matrix of scores in [0, 1].
Add one by adding a module ``label_pipeline/zeroshot/<name>.py`` that defines a
:class:`ZeroShotBackend` subclass decorated with ``@register_backend("<name>")``, with its
options as a settings model (``Settings``, a :class:`BackendSettings` whose fields are named
after the ``ZeroShotConfig`` fields they are read from); :func:`get_backend` imports the
module on first use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from label_pipeline.errors import ConfigError
from label_pipeline.models import model_loading
from label_pipeline.registry import PluginSettings, Registry, checked_settings

if TYPE_CHECKING:
    from label_pipeline.devices import DeviceChoice

BACKENDS: Registry[ZeroShotBackend] = Registry(
    "label_pipeline.zeroshot",
    "zero_shot.backend={name!r} is not a known backend; choose one of {choices} (or 'auto')",
    module_per_member=True,
    not_members={"base", "selection", "loading", "cls_only"},
)


class BackendSettings(PluginSettings):
    """Base of a zero-shot backend's options (read from the ``zero_shot`` config section)."""


@dataclass
class ScoreResult:
    """What a backend returns for a batch of texts.

    scores: float32 (rows x labels) in [0, 1].
    truncated: bool per row, True where the text was cut to fit the model's input limit.
    """

    scores: np.ndarray
    truncated: np.ndarray

    @classmethod
    def empty(cls, n_labels: int) -> ScoreResult:
        """The result for no texts."""
        return cls(np.zeros((0, n_labels), np.float32), np.zeros(0, bool))


class ZeroShotBackend(ABC):
    """Scores texts against labels with one model, loaded once and reused across shards.

    Subclasses load the model in :meth:`_load`, with their options checked into
    ``self.settings`` (a :class:`ConfigError` names a bad one by its ``zero_shot`` field).

    Args:
        model_dir: local model directory (from :func:`label_pipeline.models.resolve_model`).
        device: where to run and at which precision (from ``choose_device``).
        batch_size: model inputs per forward pass.
        max_length: input tokens per model input; None = the model's own limit (at most 512).
        options: backend-specific settings (template, temperature, verbalisers...): the
            fields of ``Settings``.
    """

    name: ClassVar[str] = ""
    #: the ``ZeroShotConfig`` field that names this backend's model
    model_field: ClassVar[str] = ""
    #: the backend's options, each named after the ``ZeroShotConfig`` field it is read from
    Settings: ClassVar[type[BackendSettings]] = BackendSettings

    def __init__(
        self,
        model_dir: str | Path,
        device: DeviceChoice,
        batch_size: int = 32,
        max_length: int | None = None,
        **options: Any,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.device = device
        self.batch_size = int(batch_size)
        self.max_length = max_length
        self.settings = checked_settings(self.Settings, options, "zero_shot")
        self._load()

    @abstractmethod
    def _load(self) -> None:
        """Load the model (the options are in ``self.settings``); called at the end of
        ``__init__``."""

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.model_dir))

    def _load_model(self, auto_class: Any) -> Any:
        """A transformers ``auto_class`` model from ``model_dir``, in eval mode on the device, at
        the device's precision on cuda and in float32 elsewhere."""
        import torch

        dtype = self.device.torch_dtype if self.device.device == "cuda" else torch.float32
        with model_loading():
            model = auto_class.from_pretrained(str(self.model_dir), dtype=dtype)
        model.to(self.device.device).eval()
        return model

    @classmethod
    def options_from_config(cls, cfg: Any) -> dict[str, Any]:
        """The backend's options read from a ``ZeroShotConfig`` (the fields of ``Settings``)."""
        return {field: getattr(cfg, field) for field in cls.Settings.model_fields}

    @abstractmethod
    def score(
        self,
        texts: Sequence[str],
        labels: Sequence[str],
        label_texts: Sequence[str],
        multi_label: bool,
    ) -> ScoreResult:
        """Scores of every text for every label.

        ``label_texts`` holds what stands for each label in the backend's prompt (its
        description, defaulting to the label name); ``multi_label`` picks independent
        per-label scores (True) or a distribution over the labels (False).
        """

    def describe(self) -> str:
        return f"{self.name} ({self.model_dir.name}) on {self.device.describe()}"


def register_backend(name: str) -> Callable[[type[ZeroShotBackend]], type[ZeroShotBackend]]:
    """Class decorator: make a backend available under ``name``."""
    return BACKENDS.register(name)


def available_backends() -> list[str]:
    """Names of every backend module in this package (imported or not)."""
    return BACKENDS.names()


def get_backend(name: str) -> type[ZeroShotBackend]:
    """The backend class registered as ``name`` (importing its module if needed)."""
    return BACKENDS.get(name)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Index batches over inputs sorted by length (longest first), so that padding each
    batch to its own longest input wastes little and a memory error shows up at once."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def model_input_limit(tokenizer: Any, config: Any, requested: int | None = None) -> int:
    """The number of tokens one model input may hold: ``requested``, else the smaller of the
    tokenizer's and the position embeddings' limits (tokenizers often report 1e30), capped at 512."""
    limits = [512]
    tok_max = getattr(tokenizer, "model_max_length", None)
    if tok_max and tok_max < 100_000:
        limits.append(int(tok_max))
    pos = getattr(config, "max_position_embeddings", None)
    if pos:
        # RoBERTa-style models reserve padding_idx + 1 positions
        offset = (
            2 if getattr(config, "model_type", "") in {"roberta", "xlm-roberta", "camembert"} else 0
        )
        limits.append(int(pos) - offset)
    limit = min(limits)
    if requested is not None:
        if requested > limit:
            raise ConfigError(
                f"zero_shot.max_length={requested} exceeds the model's input limit of {limit} "
                "tokens; lower it or leave it unset to use the model's limit"
            )
        return int(requested)
    return limit
