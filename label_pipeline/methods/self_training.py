"""Self-training (a simplified UST): the trained model labels the unlabeled pool, confident
rows join the training set with a lower weight, and the model is trained again.

Used by the transformer methods through their ``self_training_*`` parameters
(``self_training_rounds=0`` turns it off). Each round:

1. predict the pool (``ctx.unlabeled_texts``, at most ``pool_size`` rows sampled with the seed);
2. keep confident rows of the whole pool, relabelled by the current model (:func:`select_confident`): single-label, the top probability is at
   least ``floor``; multi-label, every label's probability is at least ``floor`` or at most
   ``1 - floor`` and at least one label is on. At most ``per_label`` rows per label, the most
   confident first, so a frequent label cannot flood the training set;
3. retrain from the starting encoder on gold rows plus pseudo rows (weight ``weight``);
4. keep the new model only if it does not score worse on the validation split, scored as
   the train stage decides (:func:`reachable_score`: multi-label, every label's threshold
   tuned on valid, so a round that ranks the rows better with probabilities below 0.5 is
   an improvement, not a loss).

A run that cannot win is not trained again: the train stage tells each fit, through
``FitContext.valid_bar``, the valid micro-F1 a run of its slice needs to be chosen or to join
the slice's ``average``. When the model's valid score after its labelled rows, plus
``max_gain`` (the most self-training is expected to add), stays below that bar, the rounds
are skipped and ``ctx.info["self_training_skipped"]`` says why (:func:`cannot_win`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from label_pipeline.methods.base import FitContext, LabelledTexts
from label_pipeline.progress import stage_logger

#: the ``self_training_*`` settings of the methods that self-train (defaults at each use)
Rounds = Annotated[
    int, Field(ge=0, description="rounds of self-training on the unlabeled pool (0 = off)")
]
Floor = Annotated[
    float,
    Field(
        ge=0.5,
        le=1.0,
        description="probability a pseudo-label needs (single-label: the top probability; "
        "multi-label: every label's probability at least this or at most 1 minus this)",
    ),
]
PerLabel = Annotated[int, Field(ge=1, description="most pseudo-labelled rows per label and round")]
Weight = Annotated[
    float,
    Field(gt=0.0, le=1.0, description="loss weight of a pseudo-labelled row (gold rows weigh 1)"),
]
PoolSize = Annotated[
    int, Field(ge=1, description="pool rows scored per round (sampled once with the seed)")
]
#: the most self-training added to a run's valid score in the project's benchmarks was about
#: 7 points (emotion, 8 rows per label); 10 leaves room, so a run is only skipped when even
#: the best self-training seen could not lift it to the bar
DEFAULT_MAX_GAIN = 0.10
MaxGain = Annotated[
    float | None,
    Field(
        ge=0.0,
        le=1.0,
        description="self-training is skipped when the valid score after the labelled rows "
        "plus this still falls short of what the slice's other runs need to be chosen or "
        "averaged (``FitContext.valid_bar``, set by the train stage): such a run cannot win, "
        "so it is not trained again; None = never skip",
    ),
]


@dataclass(frozen=True)
class SelfTrainingParams:
    """Self-training settings (see the module docstring)."""

    rounds: int = 0
    floor: float = 0.9
    per_label: int = 64
    weight: float = 0.5
    pool_size: int = 2000
    max_gain: float | None = DEFAULT_MAX_GAIN


def select_confident(
    proba: np.ndarray, multi_label: bool, floor: float, per_label: int
) -> tuple[np.ndarray, np.ndarray]:
    """Confident rows of ``proba`` (n_rows, n_labels) and their pseudo-label matrix.

    Returns ``(row_indices, y)``: at most ``per_label`` rows per label (a multi-label row counts
    for every label it carries), the most confident first; ``y`` is multi-hot int64.
    """
    proba = np.asarray(proba, dtype=np.float64)
    n, k = proba.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, k), dtype=np.int64)
    if multi_label:
        y_all = (proba >= 0.5).astype(np.int64)
        certain = ((proba >= floor) | (proba <= 1.0 - floor)).all(axis=1) & (y_all.sum(axis=1) > 0)
    else:
        top = proba.argmax(axis=1)
        y_all = np.zeros((n, k), dtype=np.int64)
        y_all[np.arange(n), top] = 1
        certain = proba.max(axis=1) >= floor
    chosen: list[int] = []
    taken = np.zeros(n, dtype=bool)
    for j in range(k):
        cand = np.flatnonzero(certain & (y_all[:, j] == 1))
        cand = cand[np.argsort(-proba[cand, j], kind="stable")]
        count = 0
        for i in cand:
            if count >= per_label:
                break
            count += 1
            if not taken[i]:
                taken[i] = True
                chosen.append(int(i))
    idx = np.array(sorted(chosen), dtype=np.int64)
    return idx, y_all[idx]


def sample_pool(
    pool: list[str], known: list[str], size: int, rng: np.random.Generator
) -> list[str]:
    """The pool without repeats and without the training texts ``known``; at most ``size``
    texts, sampled with ``rng``, in pool order."""
    seen = set(known)
    pool = list(dict.fromkeys(t for t in pool if t not in seen))
    if len(pool) > size:
        pool = [pool[i] for i in sorted(rng.choice(len(pool), size, replace=False))]
    return pool


def with_pseudo_rows(
    train: LabelledTexts, texts: list[str], y: np.ndarray, weight: float
) -> LabelledTexts:
    """``train`` plus pseudo-labelled rows of weight ``weight`` (gold rows keep theirs, and
    their soft targets where they have them)."""
    gold_w = (
        np.ones(len(train), dtype=np.float64)
        if train.sample_weight is None
        else np.asarray(train.sample_weight, dtype=np.float64)
    )
    return LabelledTexts(
        texts=list(train.texts) + list(texts),
        y=np.vstack([train.y, y]).astype(np.int64),
        label_names=train.label_names,
        multi_label=train.multi_label,
        sample_weight=np.concatenate([gold_w, np.full(len(texts), weight, dtype=np.float64)]),
        ids=None,
        soft_y=None if train.soft_y is None else np.vstack([train.soft_y, y]).astype(np.float64),
    )


def valid_score(proba: np.ndarray, valid: LabelledTexts) -> float:
    """Micro-F1 at 0.5 (multi-label) or accuracy (single-label) on the validation rows."""
    if valid.multi_label:
        pred = (proba >= 0.5).astype(np.int64)
        tp = float((pred & valid.y).sum())
        denom = float(pred.sum() + valid.y.sum())
        return 2.0 * tp / denom if denom else 0.0
    return float((proba.argmax(axis=1) == valid.y_index).mean())


def reachable_score(proba: np.ndarray, valid: LabelledTexts) -> float:
    """At least the valid micro-F1 the train stage can give these probabilities, so that a
    run below a bar by this score cannot reach it: accuracy (single-label); multi-label, the
    micro-F1 with every label's threshold tuned on valid itself, over the usual grid and the
    probabilities' own quantiles. The train stage calibrates each label (a monotone map) and
    then tunes one threshold, which per-label thresholds on the raw probabilities match or
    beat (on the embedded data: .489 here against .463 for the train stage's prototype at 8
    rows; one global threshold on the raw probabilities gave .326, below it)."""
    if not valid.multi_label:
        return valid_score(proba, valid)
    from label_pipeline.decision import THRESHOLD_GRID, tune_decision

    proba = np.asarray(proba, dtype=np.float64)
    grid = np.unique(np.concatenate([THRESHOLD_GRID, np.quantile(proba, np.linspace(0, 1, 101))]))
    decision = tune_decision(proba, valid.y, True, "per_label", min_valid_rows=1, grid=grid)
    return float(decision.valid_micro_f1 or 0.0)


def cannot_win(
    reachable: float | None, ctx: FitContext, max_gain: float | None, who: str = ""
) -> bool:
    """Whether a run should skip self-training; if so, says why in
    ``ctx.info["self_training_skipped"]`` and the log (``who``: the method, for the log).

    ``reachable``: the run's valid score after its labelled rows (:func:`reachable_score`).
    The run cannot win when ``reachable + max_gain`` is below ``ctx.valid_bar``."""
    bar = ctx.valid_bar
    if bar is None or reachable is None or max_gain is None or reachable + max_gain >= bar:
        return False
    why = (
        f"cannot win: valid {reachable:.3f} after the labelled rows, and even "
        f"+{max_gain:.2f} from self-training stays below {bar:.3f}, the valid micro-F1 a run "
        "of this slice needs to be chosen or averaged (self_training_max_gain)"
    )
    ctx.info["self_training_skipped"] = why
    stage_logger().info("%sself-training skipped: %s", f"{who}: " if who else "", why)
    return True


def run_self_training(
    fit_once: Callable[[LabelledTexts], None],
    predict: Callable[[list[str]], np.ndarray],
    snapshot: Callable[[], Any],
    restore: Callable[[Any], None],
    train: LabelledTexts,
    valid: LabelledTexts | None,
    ctx: FitContext,
    params: SelfTrainingParams,
) -> None:
    """Fit on ``train``, then run ``params.rounds`` self-training rounds.

    ``fit_once(rows)`` trains the method from its starting point; ``snapshot()`` / ``restore(s)``
    capture and reinstate its fitted state, so a round that scores worse on ``valid`` is undone.
    Facts go to ``ctx.info["self_training"]``.
    """
    fit_once(train)
    pool = [t for t in (ctx.unlabeled_texts or []) if t and t.strip()]
    if params.rounds <= 0:
        return
    log = stage_logger()
    if not pool:
        ctx.info["self_training"] = []
        ctx.info["self_training_skipped"] = "no unlabeled texts were given"
        log.warning("self-training skipped: no unlabeled texts were given")
        return
    valid_proba = predict(valid.texts) if valid is not None and len(valid) else None
    best_score = None if valid_proba is None else reachable_score(valid_proba, valid)
    if cannot_win(best_score, ctx, params.max_gain):
        return
    rounds: list[dict[str, Any]] = []
    ctx.info["self_training"] = rounds
    pool = sample_pool(pool, train.texts, params.pool_size, np.random.default_rng(ctx.seed))
    for r in range(1, params.rounds + 1):
        proba = predict(pool)
        idx, y = select_confident(proba, train.multi_label, params.floor, params.per_label)
        fact: dict[str, Any] = {"round": r, "pool": len(pool), "added": int(len(idx))}
        if len(idx) == 0:
            fact["stopped"] = f"no pool row reached probability {params.floor}"
            rounds.append(fact)
            break
        fact["added_per_label"] = {
            name: int(c) for name, c in zip(train.label_names, y.sum(axis=0), strict=True)
        }
        before = snapshot()
        fit_once(with_pseudo_rows(train, [pool[i] for i in idx], y, params.weight))
        if best_score is not None:
            score = reachable_score(predict(valid.texts), valid)
            fact["valid_before"], fact["valid_after"] = round(best_score, 4), round(score, 4)
            if score < best_score:
                restore(before)
                fact["kept"] = False
                rounds.append(fact)
                log.info("self-training round %d scored worse on valid; previous model kept", r)
                break
            best_score = score
        fact["kept"] = True
        rounds.append(fact)
        log.info("self-training round %d: %d pseudo-labelled rows added", r, len(idx))
