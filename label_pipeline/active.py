"""Query strategies: which unlabeled pool rows to label next.

Every strategy takes the model's probabilities for the pool (rows x labels) and returns
pool positions in the order they should be labelled, with a score and a reason per row.

- ``random``: a uniform draw (the control every other strategy is measured against).
- ``least_confidence``, ``margin``, ``entropy`` (single-label): small-text's
  ``LeastConfidence``, ``BreakingTies`` and ``PredictionEntropy`` query strategies, run on
  the probabilities the label stage already computed (the last two with their per-row
  scoring loop replaced by array operations: same scores, fast on large pools).
- ``label_uncertainty`` (multi-label; our own, small-text has no per-label margin): each
  label ranks the rows by how close its probability is to that label's decision threshold;
  the labels then take turns, so every label gets its most uncertain rows.
- ``diverse`` (our own): the ``candidate_factor`` × N most uncertain rows (entropy for
  single-label, label uncertainty for multi-label) are clustered into N groups on their
  sentence embeddings (k-means), and each group gives its most uncertain row, so a batch
  is not N near-copies of one confusing text.
- ``k_center`` (our own): the greedy k-center core-set of Sener & Savarese (2018): each pick
  is the pool row furthest (cosine distance) from every labelled and already picked row.
  small-text's ``greedy_coreset`` recomputes the distances to every chosen row at each
  pick; keeping each row's distance to its nearest chosen row costs one pass over the pool
  per pick instead, which large pools need.

Each strategy is a small :class:`QueryStrategy` registered by :func:`query_strategy`, which
declares where it applies (single-label and/or multi-label tasks, embeddings needed); its
settings are a :class:`StrategySettings` model whose fields are named after the ``suggest``
settings they are read from.

``cover_rare_labels`` (:func:`rare_label_rows`) first gives the labels that are rarest in
the labelled set the pool rows most likely to carry them, then the strategy fills the rest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from label_pipeline.errors import ConfigError
from label_pipeline.registry import PluginSettings, Registry, checked_settings

SINGLE, MULTI = "single-label", "multi-label"


@dataclass
class Suggestion:
    """Chosen pool positions (labelling order), a score and a reason for each."""

    positions: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def extend(self, other: Suggestion) -> None:
        self.positions += other.positions
        self.scores += other.scores
        self.reasons += other.reasons


class _Precomputed:
    """A small-text classifier stand-in that answers with probabilities already computed."""

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs

    def predict_proba(self, _dataset: object) -> np.ndarray:
        return self.probs


def _vectorised_strategies() -> tuple[type, type]:
    """small-text's ``BreakingTies`` and ``PredictionEntropy`` with their per-row Python
    loops (``np.apply_along_axis``) replaced by array operations: same scores, but a
    50,000-row pool takes milliseconds instead of minutes."""
    from small_text.query_strategies import BreakingTies, PredictionEntropy

    class Margin(BreakingTies):
        def get_confidence(self, clf, dataset, _indices_unlabeled, _indices_labeled, _y):
            proba = np.asarray(clf.predict_proba(dataset), dtype=np.float64)
            top2 = np.partition(proba, proba.shape[1] - 2, axis=1)[:, -2:]
            return top2[:, 1] - top2[:, 0]

    class Entropy(PredictionEntropy):
        def get_confidence(self, clf, dataset, _indices_unlabeled, _indices_labeled, _y):
            proba = np.asarray(clf.predict_proba(dataset), dtype=np.float64)
            proba = proba / np.maximum(proba.sum(axis=1, keepdims=True), 1e-12)
            return -(proba * np.log(np.clip(proba, 1e-300, 1.0))).sum(axis=1)

    return Margin, Entropy


def _BreakingTies() -> object:  # noqa: N802 - stands for the class
    return _vectorised_strategies()[0]()


def _PredictionEntropy() -> object:  # noqa: N802 - stands for the class
    return _vectorised_strategies()[1]()


def check_strategy(strategy: str, multi_label: bool, option: str = "suggest.strategy") -> None:
    """Fail with the option name when ``strategy`` is unknown or does not fit the task."""
    if strategy not in QUERY_STRATEGIES.classes:
        raise ConfigError(f"{option}={strategy!r} is unknown; use one of {', '.join(STRATEGIES)}")
    task = MULTI if multi_label else SINGLE
    if task not in QUERY_STRATEGIES.classes[strategy].applies_to:
        fits = [repr(n) for n, c in QUERY_STRATEGIES.classes.items() if task in c.applies_to]
        why = (
            "scores a softmax over one label per row"
            if multi_label
            else "needs multi-label probabilities"
        )
        raise ConfigError(
            f"{option}={strategy!r} {why}, but the labels are {task}; use "
            f"{', '.join(fits[:-1])} or {fits[-1]}"
        )


def label_uncertainty(probs: np.ndarray, thresholds: np.ndarray | float = 0.5) -> np.ndarray:
    """Per-label uncertainty in [0, 1] (rows x labels): 1 at the label's threshold, 0 at a
    probability of 0 or 1."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (p.shape[1],))
    width = np.where(p >= t, 1.0 - t, t)
    return 1.0 - np.abs(p - t) / np.maximum(width, 1e-9)


