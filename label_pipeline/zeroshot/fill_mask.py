"""Fill-mask zero-shot backend: append a prompt with a mask (e.g. "This text is about [MASK].")
to the text and read the masked LM's probability of each label's word at the mask.

Each label is represented by one verbaliser word (its name unless configured): a word the
tokenizer splits into several pieces is represented by its first piece, with a warning that
names the label, so that a configured single-token verbaliser can replace it.

Scores are the label words' probabilities renormalised over the label set (they sum to 1
per row), for single- and multi-label tasks alike: the raw probabilities over the whole
vocabulary are tiny and depend on unrelated words, and the selection rules only need
scores that are comparable across rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from label_pipeline.errors import ConfigError
from label_pipeline.registry import setting_error
from label_pipeline.zeroshot.base import (
    BackendSettings,
    ScoreResult,
    ZeroShotBackend,
    length_sorted_batches,
    model_input_limit,
    register_backend,
)

log = logging.getLogger(__name__)


def _special_affixes(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after a single sequence (e.g. [CLS], [SEP])."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    raise ConfigError(f"cannot tell where {type(tokenizer).__name__} adds its special tokens")


class FillMaskSettings(BackendSettings):
    """Options of the ``fill_mask`` backend."""

    fill_mask_prompt: str = Field(
        "This text is about {}.",
        description="appended to each text, with ``{}`` where the mask token goes",
    )
    verbalizers: dict[str, str] | None = Field(
        None, description="label -> the single word that stands for it at the mask"
    )

    @field_validator("fill_mask_prompt")
    @classmethod
    def _one_slot(cls, value: str) -> str:
        if value.count("{}") != 1:
            raise setting_error(
                f"fill_mask_prompt={value!r} must hold exactly one '{{}}' where the mask goes, e.g. "
                '"This text is about {}."'
            )
        return value


@register_backend("fill_mask")
class FillMaskBackend(ZeroShotBackend):
    """Masked-LM prompt backend (options: :class:`FillMaskSettings`)."""

    model_field = "fill_mask_model"
    Settings = FillMaskSettings
    settings: FillMaskSettings

    def _load(self) -> None:
        from transformers import AutoModelForMaskedLM

        self.prompt = self.settings.fill_mask_prompt
        self.verbalizers: dict[str, str] = dict(self.settings.verbalizers or {})
        self.tokenizer = self._load_tokenizer()
        if self.tokenizer.mask_token is None:
            raise ConfigError(
                f"fill-mask model {self.model_dir}: its tokenizer has no mask token, so it is not a "
                "masked language model; set zero_shot.fill_mask_model to one (e.g. distilroberta-base)"
            )
        self.model = self._load_model(AutoModelForMaskedLM)
        self.limit = model_input_limit(self.tokenizer, self.model.config, self.max_length)
        # the prompt follows the text after a space; byte-level BPE tokenizers encode that space
        self.prompt_ids = self.tokenizer(
            " " + self.prompt.format(self.tokenizer.mask_token), add_special_tokens=False
        )["input_ids"]
        self.text_budget = (
            self.limit - len(self.prompt_ids) - self.tokenizer.num_special_tokens_to_add()
        )
        if self.text_budget < 1:
            raise ConfigError(
                f"zero_shot.fill_mask_prompt is {len(self.prompt_ids)} tokens, leaving no room for "
                f"the text within {self.limit} tokens; shorten it"
            )
        self._prefix, self._suffix = _special_affixes(self.tokenizer)
        self._word_cache: dict[tuple[str, ...], np.ndarray] = {}

    def label_token_ids(self, labels: Sequence[str]) -> np.ndarray:
        """The vocabulary id standing for each label at the mask."""
        key = tuple(labels)
        if key in self._word_cache:
            return self._word_cache[key]
        ids = []
        for label in labels:
            word = self.verbalizers.get(label, label).strip()
            # words after "about " carry a leading space in byte-level BPE vocabularies
            pieces = self.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
            space = self.tokenizer(" ", add_special_tokens=False)["input_ids"]
            pieces = [p for p in pieces if p not in space] or pieces
            if not pieces:
                raise ConfigError(
                    f"zero_shot.verbalizers[{label!r}]: {word!r} encodes to no token; give a real word"
                )
            if len(pieces) > 1:
                log.warning(
                    "fill_mask: label %r -> word %r is %d tokens for this tokenizer; using its first "
                    "piece %r. Set zero_shot.verbalizers[%r] to a single-token word.",
                    label,
                    word,
                    len(pieces),
                    self.tokenizer.convert_ids_to_tokens(pieces[0]),
                    label,
                )
            ids.append(pieces[0])
        if len(set(ids)) < len(ids):
            raise ConfigError(
                f"fill_mask: labels {list(labels)} map to the same token for model {self.model_dir}; "
                "set zero_shot.verbalizers so that every label has its own single-token word"
            )
        self._word_cache[key] = np.array(ids)
        return self._word_cache[key]

    def score(
        self,
        texts: Sequence[str],
        labels: Sequence[str],
        label_texts: Sequence[str],
        multi_label: bool,
    ) -> ScoreResult:
        import torch

        word_ids = self.label_token_ids(labels)
        if len(texts) == 0:
            return ScoreResult.empty(len(labels))
        tok = self.tokenizer
        text_ids = tok(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        truncated = np.array([len(x) > self.text_budget for x in text_ids], dtype=bool)
        inputs = [
            self._prefix + ids[: self.text_budget] + self.prompt_ids + self._suffix
            for ids in text_ids
        ]
        out = np.zeros((len(texts), len(labels)), dtype=np.float32)
        word_index = torch.as_tensor(word_ids, device=self.device.device)
        with torch.inference_mode():
            for idx in length_sorted_batches([len(x) for x in inputs], self.batch_size):
                batch = tok.pad({"input_ids": [inputs[i] for i in idx]}, return_tensors="pt")
                batch = {k: v.to(self.device.device) for k, v in batch.items()}
                logits = self.model(**batch).logits
                rows, cols = (batch["input_ids"] == tok.mask_token_id).nonzero(as_tuple=True)
                # the prompt's mask is the last mask of each row (the text may contain one too)
                last = torch.full((len(idx),), -1, dtype=torch.long, device=rows.device)
                last.scatter_reduce_(0, rows, cols, reduce="amax")
                at_mask = logits[torch.arange(len(idx), device=logits.device), last]
                # renormalise over the label words: softmax of their logits
                probs = torch.softmax(at_mask.float()[:, word_index], dim=-1)
                out[idx] = probs.cpu().numpy()
        return ScoreResult(out, truncated)
