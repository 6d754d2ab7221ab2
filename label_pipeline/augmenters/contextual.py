"""Contextual word substitution: a masked language model proposes replacements for a
fraction of the words of each text.

Why not nlpaug's ``ContextualWordEmbsAug``: nlpaug 1.1.11 calls the slow-tokenizer
private ``_convert_token_to_id``, which transformers 5 tokenizers no longer have
(``AttributeError: TokenizersBackend has no attribute _convert_token_to_id``), and it
runs one forward pass per masked word of one text at a time. Here every chosen word of
a text is masked in one input and all inputs of the dataset go through the model in
length-sorted batches on the chosen device: one forward pass per batch instead of one
per word. :class:`~label_pipeline.augmenters.nlpaug_compat.ContextualSubstitutionAug` exposes the same engine with nlpaug's
``augment(data, n)`` so ``naf.Sequential`` flows can compose it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from label_pipeline.augmenters.base import (
    Augmenter,
    AugmentOutput,
    MethodConfig,
    register_augmenter,
    split_to_fit,
)
from label_pipeline.devices import DeviceChoice
from label_pipeline.mlm import masked_logits, mlm_head
from label_pipeline.models import model_loading

# words that keep their surface form: sub-word pieces, digits and punctuation are left alone
_SEGMENT = re.compile(r"\w+|[^\w\s]+|\s+")
_WORD = re.compile(r"^[^\W\d_]{2,}$")


class ContextualConfig(MethodConfig):
    """Masked-LM word substitution (fill-mask over the whole dataset, batched).

    Attributes (besides :class:`MethodConfig`'s):
        enabled: ``True``, ``False`` or ``"auto"`` (default): run when an MLM is at hand,
            that is the adapt stage's model (``augment.use_adapted_mlm``) or ``model``
            resolving offline; otherwise skipped with the reason in the summary.
        model: MLM reference for :func:`label_pipeline.models.resolve_model` (hub id or a
            ``save_pretrained`` directory); unused when the adapted MLM is passed in.
        top_k: replacements are drawn from the model's ``top_k`` most likely tokens
            (excluding the original word, sub-word pieces and non-words), weighted by
            probability; ``top_k=1`` picks the most likely one.
        max_length: model input tokens per text piece; None = the model's own limit (<= 512).
        batch_size: inputs per forward pass; None = the device's default batch size.
    """

    enabled: bool | Literal["auto"] = "auto"
    model: str = "distilbert-base-uncased"
    top_k: int = Field(10, ge=1, le=200)
    max_length: int | None = Field(None, ge=8)
    batch_size: int | None = Field(None, ge=1)


@dataclass
class _Unit:
    """One model input: a piece of one variant of one text, with its masked word slots."""

    text_index: int
    variant: int
    piece: int
    segments: list[str]
    masked: list[int]  # indices into segments
    n_tokens: int = 0


class FillMaskSubstituter:
    """Batched masked-LM substitution over lists of texts.

    Args:
        model_dir: a ``save_pretrained`` masked-LM directory (with its tokenizer).
        device: device, precision and default batch size.
        aug_p / aug_max: fraction of words changed per text, at most ``aug_max``.
        top_k: candidates per masked word.
        max_length: model input limit in tokens (None: the model's, at most 512).
        batch_size: inputs per forward pass (None: ``device.batch_size``).
        long_texts: ``chunk`` or ``truncate`` (see :class:`MethodConfig`).
        seed: random seed for the choice of words and replacements.
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: DeviceChoice,
        aug_p: float = 0.15,
        aug_max: int = 10,
        top_k: int = 10,
        max_length: int | None = None,
        batch_size: int | None = None,
        long_texts: str = "chunk",
        seed: int = 0,
    ) -> None:
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        self.device = device
        self.aug_p, self.aug_max, self.top_k = aug_p, aug_max, top_k
        self.long_texts = long_texts
        self.seed = seed
        self.batch_size = batch_size or device.batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        if self.tokenizer.mask_token is None:
            from label_pipeline.errors import ConfigError

            raise ConfigError(
                f"augment.contextual: the model at {model_dir} has no mask token; give a "
                "masked language model (BERT/DistilBERT/RoBERTa style) in augment.contextual.model"
            )
        dtype = device.torch_dtype if device.device != "cpu" else torch.float32
        with model_loading():
            self.model = AutoModelForMaskedLM.from_pretrained(str(model_dir), dtype=dtype)
        self.model.to(device.device).eval()
        # the vocabulary head runs on the masked positions only
        self._head = mlm_head(self.model)
        limit = getattr(self.model.config, "max_position_embeddings", 512) or 512
        tok_limit = (
            self.tokenizer.model_max_length if self.tokenizer.model_max_length < 10**6 else limit
        )
        self.max_length = min(max_length or 512, limit, tok_limit, 512)
        self._bad_ids = self._unusable_token_ids()

    def _unusable_token_ids(self) -> np.ndarray:
        """Vocabulary entries never proposed: specials, sub-word pieces, non-words."""
        vocab = self.tokenizer.get_vocab()
        bad = np.zeros(max(vocab.values()) + 1, dtype=bool)
        specials = set(self.tokenizer.all_special_ids)
        for token, idx in vocab.items():
            word = token.lstrip("Ġ▁")  # byte-level / sentencepiece word-start markers
            if idx in specials or token.startswith("##") or not _WORD.match(word):
                bad[idx] = True
        return bad

    def _bad_mask(self, width: int, device: Any) -> Any:
        """The unusable-id mask as wide as the logits (ids the tokenizer does not know,
        when the model's vocabulary is larger, are unusable too)."""
        import torch

        bad = np.ones(width, dtype=bool)
        n = min(width, len(self._bad_ids))
        bad[:n] = self._bad_ids[:n]
        return torch.from_numpy(bad).to(device)

    def _lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts of all texts in one (fast, batched) tokenizer call."""
        if not texts:
            return []
        return [
            len(ids)
            for ids in self.tokenizer(list(texts), add_special_tokens=True, verbose=False)[
                "input_ids"
            ]
        ]

    def _n_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])

    def substitute(self, texts: Sequence[str], n: int = 1, progress: Any = None) -> AugmentOutput:
        """``n`` variants of every text, each with about ``aug_p`` of its words replaced."""
        import torch

        rng = np.random.default_rng(self.seed)
        out = AugmentOutput(variants=[[] for _ in texts])
        units: list[_Unit] = []
        pieces_of: dict[int, list[str]] = {}
        lengths = self._lengths(texts)
        for i, text in enumerate(texts):
            if not text.strip():
                out.failed += 1
                continue
            pieces = (
                [text]
                if lengths[i] <= self.max_length
                else split_to_fit(text, self.max_length - 2, self._n_tokens)
            )
            if len(pieces) > 1:
                out.truncated += 1
            pieces_of[i] = pieces
            for v in range(n):
                for p, piece in enumerate(pieces):
                    segments = _SEGMENT.findall(piece)
                    words = [j for j, s in enumerate(segments) if _WORD.match(s)]
                    if p > 0 and self.long_texts == "truncate":
                        masked: list[int] = []  # only the first window is augmented
                    else:
                        k = (
                            min(self.aug_max, max(1, round(self.aug_p * len(words))))
                            if words
                            else 0
                        )
                        masked = (
                            sorted(rng.choice(words, size=k, replace=False).tolist()) if k else []
                        )
                    units.append(_Unit(i, v, p, segments, masked))

        todo = [u for u in units if u.masked]
        mask = self.tokenizer.mask_token
        inputs = [
            "".join(mask if j in u.masked else s for j, s in enumerate(u.segments)) for u in todo
        ]
        lengths = [len(x) for x in inputs]  # characters: a cheap proxy of token length
        order = np.argsort(-np.asarray(lengths), kind="stable")
        replacements: dict[int, list[str]] = {}
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self.tokenizer(
                    [inputs[j] for j in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device.device)
                is_mask = enc["input_ids"] == self.tokenizer.mask_token_id
                rows, _cols = is_mask.nonzero(as_tuple=True)
                picked = masked_logits(self.model, self._head, enc, is_mask).float()
                picked[:, self._bad_mask(picked.shape[1], picked.device)] = -1e9
                probs, cand = torch.softmax(picked, dim=-1).topk(
                    min(self.top_k + 1, picked.shape[1])
                )
                probs, cand, rows = probs.cpu().numpy(), cand.cpu().numpy(), rows.cpu().numpy()
                for b, j in enumerate(idx):
                    u = todo[j]
                    originals = [u.segments[m].lower() for m in u.masked]
                    chosen: list[str] = []
                    for slot, r in enumerate(np.flatnonzero(rows == b)):
                        if slot >= len(originals):
                            break
                        chosen.append(self._draw(probs[r], cand[r], originals[slot], rng))
                    replacements[id(u)] = chosen
                if progress is not None:
                    progress.update(len(idx))

        built: dict[tuple[int, int], list[str]] = {}
        for u in units:
            segs = list(u.segments)
            for m, new in zip(u.masked, replacements.get(id(u), []), strict=False):
                if new:
                    segs[m] = _match_case(u.segments[m], new)
            built.setdefault((u.text_index, u.variant), []).append("".join(segs))
        for (i, _v), parts in sorted(built.items()):
            if self.long_texts == "truncate" and len(pieces_of[i]) > 1:
                parts = parts[:1]  # truncate: the variant is the first window only
            out.variants[i].append(" ".join(p.strip() for p in parts))
        return out

    def _draw(
        self, probs: np.ndarray, cand: np.ndarray, original: str, rng: np.random.Generator
    ) -> str:
        tokens = self.tokenizer.convert_ids_to_tokens(cand.tolist())
        keep = [
            (p, t.lstrip("Ġ▁"))
            for p, t in zip(probs, tokens, strict=True)
            if p > 0 and t.lstrip("Ġ▁").lower() != original
        ][: self.top_k]
        if not keep:
            return ""
        weights = np.asarray([p for p, _ in keep], dtype=np.float64)
        return keep[int(rng.choice(len(keep), p=weights / weights.sum()))][1]


def _match_case(original: str, new: str) -> str:
    if original.isupper() and len(original) > 1:
        return new.upper()
    if original[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


@register_augmenter("contextual")
class ContextualAugmenter(Augmenter):
    """Masked-LM substitution over the whole list of texts in length-sorted batches."""

    Settings = ContextualConfig
    cfg: ContextualConfig

    def resolve(self) -> Path:
        """The MLM directory: the adapted model handed in, else ``cfg.model`` resolved."""
        from label_pipeline.errors import ModelNotFoundError, ResourceMissingError
        from label_pipeline.models import resolve_model

        if self.model_dir is not None:
            return Path(self.model_dir)
        try:
            return resolve_model(self.cfg.model, purpose="augment.contextual.model")
        except ModelNotFoundError as exc:
            raise ResourceMissingError(
                f"augment.contextual: no masked language model available offline.\n{exc}\n"
                "Or use the adapt stage's model (augment.use_adapted_mlm=true with adapt "
                "enabled), switch the method off (augment.contextual.enabled=false) or set "
                "augment.skip_unavailable=true."
            ) from exc

    def check_available(self) -> None:
        self.resolve()

    def substituter(self) -> FillMaskSubstituter:
        return FillMaskSubstituter(
            self.resolve(),
            self.device,
            aug_p=self.cfg.aug_p,
            aug_max=self.cfg.aug_max,
            top_k=self.cfg.top_k,
            max_length=self.cfg.max_length,
            batch_size=self.cfg.batch_size,
            long_texts=self.cfg.long_texts,
            seed=self.cfg.seed,
        )

    def augment_texts(self, texts: Sequence[str], n: int, progress: Any = None) -> AugmentOutput:
        return self.substituter().substitute(texts, n, progress=progress)

    def describe(self) -> str:
        src = f"adapted MLM {self.model_dir}" if self.model_dir else self.cfg.model
        return f"contextual ({src})"
