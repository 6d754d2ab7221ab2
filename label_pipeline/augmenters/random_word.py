"""Random word swap / delete through nlpaug (``naw.RandomWordAug``): the cheap option."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from label_pipeline.augmenters.base import (
    Augmenter,
    AugmentOutput,
    MethodConfig,
    register_augmenter,
    seed_everything,
)


class RandomWordConfig(MethodConfig):
    """Random word swap (neighbouring words exchanged) or deletion (nlpaug ``RandomWordAug``).

    Attributes (besides :class:`MethodConfig`'s):
        actions: the variants of a row cycle through these (``swap``, ``delete``).
        aug_p: fraction of the words swapped or deleted.
    """

    actions: list[Literal["swap", "delete"]] = Field(
        default_factory=lambda: ["swap", "delete"], min_length=1
    )
    aug_p: float = Field(0.1, gt=0.0, le=1.0)


@register_augmenter("random_word")
class RandomWordAugmenter(Augmenter):
    """Swaps or deletes a fraction of the words; no model, no resources, any language."""

    Settings = RandomWordConfig
    cfg: RandomWordConfig

    def augment_texts(self, texts: Sequence[str], n: int, progress: Any = None) -> AugmentOutput:
        import nlpaug.augmenter.word as naw

        augs = {
            a: naw.RandomWordAug(
                action=a, aug_p=self.cfg.aug_p, aug_min=1, aug_max=self.cfg.aug_max
            )
            for a in self.cfg.actions
        }
        out = AugmentOutput(variants=[[] for _ in texts])
        # a one-word text cannot be swapped, and deleting its word would leave nothing
        usable = [i for i, t in enumerate(texts) if len(t.split()) >= 2]
        out.failed = len(texts) - len(usable)
        for k in range(n):
            seed_everything(self.cfg.seed * 1000 + k)
            aug = augs[self.cfg.actions[k % len(self.cfg.actions)]]
            batch = [texts[i] for i in usable]
            result = aug.augment(batch) if batch else []
            if len(result) != len(batch):  # nlpaug drops a whole list on some warnings
                result = [(aug.augment(t) or [t])[0] for t in batch]
            for i, new in zip(usable, result, strict=True):
                out.variants[i].append(new)
            if progress is not None:
                progress.update(len(texts))
        return out
