"""Sentence embeddings from a frozen encoder: mean-pooled, L2-normalised, batched by length.

One home for "texts in, embedding matrix out", shared by the embedding baselines and any
method that needs frozen features. Embeddings are cached in-process per encoder directory
and text, so methods and training slices that see the same texts (the unlabeled pool,
valid, test) compute them once per process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from label_pipeline.devices import DeviceChoice, choose_device
from label_pipeline.models import model_loading

#: encoders whose text->vector tables are kept (least recently used dropped first)
MAX_CACHED_ENCODERS = 4
#: loaded models kept in memory, keyed by (directory, device, precision)
MAX_LOADED_MODELS = 2

_lock = threading.Lock()
_vectors: OrderedDict[tuple[str, int], dict[str, np.ndarray]] = OrderedDict()
_models: OrderedDict[tuple[str, str, str], tuple[Any, Any]] = OrderedDict()


def clear_cache() -> None:
    """Forget cached embeddings and loaded models (tests, memory pressure)."""
    with _lock:
        _vectors.clear()
        _models.clear()


def _load(model_dir: str, device: DeviceChoice) -> tuple[Any, Any]:
    key = (model_dir, device.device, device.precision)
    with _lock:
        if key in _models:
            _models.move_to_end(key)
            return _models[key]
    from transformers import AutoModel, AutoTokenizer

    with model_loading():
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModel.from_pretrained(model_dir)
    model.eval().to(device.device)
    if device.device != "cpu" and device.precision in {"fp16", "bf16"}:
        model.to(device.torch_dtype)
    with _lock:
        _models[key] = (tokenizer, model)
        while len(_models) > MAX_LOADED_MODELS:
            _models.popitem(last=False)
    return tokenizer, model


def _max_length(tokenizer: Any, model: Any, max_length: int | None) -> int:
    limits = [512]
    if getattr(tokenizer, "model_max_length", None) and tokenizer.model_max_length < 100_000:
        limits.append(int(tokenizer.model_max_length))
    if getattr(model.config, "max_position_embeddings", None):
        limits.append(int(model.config.max_position_embeddings))
    if max_length:
        limits.append(int(max_length))
    return min(limits)


def _encode(
    model_dir: str,
    texts: list[str],
    device: DeviceChoice,
    batch_size: int,
    max_length: int | None,
) -> np.ndarray:
    import torch

    tokenizer, model = _load(model_dir, device)
    limit = _max_length(tokenizer, model, max_length)
    # sort by token count so each batch pads to similar lengths
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=limit)["input_ids"]]
    order = np.argsort(lengths, kind="stable")
    dim = int(model.config.hidden_size)
    out = np.zeros((len(texts), dim), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=limit,
                return_tensors="pt",
            ).to(device.device)
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.cpu().numpy()
    return out


def embed_texts(
    model_dir: str | Path,
    texts: Sequence[str],
    device: DeviceChoice | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
) -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings (n_texts, hidden_size) as float32.

    Args:
        model_dir: a local encoder directory (see ``label_pipeline.models.resolve_model``).
        texts: the texts; repeated texts and texts seen before (same encoder) are not
            recomputed.
        device: where to run; default ``choose_device()``.
        batch_size: texts per forward pass; default the device's batch size.
        max_length: tokens per text (truncation); default the encoder's limit (at most 512).
    """
    device = device or choose_device()
    batch_size = int(batch_size or device.batch_size)
    key = (str(Path(model_dir).resolve()), int(max_length or 0))
    texts = [str(t) for t in texts]
    with _lock:
        table = _vectors.setdefault(key, {})
        _vectors.move_to_end(key)
        while len(_vectors) > MAX_CACHED_ENCODERS:
            _vectors.popitem(last=False)
        missing = list(dict.fromkeys(t for t in texts if t not in table))
    if missing:
        vecs = _encode(key[0], missing, device, batch_size, max_length)
        with _lock:
            table.update(zip(missing, vecs, strict=True))
    if not texts:
        _, model = _load(key[0], device)
        return np.zeros((0, int(model.config.hidden_size)), dtype=np.float32)
    return np.stack([table[t] for t in texts]).astype(np.float32, copy=False)
