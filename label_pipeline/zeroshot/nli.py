"""NLI zero-shot backend: each (text, label) pair is a premise/hypothesis pair for an NLI
cross-encoder, as in the transformers ``zero-shot-classification`` pipeline.

Scores (same semantics as that pipeline):

- multi-label: per label, softmax over (contradiction, entailment) logits -> P(entailment);
- single-label: softmax of the entailment logits over the labels.

Unlike the pipeline, all pairs of a chunk of texts go through the model in length-sorted
batches with per-batch padding, on the GPU when one is present, and BERT-style classifiers
compute their last layer for the first token only (:mod:`label_pipeline.zeroshot.cls_only`).
"""

from __future__ import annotations

from collections.abc import Sequence

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


def nli_label_ids(label2id: dict[str, int], where: str = "model config") -> tuple[int, int]:
    """(entailment id, contradiction id) from a config's ``label2id`` (case-insensitive prefixes
    ``entail`` and ``contra``)."""
    entail = [i for name, i in label2id.items() if name.lower().startswith("entail")]
    contra = [i for name, i in label2id.items() if name.lower().startswith("contra")]
    if not entail or not contra:
        raise ConfigError(
            f"{where}: label2id {dict(label2id)} names no "
            f"{'entailment' if not entail else 'contradiction'} label, so this is not usable as an "
            "NLI model. Set zero_shot.nli_model to a model fine-tuned on NLI (e.g. "
            "facebook/bart-large-mnli) or fix its config.json label2id "
            '(e.g. {"contradiction": 0, "neutral": 1, "entailment": 2}).'
        )
    return int(entail[0]), int(contra[0])


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def nli_scores(logits: np.ndarray, entail_id: int, contra_id: int, multi_label: bool) -> np.ndarray:
    """Scores from NLI logits shaped (rows x labels x NLI classes)."""
    logits = np.asarray(logits, dtype=np.float64)
    if multi_label or logits.shape[1] == 1:
        return _softmax(logits[..., [contra_id, entail_id]], axis=-1)[..., 1]
    return _softmax(logits[..., entail_id], axis=-1)


class NLISettings(BackendSettings):
    """Options of the ``nli`` backend."""

    hypothesis_template: str = Field(
        "This text is about {}.",
        description='hypothesis with ``{}`` for the label text, e.g. "This text is about {}."',
    )

    @field_validator("hypothesis_template")
    @classmethod
    def _has_slot(cls, value: str) -> str:
        if "{}" not in value:
            raise setting_error(
                f"hypothesis_template={value!r} has no '{{}}' where the label goes; "
                'write it like "This text is about {}."'
            )
        return value


@register_backend("nli")
class NLIBackend(ZeroShotBackend):
    """NLI cross-encoder backend (options: :class:`NLISettings`)."""

    model_field = "nli_model"
    Settings = NLISettings
    settings: NLISettings

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification

        self.template = self.settings.hypothesis_template
        self.tokenizer = self._load_tokenizer()
        self.model = self._load_model(AutoModelForSequenceClassification)
        self.entail_id, self.contra_id = nli_label_ids(
            self.model.config.label2id, where=f"NLI model {self.model_dir}"
        )
        self.limit = model_input_limit(self.tokenizer, self.model.config, self.max_length)
        # the last layer for the first token only, when it gives the same logits
        from label_pipeline.zeroshot.cls_only import enable_cls_only

        hyp = self.template.format("this")
        probe = self.tokenizer(
            ["a short text", "a somewhat longer text, with a few more words in it"],
            [hyp, hyp],
            padding=True,
            return_tensors="pt",
        ).to(self.device.device)
        self.cls_only = enable_cls_only(self.model, dict(probe))

    def logits(
        self, texts: Sequence[str], label_texts: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """NLI logits (rows x labels x classes) and the per-row truncation flags."""
        import torch

        tok = self.tokenizer
        n, n_labels = len(texts), len(label_texts)
        hyps = [self.template.format(t) for t in label_texts]
        # lengths without truncation tell which texts the pair encoding will cut
        text_len = np.array(
            [len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]
        )
        hyp_len = np.array([len(ids) for ids in tok(hyps, add_special_tokens=False)["input_ids"]])
        specials = tok.num_special_tokens_to_add(pair=True)
        if hyp_len.max(initial=0) + specials >= self.limit:
            raise ConfigError(
                f"zero_shot.hypothesis_template: the hypothesis for some label is {hyp_len.max()} "
                f"tokens, leaving no room for the text within {self.limit} tokens; shorten it"
            )
        truncated = (text_len + hyp_len.max(initial=0) + specials) > self.limit

        premises = [t for t in texts for _ in range(n_labels)]
        hypotheses = hyps * n
        enc = tok(premises, hypotheses, truncation="only_first", max_length=self.limit)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        lengths = [len(ids) for ids in enc["input_ids"]]
        out = np.zeros((n * n_labels, self.model.config.num_labels), dtype=np.float32)
        with torch.inference_mode():
            for idx in length_sorted_batches(lengths, self.batch_size):
                batch = tok.pad([{k: enc[k][i] for k in keys} for i in idx], return_tensors="pt")
                batch = {k: v.to(self.device.device) for k, v in batch.items()}
                out[idx] = self.model(**batch).logits.float().cpu().numpy()
        return out.reshape(n, n_labels, -1), truncated

    def score(
        self,
        texts: Sequence[str],
        labels: Sequence[str],
        label_texts: Sequence[str],
        multi_label: bool,
    ) -> ScoreResult:
        if len(texts) == 0:
            return ScoreResult.empty(len(labels))
        logits, truncated = self.logits(texts, label_texts)
        scores = nli_scores(logits, self.entail_id, self.contra_id, multi_label)
        return ScoreResult(scores.astype(np.float32), truncated)
