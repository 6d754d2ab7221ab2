"""``finetune``: a transformer sequence classifier trained end to end on the labelled rows.

Multi-label tasks train sigmoid outputs with binary cross-entropy (``pos_weight`` for rare
labels), single-label tasks softmax outputs with cross-entropy (class weights). Row weights
(``LabelledTexts.sample_weight``, e.g. down-weighted pseudo-labels) scale each row's loss;
soft targets (``LabelledTexts.soft_y``, e.g. a teacher's probabilities in ``distill``) replace
the 0/1 labels in the loss.
Batches are padded dynamically and grouped by length; on a GPU training runs in mixed precision
with larger batches. Training stops early when the validation score stops improving and the
best checkpoint is kept. A non-finite loss stops training, restores the last good checkpoint and
records why in ``ctx.info["diverged"]``; with no good checkpoint it raises
:class:`~label_pipeline.errors.TrainingDivergedError`.

Self-training on the unlabeled pool is built in: ``self_training_rounds > 0`` (see
:mod:`label_pipeline.methods.self_training`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from label_pipeline.devices import DeviceChoice
from label_pipeline.embeddings import encoder_inputs, encoder_windows
from label_pipeline.errors import TrainingDivergedError
from label_pipeline.methods.base import FitContext, LabelledTexts, MethodSettings, register
from label_pipeline.methods.self_training import (
    DEFAULT_MAX_GAIN,
    Floor,
    MaxGain,
    PerLabel,
    PoolSize,
    Rounds,
    SelfTrainingParams,
    Weight,
    run_self_training,
)

# the helpers the transformer methods share, importable from here as before
from label_pipeline.methods.transformer import (  # noqa: F401
    PARAMS_FILE,
    START_ENCODER_HELP,
    TransformerMethod,
    autocast,
    check_labelled,
    checked_proba,
    cpu_state,
    device_of,
    encoder_dir,
    inference_batches,
    length_grouped_batches,
    logits_to_proba,
    read_method_meta,
    seed_everything,
    sorted_batches,
    write_method_meta,
)
from label_pipeline.models import model_loading
from label_pipeline.progress import stage_logger

#: how the fine-tuned classifiers read a text longer than ``max_length``
TRUNCATIONS = ("head", "head_tail", "chunks")


# ---------------------------------------------------------------- the method


class FineTuneSettings(MethodSettings):
    """Settings of ``finetune`` (``train.method_params.finetune``)."""

    epochs: int = Field(12, ge=1, description="most passes over the training rows")
    patience: int = Field(
        3,
        ge=0,
        description="epochs without a better validation score before stopping "
        "(0 = never stop early)",
    )
    monitor: Literal["micro_f1", "loss"] = Field(
        "micro_f1",
        description="validation score for early stopping and the kept checkpoint: "
        "``micro_f1`` (accuracy for single-label) or ``loss``",
    )
    lr: float = Field(
        1e-4, gt=0.0, description="peak learning rate (linear warm-up, then linear decay)"
    )
    head_lr: float | None = Field(
        1e-3,
        gt=0.0,
        description="learning rate of the freshly initialised head (None = ``lr``)",
    )
    weight_decay: float = Field(0.01, description="AdamW weight decay")
    warmup_ratio: float = Field(
        0.1, description="share of steps spent warming the learning rate up"
    )
    batch_size: int | None = Field(
        None,
        description="training rows per step; None (or 0) = 16 on the CPU, 32 on a GPU (capped "
        "so an epoch has at least 8 steps)",
    )
    eval_batch_size: int | None = Field(
        None, description="rows per inference step; None = the device's batch size"
    )
    max_length: int = Field(
        128,
        ge=8,
        description="tokens per window (a longer text is cut or read in several windows)",
    )
    truncation: Literal["head", "head_tail", "chunks"] = Field(
        "head",
        description="how a longer text is read: its first tokens (``head``), the first "
        "``head_fraction`` of ``max_length`` from its start and the rest from its end "
        "(``head_tail``: the error at the bottom of an issue stays in view), or whole in "
        "``chunks``: consecutive windows of ``max_length`` tokens (at most ``max_chunks``, "
        "spread evenly from the first to the last), each through the encoder and the head, "
        "their logits pooled per text by ``chunk_pooling`` and trained as one row",
    )
    head_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="share of the window taken from the start (``head_tail``)"
    )
    max_chunks: int = Field(
        4,
        ge=1,
        description="``chunks``: most windows per text (training and inference cost grow with it)",
    )
    chunk_pooling: Literal["mean", "max"] = Field(
        "mean",
        description="``chunks``: ``mean`` of the windows' logits (for a linear head such as "
        "BERT's, the head applied to the mean of the windows' pooled embeddings) or ``max`` per "
        "label (evidence anywhere in the text counts in full)",
    )
    class_weighting: Literal["balanced", "none"] = Field(
        "balanced",
        description="``balanced`` (pos_weight per label for multi-label, inverse class "
        "frequency for single-label) or ``none``",
    )
    max_pos_weight: float = Field(
        10.0, description="cap on the multi-label ``pos_weight`` of very rare labels"
    )
    dropout: float | None = Field(
        None, description="dropout of the classification head (None = the encoder's config)"
    )
    encoder: Literal["auto", "base", "adapted"] = Field(
        "auto",
        description=f"{START_ENCODER_HELP}. Refitted on the same runs from the base encoder, "
        "single-label test accuracy on NLBSE'24 was 2.8 points higher on average (three seeds, "
        "four slices: higher in 9 of 12), multi-label micro-F1 lower at 7 of 9 slices of the "
        'embedded data and NLU++ (docs/benchmarks.md, "Which encoder `finetune` starts from")',
    )
    self_training_rounds: Rounds = 0
    self_training_floor: Floor = 0.9
    self_training_per_label: PerLabel = 64
    self_training_weight: Weight = 0.5
    self_training_pool_size: PoolSize = 2000
    self_training_max_gain: MaxGain = DEFAULT_MAX_GAIN


@register
class FineTune(TransformerMethod):
    """Fine-tune a transformer encoder with a classification head.

    Settings: :class:`FineTuneSettings`; self-training: :mod:`label_pipeline.methods.self_training`.
    """

    name = "finetune"
    Settings = FineTuneSettings

    # ------------------------------------------------------------ params

    def balances_labels(self) -> bool:
        return self.class_weighting == "balanced"

    def _self_training_params(self) -> SelfTrainingParams:
        return SelfTrainingParams(
            rounds=self.self_training_rounds,
            floor=self.self_training_floor,
            per_label=self.self_training_per_label,
            weight=self.self_training_weight,
            pool_size=self.self_training_pool_size,
            max_gain=self.self_training_max_gain,
        )

    # ------------------------------------------------------------ fit

    def fit(self, train: LabelledTexts, valid: LabelledTexts | None, ctx: FitContext) -> FineTune:
        """Train on ``train``, stop early and keep the best checkpoint on ``valid``."""
        valid, start = self._start_fit(train, valid, ctx)
        run_self_training(
            fit_once=lambda rows: self._fit_once(rows, valid, ctx, start),
            predict=self.predict_proba,
            snapshot=lambda: (self.model_, self.tokenizer_, dict(self.history_)),
            restore=self._restore,
            train=train,
            valid=valid,
            ctx=ctx,
            params=self._self_training_params(),
        )
        ctx.info["history"] = self.history_
        return self

    def _restore(self, state: tuple[Any, Any, dict[str, Any]]) -> None:
        self.model_, self.tokenizer_, self.history_ = state

    def _class_weights(self, rows: LabelledTexts) -> np.ndarray | None:
        if self.class_weighting == "none":
            return None
        y = rows.y.astype(np.float64)
        n = len(rows)
        if self.multi_label_:
            pos = y.sum(axis=0)
            # pos_weight = negatives / positives, labels with no positives left at 1
            w = np.where(pos > 0, (n - pos) / np.maximum(pos, 1.0), 1.0)
            return np.clip(w, 1.0, self.max_pos_weight)
        counts = y.sum(axis=0)
        present = counts > 0
        w = np.ones(y.shape[1])
        w[present] = n / (present.sum() * counts[present])
        return w

    def _loss(
        self, logits: Any, targets: Any, weights: Any, class_w: Any, soft: bool = False
    ) -> Any:
        """Mean of row losses weighted by ``weights`` (logits in float32); ``soft``: the
        single-label targets are probabilities rather than one-hot rows."""
        import torch.nn.functional as F

        logits = logits.float()
        if self.multi_label_:
            per = F.binary_cross_entropy_with_logits(
                logits, targets.float(), pos_weight=class_w, reduction="none"
            ).mean(dim=1)
        elif soft:
            # probability targets: -sum_c w_c t_c log p_c (equal to the index form on one-hot rows)
            per = F.cross_entropy(logits, targets, weight=class_w, reduction="none")
        else:
            per = F.cross_entropy(logits, targets.argmax(dim=1), weight=class_w, reduction="none")
        return (per * weights).sum() / weights.sum().clamp(min=1e-8)

    def _train_batch_size(self, n: int) -> int:
        if self.batch_size:
            return int(self.batch_size)
        base = 32 if self.device_.device != "cpu" else 16
        return max(4, min(base, math.ceil(n / 8)))

    def _fit_once(
        self, train: LabelledTexts, valid: LabelledTexts | None, ctx: FitContext, start: Path
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        log = stage_logger()
        seed_everything(ctx.seed)
        dev = self.device_
        id2label = dict(enumerate(self.label_names_))
        extra: dict[str, Any] = {}
        if self.dropout is not None:
            extra["classifier_dropout"] = self.dropout
        with model_loading(quiet=True):  # the classification head is new on purpose
            tokenizer = AutoTokenizer.from_pretrained(str(start))
            model = AutoModelForSequenceClassification.from_pretrained(
                str(start),
                num_labels=len(self.label_names_),
                id2label=id2label,
                label2id={v: k for k, v in id2label.items()},
                problem_type="multi_label_classification"
                if self.multi_label_
                else "single_label_classification",
                ignore_mismatched_sizes=True,
                **extra,
            )
        model.to(dev.device)
        self.model_, self.tokenizer_ = model, tokenizer

        windows = self._windows(tokenizer, train.texts)
        lengths = np.array([sum(len(w) for w in ws) for ws in windows])
        soft = train.soft_y is not None
        y = torch.tensor(train.soft_y if soft else train.y, dtype=torch.float32)
        w = torch.tensor(
            np.ones(len(train)) if train.sample_weight is None else train.sample_weight,
            dtype=torch.float32,
        )
        cw = self._class_weights(train)
        class_w = None if cw is None else torch.tensor(cw, dtype=torch.float32, device=dev.device)

        bs = self._train_batch_size(len(train))
        steps_per_epoch = math.ceil(len(train) / bs)
        total = steps_per_epoch * self.epochs
        head_names = {
            n
            for n, _ in model.named_parameters()
            if not n.startswith(model.base_model_prefix + ".")
        }
        head = [p for n, p in model.named_parameters() if n in head_names]
        body = [p for n, p in model.named_parameters() if n not in head_names]
        optim = torch.optim.AdamW(
            [
                {"params": body, "lr": self.lr},
                {"params": head, "lr": self.head_lr or self.lr},
            ],
            weight_decay=self.weight_decay,
        )
        warm = max(1, int(total * self.warmup_ratio))
        sched = torch.optim.lr_scheduler.LambdaLR(
            optim,
            lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))),
        )
        scaler = torch.amp.GradScaler(
            "cuda", enabled=dev.device == "cuda" and dev.precision == "fp16"
        )
        rng = np.random.default_rng(ctx.seed)

        best: dict[str, Any] | None = None
        best_score: tuple[float, ...] = (-math.inf,)
        history: dict[str, Any] = {"epochs": [], "batch_size": bs, "rows": len(train)}
        bad_epochs = 0
        started = time.time()
        for epoch in range(1, self.epochs + 1):
            model.train()
            losses: list[float] = []
            diverged = None
            for idx in length_grouped_batches(lengths, bs, rng):
                logits = self._forward(windows, idx)
                loss = self._loss(
                    logits, y[idx].to(dev.device), w[idx].to(dev.device), class_w, soft
                )
                if not torch.isfinite(loss):
                    diverged = f"non-finite training loss ({loss.item()}) in epoch {epoch}"
                    break
                optim.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optim)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optim)
                scaler.update()
                sched.step()
                losses.append(float(loss.item()))
            if diverged is not None:
                self._on_divergence(diverged, best, ctx, history)
                break
            fact: dict[str, Any] = {"epoch": epoch, "train_loss": round(float(np.mean(losses)), 5)}
            if valid is None:
                history["epochs"].append(fact)
                continue
            v_loss, v_f1 = self._evaluate(valid, class_w)
            fact.update(valid_loss=round(v_loss, 5), valid_micro_f1=round(v_f1, 4))
            history["epochs"].append(fact)
            if not math.isfinite(v_loss):
                self._on_divergence(
                    f"non-finite validation loss in epoch {epoch}", best, ctx, history
                )
                break
            # micro-F1 ties (common on small valid sets) go to the lower loss
            score = (-v_loss,) if self.monitor == "loss" else (round(v_f1, 6), -v_loss)
            if best is None or score > best_score:
                best_score, bad_epochs = score, 0
                best = {"epoch": epoch, "state": cpu_state(model)}
            else:
                bad_epochs += 1
                if self.patience and bad_epochs >= self.patience:
                    history["stopped_early"] = (
                        f"no better valid {self.monitor} for {bad_epochs} epochs"
                    )
                    break
        if best is not None and "diverged" not in history:
            model.load_state_dict(best["state"])
            history["best_epoch"] = best["epoch"]
        history["seconds"] = round(time.time() - started, 2)
        self.history_ = history
        model.eval()
        log.info(
            "%s: trained on %d rows, best epoch %s, %.1fs",
            self.name,
            len(train),
            history.get("best_epoch", len(history["epochs"])),
            history["seconds"],
        )

    def _on_divergence(
        self, why: str, best: dict[str, Any] | None, ctx: FitContext, history: dict[str, Any]
    ) -> None:
        hint = (
            f"lower train.method_params.{self.name}.lr (now {self.lr}) or head_lr "
            f"(now {self.head_lr}), or check the training rows"
        )
        if best is None:
            raise TrainingDivergedError(
                f"{self.name}: training diverged before any good checkpoint: {why}. Fix: {hint}"
            )
        self.model_.load_state_dict(best["state"])
        history["diverged"] = why
        history["best_epoch"] = best["epoch"]
        msg = f"{why}; training stopped, checkpoint of epoch {best['epoch']} kept ({hint})"
        ctx.info["diverged"] = msg
        stage_logger().warning("%s: %s", self.name, msg)

    def _evaluate(self, valid: LabelledTexts, class_w: Any) -> tuple[float, float]:
        """Validation loss and micro-F1 (accuracy for single-label)."""
        import torch

        from label_pipeline.methods.self_training import valid_score

        logits = torch.tensor(self._logits(valid.texts))
        y = torch.tensor(valid.y, dtype=torch.float32)
        cw = None if class_w is None else class_w.cpu()
        w = torch.ones(len(valid))
        loss = (
            float(self._loss(logits, y, w, cw).item()) if torch.isfinite(logits).all() else math.nan
        )
        return loss, valid_score(self._to_proba(logits.numpy()), valid)

    # ------------------------------------------------------------ predict

    def _logits(self, texts: list[str]) -> np.ndarray:
        import torch

        out = np.zeros((len(texts), len(self.label_names_)), dtype=np.float32)
        if not texts:
            return out
        windows = self._windows(self.tokenizer_, texts)
        bs = int(self.eval_batch_size or self.device_.batch_size)
        if self.truncation == "chunks":  # about as many windows per step as texts otherwise
            bs = max(1, bs // self.max_chunks)
        self.model_.eval()
        with torch.inference_mode():
            for idx in sorted_batches([sum(len(w) for w in ws) for ws in windows], bs):
                out[idx] = self._forward(windows, idx).float().cpu().numpy()
        return out

    def _windows(self, tokenizer: Any, texts: Sequence[str]) -> list[list[list[int]]]:
        """Each text's input ids as the model reads them: one window (``head``,
        ``head_tail``) or up to ``max_chunks`` (``chunks``)."""
        if self.truncation == "chunks":
            return encoder_windows(tokenizer, texts, self.max_length, self.max_chunks)
        ids = encoder_inputs(tokenizer, texts, self.max_length, self.truncation, self.head_fraction)
        return [[x] for x in ids]

    def _forward(self, windows: list[list[list[int]]], idx: np.ndarray) -> Any:
        """Logits of the texts ``idx`` (a tensor, one row per text): every window of every
        text in one padded batch, the windows of a text pooled by ``chunk_pooling``."""
        import torch

        flat = [w for i in idx for w in windows[i]]
        batch = self.tokenizer_.pad({"input_ids": flat}, return_tensors="pt")
        batch = {k: v.to(self.device_.device) for k, v in batch.items()}
        with autocast(self.device_):
            logits = self.model_(**batch).logits
        if len(flat) == len(idx):
            return logits  # one window per text
        logits = logits.float()
        owner = torch.tensor(
            [j for j, i in enumerate(idx) for _ in windows[i]], device=logits.device
        )
        owner = owner.unsqueeze(1).expand_as(logits)
        pooled = torch.zeros(len(idx), logits.shape[1], device=logits.device)
        reduce = "amax" if self.chunk_pooling == "max" else "mean"
        return pooled.scatter_reduce(0, owner, logits, reduce=reduce, include_self=False)

    def _to_proba(self, logits: np.ndarray) -> np.ndarray:
        return logits_to_proba(logits, self.multi_label_)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Probabilities (n_texts, n_labels): sigmoid (multi-label) or softmax (single-label)."""
        return checked_proba(self._to_proba(self._logits(list(texts))), self.name)

    # ------------------------------------------------------------ persistence

    def save(self, path: Path) -> None:
        """``path/model/`` (weights, config, tokenizer) and ``path/method.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model_.save_pretrained(str(path / "model"))
        self.tokenizer_.save_pretrained(str(path / "model"))
        write_method_meta(self, path)

    @classmethod
    def load(cls, path: Path, device: DeviceChoice | None = None) -> FineTune:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        self = cls._start_load(path, device)
        with model_loading():
            self.tokenizer_ = AutoTokenizer.from_pretrained(str(path / "model"))
            self.model_ = AutoModelForSequenceClassification.from_pretrained(str(path / "model"))
        self.model_.to(self.device_.device).eval()
        return self