def uncertainty(
    probs: np.ndarray, multi_label: bool, thresholds: np.ndarray | float = 0.5
) -> np.ndarray:
    """One uncertainty score per row (higher = less sure): prediction entropy for
    single-label, the largest per-label uncertainty for multi-label."""
    p = np.asarray(probs, dtype=np.float64)
    if multi_label:
        return label_uncertainty(p, thresholds).max(axis=1) if p.size else np.zeros(len(p))
    q = np.clip(p, 1e-12, 1.0)
    return -(p * np.log(q)).sum(axis=1)


def _small_text_ranking(strategy: str, probs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions chosen by a small-text confidence strategy (most uncertain first) and the
    uncertainty of every row (higher = less sure)."""
    from small_text.query_strategies import LeastConfidence

    qs = {
        "least_confidence": LeastConfidence,
        "margin": _BreakingTies,
        "entropy": _PredictionEntropy,
    }[strategy]()
    idx = np.arange(len(probs))
    chosen = np.asarray(
        qs.query(_Precomputed(probs), None, idx, np.array([], dtype=np.int64), None, n=n)
    )
    raw = np.asarray(qs.scores_, dtype=np.float64)  # confidence, margin or entropy
    unc = raw if strategy == "entropy" else 1.0 - raw
    order = chosen[np.lexsort((chosen, -unc[chosen]))]
    return order, unc


def _describe(strategy: str, value: float) -> str:
    return {
        "least_confidence": f"least confident: top probability {1.0 - value:.3f}",
        "margin": f"smallest margin: top two probabilities {1.0 - value:.3f} apart",
        "entropy": f"highest entropy: {value:.3f} nats",
    }[strategy]


def _label_round_robin(
    probs: np.ndarray, labels: list[str], thresholds: np.ndarray, n: int
) -> Suggestion:
    u = label_uncertainty(probs, thresholds)
    rankings = [np.argsort(-u[:, j], kind="stable") for j in range(u.shape[1])]
    cursor = [0] * u.shape[1]
    taken: set[int] = set()
    out = Suggestion()
    while len(out.positions) < n:
        progressed = False
        for j in range(u.shape[1]):
            while cursor[j] < len(rankings[j]) and int(rankings[j][cursor[j]]) in taken:
                cursor[j] += 1
            if cursor[j] >= len(rankings[j]) or len(out.positions) >= n:
                continue
            r = int(rankings[j][cursor[j]])
            taken.add(r)
            out.positions.append(r)
            out.scores.append(float(u[r, j]))
            out.reasons.append(
                f"label {labels[j]!r} uncertain: p={probs[r, j]:.3f} near its threshold "
                f"{thresholds[j]:.2f}"
            )
            progressed = True
        if not progressed:
            break
    return out


def _diverse(
    probs: np.ndarray,
    embeddings: np.ndarray,
    multi_label: bool,
    thresholds: np.ndarray,
    n: int,
    candidate_factor: int,
    seed: int,
) -> Suggestion:
    from sklearn.cluster import KMeans

    unc = uncertainty(probs, multi_label, thresholds)
    n_cand = min(len(probs), max(n, candidate_factor * n))
    cand = np.argsort(-unc, kind="stable")[:n_cand]
    if n_cand <= n:
        chosen = cand[:n]
        return Suggestion(
            [int(i) for i in chosen],
            [float(unc[i]) for i in chosen],
            ["uncertain (the pool has no more rows to spread over)"] * len(chosen),
        )
    km = KMeans(n_clusters=n, n_init=3, random_state=seed).fit(embeddings[cand])
    picks: list[tuple[float, int, int, int]] = []
    for c in range(n):
        members = cand[km.labels_ == c]
        if len(members) == 0:
            continue
        best = members[np.argmax(unc[members])]
        picks.append((float(unc[best]), int(best), c, len(members)))
    picked = {p[1] for p in picks}
    for r in cand:  # an empty cluster (rare): the next most uncertain candidate
        if len(picks) >= n:
            break
        if int(r) not in picked:
            picks.append((float(unc[r]), int(r), -1, 0))
            picked.add(int(r))
    picks.sort(key=lambda p: (-p[0], p[1]))
    what = "label uncertainty" if multi_label else "entropy"
    return Suggestion(
        [p[1] for p in picks],
        [p[0] for p in picks],
        [
            f"most uncertain of cluster {c + 1}/{n} ({m} of the {n_cand} most uncertain rows; "
            f"{what} {u:.3f})"
            if c >= 0
            else f"uncertain ({what} {u:.3f}); filled an empty cluster"
            for u, _, c, m in picks
        ],
    )


def _k_center(embeddings: np.ndarray, labelled_embeddings: np.ndarray | None, n: int) -> Suggestion:
    pool = np.asarray(embeddings, dtype=np.float32)
    lab = (
        np.zeros((0, pool.shape[1]), dtype=np.float32)
        if labelled_embeddings is None
        else np.asarray(labelled_embeddings, dtype=np.float32)
    )
    if len(lab) == 0:  # no labelled rows: start from the row nearest the pool's centre
        centre = pool.mean(axis=0)
        lab = pool[[int(np.argmax(pool @ centre))]]
    # cosine distance of unit vectors to the nearest labelled row, in blocks (memory bound)
    nearest = np.full(len(pool), np.inf, dtype=np.float64)
    for start in range(0, len(lab), 1024):
        sims = pool @ lab[start : start + 1024].T
        nearest = np.minimum(nearest, 1.0 - sims.max(axis=1))
    out = Suggestion()
    for _ in range(n):
        r = int(np.argmax(nearest))
        if not np.isfinite(nearest[r]) or nearest[r] < 0:
            break
        dist = float(max(nearest[r], 0.0))
        out.positions.append(r)
        out.scores.append(dist)
        out.reasons.append(
            f"k-center: cosine distance {dist:.3f} to the nearest labelled/chosen row"
        )
        # each pick updates the distances in O(pool): no recomputation against every row
        nearest = np.minimum(nearest, 1.0 - pool @ pool[r])
        nearest[r] = -np.inf
    return out


# ---------------------------------------------------------------- the strategies


class StrategySettings(PluginSettings):
    """Base of a query strategy's settings (read from the ``suggest`` section)."""


class SeededSettings(StrategySettings):
    """Settings of a strategy that draws at random."""

    seed: int = Field(0, description="random draws and k-means initialisation")


class DiverseSettings(SeededSettings):
    """Settings of ``diverse``."""

    candidate_factor: int = Field(
        10,
        ge=1,
        description="``diverse`` clusters the ``candidate_factor`` × n most uncertain rows",
    )


@dataclass
class Pool:
    """What a strategy chooses from: the pool rows still open.

    Attributes:
        probs: the model's probabilities (rows x labels).
        labels: label names, in the column order of ``probs``.
        multi_label: sigmoid per label (True) or softmax (False) probabilities.
        thresholds: per-label decision thresholds.
        embeddings: the rows' L2-normalised embeddings (strategies that need them).
        labelled_embeddings: embeddings of the labelled training rows (``k_center``).
    """

    probs: np.ndarray
    labels: list[str]
    multi_label: bool
    thresholds: np.ndarray
    embeddings: np.ndarray | None = None
    labelled_embeddings: np.ndarray | None = None


class QueryStrategy(ABC):
    """Chooses the next rows to label from a :class:`Pool`.

    Class attributes (set by :func:`query_strategy`): ``name``; ``applies_to``, the task kinds
    it fits (``single-label``, ``multi-label``); ``needs_embeddings``.
    """

    name: ClassVar[str]
    Settings: ClassVar[type[StrategySettings]] = StrategySettings
    applies_to: ClassVar[tuple[str, ...]] = (SINGLE, MULTI)
    needs_embeddings: ClassVar[bool] = False

    def __init__(self, settings: StrategySettings) -> None:
        self.settings = settings

    @abstractmethod
    def select(self, pool: Pool, k: int) -> Suggestion:
        """``k`` distinct rows of ``pool`` (positions in it), in labelling order."""


QUERY_STRATEGIES: Registry[QueryStrategy] = Registry(
    __name__, "suggest.strategy={name!r} is unknown; use one of {choices}"
)


def query_strategy(
    name: str, applies_to: tuple[str, ...] = (SINGLE, MULTI), needs_embeddings: bool = False
) -> Callable[[type[QueryStrategy]], type[QueryStrategy]]:
    """Class decorator: register a strategy as ``name``, fit for the task kinds
    ``applies_to``, needing the pool's embeddings or not."""

    def wrap(cls: type[QueryStrategy]) -> type[QueryStrategy]:
        cls.applies_to, cls.needs_embeddings = tuple(applies_to), needs_embeddings
        return QUERY_STRATEGIES.register(name)(cls)

    return wrap


def _ranked(strategy: str, probs: np.ndarray, k: int) -> Suggestion:
    order, unc = _small_text_ranking(strategy, probs, k)
    return Suggestion(
        [int(i) for i in order],
        [float(unc[i]) for i in order],
        [_describe(strategy, float(unc[i])) for i in order],
    )


@query_strategy("random")
class Random(QueryStrategy):
    """A uniform draw (the control every other strategy is measured against)."""

    Settings = SeededSettings
    settings: SeededSettings

    def select(self, pool: Pool, k: int) -> Suggestion:
        rng = np.random.default_rng(self.settings.seed)
        pick = rng.choice(len(pool.probs), size=k, replace=False)
        return Suggestion([int(i) for i in pick], [0.0] * k, ["random draw (the control)"] * k)


class _SmallText(QueryStrategy):
    """small-text's confidence strategy of the same name, on the probabilities."""

    def select(self, pool: Pool, k: int) -> Suggestion:
        return _ranked(self.name, pool.probs, k)


@query_strategy("least_confidence", applies_to=(SINGLE,))
class LeastConfidence(_SmallText):
    """small-text's ``LeastConfidence``: the lowest top probability first."""


@query_strategy("margin", applies_to=(SINGLE,))
class Margin(_SmallText):
    """small-text's ``BreakingTies``: the smallest gap between the two best labels first."""


@query_strategy("entropy", applies_to=(SINGLE,))
class Entropy(_SmallText):
    """small-text's ``PredictionEntropy``: the highest entropy first."""


@query_strategy("label_uncertainty")
class LabelUncertainty(QueryStrategy):
    """Multi-label: the labels take turns, each giving the row whose probability is closest
    to its threshold; single-label: ``margin``."""

    def select(self, pool: Pool, k: int) -> Suggestion:
        if pool.multi_label:
            return _label_round_robin(pool.probs, pool.labels, pool.thresholds, k)
        return _ranked("margin", pool.probs, k)


@query_strategy("diverse", needs_embeddings=True)
class Diverse(QueryStrategy):
    """The most uncertain row of each of ``k`` k-means clusters of the
    ``candidate_factor`` × k most uncertain rows."""

    Settings = DiverseSettings
    settings: DiverseSettings

    def select(self, pool: Pool, k: int) -> Suggestion:
        assert pool.embeddings is not None
        return _diverse(
            pool.probs,
            pool.embeddings,
            pool.multi_label,
            pool.thresholds,
            k,
            self.settings.candidate_factor,
            self.settings.seed,
        )


@query_strategy("k_center", needs_embeddings=True)
class KCenter(QueryStrategy):
    """Greedy k-center core-set: each pick the row furthest from every labelled and picked
    row."""

    def select(self, pool: Pool, k: int) -> Suggestion:
        assert pool.embeddings is not None
        return _k_center(pool.embeddings, pool.labelled_embeddings, k)


#: the strategy names, in the order they are presented
STRATEGIES: tuple[str, ...] = tuple(QUERY_STRATEGIES.classes)
Strategy = Literal[STRATEGIES]  # type: ignore[valid-type]
SINGLE_LABEL_ONLY = tuple(
    n for n, c in QUERY_STRATEGIES.classes.items() if MULTI not in c.applies_to
)
NEEDS_EMBEDDINGS = tuple(n for n, c in QUERY_STRATEGIES.classes.items() if c.needs_embeddings)


def rare_label_rows(
    probs: np.ndarray,
    labels: list[str],
    labelled_counts: dict[str, int],
    n: int,
    per_label: int | None = None,
) -> Suggestion:
    """Pool rows for the labels rarest in the labelled set, rarest label first.

    A label is rare when it has fewer labelled rows than the median label. Each rare label
    gets ``per_label`` rows (default: an equal share of half of ``n``), the pool rows most
    likely to carry it; at most ``n`` rows in all.
    """
    counts = np.array([labelled_counts.get(name, 0) for name in labels], dtype=float)
    rare = [j for j in np.argsort(counts, kind="stable") if counts[j] < np.median(counts)]
    out = Suggestion()
    if not rare or n <= 0:
        return out
    quota = per_label if per_label is not None else max(1, (n // 2) // len(rare))
    taken: set[int] = set()
    for j in rare:
        ranked = [int(r) for r in np.argsort(-probs[:, j], kind="stable") if int(r) not in taken]
        for r in ranked[:quota]:
            if len(out.positions) >= n:
                return out
            taken.add(r)
            out.positions.append(r)
            out.scores.append(float(probs[r, j]))
            out.reasons.append(
                f"rare label {labels[j]!r} ({int(counts[j])} labelled rows): "
                f"p({labels[j]})={probs[r, j]:.3f}"
            )
    return out


def suggest(
    strategy: str,
    probs: np.ndarray,
    labels: list[str],
    multi_label: bool,
    n: int,
    *,
    thresholds: np.ndarray | float = 0.5,
    embeddings: np.ndarray | None = None,
    labelled_embeddings: np.ndarray | None = None,
    labelled_counts: dict[str, int] | None = None,
    cover_rare_labels: bool = False,
    rare_rows_per_label: int | None = None,
    candidate_factor: int = 10,
    seed: int = 0,
) -> Suggestion:
    """The next ``n`` pool rows to label (fewer when the pool is smaller), distinct.

    Args:
        strategy: one of :data:`STRATEGIES`.
        probs: the model's probabilities for the pool rows (rows x labels).
        labels: label names, in the column order of ``probs``.
        multi_label: sigmoid per label (True) or softmax (False) probabilities.
        thresholds: per-label decision thresholds (multi-label uncertainty is measured
            against them).
        embeddings: L2-normalised pool embeddings (``diverse``, ``k_center``).
        labelled_embeddings: embeddings of the labelled training rows (``k_center``).
        labelled_counts: labelled rows per label (``cover_rare_labels``).
        cover_rare_labels: rows for the rarest labels first (:func:`rare_label_rows`).
        rare_rows_per_label: rows per rare label (default: half of ``n`` shared out).
        candidate_factor: ``diverse`` clusters the ``candidate_factor`` × n most uncertain rows.
        seed: random draws and k-means initialisation.
    """
    check_strategy(strategy, multi_label)
    cls = QUERY_STRATEGIES.classes[strategy]
    chooser = cls(
        checked_settings(
            cls.Settings,
            {
                key: value
                for key, value in {"seed": seed, "candidate_factor": candidate_factor}.items()
                if key in cls.Settings.model_fields
            },
            "suggest",
        )
    )
    probs = np.asarray(probs, dtype=np.float64)
    n_pool = len(probs)
    n = min(int(n), n_pool)
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(labels),)).copy()
    if cls.needs_embeddings and (embeddings is None or len(embeddings) != n_pool):
        raise ConfigError(f"suggest.strategy={strategy!r} needs one embedding per pool row")
    out = Suggestion()
    if n <= 0:
        return out
    if cover_rare_labels and labelled_counts is not None:
        out = rare_label_rows(probs, labels, labelled_counts, n, rare_rows_per_label)
    left = np.setdiff1d(np.arange(n_pool), np.asarray(out.positions, dtype=np.int64))
    k = n - len(out.positions)
    if k <= 0:
        return out
    pool = Pool(
        probs[left],
        labels,
        multi_label,
        thr,
        embeddings[left] if cls.needs_embeddings else None,
        labelled_embeddings,
    )
    part = chooser.select(pool, k)
    part.positions = [int(left[i]) for i in part.positions]
    out.extend(part)
    return out
