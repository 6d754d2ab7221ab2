"""The `adapt` stage: continue pre-training the encoder as a masked LM on the dataset's text.

Domain-adaptive pre-training: the configured encoder (hub id, local directory or bundled
copy, through ``label_pipeline.models.resolve_model``) is trained with the standard masked-LM
objective (15% of the tokens masked, optionally whole words) on the unlabeled pool plus the
training texts. Valid and test texts never enter training; rows of the pool whose text equals
a valid/test text are dropped too. A slice of unlabeled rows is held out to measure masked-LM
perplexity before and after adaptation with the same fixed masks.

Texts are tokenised with truncation to ``max_length`` and packed: concatenated and cut into
blocks of ``max_length`` tokens, so almost no compute goes to padding. The loss (and the
vocabulary projection) is computed at the masked positions only.

A checkpoint without a masked-LM head (e.g. the ``BertModel`` of all-MiniLM-L6-v2) gets one,
its decoder tied to the input embeddings, trained along with the encoder; the summary says so.

Checkpoints go to ``<store>/adapt/.work-<fingerprint>/`` (in the worker's local cache for a
remote store): a run that was interrupted resumes from its last checkpoint instead of
restarting; the work directory is removed once the stage directory is complete.

Output directory:

- ``model/``: ``save_pretrained`` masked LM (encoder + MLM head) and tokenizer; later stages
  load it as the starting encoder (``AutoModelForSequenceClassification``) or as a masked LM;
- ``metrics.json``: perplexity before/after, rows, tokens, steps, time, device, budget;
- ``figures/loss_curve.png``, ``summary.md``, ``sample.json`` (fill-mask predictions of
  the adapted model on held-out rows).
"""

from __future__ import annotations

import functools
import json
import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from label_pipeline.data import load_splits
from label_pipeline.devices import DeviceChoice, DeviceConfig, choose_device
from label_pipeline.errors import ConfigError, EmptyPoolError
from label_pipeline.mlm import masked_logits, mlm_head
from label_pipeline.models import DEFAULT_ENCODER, model_loading, resolve_model
from label_pipeline.orchestration import write_summary
from label_pipeline.progress import Progress, stage_logger
from label_pipeline.store import BuildContext, StageRef, StageSpec, StageStore

SPEC = StageSpec("adapt", "1")
STAGE, VERSION = SPEC.name, SPEC.version

ELAPSED_FILE = "elapsed.json"


