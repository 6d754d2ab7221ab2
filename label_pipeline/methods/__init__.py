"""Classification methods: baselines and fine-tuning, each a registered :class:`Method` with
a typed settings model (:class:`MethodSettings`, ``train.method_params.<name>``)."""

import importlib
import pkgutil

from label_pipeline.methods.base import (
    METHODS,
    REGISTRY,
    FitContext,
    LabelledTexts,
    Method,
    MethodSettings,
    check_method_params,
    get_method,
    register,
)

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = [
    "METHODS",
    "REGISTRY",
    "FitContext",
    "LabelledTexts",
    "Method",
    "MethodSettings",
    "check_method_params",
    "get_method",
    "register",
]
