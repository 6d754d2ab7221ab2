"""Classification methods: baselines and fine-tuning, each a registered :class:`Method`."""

import importlib
import pkgutil

from label_pipeline.methods.base import (
    REGISTRY,
    FitContext,
    LabelledTexts,
    Method,
    get_method,
    register,
)

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["REGISTRY", "FitContext", "LabelledTexts", "Method", "get_method", "register"]