class AdaptConfig(BaseModel):
    """Settings of the ``adapt`` stage (masked-LM domain adaptation of the encoder).

    Attributes:
        enabled: run the stage; when off, fine-tuning starts from the base encoder.
        model: encoder to adapt: hub id, local ``save_pretrained`` directory, or a model with a
            bundled offline copy. A checkpoint without a masked-LM head gets a new one.
        max_length: tokens per training block: each text is truncated to this length, then
            texts are concatenated and cut into blocks of this length (packing).
        mlm_probability: fraction of tokens masked (standard BERT recipe: 0.15, of which
            80% become the mask token, 10% a random token, 10% stay).
        whole_word_masking: mask every sub-word of a chosen word together (chosen words
            always become the mask token: the collator has no random replacement then).
        include_train: also train on the ``train`` split's texts (never valid or test).
        heldout_fraction: fraction of the unlabeled rows kept out of training to measure
            perplexity before and after (0 = no perplexity).
        heldout_max_rows: at most this many held-out rows.
        epochs: passes over the packed training blocks (fractions allowed).
        max_steps: optimizer steps; when set it overrides ``epochs``.
        max_minutes: wall-clock limit of training (summed over resumed runs); training
            stops at the first step past it and the model trained so far is kept.
        batch_size: blocks per device batch.
        gradient_accumulation_steps: batches per optimizer step.
        learning_rate, warmup_ratio, weight_decay: AdamW with linear warm-up and decay.
        head_learning_rate: learning rate of the weights of a newly created MLM head (not
            the tied embeddings): a random head must learn fast so that its early, noisy
            gradients do not wash through the pretrained encoder. ``None``: ``learning_rate``.
        save_steps: checkpoint every this many optimizer steps (for resuming).
        save_total_limit: checkpoints kept in the work directory.
        logging_steps: loss logged (and drawn in the loss curve) every this many steps at
            most; short runs log more often so the curve has points.
        seed: data order, held-out choice and the fixed masks of the perplexity measurement.
        sample_rows: held-out rows shown with fill-mask predictions in ``sample.json``.
        device: device and precision (bf16/fp16 on GPUs that support it).

    Default budget (CPU): one epoch over the embedded sample (4,750 unlabeled + 300 training
    texts: 97k tokens, 762 blocks of 128, 48 steps of 16) with the bundled MiniLM, capped at
    3 minutes; measured on an idle 2-core CPU: 48 s of training, 53 s for the whole stage.

    GPU-worker budget (one modern GPU, bf16): ``batch_size=64``, ``max_length=128``,
    ``epochs=3``, ``learning_rate=1e-4``, ``max_minutes=30`` (the ``label-pipeline/gpu``
    deployment's parameters in ``prefect.yaml``). On a pool of 100k short texts
    (~12k blocks) that is ~550 steps; MiniLM runs thousands of blocks per second there, so
    set ``max_minutes`` as the guard, not the budget. Larger encoders (BERT-base,
    RoBERTa-base): ``batch_size=32``, ``learning_rate=5e-5``.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    model: str = DEFAULT_ENCODER
    max_length: int = Field(128, ge=8, le=8192)
    mlm_probability: float = Field(0.15, gt=0.0, lt=1.0)
    whole_word_masking: bool = False
    include_train: bool = True
    heldout_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    heldout_max_rows: int = Field(500, ge=0)
    epochs: float = Field(1.0, ge=0.0)
    max_steps: int | None = Field(None, ge=0)
    max_minutes: float | None = Field(3.0, ge=0.0)
    batch_size: int = Field(16, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(5e-5, gt=0.0)
    head_learning_rate: float | None = Field(1e-3, gt=0.0)
    warmup_ratio: float = Field(0.06, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.01, ge=0.0)
    save_steps: int = Field(100, ge=1)
    save_total_limit: int = Field(2, ge=1)
    logging_steps: int = Field(10, ge=1)
    seed: int = 13
    sample_rows: int = Field(5, ge=0)
    device: DeviceConfig = Field(default_factory=DeviceConfig)


def check_budget(cfg: AdaptConfig) -> None:
    """Fail with the parameter's name when the training budget is zero."""
    if cfg.max_steps == 0:
        raise ConfigError(
            "adapt.max_steps=0 leaves no training step; set adapt.max_steps to a positive number "
            "(or leave it unset and use adapt.epochs), or set adapt.enabled=false to skip adaptation"
        )
    if cfg.max_steps is None and cfg.epochs <= 0:
        raise ConfigError(
            f"adapt.epochs={cfg.epochs} with adapt.max_steps unset leaves no training step; set "
            "adapt.epochs > 0 or adapt.max_steps > 0, or set adapt.enabled=false"
        )
    if cfg.max_minutes is not None and cfg.max_minutes <= 0:
        raise ConfigError(
            f"adapt.max_minutes={cfg.max_minutes} leaves no training time; set a positive limit, "
            "null for none, or adapt.enabled=false"
        )


# ----------------------------------------------------------------------------- model


@dataclass
class MaskedLM:
    """A masked LM ready to train, and how it was obtained."""

    model: Any
    tokenizer: Any
    source_dir: Path
    head_created: bool
    note: str
    new_weights: list[str] = field(default_factory=list)


def _transformer_dir(model_dir: Path) -> Path:
    """The Hugging Face model inside a sentence-transformers directory (or the dir itself)."""
    if (model_dir / "config.json").is_file() or not (model_dir / "modules.json").is_file():
        return model_dir
    for module in json.loads((model_dir / "modules.json").read_text()):
        if module.get("type", "").endswith("Transformer"):
            return model_dir / module.get("path", "")
    return model_dir


