"""A sequence classifier that reads the mean of an encoder's token vectors.

``finetune`` with ``pooling: mean`` trains this instead of a transformers
``AutoModelForSequenceClassification``, whose head reads the first token through the
checkpoint's pooler. A sentence encoder (all-MiniLM-L6-v2, all-mpnet-base-v2) was trained
to carry a text's meaning in the mean of its token vectors; its first token and pooler were
not trained for that. The head is dropout and one linear layer over the mean.

The model answers the calls ``finetune`` makes of a transformers model: ``model(**batch)
.logits``, ``save_pretrained``, ``from_pretrained``, ``base_model_prefix`` (the name of the
encoder's parameters, so the head gets its own learning rate). Torch is imported with this
module, so it is imported only where a fit or a load needs it.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

#: the head's weights beside the encoder's files in a saved model directory
HEAD_FILE = "mean_pooled_head.safetensors"


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of each row's token vectors over its attention mask (not normalised)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class MeanPooledClassifier(torch.nn.Module):
    """``encoder`` (a transformers ``AutoModel``), the masked mean of its last hidden
    states, dropout, and a linear layer to ``n_labels`` logits."""

    base_model_prefix = "encoder"

    def __init__(self, encoder: Any, n_labels: int, dropout: float | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        p = getattr(encoder.config, "hidden_dropout_prob", 0.1) if dropout is None else dropout
        self.dropout = torch.nn.Dropout(float(p))
        self.classifier = torch.nn.Linear(int(encoder.config.hidden_size), int(n_labels))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: Any
    ) -> SimpleNamespace:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, **inputs
        ).last_hidden_state
        pooled = masked_mean(hidden, attention_mask)
        return SimpleNamespace(logits=self.classifier(self.dropout(pooled)))

    def save_pretrained(self, directory: str | Path) -> None:
        """The encoder (``save_pretrained``) and ``HEAD_FILE`` in ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        self.encoder.save_pretrained(str(directory))
        head = {
            k: v.detach().to("cpu").contiguous() for k, v in self.classifier.state_dict().items()
        }
        save_file(head, str(directory / HEAD_FILE), metadata={"dropout": str(self.dropout.p)})

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> MeanPooledClassifier:
        """A model saved by :meth:`save_pretrained`."""
        from safetensors import safe_open
        from safetensors.torch import load_file
        from transformers import AutoModel

        directory = Path(directory)
        head = load_file(str(directory / HEAD_FILE))
        with safe_open(str(directory / HEAD_FILE), framework="pt") as f:
            dropout = float((f.metadata() or {}).get("dropout", 0.1))
        model = cls(AutoModel.from_pretrained(str(directory)), head["weight"].shape[0], dropout)
        model.classifier.load_state_dict(head)
        return model
