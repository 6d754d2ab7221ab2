"""The augmenter interface, its per-method config and the registry.

An augmenter turns a list of texts into up to ``n`` new variants of each. Add one by
adding a module ``label_pipeline/augmenters/<name>.py`` that defines a
:class:`MethodConfig` subclass (its settings) and an :class:`Augmenter` subclass naming it
as ``Settings``, decorated with ``@register_augmenter("<name>")`` (and a field of that config
type on ``tasks.augment.AugmentConfig``); :func:`get_augmenter` imports the module on first
use.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from label_pipeline.registry import PluginSettings, Registry, checked_settings

if TYPE_CHECKING:
    from label_pipeline.devices import DeviceChoice

AUGMENTERS: Registry[Augmenter] = Registry(
    "label_pipeline.augmenters",
    "augment: {name!r} is not a known augmentation method; choose one of {choices}",
    module_per_member=True,
    not_members={"base", "nlpaug_compat"},
)


class MethodConfig(PluginSettings):
    """Settings every augmentation method shares.

    Attributes:
        enabled: run this method.
        n_per_row: augmented variants asked for per training row (identical ones are dropped).
        aug_p: fraction of the words of a text that are changed (word-level methods).
        aug_max: at most this many words changed per text.
        seed: random seed; the same seed and input give the same output.
        long_texts: a text longer than the model's input limit is ``chunk``-ed (split at
            sentence and word boundaries, each piece augmented) or ``truncate``-d (only the
            first piece is augmented or kept); either way it is counted in the summary.
    """

    enabled: bool = True
    n_per_row: int = Field(1, ge=0, le=50)
    aug_p: float = Field(0.15, gt=0.0, le=1.0)
    aug_max: int = Field(10, ge=1)
    seed: int = 0
    long_texts: Literal["chunk", "truncate"] = "chunk"


@dataclass
class AugmentOutput:
    """What an augmenter returns for a list of texts.

    variants: per input text, its augmented texts (possibly fewer than asked, possibly
        equal to the input: the stage drops those and counts them).
    truncated: input texts longer than the model's limit (chunked or truncated).
    failed: input texts the method could not augment (empty, untranslatable...).
    """

    variants: list[list[str]]
    truncated: int = 0
    failed: int = 0
    notes: list[str] = field(default_factory=list)


class Augmenter(ABC):
    """One augmentation method, set up once and applied to a whole list of texts.

    Args:
        cfg: the method's config (its ``Settings``, or their values by name).
        device: where model work runs (from ``choose_device``).
        model_dir: a model directory handed in by the stage (the adapted MLM), if any.
    """

    name: ClassVar[str] = ""
    #: the method's settings (``augment.<name>``)
    Settings: ClassVar[type[MethodConfig]] = MethodConfig
    #: the same class under its former name
    config_class: ClassVar[type[MethodConfig]] = MethodConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.config_class = cls.Settings

    def __init__(
        self,
        cfg: MethodConfig | Mapping[str, Any],
        device: DeviceChoice,
        model_dir: Path | None = None,
    ) -> None:
        if not isinstance(cfg, self.Settings):
            values = cfg.model_dump() if isinstance(cfg, MethodConfig) else cfg
            cfg = checked_settings(self.Settings, values, f"augment.{self.name}")
        self.cfg = cfg
        self.device = device
        self.model_dir = model_dir

    def check_available(self) -> None:
        """Raise :class:`~label_pipeline.errors.ResourceMissingError` (naming the method,
        what is missing and how to provide it) when the method cannot run here."""
        return None  # methods without offline resources are always available

    @abstractmethod
    def augment_texts(self, texts: Sequence[str], n: int, progress: Any = None) -> AugmentOutput:
        """Up to ``n`` augmented variants of every text in ``texts``; ``progress`` (a
        :class:`~label_pipeline.progress.Progress`) is advanced by texts done."""

    def describe(self) -> str:
        return self.name


def register_augmenter(name: str) -> Callable[[type[Augmenter]], type[Augmenter]]:
    """Class decorator: make an augmenter available under ``name``."""
    return AUGMENTERS.register(name)


def available_augmenters() -> list[str]:
    """Names of every augmenter module in this package (imported or not)."""
    return AUGMENTERS.names()


def get_augmenter(name: str) -> type[Augmenter]:
    """The augmenter class registered as ``name`` (importing its module if needed)."""
    return AUGMENTERS.get(name)


# --- helpers shared by augmenters ------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def split_to_fit(text: str, limit: int, size: Callable[[str], int]) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` units (as measured by ``size``),
    at sentence boundaries where possible, else at word boundaries. Joining the pieces
    with a space gives the text back (up to whitespace)."""
    if size(text) <= limit:
        return [text]
    pieces: list[str] = []
    current = ""
    units = [u for s in _SENTENCE_END.split(text) for u in _words_if_too_long(s, limit, size)]
    for unit in units:
        candidate = f"{current} {unit}" if current else unit
        if current and size(candidate) > limit:
            pieces.append(current)
            current = unit
        else:
            current = candidate
    if current:
        pieces.append(current)
    return pieces


def _words_if_too_long(sentence: str, limit: int, size: Callable[[str], int]) -> list[str]:
    if size(sentence) <= limit:
        return [sentence]
    return sentence.split()


def word_count(text: str) -> int:
    return len(text.split())


def seed_everything(seed: int) -> None:
    """Seed the global generators nlpaug draws from (``random`` and numpy)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