def load_masked_lm(model_dir: str | Path, purpose: str = "adapt.model") -> MaskedLM:
    """Load ``model_dir`` as a masked LM, creating the MLM head when the checkpoint has none.

    The new head's decoder is tied to the input embeddings; every encoder weight must come
    from the checkpoint. Raises ``ConfigError`` for a model that cannot be a masked LM.
    """
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING

    src = _transformer_dir(Path(model_dir))
    config = AutoConfig.from_pretrained(str(src))
    if type(config) not in MODEL_FOR_MASKED_LM_MAPPING:
        raise ConfigError(
            f"{purpose}: {src} is a {config.model_type!r} model, which has no masked-LM "
            "architecture in transformers, so it cannot be adapted with masked-LM training. "
            "Use an encoder such as BERT, RoBERTa, DeBERTa or MiniLM, or set adapt.enabled=false."
        )
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    if tokenizer.mask_token is None:
        raise ConfigError(
            f"{purpose}: the tokenizer of {src} has no mask token, so masked-LM training is "
            "impossible; use an encoder with a mask token or set adapt.enabled=false."
        )
    with model_loading(quiet=True):  # the missing keys are checked and reported below
        model, info = AutoModelForMaskedLM.from_pretrained(str(src), output_loading_info=True)
    prefix = model.base_model_prefix
    missing = sorted(info.get("missing_keys") or [])
    encoder_missing = [k for k in missing if k.startswith(f"{prefix}.")]
    if encoder_missing or info.get("mismatched_keys"):
        bad = encoder_missing or [str(k) for k in info["mismatched_keys"]]
        raise ConfigError(
            f"{purpose}: {src} does not hold the weights of its own encoder "
            f"({len(bad)} newly initialised or mismatched, e.g. {bad[:3]}); the checkpoint "
            "is not a trained encoder of this architecture. Point adapt.model at a trained model."
        )
    head_created = bool(missing)
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out_emb is None:
        raise ConfigError(f"{purpose}: {type(model).__name__} exposes no output embeddings")
    tied = out_emb.weight.data_ptr() == in_emb.weight.data_ptr()
    if head_created and not tied:
        # a fresh decoder must start from the embeddings, not from random weights
        model.config.tie_word_embeddings = True
        model.tie_weights()
        tied = out_emb.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
        if not tied:
            raise ConfigError(
                f"{purpose}: the new masked-LM head of {type(model).__name__} could not be "
                "tied to the input embeddings; use a checkpoint that has an MLM head."
            )
    if head_created:
        note = (
            f"{src.name} has no masked-LM head ({type(model).__name__} created one: "
            f"{len(missing)} new head weights, decoder tied to the input embeddings)"
        )
    else:
        note = f"masked-LM head loaded from the checkpoint ({type(model).__name__})"
    return MaskedLM(model, tokenizer, src, head_created, note, missing)


def masked_loss(model: Any, head: Any | None, batch: dict[str, Any], reduction: str = "mean"):
    """Cross-entropy at the masked positions (``labels != -100``) of one batch."""
    import torch.nn.functional as F

    labels = batch["labels"]
    sel = labels != -100
    logits = masked_logits(model, head, batch, sel)
    return F.cross_entropy(logits.float(), labels[sel], reduction=reduction)


# ----------------------------------------------------------------------------- data


@dataclass
class AdaptTexts:
    """The texts of one adaptation run and where they came from."""

    train: list[str]
    heldout: list[str]
    counts: dict[str, int]


def _norm(text: str) -> str:
    return " ".join(text.casefold().split())


def select_texts(
    splits: Any,
    heldout_fraction: float,
    heldout_max_rows: int,
    include_train: bool = True,
    seed: int = 13,
    source: str = "splits",
) -> AdaptTexts:
    """Training and held-out texts from a split DatasetDict.

    Training: the unlabeled pool minus the held-out slice, plus ``train`` texts when
    ``include_train``. ``valid`` and ``test`` texts never enter either list.
    """
    names = set(splits.keys()) if hasattr(splits, "keys") else set()
    unl = [
        t for t in (splits["unlabeled"]["text"] if "unlabeled" in names else []) if t and t.strip()
    ]
    if not unl:
        raise EmptyPoolError(
            f"adapt: the unlabeled pool of {source} is empty, so there is nothing to adapt the "
            "encoder on. Add rows without labels to the input (they become the unlabeled pool), "
            "or set adapt.enabled=false to fine-tune the base encoder."
        )
    protected = {_norm(t) for s in ("valid", "test") if s in names for t in splits[s]["text"]}
    pool = [t for t in unl if _norm(t) not in protected]
    train_texts = (
        [t for t in splits["train"]["text"] if t and t.strip()]
        if include_train and "train" in names
        else []
    )
    kept_train = [t for t in train_texts if _norm(t) not in protected]
    dropped = (len(unl) - len(pool)) + (len(train_texts) - len(kept_train))

    rng = random.Random(seed)
    order = list(range(len(pool)))
    rng.shuffle(order)
    n_held = min(heldout_max_rows, int(round(heldout_fraction * len(pool))))
    if heldout_fraction > 0 and heldout_max_rows > 0 and len(pool) >= 2:
        n_held = max(n_held, 1)
    n_held = min(n_held, len(pool) - 1)
    held_idx = set(order[:n_held])
    heldout = [pool[i] for i in sorted(held_idx)]
    train_pool = [pool[i] for i in range(len(pool)) if i not in held_idx]
    return AdaptTexts(
        train=train_pool + kept_train,
        heldout=heldout,
        counts={
            "unlabeled_rows": len(unl),
            "unlabeled_train_rows": len(train_pool),
            "train_rows": len(kept_train),
            "heldout_rows": len(heldout),
            "dropped_overlap_valid_test": dropped,
        },
    )


