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

import copy
import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from label_pipeline.data import load_splits
from label_pipeline.devices import DeviceChoice, DeviceConfig, choose_device
from label_pipeline.errors import ConfigError, EmptyPoolError
from label_pipeline.mlm import (
    MaskedLM,
    MaskedLMTraining,
    PackedBlocks,
    TrainResult,
    fitted_head_perplexity,
    heldout_perplexity,
    load_masked_lm,
    pack_texts,
    train_masked_lm,
)
from label_pipeline.models import DEFAULT_ENCODER, resolve_model
from label_pipeline.orchestration import write_summary
from label_pipeline.progress import stage_logger
from label_pipeline.store import BuildContext, StageRef, StageSpec, StageStore

SPEC = StageSpec("adapt", "2")
#: the fitted head of the "before" perplexity: 256 masked positions a step from 64 blocks
HEAD_FIT = {"positions": 256, "max_fit_blocks": 64}
STAGE, VERSION = SPEC.name, SPEC.version


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
        head_fit_steps: a checkpoint without a masked-LM head gets a random one, whose
            perplexity measures the head, not the encoder; the perplexity *before* training is
            read through a copy of that head fitted for this many steps on the frozen
            encoder (the training itself is unchanged). 0: report the random head's.
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
    head_fit_steps: int = Field(60, ge=0)
    sample_rows: int = Field(5, ge=0)
    device: DeviceConfig = Field(default_factory=DeviceConfig)

    def training(self) -> MaskedLMTraining:
        """The masking and budget of the masked-LM training these settings ask for."""
        return MaskedLMTraining.of(self)


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


# ----------------------------------------------------------------------------- training


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
    # a call with padding and truncation leaves them set in a fast tokenizer, which saves
    # them in tokenizer.json: mask with a copy, so the model's own tokenizer stays as trained
    tok, model = copy.deepcopy(mlm.tokenizer), mlm.model
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
        + (
            f" (before: read through {facts['perplexity_before_measured_with']}; with the "
            f"random head {ppl(facts['perplexity_before_random_head'])})"
            if facts["head_created"]
            else ""
        ),
        "",
        "Fine-tuning starts from `model/` when `train.encoder` is `adapted`.",
    ]
    return "\n".join(lines) + "\n"


def check_blocks(blocks: int, cfg: AdaptConfig) -> None:
    """Fail, naming the settings, when the training texts make less than one batch."""
    if blocks < cfg.batch_size:
        raise EmptyPoolError(
            f"adapt: the training texts make {blocks} block(s) of adapt.max_length="
            f"{cfg.max_length} tokens, fewer than one batch (adapt.batch_size={cfg.batch_size}). "
            "Add unlabeled rows, lower adapt.batch_size or adapt.max_length, or set "
            "adapt.enabled=false."
        )


@dataclass
class Adaptation:
    """One adaptation run: the adapted masked LM and what the stage writes about it."""

    mlm: MaskedLM
    #: ``metrics.json`` without the log history; the stage's manifest facts
    facts: dict[str, Any]
    training: TrainResult
    #: fill-mask predictions of the adapted model on held-out rows (``sample.json``)
    samples: list[dict[str, Any]]


