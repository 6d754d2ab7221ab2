"""nlpaug-compatible face of the batched fill-mask substitution.

:class:`ContextualSubstitutionAug` is a ``nlpaug`` ``WordAugmenter`` running
:class:`~label_pipeline.augmenters.contextual.FillMaskSubstituter`, so nlpaug flows
(``naf.Sequential``, ``naf.Sometimes``) can compose it.
"""

from __future__ import annotations

from pathlib import Path

from nlpaug.augmenter.word import WordAugmenter

from label_pipeline.augmenters.contextual import FillMaskSubstituter
from label_pipeline.devices import DeviceChoice


class ContextualSubstitutionAug(WordAugmenter):
    """nlpaug-compatible wrapper: ``aug.augment("text", n=3)`` or ``aug.augment([texts])``,
    composable in ``naf.Sequential`` / ``naf.Sometimes``; a list is augmented in batches.

    Args:
        model_path: a ``save_pretrained`` masked-LM directory.
        device: a :class:`DeviceChoice` (default: ``choose_device()``).
        aug_p, aug_max, top_k, max_length, batch_size, seed: as in :class:`FillMaskSubstituter`.
    """

    def __init__(
        self,
        model_path: str | Path,
        device: DeviceChoice | None = None,
        aug_p: float = 0.15,
        aug_max: int = 10,
        top_k: int = 10,
        max_length: int | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        name: str = "ContextualSubstitution_Aug",
    ) -> None:
        from label_pipeline.devices import choose_device

        device = device or choose_device()
        super().__init__(
            action="substitute",
            name=name,
            aug_p=aug_p,
            aug_min=1,
            aug_max=aug_max,
            device=device.device,
        )
        self.engine = FillMaskSubstituter(
            model_path, device, aug_p, aug_max, top_k, max_length, batch_size, "chunk", seed
        )
        self._calls = 0

    def augment(self, data: str | list[str], n: int = 1, num_thread: int = 1) -> list[str]:
        # a fresh seed per call, so repeated calls inside a flow give different variants
        self.engine.seed = self.engine.seed + self._calls
        self._calls += 1
        if isinstance(data, list):
            res = self.engine.substitute(data, 1)
            return [v[0] if v else t for v, t in zip(res.variants, data, strict=True)]
        res = self.engine.substitute([data], max(1, n))
        return res.variants[0] or [data]

    def substitute(self, data: str) -> str:
        return self.augment(data)[0]