@dataclass
class PackedBlocks:
    """Token blocks of equal length made by concatenating tokenised texts."""

    columns: dict[str, list[list[Any]]]
    texts: int
    tokens: int
    truncated: int
    pad_tokens: int
    block_length: int

    @property
    def blocks(self) -> int:
        return len(self.columns["input_ids"])

    @property
    def padding_fraction(self) -> float:
        total = self.blocks * self.block_length
        return self.pad_tokens / total if total else 0.0


def pack_texts(
    tokenizer: Any,
    texts: Sequence[str],
    block_length: int,
    offsets: bool = False,
    chunk: int = 2048,
) -> PackedBlocks:
    """Tokenise ``texts`` (each truncated to ``block_length``), concatenate them and cut the
    stream into blocks of ``block_length`` tokens; the last, shorter block is padded.

    Every block carries ``input_ids``, ``attention_mask`` and ``special_tokens_mask`` (so the
    collator never masks [CLS]/[SEP]/padding), plus ``offset_mapping`` when ``offsets``
    (whole-word masking needs word boundaries).
    """
    keys = ["input_ids", "special_tokens_mask"] + (["offset_mapping"] if offsets else [])
    stream: dict[str, list[Any]] = {k: [] for k in keys}
    truncated = 0
    for start in range(0, len(texts), chunk):
        enc = tokenizer(
            list(texts[start : start + chunk]),
            truncation=True,
            max_length=block_length,
            return_special_tokens_mask=True,
            return_offsets_mapping=offsets,
            return_overflowing_tokens=False,
            return_length=True,
        )
        # texts that reach the limit may fit exactly: re-tokenise just those to know
        full = [
            t
            for t, n in zip(texts[start : start + chunk], enc["length"], strict=True)
            if n >= block_length
        ]
        if full:
            truncated += sum(len(ids) > block_length for ids in tokenizer(full)["input_ids"])
        for k in keys:
            for seq in enc[k]:
                stream[k].extend(tuple(x) if k == "offset_mapping" else x for x in seq)
    n = len(stream["input_ids"])
    columns: dict[str, list[list[Any]]] = {k: [] for k in [*keys, "attention_mask"]}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pad_fill = {"input_ids": pad_id, "special_tokens_mask": 1, "offset_mapping": (0, 0)}
    pad_tokens = 0
    for start in range(0, n, block_length):
        size = min(block_length, n - start)
        pad = block_length - size
        pad_tokens += pad
        for k in keys:
            columns[k].append(list(stream[k][start : start + size]) + [pad_fill[k]] * pad)
        columns["attention_mask"].append([1] * size + [0] * pad)
    return PackedBlocks(columns, len(texts), n, truncated, pad_tokens, block_length)


def make_collator(tokenizer: Any, cfg: AdaptConfig, seed: int | None = None) -> Any:
    """The masked-LM collator of ``cfg``; a ``seed`` makes its masks reproducible."""
    from transformers import DataCollatorForLanguageModeling

    # whole-word masking supports [MASK] replacement only (no random/kept tokens)
    replace = (
        {"mask_replace_prob": 1.0, "random_replace_prob": 0.0} if cfg.whole_word_masking else {}
    )
    return DataCollatorForLanguageModeling(
        tokenizer=tokenizer,
        mlm=True,
        mlm_probability=cfg.mlm_probability,
        whole_word_mask=cfg.whole_word_masking,
        seed=seed,
        **replace,
    )


