"""Masked-LM training of an encoder on raw text (domain adaptation), and masked-LM logits at
chosen positions only.

- :func:`load_masked_lm` loads any encoder checkpoint as a masked LM (a checkpoint without a
  masked-LM head gets a new one, tied to the input embeddings); :func:`pack_texts` tokenizes
  and packs texts into fixed-length blocks; :func:`train_masked_lm` trains within the budget
  of a :class:`MaskedLMTraining` (steps, epochs, wall-clock minutes), checkpointing and
  resuming; :func:`heldout_perplexity` measures perplexity at fixed masks, so two models are
  compared on the same positions.
- Projecting hidden states onto a 30k-word vocabulary is a large share of a small encoder's
  compute. Training and fill-mask substitution (the ``contextual`` augmenter) only need
  logits where tokens are masked, so :func:`masked_logits` runs the encoder on the whole
  batch and the vocabulary head on those positions alone.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from label_pipeline.devices import DeviceChoice
from label_pipeline.errors import ConfigError
from label_pipeline.models import model_loading
from label_pipeline.progress import Progress, stage_logger

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


#: the training time spent before a resume, kept beside the checkpoints
ELAPSED_FILE = "elapsed.json"


@dataclass(frozen=True)
class MaskedLMTraining:
    """The masking and the budget of one masked-LM training run.

    Attributes:
        max_length: tokens per packed block (named in messages only; blocks are packed by
            :func:`pack_texts`).
        mlm_probability: fraction of tokens masked (80 % mask token, 10 % random, 10 % kept).
        whole_word_masking: mask every sub-word of a chosen word together (mask token only).
        epochs: passes over the blocks (fractions allowed); ``max_steps`` overrides it.
        max_steps: optimizer steps, or None.
        max_minutes: wall-clock limit summed over resumed runs, or None.
        batch_size: blocks per device batch.
        gradient_accumulation_steps: batches per optimizer step.
        learning_rate: AdamW learning rate of the pretrained weights.
        head_learning_rate: learning rate of a newly created head's own weights (None: the
            same as ``learning_rate``).
        warmup_ratio: linear warm-up as a fraction of the steps.
        weight_decay: AdamW weight decay.
        save_steps: checkpoint every this many steps; save_total_limit: checkpoints kept.
        logging_steps: log the loss at most every this many steps.
        seed: data order and the fixed masks of :func:`heldout_perplexity`.
    """

    max_length: int = 128
    mlm_probability: float = 0.15
    whole_word_masking: bool = False
    epochs: float = 1.0
    max_steps: int | None = None
    max_minutes: float | None = None
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    head_learning_rate: float | None = None
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    save_steps: int = 100
    save_total_limit: int = 2
    logging_steps: int = 10
    seed: int = 13

    @classmethod
    def of(cls, settings: Any) -> MaskedLMTraining:
        """The training settings read off any object with these attribute names (a stage
        config)."""
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


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


def make_collator(tokenizer: Any, cfg: MaskedLMTraining, seed: int | None = None) -> Any:
    """The masked-LM collator of ``cfg`` (its masking settings); a ``seed`` makes its masks
    reproducible."""
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


def _masked_batches(
    mlm: MaskedLM,
    blocks: PackedBlocks,
    cfg: MaskedLMTraining,
    device: DeviceChoice,
    batch_size: int,
    seed: int,
) -> Iterator[dict[str, Any]]:
    """``blocks`` in batches of ``batch_size``, masked by ``cfg``'s collator with ``seed`` (the
    same masks every time), on ``device``."""
    collator = make_collator(mlm.tokenizer, cfg, seed=seed)
    cols = list(blocks.columns)
    for start in range(0, blocks.blocks, batch_size):
        examples = [
            {k: blocks.columns[k][i] for k in cols}
            for i in range(start, min(start + batch_size, blocks.blocks))
        ]
        yield {k: v.to(device.device) for k, v in collator(examples).items()}


def heldout_perplexity(
    mlm: MaskedLM,
    blocks: PackedBlocks,
    cfg: MaskedLMTraining,
    device: DeviceChoice,
    batch_size: int = 32,
) -> float | None:
    """exp(mean cross-entropy) at the masked tokens of ``blocks``; the masks come from a fixed
    seed, so two models (before/after) are measured on exactly the same positions."""
    import torch

    if blocks.blocks == 0:
        return None
    model = mlm.model
    was_training = model.training
    model.eval()
    model.to(device.device)
    head = mlm_head(model)
    total, count = 0.0, 0
    autocast = device.device == "cuda" and device.precision in {"bf16", "fp16"}
    with torch.no_grad():
        for batch in _masked_batches(mlm, blocks, cfg, device, batch_size, cfg.seed):
            with torch.autocast("cuda", dtype=device.torch_dtype, enabled=autocast):
                loss = masked_loss(model, head, batch, reduction="sum")
            total += float(loss)
            count += int((batch["labels"] != -100).sum())
    model.train(was_training)
    if count == 0:
        return None
    return float(math.exp(min(total / count, 50.0)))


def fitted_head_perplexity(
    mlm: MaskedLM,
    fit_blocks: PackedBlocks,
    held_blocks: PackedBlocks,
    cfg: MaskedLMTraining,
    device: DeviceChoice,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 1e-2,
    positions: int = 512,
    max_fit_blocks: int | None = None,
) -> float | None:
    """Held-out perplexity of the encoder as it is, read through a masked-LM head fitted to it.

    A head created for a checkpoint without one (``mlm.head_created``, e.g. a sentence encoder)
    is random, so the perplexity of the untouched model measures that head, not the encoder
    (hundreds of thousands on a 30k vocabulary). Here the encoder stays frozen: its hidden
    states at masked positions of ``fit_blocks`` are computed once, a copy of the head (all of
    it but the decoder tied to the input embeddings, which stays frozen) is fitted to them
    with AdamW (``lr``) for ``steps`` steps of ``positions`` masked positions (from the first
    ``max_fit_blocks`` blocks when set), and held-out perplexity is measured with that copy at the same fixed masks as :func:`heldout_perplexity`. The model
    itself is not changed. For a checkpoint that brought its own head this is
    :func:`heldout_perplexity`."""
    import copy

    import torch
    import torch.nn.functional as F

    if not mlm.head_created:
        return heldout_perplexity(mlm, held_blocks, cfg, device, batch_size)
    head = mlm_head(mlm.model)
    if held_blocks.blocks == 0 or fit_blocks.blocks == 0 or not isinstance(head, torch.nn.Module):
        return None
    was_training = mlm.model.training
    mlm.model.eval()
    mlm.model.to(device.device)
    if max_fit_blocks is not None and fit_blocks.blocks > max_fit_blocks:
        cols = {k: v[:max_fit_blocks] for k, v in fit_blocks.columns.items()}
        fit_blocks = dataclasses.replace(fit_blocks, columns=cols)
    states, targets = _masked_states(mlm, fit_blocks, cfg, device, batch_size, cfg.seed + 1)
    held_states, held_targets = _masked_states(mlm, held_blocks, cfg, device, batch_size, cfg.seed)
    mlm.model.train(was_training)
    head = copy.deepcopy(head)  # shares nothing with the model
    vocab = len(mlm.tokenizer)
    params = []
    for param in head.parameters():  # all but the decoder tied to the input embeddings
        fit = not (param.ndim == 2 and param.shape[0] >= vocab)
        param.requires_grad_(fit)
        params += [param] if fit else []
    if not params or not len(held_targets):
        return None
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    head.train()
    for _ in range(steps):
        idx = torch.randint(len(targets), (min(positions, len(targets)),), generator=gen)
        logits = head(states[idx].to(device.device)).float()
        loss = F.cross_entropy(logits, targets[idx].to(device.device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(held_targets), 4096):
            logits = head(held_states[start : start + 4096].to(device.device)).float()
            gold = held_targets[start : start + 4096].to(device.device)
            total += float(F.cross_entropy(logits, gold, reduction="sum"))
    return float(math.exp(min(total / len(held_targets), 50.0)))


def _masked_states(
    mlm: MaskedLM,
    blocks: PackedBlocks,
    cfg: MaskedLMTraining,
    device: DeviceChoice,
    batch_size: int,
    seed: int,
) -> tuple[Any, Any]:
    """The frozen encoder's hidden states at the masked positions of ``blocks`` (masks drawn
    with ``seed``) and the tokens there, on the CPU."""
    import torch

    states, targets = [], []
    with torch.no_grad():
        for batch in _masked_batches(mlm, blocks, cfg, device, batch_size, seed):
            sel = batch["labels"] != -100
            forward = {k: v for k, v in batch.items() if k in _ENCODER_INPUTS}
            hidden = mlm.model.base_model(**forward)[0]
            states.append(hidden[sel].float().cpu())
            targets.append(batch["labels"][sel].cpu())
    return torch.cat(states), torch.cat(targets)


@functools.cache
def callback_classes() -> tuple[type, type]:
    """``(StepProgress, WallClockLimit)``: the stage's Trainer callbacks (built on first use,
    so importing this module does not import torch/transformers)."""
    from transformers import TrainerCallback

    class StepProgress(TrainerCallback):
        """Reports optimizer steps to ``label_pipeline.progress.Progress`` (bar, Prefect progress
        artifact, ETA) and logs the training loss."""

        def __init__(self, stage: str = "mlm") -> None:
            self.stage = stage
            self.desc = f"{stage}: masked-LM steps"
            self.progress: Progress | None = None
            self.resumed_from = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.progress = Progress(
                state.max_steps, self.stage, self.desc, unit="steps"
            ).__enter__()
            self.resumed_from = int(state.global_step)
            if state.global_step:
                self.progress.update(int(state.global_step))

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                stage_logger().debug(
                    "%s step %d: loss %.4f", self.stage, state.global_step, logs["loss"]
                )

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
    cfg: MaskedLMTraining,
    device: DeviceChoice,
    work_dir: Path,
    callbacks: Sequence[Any] = (),
    stage: str = "mlm",
) -> TrainResult:
    """Masked-LM training of ``mlm.model`` on ``blocks`` within the budget of ``cfg``,
    checkpointing into ``work_dir`` and resuming from its last checkpoint."""
    import datasets
    from transformers import PrinterCallback, TrainingArguments

    if blocks.blocks < cfg.batch_size:
        raise ValueError(
            f"{blocks.blocks} training block(s), fewer than one batch of {cfg.batch_size}"
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
    progress = StepProgress(stage)
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
