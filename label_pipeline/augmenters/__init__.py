"""Text augmentation methods (synonym, contextual, back_translation, random_word) behind
one interface and a registry: ``get_augmenter(name)`` returns the class; add a method by
adding a module (see :mod:`label_pipeline.augmenters.base`)."""

from label_pipeline.augmenters.base import (
    Augmenter,
    AugmentOutput,
    MethodConfig,
    available_augmenters,
    get_augmenter,
    register_augmenter,
)

__all__ = [
    "AugmentOutput",
    "Augmenter",
    "MethodConfig",
    "available_augmenters",
    "get_augmenter",
    "register_augmenter",
]
