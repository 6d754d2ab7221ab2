"""``prototype``: a sentence encoder fine-tuned with a cosine head that starts from the label
names, then self-trained on the unlabeled pool.

The head holds one vector per label, initialised with the encoder's embedding of the label's
text (its name, or a description from ``label_texts``, through ``label_template``). A text's
score for a label is the cosine of its mean-pooled embedding with that vector divided by
``temperature``; single-label tasks take the softmax, multi-label tasks the sigmoid after a
learned per-label bias. Before any training the model is therefore the embedding zero-shot
classifier (:mod:`label_pipeline.zeroshot.embedding`), and the few labelled rows move the encoder
and the label vectors from there instead of from a random head: with 8-64 rows per label this
keeps what the label names already tell.

Self-training (``self_training_rounds``, on by default when the pool is given: ``auto`` runs
three rounds for a single-label task and two for a multi-label one): each round the
model labels up to ``self_training_pool_size`` pool rows, takes the ``per_label * round`` rows
ranked highest for each label it predicts (no probability floor for single-label, so every
label gets rows even while its probabilities are low; multi-label rows need >= 0.5), and
continues training on the labelled rows plus those rows at weight ``self_training_weight`` for
``self_training_epochs`` epochs. The pseudo-labels are redrawn from the current model every
round. Which model is kept (``self_training_keep``): ``best_valid``, the one scoring best on the
validation split (the fit on labelled rows or any round; ties go to the later one); ``last``, the
model after the last round; ``auto`` (default), ``best_valid`` when the validation split has at
least ``AUTO_VALID_ROWS`` rows and ``last`` otherwise: with a few rows per label the validation
split cannot tell rounds apart (with 48 rows one row is 2 accuracy points), so its score per
round is recorded, not obeyed. When the model is chosen on valid, the rounds stop once
``self_training_patience`` rounds in a row score below the best (a round that would not be kept
is not worth its minutes). A run that cannot win is not trained again: when the valid score
after the labelled rows plus ``self_training_max_gain`` stays below what the slice's other runs
need to be chosen or averaged (``FitContext.valid_bar``), no round runs
(``ctx.info["self_training_skipped"]`` says why). Facts go to ``ctx.info["self_training"]``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from label_pipeline.devices import DeviceChoice
from label_pipeline.errors import ConfigError, TrainingDivergedError
from label_pipeline.methods.base import FitContext, LabelledTexts, MethodSettings, register
from label_pipeline.methods.contrastive import _mean_pool, mean_pooled_embeddings
from label_pipeline.methods.self_training import (
    DEFAULT_MAX_GAIN,
    MaxGain,
    PerLabel,
    PoolSize,
    Rounds,
    Weight,
    cannot_win,
    reachable_score,
    sample_pool,
    select_confident,
    with_pseudo_rows,
)
from label_pipeline.methods.transformer import (
    START_ENCODER_HELP,
    TransformerMethod,
    autocast,
    checked_proba,
    cpu_state,
    length_grouped_batches,
    logits_to_proba,
    seed_everything,
    write_method_meta,
)
from label_pipeline.progress import stage_logger
from label_pipeline.registry import setting_error

HEAD_FILE = "head.npz"
AUTO_VALID_ROWS = 200  # self_training_keep="auto": fewest validation rows to choose a round by
#: ``self_training_rounds: auto``. A third round lifted single-label test accuracy on NLBSE'24
#: in all six runs (three seeds: mean +1.8 points at 8 rows per class, +3.6 at 64) and emotion
#: at 64 rows per label (+1.2), moved emotion at 8 by -0.5 (three seeds), and lowered
#: multi-label micro-F1 on the embedded data (-3.4 / +2.1 / -1.9 at 8 / 32 / 128 rows) for
#: 42-48 % of self-training's time (docs/benchmarks.md, "How many self-training rounds").
AUTO_ROUNDS = {"single": 3, "multi": 2}


class PrototypeSettings(MethodSettings):
    """Settings of ``prototype`` (``train.method_params.prototype``)."""

    epochs: int = Field(8, ge=1, description="passes over the labelled rows before self-training")
    lr: float = Field(
        2e-5, gt=0.0, description="encoder learning rate (constant after a short warm-up)"
    )
    head_lr: float = Field(
        1e-3, gt=0.0, description="learning rate of the label vectors and biases"
    )
    temperature: float = Field(
        0.05,
        gt=0.0,
        description="cosine temperature (0.05: cosines of competing labels differ by hundredths)",
    )
    batch_size: int = Field(16, ge=1, description="training rows per step")
    max_length: int = Field(128, ge=8, description="tokens per text")
    weight_decay: float = Field(0.01, description="AdamW weight decay of the encoder")
    label_template: str = Field(
        "{}", description="text around each label text before embedding, with ``{}``"
    )
    label_texts: dict[str, str] | None = Field(
        None,
        description="optional text per label name (e.g. a description); default the name",
    )
    class_weighting: Literal["none", "balanced"] = Field(
        "none", description="``none`` or ``balanced`` (inverse label frequency in the loss)"
    )
    eval_batch_size: int | None = Field(
        None, description="texts per inference step; None = the device's batch size"
    )
    self_training_rounds: Rounds | Literal["auto"] = Field(
        "auto",
        description="rounds of self-training on the unlabeled pool (0 = off); ``auto``: "
        f"{AUTO_ROUNDS['single']} for a single-label task, {AUTO_ROUNDS['multi']} for a "
        "multi-label one",
    )
    self_training_per_label: PerLabel = Field(
        64,
        description="pseudo-labelled rows per label in round 1 (``r`` times that in round ``r``)",
    )
    self_training_weight: Weight = 0.5
    self_training_epochs: int = Field(
        3, ge=1, description="epochs per round over gold plus pseudo rows"
    )
    self_training_pool_size: PoolSize = 4000
    self_training_max_gain: MaxGain = DEFAULT_MAX_GAIN
    self_training_keep: Literal["auto", "last", "best_valid"] = Field(
        "auto",
        description="which model is kept: ``best_valid`` (the best on the validation split), "
        "``last`` (after the last round), or ``auto`` (``best_valid`` when the validation split "
        f"has at least {AUTO_VALID_ROWS} rows, else ``last``)",
    )
    self_training_patience: int = Field(
        1,
        ge=0,
        description="when the kept model is chosen on valid (``best_valid``), self-training "
        "stops after this many rounds in a row that score below the best so far (their rounds "
        "would not be kept); 0 = every round runs",
    )
    encoder: Literal["auto", "base", "adapted"] = Field(
        "base",
        description=f"{START_ENCODER_HELP}. Masked-LM adaptation moves the sentence "
        "embeddings the label-name head starts from: from the base encoder, test accuracy "
        "after three self-training rounds was higher in all six paired fits on NLBSE'24, and "
        "micro-F1 on the embedded multi-label data 1.9 points higher on average over three "
        'slices (docs/benchmarks.md, "Which encoder `prototype` starts from")',
    )

    @field_validator("label_template")
    @classmethod
    def _has_slot(cls, value: str) -> str:
        if "{}" not in value:
            raise setting_error(f"label_template={value!r} needs a {{}}")
        return value


@register
class Prototype(TransformerMethod):
    """Label-name-initialised cosine head, fine-tuned end to end, then self-trained.

    Settings: :class:`PrototypeSettings`.
    """

    name = "prototype"
    Settings = PrototypeSettings
    reads_label_names = True  # each label starts from its name's embedding

    def balances_labels(self) -> bool:
        """``class_weighting="balanced"``; otherwise the gold rows' label frequencies stand
        (self-training draws as many pseudo-labelled rows for every label, so it leaves a
        balanced training set balanced)."""
        return self.class_weighting == "balanced"

    def _check_labels(self, label_names: list[str]) -> None:
        unknown = sorted(set(self.label_texts or {}) - set(label_names))
        if unknown:
            raise ConfigError(
                f"train.method_params.{self.name}.label_texts names labels {unknown} the data "
                f"does not have; labels: {label_names}"
            )

    # ------------------------------------------------------------ fit

    def fit(self, train: LabelledTexts, valid: LabelledTexts | None, ctx: FitContext) -> Prototype:
        """Fine-tune on ``train``, self-train on ``ctx.unlabeled_texts``, keep the best on
        ``valid``."""
        import torch

        self._check_labels(list(train.label_names))
        valid, start = self._start_fit(train, valid, ctx)
        log = stage_logger()
        seed_everything(ctx.seed)
        # quiet: an adapted encoder's masked-LM head and the pooler are unused here
        self._load_encoder(start, quiet=True)
        texts = [
            self.label_template.format((self.label_texts or {}).get(n, n))
            for n in self.label_names_
        ]
        w0 = self._embed(texts)
        self.label_vectors_ = torch.nn.Parameter(torch.tensor(w0, device=self.device_.device))
        bias = np.zeros(len(self.label_names_), dtype=np.float32)
        if self.multi_label_:
            # start each label's sigmoid at its mean training cosine: above-average texts say yes
            cos = self._embed(list(train.texts)) @ w0.T
            bias[:] = -cos.mean(axis=0) / self.temperature
        self.bias_ = torch.nn.Parameter(torch.tensor(bias, device=self.device_.device))
        self._optim = torch.optim.AdamW(
            [
                {
                    "params": self.encoder_.parameters(),
                    "lr": self.lr,
                    "weight_decay": self.weight_decay,
                },
                {
                    "params": [self.label_vectors_, self.bias_],
                    "lr": self.head_lr,
                    "weight_decay": 0.0,
                },
            ]
        )
        self._step = 0
        self._base_lr = [g["lr"] for g in self._optim.param_groups]
        self._rng = np.random.default_rng(ctx.seed)
        history: dict[str, Any] = {"rows": len(train), "label_texts": texts, "epochs": []}
        self.history_ = history
        started = time.time()
        zero_shot = self._score(valid) if valid is not None else None
        if zero_shot is not None:
            history["valid_zero_shot"] = round(zero_shot, 4)
        self._train(train, self.epochs, "labelled", ctx)
        best_score = last_score = self._score(valid) if valid is not None else None
        keep = self.self_training_keep
        if keep == "auto":
            keep = "best_valid" if valid is not None and len(valid) >= AUTO_VALID_ROWS else "last"
        history["self_training_keep"] = keep
        keep_best = valid is not None and keep == "best_valid"
        best_state = self._state() if keep_best else None
        history["valid_after_labelled"] = None if best_score is None else round(best_score, 4)

        pool = [t for t in (ctx.unlabeled_texts or []) if t and t.strip()]
        n_rounds = self.rounds()
        history["self_training_rounds"] = n_rounds
        if n_rounds > 0 and not (pool and self._cannot_win(valid, best_score, ctx)):
            rounds: list[dict[str, Any]] = []
            ctx.info["self_training"] = rounds
            pool = sample_pool(pool, train.texts, self.self_training_pool_size, self._rng)
            if not pool:
                ctx.info["self_training_skipped"] = "no unlabeled texts were given"
                log.warning("%s: self-training skipped: no unlabeled texts were given", self.name)
            worse = 0  # rounds in a row below the best valid score
            for r in range(1, (n_rounds if pool else 0) + 1):
                proba = self.predict_proba(pool)
                floor = 0.5 if self.multi_label_ else 0.0
                idx, y = select_confident(
                    proba, self.multi_label_, floor, self.self_training_per_label * r
                )
                fact: dict[str, Any] = {"round": r, "pool": len(pool), "added": int(len(idx))}
                if len(idx) == 0:
                    fact["stopped"] = "no pool row is predicted to carry a label"
                    rounds.append(fact)
                    break
                fact["added_per_label"] = {
                    n: int(c) for n, c in zip(self.label_names_, y.sum(axis=0), strict=True)
                }
                rows = with_pseudo_rows(train, [pool[i] for i in idx], y, self.self_training_weight)
                self._train(rows, self.self_training_epochs, f"self-training round {r}", ctx)
                if valid is not None:
                    score = last_score = self._score(valid)
                    fact["valid"] = round(score, 4)
                    worse = worse + 1 if score < best_score else 0
                    if score >= best_score:
                        best_score = score
                        if keep_best:
                            best_state = self._state()
                        fact["best_so_far"] = True
                rounds.append(fact)
                log.info(
                    "%s: self-training round %d, %d pseudo-labelled rows, valid %s",
                    self.name,
                    r,
                    len(idx),
                    fact.get("valid"),
                )
                patience = self.self_training_patience
                if keep_best and patience and worse >= patience and r < n_rounds:
                    fact["stopped"] = (
                        f"valid below the best ({round(best_score, 4)}) for {worse} round(s) "
                        "in a row (self_training_patience)"
                    )
                    log.info("%s: self-training stopped: %s", self.name, fact["stopped"])
                    break
        if best_state is not None:
            self._load_state(best_state)
        history["valid_best"] = None if best_score is None else round(best_score, 4)
        final = best_score if best_state is not None else last_score
        history["valid_final"] = None if final is None else round(final, 4)
        history["seconds"] = round(time.time() - started, 2)
        self.encoder_.eval()
        del self._optim, self._base_lr
        ctx.info["history"] = history
        return self

    def _class_weights(self, rows: LabelledTexts) -> Any:
        import torch

        if self.class_weighting == "none":
            return None
        counts = rows.y.sum(axis=0).astype(np.float64)
        w = np.where(counts > 0, len(rows) / (len(counts) * np.maximum(counts, 1.0)), 1.0)
        return torch.tensor(w, dtype=torch.float32, device=self.device_.device)

    def _logits(self, emb: Any) -> Any:
        import torch

        vec = torch.nn.functional.normalize(self.label_vectors_.float(), p=2, dim=1)
        return emb @ vec.T / self.temperature + self.bias_

    def _train(self, rows: LabelledTexts, epochs: int, what: str, ctx: FitContext) -> None:
        import torch
        import torch.nn.functional as F

        dev = self.device_
        ids = self.tokenizer_(list(rows.texts), truncation=True, max_length=self.max_length)
        ids = ids["input_ids"]
        y = torch.tensor(rows.y, dtype=torch.float32)
        w = torch.tensor(
            np.ones(len(rows)) if rows.sample_weight is None else rows.sample_weight,
            dtype=torch.float32,
        )
        cw = self._class_weights(rows)
        warm = 10
        params = [p for g in self._optim.param_groups for p in g["params"]]
        started = time.time()
        for epoch in range(1, epochs + 1):
            self.encoder_.train()
            losses = []
            for idx in length_grouped_batches([len(x) for x in ids], self.batch_size, self._rng):
                batch = self.tokenizer_.pad(
                    {"input_ids": [ids[i] for i in idx]}, return_tensors="pt"
                )
                batch = {k: v.to(dev.device) for k, v in batch.items()}
                with autocast(dev):
                    hidden = self.encoder_(**batch).last_hidden_state
                logits = self._logits(_mean_pool(hidden, batch["attention_mask"]))
                target = y[idx].to(dev.device)
                if self.multi_label_:
                    per = F.binary_cross_entropy_with_logits(
                        logits, target, pos_weight=cw, reduction="none"
                    ).mean(dim=1)
                else:
                    per = F.cross_entropy(logits, target.argmax(dim=1), weight=cw, reduction="none")
                wi = w[idx].to(dev.device)
                loss = (per * wi).sum() / wi.sum().clamp(min=1e-8)
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(
                        f"{self.name}: non-finite training loss in {what}, epoch {epoch}; lower "
                        f"train.method_params.{self.name}.lr (now {self.lr}) or head_lr "
                        f"(now {self.head_lr})"
                    )
                self._step += 1
                for g, lr in zip(self._optim.param_groups, self._base_lr, strict=True):
                    g["lr"] = lr * min(1.0, self._step / warm)
                self._optim.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                self._optim.step()
                losses.append(float(loss.item()))
            self.history_["epochs"].append(
                {
                    "stage": what,
                    "epoch": epoch,
                    "rows": len(rows),
                    "loss": round(float(np.mean(losses)), 5),
                }
            )
        stage_logger().info(
            "%s: %s, %d rows x %d epochs, %.1fs",
            self.name,
            what,
            len(rows),
            epochs,
            time.time() - started,
        )

    def _cannot_win(
        self, valid: LabelledTexts | None, score: float | None, ctx: FitContext
    ) -> bool:
        """Whether self-training is skipped (see ``self_training.cannot_win``)."""
        if valid is None or score is None or ctx.valid_bar is None:
            return False
        return cannot_win(score, ctx, self.self_training_max_gain, self.name)

    def rounds(self) -> int:
        """The self-training rounds of this fit: ``self_training_rounds``, with ``auto``
        resolved by the task (:data:`AUTO_ROUNDS`; known once ``fit`` has read the rows)."""
        if self.self_training_rounds != "auto":
            return int(self.self_training_rounds)
        return AUTO_ROUNDS["multi" if self.multi_label_ else "single"]

    def _score(self, valid: LabelledTexts) -> float:
        """Accuracy (single-label); multi-label, micro-F1 with per-label thresholds tuned on
        valid (``reachable_score``), as the train stage decides: at 0.5 on the raw
        probabilities the embedded data's zero-shot head scored .29, tuned .49."""
        return reachable_score(self.predict_proba(list(valid.texts)), valid)

    def _state(self) -> dict[str, Any]:
        state = cpu_state(self.encoder_)
        state["__label_vectors__"] = self.label_vectors_.detach().to("cpu", copy=True)
        state["__bias__"] = self.bias_.detach().to("cpu", copy=True)
        return state

    def _load_state(self, state: dict[str, Any]) -> None:
        import torch

        state = dict(state)
        with torch.no_grad():
            self.label_vectors_.copy_(state.pop("__label_vectors__"))
            self.bias_.copy_(state.pop("__bias__"))
        self.encoder_.load_state_dict(state)

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
        """Probabilities (n_texts, n_labels): sigmoid (multi-label) or softmax (single-label)."""
        import torch

        texts = list(texts)
        k = len(self.label_names_)
        if not texts:
            return np.zeros((0, k), dtype=np.float64)
        emb = torch.tensor(self._embed(texts), device=self.device_.device)
        with torch.no_grad():
            logits = self._logits(emb).double().cpu().numpy()
        return checked_proba(logits_to_proba(logits, self.multi_label_), self.name)

    # ------------------------------------------------------------ persistence

    def save(self, path: Path) -> None:
        """``path/encoder/`` (weights, tokenizer), ``path/head.npz``, ``path/method.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self._save_encoder(path / "encoder")
        np.savez(
            path / HEAD_FILE,
            label_vectors=self.label_vectors_.detach().cpu().numpy(),
            bias=self.bias_.detach().cpu().numpy(),
        )
        write_method_meta(self, path)

    @classmethod
    def load(cls, path: Path, device: DeviceChoice | None = None) -> Prototype:
        import torch

        path = Path(path)
        self = cls._start_load(path, device)
        self._load_encoder(path / "encoder")
        self.encoder_.eval()
        head = np.load(path / HEAD_FILE)
        self.label_vectors_ = torch.tensor(head["label_vectors"], device=self.device_.device)
        self.bias_ = torch.tensor(head["bias"], device=self.device_.device)
        return self
