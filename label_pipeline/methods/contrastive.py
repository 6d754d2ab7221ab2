"""``setfit``: SetFit-style contrastive warm-up of the sentence encoder, then a light head.

1. Pairs of texts sharing a label (anchor, positive) train the encoder with in-batch negatives
   (multiple-negatives ranking loss: each anchor must pick its own positive among every
   positive of the batch). Batches come from :func:`no_shared_label_batches`, so no two pairs
   in a batch share a label: otherwise a same-label text would be pushed away as a negative.
2. Head: logistic regression on the warmed encoder's mean-pooled, L2-normalised embeddings
   (``head="logistic"``, one-vs-rest for multi-label), or the warmed encoder fine-tuned end to
   end by :class:`~label_pipeline.methods.finetune.FineTune` (``head="finetune"``).

With a handful of labelled rows per class the warm-up usually beats plain fine-tuning.
Self-training on the unlabeled pool: ``self_training_rounds > 0``.
"""

from __future__ import annotations

import math
import pickle
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, ValidationError, ValidationInfo, field_validator

from label_pipeline.devices import DeviceChoice
from label_pipeline.errors import ConfigError, TrainingDivergedError
from label_pipeline.methods.base import FitContext, LabelledTexts, MethodSettings, register
from label_pipeline.methods.finetune import FineTune
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
from label_pipeline.methods.transformer import (
    TransformerMethod,
    autocast,
    inference_batches,
    seed_everything,
    write_method_meta,
)
from label_pipeline.progress import stage_logger
from label_pipeline.registry import relocated, validate_settings


def no_shared_label_batches(
    label_sets: Sequence[Sequence[Any] | set[Any] | frozenset[Any]],
    batch_size: int,
    seed: int = 0,
) -> list[list[int]]:
    """Split items into batches in which no two items share a label.

    Args:
        label_sets: one collection of labels per item (for a pair: the union of both texts'
            labels). Items with no label conflict with nothing.
        batch_size: most items per batch.
        seed: shuffling seed (the batches differ per seed, each item appears exactly once).

    Returns:
        Lists of item indices covering every item once; first-fit over a shuffled order, so
        batches fill up as far as the label sets allow.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(label_sets))
    batches: list[list[int]] = []
    used: list[set[Any]] = []
    open_ids: list[int] = []  # batches that still have room
    for i in order.tolist():
        labels = set(label_sets[i])
        placed = False
        for pos, b in enumerate(open_ids):
            if used[b].isdisjoint(labels):
                batches[b].append(i)
                used[b] |= labels
                if len(batches[b]) >= batch_size:
                    open_ids.pop(pos)
                placed = True
                break
        if not placed:
            batches.append([i])
            used.append(set(labels))
            if batch_size > 1:
                open_ids.append(len(batches) - 1)
    rng.shuffle(batches)
    return batches


def make_pairs(
    y: np.ndarray, pairs_per_row: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """(anchor, positive) row pairs: each labelled row anchors ``pairs_per_row`` pairs with a
    different row sharing at least one label (rows without such a partner are skipped)."""
    y = np.asarray(y).astype(bool)
    by_label = [np.flatnonzero(y[:, j]) for j in range(y.shape[1])]
    pairs: list[tuple[int, int]] = []
    for i in range(len(y)):
        labels = np.flatnonzero(y[i])
        if len(labels) == 0:
            continue
        partners = np.unique(np.concatenate([by_label[j] for j in labels]))
        partners = partners[partners != i]
        if len(partners) == 0:
            continue
        for p in rng.choice(partners, size=pairs_per_row, replace=len(partners) < pairs_per_row):
            pairs.append((i, int(p)))
    return pairs


def _mean_pool(hidden: Any, mask: Any) -> Any:
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled.float(), p=2, dim=1)


def mean_pooled_embeddings(
    encoder: Any,
    tokenizer: Any,
    texts: Sequence[str],
    device: DeviceChoice,
    batch_size: int | None,
    max_length: int,
) -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings (n_texts, hidden_size) of ``texts`` from a loaded
    encoder: length-sorted batches, mixed precision on GPUs."""
    import torch

    bs = int(batch_size or device.batch_size)
    out = np.zeros((len(texts), int(encoder.config.hidden_size)), dtype=np.float32)
    if not len(texts):
        return out
    encoder.eval()
    with torch.inference_mode():
        for idx, batch in inference_batches(tokenizer, texts, max_length, bs, device):
            with autocast(device):
                hidden = encoder(**batch).last_hidden_state
            out[idx] = _mean_pool(hidden, batch["attention_mask"]).cpu().numpy()
    return out


