"""Sequence classification that computes the last encoder layer for the first token only.

A BERT-style classifier reads only the hidden state of the first token (``[CLS]`` / ``<s>``)
after the last layer, yet a plain forward pass computes that layer for every token. Here the
last layer's keys and values still come from all tokens, but the query, the attention
output, and the feed-forward block run for the first token alone: the same logits for about
one layer's worth less compute (a sixth of a 6-layer encoder). The NLI backend, which scores
every (text, label) pair, uses it where it applies.

It applies to BERT, RoBERTa, XLM-R, CamemBERT and ELECTRA sequence classifiers whose last
layer has the standard BERT structure; :func:`enable_cls_only` checks the logits against the
full forward pass on a probe batch and leaves the model untouched when anything differs.
"""

from __future__ import annotations

from typing import Any

SUPPORTED = {"bert", "roberta", "xlm-roberta", "camembert", "electra"}


def _make_layer(layer: Any) -> Any:
    import torch
    import torch.nn.functional as F

    class ClsOnlyLayer(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, hidden_states: Any, attention_mask: Any = None, *args: Any, **kw: Any):
            att = self.inner.attention.self
            b, t, _ = hidden_states.shape
            heads, size = att.num_attention_heads, att.attention_head_size
            first = hidden_states[:, :1]
            q = att.query(first).view(b, 1, heads, size).transpose(1, 2)
            k = att.key(hidden_states).view(b, t, heads, size).transpose(1, 2)
            v = att.value(hidden_states).view(b, t, heads, size).transpose(1, 2)
            mask = attention_mask
            if mask is not None:
                if mask.dim() == 2:  # (batch, keys) padding mask
                    mask = mask[:, None, None, :].bool()
                else:  # (batch, 1, queries, keys): the first query's row
                    mask = mask[:, :, :1, :]
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=att.scaling)
            ctx = ctx.transpose(1, 2).reshape(b, 1, heads * size)
            attn_out = self.inner.attention.output(ctx, first)
            return self.inner.output(self.inner.intermediate(attn_out), attn_out)

    return ClsOnlyLayer(layer)


def _layers(model: Any) -> Any | None:
    encoder = getattr(model.base_model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None or len(layers) == 0:
        return None
    last = layers[-1]
    att = getattr(getattr(last, "attention", None), "self", None)
    needed = (
        att is not None
        and all(hasattr(att, n) for n in ("query", "key", "value", "scaling"))
        and all(hasattr(last, n) for n in ("intermediate", "output"))
        and hasattr(last.attention, "output")
        and not getattr(model.config, "is_decoder", False)
    )
    return layers if needed else None


def enable_cls_only(model: Any, probe: dict[str, Any], atol: float = 1e-4) -> bool:
    """Swap the last layer of ``model`` for its first-token-only version when the model is
    a supported sequence classifier and its logits on ``probe`` (a padded batch of at least
    two inputs of different lengths) stay within ``atol``; return whether it did."""
    import torch

    if getattr(model.config, "model_type", "") not in SUPPORTED:
        return False
    layers = _layers(model)
    if layers is None:
        return False
    original = layers[-1]
    try:
        with torch.inference_mode():
            full = model(**probe).logits.float()
            layers[-1] = _make_layer(original)
            fast = model(**probe).logits.float()
    except Exception:  # any architecture detail this does not know: keep the plain model
        layers[-1] = original
        return False
    if fast.shape != full.shape or not torch.allclose(fast, full, atol=atol, rtol=1e-4):
        layers[-1] = original
        return False
    return True