def adapt_encoder(
    texts: AdaptTexts, model_dir: str | Path, cfg: AdaptConfig, work_dir: Path
) -> Adaptation:
    """Train the masked LM at ``model_dir`` on ``texts.train`` (checkpoints in ``work_dir``,
    resumed from there), measuring held-out perplexity before and after."""
    from transformers import set_seed

    log = stage_logger()
    set_seed(cfg.seed)  # a newly created head starts from the same weights on every run
    mlm = load_masked_lm(model_dir)
    log.info("adapt: %s", mlm.note)
    device = choose_device(cfg.device)
    blocks = pack_texts(mlm.tokenizer, texts.train, cfg.max_length, offsets=cfg.whole_word_masking)
    held = pack_texts(mlm.tokenizer, texts.heldout, cfg.max_length, offsets=cfg.whole_word_masking)
    eval_bs, training = device.batch_size, cfg.training()
    random_head = heldout_perplexity(mlm, held, training, device, eval_bs)
    before = random_head
    if mlm.head_created and cfg.head_fit_steps:  # a random head's perplexity says nothing
        before = fitted_head_perplexity(
            mlm, blocks, held, training, device, cfg.head_fit_steps, eval_bs, **HEAD_FIT
        )

    check_blocks(blocks.blocks, cfg)
    result = train_masked_lm(mlm, blocks, training, device, work_dir, stage=STAGE)
    after = heldout_perplexity(mlm, held, training, device, eval_bs)
    facts = _adapt_facts(cfg, mlm, texts, blocks, held, result, device, (before, after))
    if mlm.head_created:
        facts["perplexity_before_random_head"] = random_head
        facts["perplexity_before_measured_with"] = (
            f"a head fitted for {cfg.head_fit_steps} steps on the frozen encoder"
            if cfg.head_fit_steps
            else "the new random head"
        )
    samples = fill_mask_samples(mlm, texts.heldout[: cfg.sample_rows], device)
    return Adaptation(mlm, facts, result, samples)


def _adapt_facts(
    cfg: AdaptConfig,
    mlm: MaskedLM,
    texts: AdaptTexts,
    blocks: PackedBlocks,
    held: PackedBlocks,
    result: TrainResult,
    device: DeviceChoice,
    perplexity: tuple[float | None, float | None],
) -> dict[str, Any]:
    return {
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
        "perplexity_before": perplexity[0],
        "perplexity_after": perplexity[1],
        "heldout_blocks": held.blocks,
    }


def write_adaptation(directory: Path, adapted: Adaptation, cfg: AdaptConfig) -> None:
    """Write ``model/``, ``metrics.json``, the loss curve and the summary into ``directory``."""
    mlm, facts = adapted.mlm, adapted.facts
    out = directory / "model"
    mlm.model.save_pretrained(str(out))
    mlm.tokenizer.save_pretrained(str(out))
    log_history = adapted.training.log_history
    (directory / "metrics.json").write_text(
        json.dumps({**facts, "log_history": log_history}, indent=2)
    )
    before, after = facts["perplexity_before"], facts["perplexity_after"]
    plot_loss_curve(
        log_history,
        directory / "figures" / "loss_curve.png",
        f"adapt {Path(cfg.model).name}: perplexity {before and round(before, 1)} -> "
        f"{after and round(after, 1)} (held-out)",
    )
    write_summary(directory, _summary(facts, mlm.note), adapted.samples)


def _builder(cfg: AdaptConfig, splits: StageRef):
    def build(ctx: BuildContext) -> dict[str, Any]:
        texts = select_texts(
            load_splits(splits.dir),
            cfg.heldout_fraction,
            cfg.heldout_max_rows,
            cfg.include_train,
            cfg.seed,
            source=str(splits.dir / "splits"),
        )
        model_dir = resolve_model(cfg.model, "adapt.model")
        work_dir = ctx.dir.parent / f".work-{ctx.fingerprint}"
        adapted = adapt_encoder(texts, model_dir, cfg, work_dir)
        write_adaptation(ctx.dir, adapted, cfg)
        stage_logger().info(
            "adapt: %d steps in %.1fs, held-out perplexity %s -> %s",
            adapted.training.steps,
            adapted.training.seconds,
            adapted.facts["perplexity_before"],
            adapted.facts["perplexity_after"],
        )
        return adapted.facts

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
    ref = store.build_stage(SPEC, cfg, {"splits": splits}, _builder(cfg, splits), refresh)
    # the stage directory is complete: its checkpoints are no longer needed
    shutil.rmtree(store.root / STAGE / f".work-{ref.fingerprint}", ignore_errors=True)
    return ref