def heldout_perplexity(
    mlm: MaskedLM,
    blocks: PackedBlocks,
    cfg: AdaptConfig,
    device: DeviceChoice,
    batch_size: int = 32,
) -> float | None:
    """exp(mean cross-entropy) at the masked tokens of ``blocks``; the masks come from a fixed
    seed, so two models (before/after) are measured on exactly the same positions."""
    import torch

    if blocks.blocks == 0:
        return None
    collator = make_collator(mlm.tokenizer, cfg, seed=cfg.seed)
    model = mlm.model
    was_training = model.training
    model.eval()
    model.to(device.device)
    head = mlm_head(model)
    total, count = 0.0, 0
    cols = list(blocks.columns)
    autocast = device.device == "cuda" and device.precision in {"bf16", "fp16"}
    with torch.no_grad():
        for start in range(0, blocks.blocks, batch_size):
            examples = [
                {k: blocks.columns[k][i] for k in cols}
                for i in range(start, min(start + batch_size, blocks.blocks))
            ]
            batch = {k: v.to(device.device) for k, v in collator(examples).items()}
            with torch.autocast("cuda", dtype=device.torch_dtype, enabled=autocast):
                loss = masked_loss(model, head, batch, reduction="sum")
            total += float(loss)
            count += int((batch["labels"] != -100).sum())
    model.train(was_training)
    if count == 0:
        return None
    return float(math.exp(min(total / count, 50.0)))


# ----------------------------------------------------------------------------- training


@functools.cache
def callback_classes() -> tuple[type, type]:
    """``(StepProgress, WallClockLimit)``: the stage's Trainer callbacks (built on first use,
    so importing this module does not import torch/transformers)."""
    from transformers import TrainerCallback

    class StepProgress(TrainerCallback):
        """Reports optimizer steps to ``label_pipeline.progress.Progress`` (bar, Prefect progress
        artifact, ETA) and logs the training loss."""

        def __init__(self, desc: str = "adapt: masked-LM steps") -> None:
            self.desc = desc
            self.progress: Progress | None = None
            self.resumed_from = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.progress = Progress(state.max_steps, STAGE, self.desc, unit="steps").__enter__()
            self.resumed_from = int(state.global_step)
            if state.global_step:
                self.progress.update(int(state.global_step))

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                stage_logger().debug("adapt step %d: loss %.4f", state.global_step, logs["loss"])

        def on_train_end(self, args, state, control, **kwargs):
            self.close()

        def close(self) -> None:
            if self.progress is not None:
                self.progress.__exit__(None, None, None)
                self.progress = None

    class WallClockLimit(TrainerCallback):
        """Stops training at the first step past ``max_seconds`` of training time, counting the
        time spent before an interruption (read from ``<work_dir>/elapsed.json``)."""

        def __init__(self, max_seconds: float | None, work_dir: Path) -> None:
            self.max_seconds = max_seconds
            self.work_dir = work_dir
            self.spent_before = 0.0
            self.started = time.time()
            self.triggered = False

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.time()
            f = self.work_dir / ELAPSED_FILE
            if state.global_step and f.is_file():
                self.spent_before = float(json.loads(f.read_text()).get("seconds", 0.0))

        def elapsed(self) -> float:
            return self.spent_before + time.time() - self.started

        def on_step_end(self, args, state, control, **kwargs):
            if self.max_seconds is not None and self.elapsed() >= self.max_seconds:
                self.triggered = True
                control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kwargs):
            (self.work_dir / ELAPSED_FILE).write_text(
                json.dumps({"seconds": self.elapsed(), "step": state.global_step})
            )

    return StepProgress, WallClockLimit