class SetFitSettings(MethodSettings):
    """Settings of ``setfit`` (``train.method_params.setfit``)."""

    pairs_per_row: int = Field(
        10,
        ge=0,
        description="positive pairs anchored on each training row per epoch (0 = no warm-up)",
    )
    epochs: int = Field(
        1,
        ge=0,
        description="contrastive epochs (fresh pairs and batches each epoch; 0 = no warm-up)",
    )
    batch_size: int = Field(
        16,
        ge=2,
        description="most pairs per batch, at least 2 (in-batch negatives; label sets cap it: a "
        "single-label task with k labels holds at most k pairs)",
    )
    lr: float = Field(2e-5, gt=0.0, description="encoder learning rate for the warm-up")
    scale: float = Field(
        20.0, description="similarity scale (inverse temperature) of the ranking loss"
    )
    symmetric: bool = Field(True, description="also rank anchors for each positive")
    max_length: int = Field(128, description="tokens per text")
    head: Literal["logistic", "finetune"] = Field(
        "logistic",
        description="``logistic`` (logistic regression on embeddings) or ``finetune`` "
        "(end-to-end fine-tuning of the warmed encoder with ``finetune_params``)",
    )
    head_c: float = Field(
        10.0, gt=0.0, description="inverse regularisation strength of the logistic head"
    )
    class_weighting: Literal["balanced", "none"] = Field(
        "balanced", description="``balanced`` or ``none`` for the logistic head"
    )
    finetune_params: dict[str, Any] | None = Field(
        None,
        description="settings of ``finetune`` (see its section) for ``head: finetune``",
    )
    eval_batch_size: int | None = Field(
        None, description="texts per inference step; None = the device's batch size"
    )
    self_training_rounds: Rounds = 0
    self_training_floor: Floor = 0.9
    self_training_per_label: PerLabel = 64
    self_training_weight: Weight = 0.5
    self_training_pool_size: PoolSize = 2000
    self_training_max_gain: MaxGain = DEFAULT_MAX_GAIN

    @field_validator("finetune_params")
    @classmethod
    def _finetune_settings(
        cls, value: dict[str, Any] | None, info: ValidationInfo
    ) -> dict[str, Any] | None:
        try:
            validate_settings(FineTune.Settings, value, info.context)
        except ValidationError as exc:
            raise ValidationError.from_exception_data(cls.__name__, relocated(exc)) from None
        return value


