"""Embedding zero-shot backend: cosine similarity between a text and each label's text
(its description, defaulting to the label name) under a sentence encoder.

How cosine similarities become scores in [0, 1]:

- multi-label: ``(cos + 1) / 2`` per label. Labels stay independent and a text that matches
  nothing scores low everywhere, which is what a threshold needs; the map is monotone, so
  the threshold sweep finds the same cut it would find on raw cosines.
- single-label: ``softmax(cos / temperature)`` over the labels. Sentence-encoder cosines of
  competing labels differ by a few hundredths, so a small temperature (default 0.05) is
  needed for the best label's score to read as a confidence (and for a confidence floor
  to mean something).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from label_pipeline.errors import ConfigError
from label_pipeline.models import model_loading
from label_pipeline.zeroshot.base import (
    BackendSettings,
    ScoreResult,
    ZeroShotBackend,
    register_backend,
)


def cosine_to_scores(cos: np.ndarray, multi_label: bool, temperature: float) -> np.ndarray:
    """Map cosine similarities (rows x labels) to scores in [0, 1] (see module docstring)."""
    cos = np.clip(np.asarray(cos, dtype=np.float64), -1.0, 1.0)
    if multi_label:
        return (cos + 1.0) / 2.0
    z = cos / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class EmbeddingSettings(BackendSettings):
    """Options of the ``embedding`` backend."""

    temperature: float = Field(
        0.05, gt=0.0, description="softmax temperature for single-label scores"
    )
    label_template: str = Field(
        "{}", description="text around each label text before embedding, with ``{}``"
    )


@register_backend("embedding")
class EmbeddingBackend(ZeroShotBackend):
    """Bi-encoder backend on a sentence-transformers model (a plain transformers encoder
    directory also works: sentence-transformers adds mean pooling; options:
    :class:`EmbeddingSettings`)."""

    model_field = "embedding_model"
    Settings = EmbeddingSettings
    settings: EmbeddingSettings

    def _load(self) -> None:
        from sentence_transformers import SentenceTransformer

        self.temperature = self.settings.temperature
        self.label_template = self.settings.label_template
        with model_loading():
            self.model = SentenceTransformer(str(self.model_dir), device=self.device.device)
        if self.device.device == "cuda" and self.device.precision in {"fp16", "bf16"}:
            self.model.to(self.device.torch_dtype)
        limit = int(self.model.max_seq_length or 512)
        if self.max_length is not None:
            if self.max_length > limit:
                raise ConfigError(
                    f"zero_shot.max_length={self.max_length} exceeds the encoder's limit of "
                    f"{limit} tokens; lower it or leave it unset"
                )
            self.model.max_seq_length = limit = int(self.max_length)
        self.limit = limit
        self._label_cache: dict[tuple[str, ...], np.ndarray] = {}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised embeddings (rows x dim); sentence-transformers sorts by length itself."""
        return self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32)

    def _label_embeddings(self, label_texts: Sequence[str]) -> np.ndarray:
        key = tuple(label_texts)
        if key not in self._label_cache:
            self._label_cache[key] = self.embed([self.label_template.format(t) for t in key])
        return self._label_cache[key]

    def score(
        self,
        texts: Sequence[str],
        labels: Sequence[str],
        label_texts: Sequence[str],
        multi_label: bool,
    ) -> ScoreResult:
        if len(texts) == 0:
            return ScoreResult.empty(len(labels))
        ids = self.model.tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
        truncated = np.array([len(x) > self.limit for x in ids], dtype=bool)
        cos = self.embed(texts) @ self._label_embeddings(label_texts).T
        return ScoreResult(
            cosine_to_scores(cos, multi_label, self.temperature).astype(np.float32), truncated
        )