def _trainer_class() -> type:
    from transformers import Trainer

    class MaskedPositionsTrainer(Trainer):
        """Trainer whose loss projects only the masked positions onto the vocabulary."""

        def __init__(
            self,
            *args: Any,
            new_weights: Sequence[str] = (),
            head_lr: float | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self.mlm_head = mlm_head(self.model)
            # our loss is a per-batch mean: the Trainer divides it for gradient accumulation
            self.loss_is_scaled_for_ga = False if self.mlm_head is not None else None
            self.new_weights, self.head_lr = set(new_weights), head_lr

        def create_optimizer(self, model=None):
            opt_model = self.model if model is None else model
            if self.optimizer is not None or not self.new_weights or self.head_lr is None:
                return super().create_optimizer(model)
            # the Trainer's decay / no-decay groups, each split into encoder and new-head weights
            decay = set(self.get_decay_parameter_names(opt_model))
            all_named = dict(opt_model.named_parameters(remove_duplicate=False))
            new_ids = {id(all_named[n]) for n in self.new_weights if n in all_named}
            groups = []
            for is_new in (False, True):
                for in_decay in (True, False):
                    params = [
                        p
                        for n, p in opt_model.named_parameters()
                        if p.requires_grad
                        and (id(p) in new_ids) == is_new
                        and (n in decay) == in_decay
                    ]
                    if params:
                        group = {
                            "params": params,
                            "weight_decay": self.args.weight_decay if in_decay else 0.0,
                        }
                        if is_new:
                            group["lr"] = self.head_lr
                        groups.append(group)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(
                self.args, opt_model
            )
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            return self.optimizer

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.mlm_head is None or return_outputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return masked_loss(model, self.mlm_head, inputs)

    return MaskedPositionsTrainer


def last_checkpoint(work_dir: Path) -> Path | None:
    """The latest complete checkpoint (``trainer_state.json`` is written last) in ``work_dir``."""
    if not work_dir.is_dir():
        return None
    done = [
        d
        for d in work_dir.glob("checkpoint-*")
        if d.name.split("-")[-1].isdigit() and (d / "trainer_state.json").is_file()
    ]
    return max(done, key=lambda d: int(d.name.split("-")[-1])) if done else None


@dataclass
class TrainResult:
    steps: int
    seconds: float
    tokens_seen: int
    stopped_by: str
    resumed_from_step: int | None
    log_history: list[dict[str, Any]] = field(default_factory=list)


def train_masked_lm(
    mlm: MaskedLM,
    blocks: PackedBlocks,
    cfg: AdaptConfig,
    device: DeviceChoice,
    work_dir: Path,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Masked-LM training of ``mlm.model`` on ``blocks`` within the budget of ``cfg``,
    checkpointing into ``work_dir`` and resuming from its last checkpoint."""
    import datasets
    from transformers import PrinterCallback, TrainingArguments

    if blocks.blocks < cfg.batch_size:
        raise EmptyPoolError(
            f"adapt: the training texts make {blocks.blocks} block(s) of adapt.max_length="
            f"{cfg.max_length} tokens, fewer than one batch (adapt.batch_size={cfg.batch_size}). "
            "Add unlabeled rows, lower adapt.batch_size or adapt.max_length, or set "
            "adapt.enabled=false."
        )
    steps_per_epoch = math.ceil(blocks.blocks / (cfg.batch_size * cfg.gradient_accumulation_steps))
    planned = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
    logging_steps = max(1, min(cfg.logging_steps, planned // 20))
    work_dir.mkdir(parents=True, exist_ok=True)
    args = TrainingArguments(
        output_dir=str(work_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup_ratio,
        lr_scheduler_type="linear",
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        logging_steps=logging_steps,
        report_to=[],
        push_to_hub=False,
        use_cpu=device.device == "cpu",
        bf16=device.precision == "bf16",
        fp16=device.precision == "fp16",
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,  # the collator needs special_tokens_mask / offsets
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,  # StepProgress draws the bar and feeds the Prefect UI
    )
    train_ds = datasets.Dataset.from_dict(blocks.columns)
    StepProgress, WallClockLimit = callback_classes()
    progress = StepProgress()
    clock = WallClockLimit(cfg.max_minutes * 60 if cfg.max_minutes is not None else None, work_dir)
    trainer = _trainer_class()(
        model=mlm.model,
        args=args,
        train_dataset=train_ds,
        data_collator=make_collator(mlm.tokenizer, cfg),
        callbacks=[progress, clock, *callbacks],
        new_weights=mlm.new_weights,
        head_lr=cfg.head_learning_rate,
    )
    trainer.remove_callback(PrinterCallback)
    resume = last_checkpoint(work_dir)
    started = time.time()
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        progress.close()
    state = trainer.state
    if clock.triggered:
        stopped_by = "max_minutes"
    elif cfg.max_steps:
        stopped_by = "max_steps"
    else:
        stopped_by = "epochs"
    return TrainResult(
        steps=int(state.global_step),
        seconds=clock.elapsed() if resume else time.time() - started,
        tokens_seen=int(state.num_input_tokens_seen or 0),
        stopped_by=stopped_by,
        resumed_from_step=progress.resumed_from if resume else None,
        log_history=list(state.log_history),
    )


def plot_loss_curve(history: list[dict[str, Any]], path: Path, title: str) -> bool:
    """Training loss per logged step as a PNG; False when nothing was logged."""
    points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(
        [p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 40 else None
    )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("masked-LM loss")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def fill_mask_samples(
    mlm: MaskedLM, texts: Sequence[str], device: DeviceChoice, k: int = 3
) -> list[dict[str, Any]]:
    """Mask the middle token of each text and show the model's top-``k`` words (one batch)."""
    import torch

    if not texts:
        return []
    tok, model = mlm.tokenizer, mlm.model
    enc = tok(
        list(texts),
        truncation=True,
        max_length=64,
        padding=True,
        return_tensors="pt",
        return_special_tokens_mask=True,
    )
    special = enc.pop("special_tokens_mask").bool()
    positions = []
    for row in range(enc["input_ids"].shape[0]):
        cand = (~special[row] & enc["attention_mask"][row].bool()).nonzero().flatten().tolist()
        positions.append(cand[len(cand) // 2] if cand else None)
    originals = [
        tok.convert_ids_to_tokens(int(enc["input_ids"][r, p])) if p is not None else ""
        for r, p in enumerate(positions)
    ]
    for r, p in enumerate(positions):
        if p is not None:
            enc["input_ids"][r, p] = tok.mask_token_id
    model.eval()
    model.to(device.device)
    with torch.no_grad():
        logits = model(**{k_: v.to(device.device) for k_, v in enc.items()}).logits
    out = []
    for r, p in enumerate(positions):
        if p is None:
            continue
        top = logits[r, p].float().softmax(-1).topk(k)
        out.append(
            {
                "masked_text": tok.decode(enc["input_ids"][r], skip_special_tokens=False)
                .replace(tok.pad_token or "\0", "")
                .strip(),
                "original": originals[r],
                "predicted": [tok.convert_ids_to_tokens(int(i)) for i in top.indices],
                "probability": [round(float(v), 4) for v in top.values],
            }
        )
    return out


# ----------------------------------------------------------------------------- stage


def _summary(facts: dict[str, Any], mlm_note: str) -> str:
    def ppl(v: Any) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    c = facts["counts"]
    lines = [
        f"Masked-LM adaptation of `{facts['model']}` ({facts['source_dir']}).",
        "",
        f"- MLM head: {'**created**' if facts['head_created'] else 'from the checkpoint'} — {mlm_note}",
        f"- rows: {c['unlabeled_train_rows']} unlabeled + {c['train_rows']} train texts for training; "
        f"{c['heldout_rows']} unlabeled rows held out; {c['dropped_overlap_valid_test']} rows equal "
        "to a valid/test text dropped",
        f"- packing: {facts['tokens']} tokens in {facts['blocks']} blocks of {facts['max_length']} "
        f"({100 * facts['padding_fraction']:.2f}% padding; {facts['truncated_texts']} texts truncated)",
        f"- training: {facts['steps']} steps, {facts['tokens_seen']} tokens seen, "
        f"{facts['train_seconds']:.1f} s, stopped by {facts['stopped_by']}"
        + (
            f", resumed from step {facts['resumed_from_step']}"
            if facts["resumed_from_step"]
            else ""
        ),
        f"- budget: {json.dumps(facts['budget'])}",
        f"- device: {facts['device']} / {facts['precision']}",
        f"- held-out perplexity (fixed masks): before {ppl(facts['perplexity_before'])}, "
        f"after {ppl(facts['perplexity_after'])}"
        + (" (before = with the newly created head)" if facts["head_created"] else ""),
        "",
        "Fine-tuning starts from `model/` when `train.encoder` is `adapted`.",
    ]
    return "\n".join(lines) + "\n"


def _builder(cfg: AdaptConfig, splits: StageRef):
    def build(ctx: BuildContext) -> dict[str, Any]:
        log = stage_logger()
        dd = load_splits(splits.dir)
        texts = select_texts(
            dd,
            cfg.heldout_fraction,
            cfg.heldout_max_rows,
            cfg.include_train,
            cfg.seed,
            source=str(splits.dir / "splits"),
        )
        model_dir = resolve_model(cfg.model, "adapt.model")
        from transformers import set_seed

        set_seed(cfg.seed)  # a newly created head starts from the same weights on every run
        mlm = load_masked_lm(model_dir)
        log.info("adapt: %s", mlm.note)
        device = choose_device(cfg.device)
        blocks = pack_texts(
            mlm.tokenizer, texts.train, cfg.max_length, offsets=cfg.whole_word_masking
        )
        held = pack_texts(
            mlm.tokenizer, texts.heldout, cfg.max_length, offsets=cfg.whole_word_masking
        )
        eval_bs = device.batch_size
        before = heldout_perplexity(mlm, held, cfg, device, eval_bs)

        work_dir = ctx.dir.parent / f".work-{ctx.fingerprint}"
        result = train_masked_lm(mlm, blocks, cfg, device, work_dir)
        after = heldout_perplexity(mlm, held, cfg, device, eval_bs)

        out = ctx.dir / "model"
        mlm.model.save_pretrained(str(out))
        mlm.tokenizer.save_pretrained(str(out))
        facts: dict[str, Any] = {
            "model": cfg.model,
            "source_dir": str(mlm.source_dir),
            "head_created": mlm.head_created,
            "counts": texts.counts,
            "tokens": blocks.tokens,
            "blocks": blocks.blocks,
            "max_length": cfg.max_length,
            "padding_fraction": round(blocks.padding_fraction, 6),
            "truncated_texts": blocks.truncated,
            "steps": result.steps,
            "tokens_seen": result.tokens_seen,
            "train_seconds": round(result.seconds, 2),
            "stopped_by": result.stopped_by,
            "resumed_from_step": result.resumed_from_step,
            "budget": {
                "epochs": cfg.epochs,
                "max_steps": cfg.max_steps,
                "max_minutes": cfg.max_minutes,
                "batch_size": cfg.batch_size,
                "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
                "learning_rate": cfg.learning_rate,
                "head_learning_rate": cfg.head_learning_rate if mlm.head_created else None,
            },
            "device": device.device,
            "precision": device.precision,
            "perplexity_before": before,
            "perplexity_after": after,
            "heldout_blocks": held.blocks,
        }
        (ctx.dir / "metrics.json").write_text(
            json.dumps({**facts, "log_history": result.log_history}, indent=2)
        )
        plot_loss_curve(
            result.log_history,
            ctx.dir / "figures" / "loss_curve.png",
            f"adapt {Path(cfg.model).name}: perplexity {before and round(before, 1)} -> "
            f"{after and round(after, 1)} (held-out)",
        )
        samples = fill_mask_samples(mlm, texts.heldout[: cfg.sample_rows], device)
        write_summary(ctx.dir, _summary(facts, mlm.note), samples)
        log.info(
            "adapt: %d steps in %.1fs, held-out perplexity %s -> %s",
            result.steps,
            result.seconds,
            before,
            after,
        )
        return facts

    return build


def run_adapt(
    store: StageStore, cfg: AdaptConfig, splits: StageRef, refresh: bool = False
) -> StageRef:
    """Adapt ``cfg.model`` to the texts of ``splits`` (unlabeled + train); the output's
    ``model/`` is a ``save_pretrained`` masked LM (encoder + head + tokenizer)."""
    if not cfg.enabled:
        raise ConfigError("adapt.enabled is false: the flow should not run the adapt stage")
    check_budget(cfg)
    splits = store.localize(splits)
    ref = store.build_stage(
        SPEC, cfg, {"splits": splits}, _builder(cfg, splits), refresh
    )
    # the stage directory is complete: its checkpoints are no longer needed
    shutil.rmtree(store.root / STAGE / f".work-{ref.fingerprint}", ignore_errors=True)
    return ref
