"""Zero-shot scoring backends (nli, embedding, fill_mask) and label selection rules.

``get_backend(name)`` returns a backend class; ``selection`` turns scores into labels.
"""

from label_pipeline.zeroshot.base import (
    ScoreResult,
    ZeroShotBackend,
    available_backends,
    get_backend,
    register_backend,
)

__all__ = [
    "ScoreResult",
    "ZeroShotBackend",
    "available_backends",
    "get_backend",
    "register_backend",
]
