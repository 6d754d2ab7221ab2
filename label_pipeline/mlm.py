"""Masked-LM logits at chosen positions only.

Projecting hidden states onto a 30k-word vocabulary is a large share of a small
encoder's compute. Training (the ``adapt`` stage) and fill-mask substitution (the
``contextual`` augmenter) only need logits where tokens are masked, so they run the
encoder on the whole batch and the vocabulary head on those positions alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def mlm_head(model: Any) -> Callable[[Any], Any] | None:
    """A function from hidden states to vocabulary logits for ``model``'s masked-LM head.

    Found when the head is a single child module holding the output embeddings (BERT,
    RoBERTa, DeBERTa, ...) or for DistilBERT's head (four modules); ``None`` otherwise,
    and callers then use the full forward pass.
    """
    base = model.base_model
    out = model.get_output_embeddings()
    if out is None:
        return None
    heads = [
        m
        for _, m in model.named_children()
        if m is not base and any(p.requires_grad for p in m.parameters())
    ]
    if len(heads) == 1 and any(m is out for m in heads[0].modules()):
        return heads[0]
    if getattr(model.config, "model_type", "") == "distilbert":

        def distilbert_head(hidden: Any) -> Any:
            h = model.activation(model.vocab_transform(hidden))
            return model.vocab_projector(model.vocab_layer_norm(h))

        return distilbert_head
    return None


def masked_logits(
    model: Any, head: Callable[[Any], Any] | None, inputs: dict[str, Any], select: Any
) -> Any:
    """Vocabulary logits at the positions where the boolean tensor ``select`` is true,
    shaped ``(select.sum(), vocab)``, in the order of ``select.nonzero()``."""
    if head is None:
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        return model(**forward).logits[select]
    forward = {k: v for k, v in inputs.items() if k in _ENCODER_INPUTS}
    hidden = model.base_model(**forward)[0]
    return head(hidden[select])
