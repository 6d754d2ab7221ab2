"""WordNet synonym replacement through nlpaug (``naw.SynonymAug(aug_src="wordnet")``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field

from label_pipeline.augmenters.base import (
    Augmenter,
    AugmentOutput,
    MethodConfig,
    register_augmenter,
    seed_everything,
)


class SynonymConfig(MethodConfig):
    """WordNet synonym replacement (nlpaug ``SynonymAug``), offline with the NLTK data that
    ``python -m label_pipeline.resources`` prepares.

    Attributes (besides :class:`MethodConfig`'s):
        aug_p: fraction of the words replaced by a WordNet synonym of the same part of speech.
        max_words: texts longer than this many words are chunked or truncated (the POS
            tagger and nlpaug slow down on very long texts; nothing else limits them).
    """

    aug_p: float = Field(0.3, gt=0.0, le=1.0)
    max_words: int = Field(400, ge=8)


@register_augmenter("synonym")
class SynonymAugmenter(Augmenter):
    """Replaces a fraction of the words with WordNet synonyms (POS-tagged with NLTK's
    averaged perceptron). Non-English words have no synonyms and stay as they are."""

    Settings = SynonymConfig
    cfg: SynonymConfig

    def check_available(self) -> None:
        from label_pipeline.resources import require_wordnet

        require_wordnet(self.name)

    def augment_texts(self, texts: Sequence[str], n: int, progress: Any = None) -> AugmentOutput:
        import nlpaug.augmenter.word as naw

        from label_pipeline.resources import nltk_offline

        self.check_available()
        out = AugmentOutput(variants=[[] for _ in texts])
        with nltk_offline(self.name):
            aug = naw.SynonymAug(
                aug_src="wordnet", aug_p=self.cfg.aug_p, aug_min=1, aug_max=self.cfg.aug_max
            )
            for k in range(n):
                seed_everything(self.cfg.seed * 1000 + k)
                for i, text in enumerate(texts):
                    if not text.strip():
                        out.failed += k == 0
                        continue
                    words = text.split()
                    if len(words) > self.cfg.max_words:
                        out.truncated += k == 0
                        head, tail = words[: self.cfg.max_words], words[self.cfg.max_words :]
                        new_head = _first(aug.augment(" ".join(head)), " ".join(head))
                        if self.cfg.long_texts == "chunk":
                            # long tails are augmented piece by piece, so every word may change
                            pieces = [
                                _first(aug.augment(" ".join(tail[j : j + self.cfg.max_words])), "")
                                for j in range(0, len(tail), self.cfg.max_words)
                            ]
                            out.variants[i].append(" ".join([new_head, *pieces]))
                        else:
                            out.variants[i].append(new_head)
                        continue
                    out.variants[i].append(_first(aug.augment(text), text))
                if progress is not None:
                    progress.update(len(texts))
        return out


def _first(result: list[str] | str, default: str) -> str:
    if isinstance(result, str):
        return result
    return result[0] if result else default
