"""Sentence embeddings from a frozen encoder: mean-pooled, L2-normalised, batched by length.

One home for "texts in, embedding matrix out", shared by the embedding baselines and any
method that needs frozen features. The vector of every window (the token ids fed to the
encoder) is cached in-process per encoder directory, so methods, training slices and
long-text options that see the same texts (the unlabeled pool, valid, test; a short text
is one and the same window under every policy) compute it once per process.

Long texts (an encoder reads at most ``max_length`` tokens, 512 for MiniLM) follow one of
three policies (``long_text``):

- ``truncate``: the first ``max_length`` tokens;
- ``head_tail``: the first ``head_fraction`` of the window from the start of the text and
  the rest from its end (the error message at the bottom of an issue stays in view);
- ``chunks``: windows of ``chunk_length`` tokens every ``chunk_stride`` tokens over the
  whole text (at most ``max_chunks``, spread evenly from the first to the last), each
  embedded, then pooled per text: ``mean`` or ``attention`` (a softmax over each chunk's
  cosine similarity to the text's query — the title when there is one, else the mean
  chunk — at ``attention_temperature``).

The title: the first line of a text of several lines (the ingest stage renders GitHub
issues and ``text_columns`` as title, blank line, body). With ``title_weight > 0`` and
``chunks``/``head_tail``, the title is also embedded on its own, in full, and the text's
vector is the normalised ``title_weight * title + pooled windows`` (the windows read the
whole text, title included, so they are shared with the other policies).
Every window of every text is encoded in one length-sorted batched pass.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from label_pipeline.devices import DeviceChoice, choose_device
from label_pipeline.errors import ConfigError
from label_pipeline.models import model_loading

#: encoders whose window->vector tables are kept (least recently used dropped first)
MAX_CACHED_ENCODERS = 4
#: loaded models kept in memory, keyed by (directory, device, precision)
MAX_LOADED_MODELS = 2

_lock = threading.Lock()
_vectors: OrderedDict[str, dict[bytes, np.ndarray]] = OrderedDict()
_models: OrderedDict[tuple[str, str, str], tuple[Any, Any]] = OrderedDict()

LONG_TEXT_POLICIES = ("truncate", "head_tail", "chunks")


class LongText(BaseModel):
    """How a text longer than the encoder's window is read (see the module docstring).

    Attributes:
        long_text: ``truncate``, ``head_tail`` or ``chunks``.
        max_length: tokens per window for ``truncate``/``head_tail`` (and the title);
            None: the encoder's limit (at most 512).
        head_fraction: ``head_tail``: share of the window taken from the start of the text.
        chunk_length: ``chunks``: tokens per chunk (None: ``max_length``'s value).
        chunk_stride: ``chunks``: tokens between the starts of two chunks (None: the chunk
            length, i.e. no overlap).
        max_chunks: ``chunks``: most chunks per text; a longer text keeps chunks spread
            evenly over it, the first and the last included.
        pooling: ``chunks``: ``mean`` of the chunk vectors or ``attention`` weighting.
        attention_temperature: softmax temperature of ``attention`` pooling (smaller:
            sharper, towards the single best-matching chunk).
        title_weight: weight of the separately embedded title (first line) added to the
            pooled windows for ``head_tail``/``chunks``; 0: the title is only read as the
            start of the text.
    """

    model_config = ConfigDict(extra="forbid")

    long_text: Literal["truncate", "head_tail", "chunks"] = "truncate"
    max_length: int | None = Field(None, ge=8)
    head_fraction: float = Field(0.5, ge=0.0, le=1.0)
    chunk_length: int | None = Field(None, ge=8)
    chunk_stride: int | None = Field(None, ge=1)
    max_chunks: int = Field(8, ge=1)
    pooling: Literal["mean", "attention"] = "mean"
    attention_temperature: float = Field(0.1, gt=0.0)
    title_weight: float = Field(0.0, ge=0.0)


def long_text_options(**options: Any) -> LongText:
    """A validated :class:`LongText` from keyword options; an unknown or bad option fails
    naming it and the accepted values."""
    from pydantic import ValidationError

    try:
        return LongText(**options)
    except ValidationError as exc:
        bad = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ConfigError(
            f"embedding options: {bad} (accepted: {', '.join(LongText.model_fields)}; "
            f"long_text is one of {', '.join(LONG_TEXT_POLICIES)})"
        ) from None


def split_title(text: str) -> tuple[str, str]:
    """(title, body): the first line and the rest of a text of several lines; a text of
    one line has no title (("", text))."""
    first, sep, rest = text.strip().partition("\n")
    if not sep or not rest.strip():
        return "", text.strip()
    return first.strip(), rest.strip()


def head_tail(ids: list[int], limit: int, head_fraction: float) -> list[int]:
    """``ids`` cut to ``limit`` tokens: the first ``head_fraction`` of them from the start,
    the rest from the end (unchanged when it fits)."""
    if len(ids) <= limit:
        return list(ids)
    head = int(round(limit * head_fraction))
    tail = limit - head
    return list(ids[:head]) + (list(ids[-tail:]) if tail else [])


def chunk_windows(ids: list[int], length: int, stride: int, max_chunks: int) -> list[list[int]]:
    """Windows of ``length`` tokens every ``stride`` tokens covering ``ids`` (the last one
    ends at the text's end); more than ``max_chunks``: evenly spread, first and last kept."""
    if len(ids) <= length:
        return [list(ids)]
    starts = list(range(0, len(ids) - length, stride)) + [len(ids) - length]
    starts = sorted(set(starts))
    if len(starts) > max_chunks:
        pick = np.unique(np.round(np.linspace(0, len(starts) - 1, max_chunks)).astype(int))
        starts = [starts[i] for i in pick]
    return [list(ids[s : s + length]) for s in starts]


def encoder_inputs(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    truncation: Literal["head", "head_tail"] = "head",
    head_fraction: float = 0.5,
) -> list[list[int]]:
    """Input ids with special tokens, at most ``max_length`` per text: the text's first
    tokens (``head``, what ``tokenizer(..., truncation=True)`` gives) or its first and last
    (``head_tail``). Shared by the frozen embeddings and the fine-tuned classifiers."""
    texts = [str(t) for t in texts]
    if truncation == "head":
        return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    prefix, suffix = _specials(tokenizer)
    room = max_length - len(prefix) - len(suffix)
    return [
        prefix + head_tail(ids, room, head_fraction) + suffix
        for ids in _token_ids(tokenizer, texts)
    ]


def encoder_windows(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    max_chunks: int,
    stride: int | None = None,
) -> list[list[list[int]]]:
    """Each text read whole: its windows of at most ``max_length`` input ids (special tokens
    included), one every ``stride`` tokens (None: consecutive windows), at most
    ``max_chunks`` per text spread evenly with the first and the last kept
    (:func:`chunk_windows`). A text that fits is one window."""
    prefix, suffix = _specials(tokenizer)
    room = max(max_length - len(prefix) - len(suffix), 1)
    return [
        [prefix + w + suffix for w in chunk_windows(ids, room, stride or room, max_chunks)]
        for ids in _token_ids(tokenizer, [str(t) for t in texts])
    ]


def _specials(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a single text."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for at in range(len(full) - len(plain) + 1):
        if full[at : at + len(plain)] == plain:
            return list(full[:at]), list(full[at + len(plain) :])
    raise ConfigError(f"{type(tokenizer).__name__}: cannot tell its special tokens apart")


def _token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens and without truncation (any length)."""
    import transformers

    if not texts:
        return []
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "sequence longer than the model" is intended
    try:
        return tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]
    finally:
        transformers.logging.set_verbosity(level)


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

    # quiet: an adapted encoder's masked-LM head is unused here, and so is the pooler
    # (embeddings are mean-pooled token states)
    with model_loading(quiet=True):
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


def _windows(
    tokenizer: Any, texts: list[str], opt: LongText, limit: int
) -> tuple[list[list[int]], list[int], list[int]]:
    """Every window of every text as input ids with special tokens. Returns (windows, the
    text of each window, the title window of each text or -1)."""
    prefix, suffix = _specials(tokenizer)
    room = limit - len(prefix) - len(suffix)
    windows: list[list[int]] = []
    owner: list[int] = []
    title_at = [-1] * len(texts)
    titled = opt.long_text != "truncate" and opt.title_weight > 0
    titles = _token_ids(tokenizer, [split_title(t)[0] for t in texts]) if titled else []
    bodies = _token_ids(tokenizer, texts)  # the whole text: its windows are shared
    chunk_room = min(room, (opt.chunk_length or limit) - len(prefix) - len(suffix))
    stride = opt.chunk_stride or chunk_room
    for i, body in enumerate(bodies):
        if titled and titles[i]:
            title_at[i] = len(windows)
            windows.append(titles[i][:room])
            owner.append(i)
        if opt.long_text == "truncate":
            pieces = [body[:room]]
        elif opt.long_text == "head_tail":
            pieces = [head_tail(body, room, opt.head_fraction)]
        else:
            pieces = chunk_windows(body, max(chunk_room, 1), stride, opt.max_chunks)
        for piece in pieces:
            windows.append(piece)
            owner.append(i)
    windows = [prefix + w + suffix for w in windows]
    return windows, owner, title_at


def _pool(
    vecs: np.ndarray, owner: np.ndarray, title_at: list[int], n: int, opt: LongText
) -> np.ndarray:
    """One unit vector per text from its window vectors (unit rows of ``vecs``)."""
    dim = vecs.shape[1]
    out = np.zeros((n, dim), dtype=np.float32)
    bounds = np.flatnonzero(np.diff(np.concatenate([[-1], owner, [n]])))
    for b in range(len(bounds) - 1):
        lo, hi = bounds[b], bounds[b + 1]
        i = int(owner[lo])
        rows = [r for r in range(lo, hi) if r != title_at[i]]
        body = vecs[rows]
        title = vecs[title_at[i]] if title_at[i] >= 0 else None
        if len(body) > 1 and opt.pooling == "attention":
            query = title if title is not None else body.mean(axis=0)
            query = query / max(float(np.linalg.norm(query)), 1e-12)
            logits = body @ query / opt.attention_temperature
            w = np.exp(logits - logits.max())
            pooled = (w / w.sum()) @ body
        else:
            pooled = body.mean(axis=0)
        pooled = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        if title is not None:
            pooled = opt.title_weight * title + pooled
        out[i] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
    return out


def _encode(
    model_dir: str,
    texts: list[str],
    device: DeviceChoice,
    batch_size: int,
    opt: LongText,
) -> np.ndarray:
    import torch

    tokenizer, model = _load(model_dir, device)
    limit = _max_length(tokenizer, model, opt.max_length)
    windows, owner, title_at = _windows(tokenizer, texts, opt, limit)
    keys = [
        hashlib.blake2b(np.asarray(w, np.int64).tobytes(), digest_size=16).digest() for w in windows
    ]
    with _lock:
        table = _vectors.setdefault(model_dir, {})
        _vectors.move_to_end(model_dir)
        while len(_vectors) > MAX_CACHED_ENCODERS:
            _vectors.popitem(last=False)
    first = dict(zip(keys, range(len(windows)), strict=False))  # last index of each key
    todo = [i for k, i in first.items() if k not in table]
    # the windows not seen before, of all texts, sorted by token count (similar padding)
    todo.sort(key=lambda i: len(windows[i]))
    with torch.inference_mode():
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            inputs = {"input_ids": [windows[i] for i in idx]}
            batch = tokenizer.pad(inputs, return_tensors="pt").to(device.device)
            hidden = model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy()
            with _lock:
                table.update((keys[i], v) for i, v in zip(idx, pooled, strict=True))
    vecs = np.stack([table[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
    if opt.long_text == "truncate":
        return vecs  # one window per text, in text order
    return _pool(vecs, np.asarray(owner), title_at, len(texts), opt)


def embed_texts(
    model_dir: str | Path,
    texts: Sequence[str],
    device: DeviceChoice | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    **long_text: Any,
) -> np.ndarray:
    """L2-normalised text embeddings (n_texts, hidden_size) as float32: mean-pooled tokens
    of each window, windows pooled per text as ``long_text`` says.

    Args:
        model_dir: a local encoder directory (see ``label_pipeline.models.resolve_model``).
        texts: the texts; repeated windows and windows seen before (same encoder) are not
            recomputed.
        device: where to run; default ``choose_device()``.
        batch_size: windows per forward pass; default the device's batch size.
        max_length: tokens per window; default the encoder's limit (at most 512).
        long_text: the other fields of :class:`LongText` (``long_text="chunks"``,
            ``pooling="attention"``, ``title_weight=1.0``, ...); default ``truncate``.
    """
    opt = long_text_options(max_length=max_length, **long_text)
    device = device or choose_device()
    batch_size = int(batch_size or device.batch_size)
    model_dir = str(Path(model_dir).resolve())
    texts = [str(t) for t in texts]
    if not texts:
        _, model = _load(model_dir, device)
        return np.zeros((0, int(model.config.hidden_size)), dtype=np.float32)
    unique = list(dict.fromkeys(texts))
    vecs = _encode(model_dir, unique, device, batch_size, opt)
    row = {t: i for i, t in enumerate(unique)}
    return vecs[[row[t] for t in texts]].astype(np.float32, copy=False)