@register
class SetFit(TransformerMethod):
    """Contrastive warm-up of the encoder on same-label pairs, then a head.

    Settings: :class:`SetFitSettings`.
    """

    name = "setfit"
    Settings = SetFitSettings

    def balances_labels(self) -> bool:
        """The head's weighting: the fine-tuned head's ``class_weighting`` or the logistic's."""
        if self.head == "finetune":
            return FineTune(**(self.finetune_params or {})).balances_labels()
        return self.class_weighting == "balanced"

    def _self_training_params(self) -> SelfTrainingParams:
        return SelfTrainingParams(
            self.self_training_rounds,
            self.self_training_floor,
            self.self_training_per_label,
            self.self_training_weight,
            self.self_training_pool_size,
            self.self_training_max_gain,
        )

    # ------------------------------------------------------------ fit

    def fit(self, train: LabelledTexts, valid: LabelledTexts | None, ctx: FitContext) -> SetFit:
        """Warm the encoder up on ``train`` pairs, then fit the head (``valid``: the end-to-end
        head's early stopping and the self-training check)."""
        valid, start = self._start_fit(train, valid, ctx)
        run_self_training(
            fit_once=lambda rows: self._fit_once(rows, valid, ctx, start),
            predict=self.predict_proba,
            snapshot=lambda: dict(self.__dict__),
            restore=self.__dict__.update,
            train=train,
            valid=valid,
            ctx=ctx,
            params=self._self_training_params(),
        )
        ctx.info["history"] = self.history_
        return self

    def _fit_once(
        self, train: LabelledTexts, valid: LabelledTexts | None, ctx: FitContext, start: Path
    ) -> None:
        seed_everything(ctx.seed)
        # quiet: an adapted encoder's masked-LM head and the pooler are unused here
        self._load_encoder(start, quiet=True)
        encoder, tokenizer = self.encoder_, self.tokenizer_
        self.history_ = {"rows": len(train), "warmup": self._warm_up(train, ctx)}
        self.finetuned_ = None
        self.head_ = None
        if self.head == "finetune":
            with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:
                encoder.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
                sub = FitContext(
                    device=self.device_, seed=ctx.seed, encoder=tmp, work_dir=ctx.work_dir
                )
                ft = FineTune(**(self.finetune_params or {}))
                ft.fit(train, valid, sub)
            self.finetuned_ = ft
            self.encoder_ = None  # the fine-tuned model carries the encoder
            self.history_["finetune"] = ft.history_
            return
        self._fit_logistic(train)

    def _warm_up(self, train: LabelledTexts, ctx: FitContext) -> dict[str, Any]:
        import torch

        log = stage_logger()
        rng = np.random.default_rng(ctx.seed)
        texts = list(train.texts)
        enc = self.tokenizer_(texts, truncation=True, max_length=self.max_length)["input_ids"]
        label_sets = [set(np.flatnonzero(row).tolist()) for row in train.y]
        facts: dict[str, Any] = {"epochs": [], "pairs": 0, "steps": 0}
        if self.epochs == 0 or self.pairs_per_row == 0:
            return facts
        optim = torch.optim.AdamW(self.encoder_.parameters(), lr=self.lr, weight_decay=0.01)
        dev = self.device_
        started = time.time()
        good_state = None
        for epoch in range(1, self.epochs + 1):
            pairs = make_pairs(train.y, self.pairs_per_row, rng)
            if not pairs:
                facts["skipped"] = "no two training rows share a label"
                log.warning("%s: contrastive warm-up skipped: no two rows share a label", self.name)
                break
            sets = [label_sets[a] | label_sets[p] for a, p in pairs]
            batches = [
                b
                for b in no_shared_label_batches(
                    sets, self.batch_size, seed=int(rng.integers(2**31))
                )
                if len(b) >= 2  # a lone pair has no negative to learn from
            ]
            total = len(batches)
            warm = max(1, total // 10)
            sched = torch.optim.lr_scheduler.LambdaLR(
                optim,
                lambda s, t=total, w=warm: min((s + 1) / w, max(0.0, (t - s) / max(1, t - w))),
            )
            self.encoder_.train()
            losses: list[float] = []
            for b in batches:
                a_ids = [enc[pairs[i][0]] for i in b]
                p_ids = [enc[pairs[i][1]] for i in b]
                batch = self.tokenizer_.pad({"input_ids": a_ids + p_ids}, return_tensors="pt")
                batch = {k: v.to(dev.device) for k, v in batch.items()}
                with autocast(dev):
                    hidden = self.encoder_(**batch).last_hidden_state
                emb = _mean_pool(hidden, batch["attention_mask"])
                a, p = emb[: len(b)], emb[len(b) :]
                scores = a @ p.T * self.scale
                target = torch.arange(len(b), device=scores.device)
                loss = torch.nn.functional.cross_entropy(scores, target)
                if self.symmetric:
                    loss = (loss + torch.nn.functional.cross_entropy(scores.T, target)) / 2
                if not torch.isfinite(loss):
                    why = f"non-finite contrastive loss in epoch {epoch}"
                    if good_state is None and epoch == 1 and not losses:
                        raise TrainingDivergedError(
                            f"{self.name}: {why} at the first step; lower "
                            f"train.method_params.{self.name}.lr (now {self.lr})"
                        )
                    if good_state is not None:
                        self.encoder_.load_state_dict(good_state)
                    facts["diverged"] = why
                    ctx.info["diverged"] = (
                        f"{why}; warm-up stopped, encoder of the previous epoch kept"
                    )
                    log.warning("%s: %s", self.name, ctx.info["diverged"])
                    return facts
                optim.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.encoder_.parameters(), 1.0)
                optim.step()
                sched.step()
                losses.append(float(loss.item()))
            good_state = {k: v.detach().clone() for k, v in self.encoder_.state_dict().items()}
            facts["pairs"] += len(pairs)
            facts["steps"] += len(batches)
            facts["epochs"].append(
                {"epoch": epoch, "loss": round(float(np.mean(losses)) if losses else math.nan, 5)}
            )
        facts["seconds"] = round(time.time() - started, 2)
        self.encoder_.eval()
        return facts

    def _fit_logistic(self, train: LabelledTexts) -> None:
        from sklearn.linear_model import LogisticRegression

        x = self._embed(list(train.texts))
        w = None if train.sample_weight is None else np.asarray(train.sample_weight, dtype=float)
        cw = "balanced" if self.class_weighting == "balanced" else None

        def fit_one(target: np.ndarray) -> LogisticRegression:
            return LogisticRegression(C=self.head_c, class_weight=cw, max_iter=2000).fit(
                x, target, sample_weight=w
            )

        self.constant_: dict[int, float] = {}
        if self.multi_label_:
            # one binary head per label; a label with one class in the slice is a constant
            self.head_ = []
            for j in range(train.y.shape[1]):
                col = train.y[:, j]
                if col.min() == col.max():
                    self.constant_[j] = float(col[0])
                    self.head_.append(None)
                else:
                    self.head_.append(fit_one(col))
            return
        yi = train.y_index
        if len(np.unique(yi)) < 2:
            self.head_, self.constant_ = None, {int(yi[0]): 1.0}
            return
        self.head_ = fit_one(yi)

    # ------------------------------------------------------------ predict

    def _embed(self, texts: list[str]) -> np.ndarray:
        return mean_pooled_embeddings(
            self.encoder_,
            self.tokenizer_,
            texts,
            self.device_,
            self.eval_batch_size,
            self.max_length,
        )

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Probabilities (n_texts, n_labels): per-label sigmoid-style (multi-label) or softmax."""
        texts = list(texts)
        if self.finetuned_ is not None:
            return self.finetuned_.predict_proba(texts)
        k = len(self.label_names_)
        proba = np.zeros((len(texts), k), dtype=np.float64)
        if not texts:
            return proba
        x = self._embed(texts)
        if self.multi_label_:
            for j, head in enumerate(self.head_):
                if head is None:
                    proba[:, j] = self.constant_[j]
                else:
                    proba[:, j] = head.predict_proba(x)[:, list(head.classes_).index(1)]
        elif self.head_ is None:
            proba[:, next(iter(self.constant_))] = 1.0
        else:
            proba[:, self.head_.classes_] = self.head_.predict_proba(x)
        if not np.isfinite(proba).all():
            raise TrainingDivergedError(f"{self.name}: non-finite probabilities; retrain it")
        return proba

    # ------------------------------------------------------------ persistence

    def save(self, path: Path) -> None:
        """``path/encoder/`` or ``path/finetune/``, ``path/head.pkl``, ``path/method.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.finetuned_ is not None:
            self.finetuned_.save(path / "finetune")
        else:
            self._save_encoder(path / "encoder")
            state = {"head": self.head_, "constant": self.constant_}
            with open(path / "head.pkl", "wb") as fh:
                pickle.dump(state, fh)
        write_method_meta(self, path)

    @classmethod
    def load(cls, path: Path, device: DeviceChoice | None = None) -> SetFit:
        path = Path(path)
        self = cls._start_load(path, device)
        self.finetuned_ = None
        if (path / "finetune").is_dir():
            self.finetuned_ = FineTune.load(path / "finetune", device=self.device_)
            self.encoder_ = self.tokenizer_ = self.head_ = None
            return self
        self._load_encoder(path / "encoder")
        self.encoder_.eval()
        with open(path / "head.pkl", "rb") as fh:
            state = pickle.load(fh)
        self.head_, self.constant_ = state["head"], state["constant"]
        return self
