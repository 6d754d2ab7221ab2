"""What the transformer methods share (``finetune``, ``setfit``, ``prototype``, and ``distill``
and ``ensemble``, which are saved the same way).

:class:`TransformerMethod` holds the fit and load preamble: check the training rows, take the
labels, the task kind and the device, resolve the encoder to start from
(:meth:`~TransformerMethod._start_fit`); write and read ``method.json`` (settings, labels, task
kind, history); load and save a sentence encoder with its tokenizer. The helpers below it
(batching, mixed precision, seeding, probability checks) serve the training loops.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from label_pipeline.devices import DeviceChoice, choose_device
from label_pipeline.embeddings import encoder_inputs
from label_pipeline.errors import TrainingDivergedError
from label_pipeline.methods.base import FitContext, LabelledTexts, Method
from label_pipeline.models import model_loading

PARAMS_FILE = "method.json"

#: what the ``encoder`` setting of a method that fine-tunes the encoder means (``prototype``,
#: ``finetune``); each method words its own default's reason after it
START_ENCODER_HELP = (
    "the encoder the fit starts from when the train stage reads the adapt stage's "
    "domain-adapted one: ``base`` (the encoder the adaptation started from), ``adapted``, or "
    "``auto`` (``base`` for a single-label task, ``adapted`` for a multi-label one)"
)


class TransformerMethod(Method):
    """A method saved as ``method.json`` plus its weights, fitted on a device.

    Fitted state set by :meth:`_start_fit` (or :meth:`_start_load`): ``label_names_``,
    ``multi_label_``, ``device_``; the subclass sets ``history_`` (what ``method.json``
    records) and its weights.
    """

    label_names_: list[str]
    multi_label_: bool
    device_: DeviceChoice
    history_: dict[str, Any]

    def _start_fit(
        self,
        train: LabelledTexts,
        valid: LabelledTexts | None,
        ctx: FitContext,
        encoder: bool = True,
    ) -> tuple[LabelledTexts | None, Path | None]:
        """Check ``train``; take its labels, task kind and the device. Returns ``valid``
        (None when empty) and, with ``encoder``, the encoder directory to start from
        (recorded in ``ctx.info`` with the device): the context's, or for a method whose
        ``encoder`` setting is ``base`` (``auto`` on single-label rows) the one its adaptation
        started from (``ctx.base_encoder``, when the context's encoder is domain-adapted)."""
        check_labelled(train, "train", self.name)
        if valid is not None and len(valid) == 0:
            valid = None
        self.label_names_ = list(train.label_names)
        self.multi_label_ = bool(train.multi_label)
        self.device_ = device_of(ctx)
        if not encoder:
            return valid, None
        start = encoder_dir(ctx)
        setting = getattr(self, "encoder", "adapted")  # see START_ENCODER_HELP
        if setting == "auto":
            setting = "adapted" if self.multi_label_ else "base"
        if setting == "base" and ctx.base_encoder:
            start = Path(ctx.base_encoder)
        ctx.info.setdefault("encoder", str(start))
        ctx.info.setdefault("device", self.device_.describe())
        return valid, start

    @classmethod
    def _start_load(cls, path: Path, device: DeviceChoice | None) -> Any:
        """An instance with the settings, labels, history and device of ``path/method.json``
        (the weights are the caller's to load)."""
        return read_method_meta(cls, Path(path), device)

    def _load_encoder(self, directory: str | Path, quiet: bool = False) -> None:
        """``tokenizer_`` and ``encoder_`` (a transformers ``AutoModel``) from ``directory``,
        on the device. ``quiet``: no warning for weights the encoder leaves unused (an
        adapted encoder's masked-LM head, the pooler)."""
        from transformers import AutoModel, AutoTokenizer

        with model_loading(quiet=quiet):
            self.tokenizer_ = AutoTokenizer.from_pretrained(str(directory))
            self.encoder_ = AutoModel.from_pretrained(str(directory))
        self.encoder_.to(self.device_.device)

    def _save_encoder(self, directory: Path) -> None:
        """``encoder_`` and ``tokenizer_`` into ``directory`` (``save_pretrained``)."""
        self.encoder_.save_pretrained(str(directory))
        self.tokenizer_.save_pretrained(str(directory))


# ---------------------------------------------------------------- helpers


def encoder_dir(ctx: FitContext) -> Path:
    """The encoder to start from: ``ctx.encoder`` or the default sentence encoder."""
    from label_pipeline.models import DEFAULT_ENCODER, resolve_model

    return resolve_model(ctx.encoder or DEFAULT_ENCODER, purpose="train encoder")


def device_of(ctx: FitContext | None) -> DeviceChoice:
    return (ctx.device if ctx is not None else None) or choose_device()


def autocast(device: DeviceChoice) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision on GPUs (bf16/fp16 as chosen), nothing on the CPU."""
    import torch

    if device.device == "cuda" and device.precision in {"fp16", "bf16"}:
        return torch.autocast("cuda", dtype=device.torch_dtype)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def length_grouped_batches(
    lengths: list[int] | np.ndarray, batch_size: int, rng: np.random.Generator, group: int = 50
) -> list[np.ndarray]:
    """Shuffled batches of row indices whose rows have similar lengths.

    Rows are shuffled, cut into groups of ``group`` batches, sorted by length inside a group and
    cut into batches; the batch order is shuffled again. Padding shrinks while batches stay
    random across epochs.
    """
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    span = batch_size * group
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def sorted_batches(lengths: list[int] | np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Inference batches: indices sorted by length, in order."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def inference_batches(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    batch_size: int,
    device: DeviceChoice,
) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """Length-sorted inference batches of each text's first ``max_length`` tokens: (row
    indices, padded model inputs on the device)."""
    ids = encoder_inputs(tokenizer, texts, max_length)
    for idx in sorted_batches([len(x) for x in ids], batch_size):
        batch = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
        yield idx, {k: v.to(device.device) for k, v in batch.items()}


def check_labelled(rows: LabelledTexts, what: str, method: str) -> None:
    from label_pipeline.errors import EmptyPoolError, InputDataError

    if len(rows) == 0:
        raise EmptyPoolError(f"{method}: the {what} rows are empty; the training slice needs rows")
    if rows.y.shape != (len(rows.texts), len(rows.label_names)):
        raise InputDataError(
            f"{method}: {what} label matrix has shape {rows.y.shape}, expected "
            f"({len(rows.texts)}, {len(rows.label_names)}) for {len(rows.label_names)} labels"
        )
    if rows.sample_weight is not None and len(rows.sample_weight) != len(rows.texts):
        raise InputDataError(
            f"{method}: {what} has {len(rows.sample_weight)} sample weights for {len(rows)} rows"
        )
    if rows.soft_y is not None:
        soft = np.asarray(rows.soft_y, dtype=np.float64)
        if soft.shape != rows.y.shape or not np.isfinite(soft).all():
            raise InputDataError(
                f"{method}: {what} soft targets have shape {soft.shape}, expected {rows.y.shape} "
                "of finite probabilities"
            )
        if soft.min() < 0 or soft.max() > 1:
            raise InputDataError(f"{method}: {what} soft targets must lie in [0, 1]")


def logits_to_proba(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    """Sigmoid of each logit (multi-label) or softmax over each row (single-label)."""
    if multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def checked_proba(proba: np.ndarray, method: str) -> np.ndarray:
    """``proba``, or :class:`TrainingDivergedError` naming the fix when a value is not finite."""
    if not np.isfinite(proba).all():
        raise TrainingDivergedError(
            f"{method}: the model outputs non-finite probabilities; retrain with a lower "
            f"train.method_params.{method}.lr"
        )
    return proba


def write_method_meta(method: Any, path: Path) -> None:
    """``path/method.json``: name, parameters, label names, task kind and training history."""
    meta = {
        "method": method.name,
        "params": method.get_params(),
        "label_names": method.label_names_,
        "multi_label": method.multi_label_,
        "history": method.history_,
    }
    (Path(path) / PARAMS_FILE).write_text(json.dumps(meta, indent=2, default=str))


def read_method_meta(cls: Any, path: Path, device: DeviceChoice | None) -> Any:
    """A ``cls`` instance with the parameters, labels, history and device of ``path/method.json``
    (the weights are the caller's to load)."""
    meta = json.loads((Path(path) / PARAMS_FILE).read_text())
    self = cls(**meta["params"])
    self.label_names_ = list(meta["label_names"])
    self.multi_label_ = bool(meta["multi_label"])
    self.history_ = meta.get("history", {})
    self.device_ = device or choose_device()
    return self


def cpu_state(model: Any) -> dict[str, Any]:
    """A CPU copy of ``model``'s state dict (a checkpoint that later training cannot change)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
