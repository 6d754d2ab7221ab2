"""Hybrid method: sparse TF-IDF word and character n-grams stacked with dense sentence
embeddings (and the zero-shot scores), one linear model over all of them.

Bag-of-words knows the rare, decisive tokens of technical text (``segfault``,
``NullPointerException``, ``feature request``); the sentence encoder knows paraphrase.
Each block is L2-normalised per row and multiplied by its weight, so no block dominates
by scale alone. The zero-shot block is the cosine of the text's embedding with each label
name's embedding (the embedding zero-shot classifier), a handful of features that carry the
label names' meaning into the first few rows.

One class-weighted logistic regression per label (liblinear); single-label tasks read the
one-vs-rest scores through a softmax. The inverse regularisation ``C``
is chosen by k-fold cross-validation on the training rows when the slice allows it
(threshold-free scores: mean average precision per label for multi-label, macro-F1 of the
argmax for single-label; ties go to the smaller ``C``). The same folds give out-of-fold
scores at the chosen ``C``, on which the probabilities are calibrated: Platt scaling per
label (multi-label, for labels with enough positives) or temperature scaling (single-label).
When the slice is too small for CV, ``default_C`` and the regression's own probabilities
are used; ``ctx.info["calibration"]`` says which.

The zero-shot prior: with a handful of rows the regression cannot learn how much to trust
the zero-shot block, so the label names also act as a prior outside the model. Each text's
cosine with each label name's embedding, minus that label's mean cosine over the training
texts, times a weight ``b`` is added to the regression's scores (a product of the model and
a zero-shot expert). ``b`` is chosen from ``prior_weights`` on the same out-of-fold scores
as ``C`` (ties go to the smaller weight, and a weight must beat no prior by
``prior_min_gain``), before calibration; where the rows say more than the label names, CV
picks 0. ``ctx.info["zero_shot_prior"]`` reports the weight and the CV scores.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from label_pipeline.calibration import _sigmoid, _softmax
from label_pipeline.methods.base import FitContext, LabelledTexts, Method, MethodSettings, register
from label_pipeline.methods.baselines import (
    BatchSize,
    EmbedOptions,
    Encoder,
    _check_train,
    _cv_folds,
    _note_missing,
    _resolve_encoder,
    _SklearnTextMethod,
    _weights,
)
from label_pipeline.registry import setting_error

#: inverse regularisation strengths tried by the cross-validation
C_GRID = (1.0, 3.0, 10.0, 30.0)
#: weights of the zero-shot prior tried by CV (0 = no prior)
PRIOR_WEIGHTS = (0.0, 2.5, 5.0, 10.0, 20.0, 40.0)
#: blocks a hybrid may use
BLOCKS = ("word", "char", "embed", "zero_shot")


def _row_normalise(X: Any) -> Any:
    from sklearn.preprocessing import normalize

    return normalize(X, norm="l2", axis=1)


def _temperature(scores: np.ndarray, idx: np.ndarray) -> float:
    """The softmax temperature that minimises the log loss of ``scores`` (rows x classes)."""
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(idx))

    def nll(log_t: float) -> float:
        p = _softmax(scores / math.exp(log_t))
        return float(-np.log(np.clip(p[rows, idx], 1e-12, 1.0)).mean())

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(math.exp(res.x))


class HybridSettings(MethodSettings):
    """Settings of ``hybrid`` (``train.method_params.hybrid``)."""

    blocks: list[str] = Field(
        default_factory=lambda: list(BLOCKS),
        description="feature blocks to use, any of ``word``, ``char``, ``embed``, ``zero_shot``",
    )
    word_ngram_max: int = Field(2, ge=1, description="longest word n-gram (1–2 or 1–3)")
    char_ngram: list[int] = Field(
        default_factory=lambda: [2, 5],
        description="shortest and longest character n-gram (``char_wb``: inside word boundaries)",
    )
    max_features: int = Field(
        200_000, description="at most this many n-grams per sparse block (most frequent first)"
    )
    weights: dict[str, float] | None = Field(
        None,
        description="multiplier of each (row-normalised) block, e.g. ``{embed: 1.5}``; a block "
        "not named weighs 1",
    )
    Cs: list[float] = Field(
        default_factory=lambda: list(C_GRID),
        description="the grid of inverse regularisation strengths tried by CV",
    )
    default_C: float = Field(
        10.0, gt=0.0, description="``C`` when the slice is too small for 2-fold CV"
    )
    folds: int = Field(3, ge=2, description="at most this many CV folds")
    class_weight: Literal["balanced", "none"] = Field(
        "balanced", description="``balanced`` (inverse label frequency) or ``none``"
    )
    calibrate: Literal["auto", "none"] = Field(
        "auto",
        description="``auto``: calibrate on out-of-fold scores when CV ran (Platt per label "
        "with at least ``min_calibration_positives`` positive and negative rows; temperature "
        "for single-label); ``none``: the regression's own probabilities",
    )
    min_calibration_positives: int = Field(
        5,
        description="fewest positive (and negative) training rows a label needs for its own "
        "Platt scaling",
    )
    prior_weights: list[float] = Field(
        default_factory=lambda: list(PRIOR_WEIGHTS),
        description="weights of the zero-shot prior tried by CV (see the module docstring); "
        "``[0]`` turns the prior off. Used only with the ``zero_shot`` block",
    )
    prior_min_gain: float = Field(
        0.03,
        ge=0.0,
        description="how much a prior weight must raise the CV score (macro-F1 or mean average "
        "precision) over no prior to be used",
    )
    encoder: Encoder = None
    embed_options: EmbedOptions = Field(default_factory=dict)
    batch_size: BatchSize = None
    max_iter: int = Field(1000, description="iterations of the logistic-regression solver")

    @field_validator("blocks")
    @classmethod
    def _known_blocks(cls, value: list[str]) -> list[str]:
        bad = sorted(set(value) - set(BLOCKS))
        if not value or bad:
            raise setting_error(
                f"blocks: {value} {'has unknown block(s) ' + str(bad) if bad else 'is empty'}; "
                f"use some of {list(BLOCKS)}"
            )
        return [b for b in BLOCKS if b in value]

    @field_validator("char_ngram")
    @classmethod
    def _range(cls, value: list[int]) -> list[int]:
        if len(value) != 2 or not 1 <= value[0] <= value[1]:
            raise setting_error(f"char_ngram must be [min, max] with 1 <= min <= max, got {value}")
        return value

    @field_validator("weights")
    @classmethod
    def _block_weights(cls, value: dict[str, float] | None) -> dict[str, float]:
        value = value or {}
        if sorted(set(value) - set(BLOCKS)) or any(v < 0 for v in value.values()):
            raise setting_error(
                f"weights: {value} — keys must be blocks {list(BLOCKS)} and values >= 0"
            )
        return value

    @field_validator("Cs")
    @classmethod
    def _positive_grid(cls, value: list[float]) -> list[float]:
        if not value or min(value) <= 0:
            raise setting_error(f"Cs must be > 0, got {value}")
        return sorted(value)

    @field_validator("prior_weights")
    @classmethod
    def _prior_grid(cls, value: list[float]) -> list[float]:
        if not value or min(value) < 0:
            raise setting_error(
                f"prior_weights must be a non-empty list of weights >= 0 (e.g. [0] for no "
                f"zero-shot prior), got {value}"
            )
        return sorted(set(value) | {0.0})


@register
class Hybrid(_SklearnTextMethod):
    """TF-IDF word + character n-grams + sentence embeddings (+ zero-shot scores) →
    class-weighted logistic regression, ``C`` by CV, calibrated on out-of-fold scores.

    Settings: :class:`HybridSettings`.
    """

    name = "hybrid"
    Settings = HybridSettings

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._device = None

    def balances_labels(self) -> bool:
        return self.class_weight == "balanced"

    # ------------------------------------------------------------ features

    def _uses_encoder(self) -> bool:
        return "embed" in self.blocks or "zero_shot" in self.blocks

    def _embed(self, texts: list[str]) -> np.ndarray:
        from label_pipeline.embeddings import embed_texts

        return embed_texts(
            self.encoder_dir_, texts, self._device, self.batch_size, **self.embed_options
        )

    def _fit_features(self, train: LabelledTexts) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizers_: dict[str, Any] = {}
        if "word" in self.blocks:
            self.vectorizers_["word"] = TfidfVectorizer(
                ngram_range=(1, self.word_ngram_max),
                sublinear_tf=True,
                max_features=self.max_features,
            ).fit(train.texts)
        if "char" in self.blocks:
            self.vectorizers_["char"] = TfidfVectorizer(
                analyzer="char_wb",
                ngram_range=tuple(self.char_ngram),
                sublinear_tf=True,
                max_features=self.max_features,
            ).fit(train.texts)
        if "zero_shot" in self.blocks:
            self.label_vectors_ = self._embed([n.replace("_", " ") for n in train.label_names])

    def _encode(self, texts: list[str]) -> np.ndarray | None:
        """The texts' sentence embeddings when a block uses the encoder (computed once per
        call site and shared by the features and the prior), else None."""
        return self._embed(texts).astype(np.float64) if self._uses_encoder() else None

    def _label_cosine(self, E: np.ndarray) -> np.ndarray:  # noqa: N803
        """Cosine of each embedded text with each label name (rows x labels)."""
        return E @ self.label_vectors_.T.astype(np.float64)

    def _features(self, texts: list[str], E: np.ndarray | None) -> Any:  # noqa: N803
        """Feature matrix of ``texts``; ``E``: their embeddings from ``_encode``."""
        from scipy import sparse

        parts = []
        for name in ("word", "char"):
            if name in self.vectorizers_:
                X = self.vectorizers_[name].transform(texts)
                parts.append(_row_normalise(X) * self.weights.get(name, 1.0))
        if E is not None:
            if "embed" in self.blocks:
                parts.append(sparse.csr_matrix(_row_normalise(E) * self.weights.get("embed", 1.0)))
            if "zero_shot" in self.blocks:
                Z = self._label_cosine(E)
                # centred per row: which label the text is closest to, not how long it is
                Z = Z - Z.mean(axis=1, keepdims=True)
                parts.append(
                    sparse.csr_matrix(_row_normalise(Z) * self.weights.get("zero_shot", 1.0))
                )
        return sparse.hstack(parts, format="csr")

    def _prior(self, E: np.ndarray) -> np.ndarray:  # noqa: N803
        """Cosine of each embedded text with each label name, minus the label's mean over
        the training texts (rows x labels)."""
        return self._label_cosine(E) - self.prior_mean_

    def _uses_prior(self) -> bool:
        return "zero_shot" in self.blocks and any(b > 0 for b in self.prior_weights)

    def _choose_prior(
        self, E: np.ndarray | None, y: np.ndarray, oof: np.ndarray | None, ctx: FitContext
    ) -> np.ndarray | None:
        """Set ``prior_mean_`` and ``prior_weight_`` (chosen on the out-of-fold scores);
        return the out-of-fold scores with the chosen prior added. ``E``: the training
        texts' embeddings."""
        self.prior_weight_ = 0.0
        self.prior_mean_ = np.zeros(self.n_labels_)
        if not self._uses_prior():
            return oof
        self.prior_mean_ = self._label_cosine(E).mean(axis=0)
        Z = self._prior(E)
        if oof is None:
            ctx.info["zero_shot_prior"] = {
                "weight": 0.0,
                "why": "the slice is too small for CV, so no prior weight could be chosen",
            }
            return oof
        cv = {b: self._cv_score(y, oof + b * Z) for b in self.prior_weights}
        floor = cv[0.0] + self.prior_min_gain
        better = {b: v for b, v in cv.items() if b == 0.0 or v > floor + 1e-12}
        best = max(better.values())
        self.prior_weight_ = min(
            b for b, v in better.items() if math.isclose(v, best, abs_tol=1e-9)
        )
        ctx.info["zero_shot_prior"] = {
            "weight": self.prior_weight_,
            "cv_scores": {f"{b:g}": round(v, 4) for b, v in cv.items()},
        }
        return oof + self.prior_weight_ * Z

    # ------------------------------------------------------------ linear models

    def _lr(self, C: float, seed: int) -> Any:  # noqa: N803
        from sklearn.linear_model import LogisticRegression

        # liblinear's dual coordinate descent: a binary fit on a few thousand sparse rows
        # in milliseconds, where lbfgs needs hundreds of iterations at large C
        return LogisticRegression(
            C=C,
            class_weight="balanced" if self.class_weight == "balanced" else None,
            solver="liblinear",
            dual=True,
            max_iter=self.max_iter,
            random_state=seed,
        )

    def _fit_linear(self, X: Any, y: np.ndarray, w: np.ndarray, C: float, seed: int) -> Any:  # noqa: N803
        """One binary regression per label (one-vs-rest for single-label); None where the
        label is constant in ``y``."""
        models = []
        for j in range(y.shape[1]):
            col = y[:, j]
            models.append(None if col.min() == col.max() else self._lr(C, seed).fit(X, col, w))
        return models

    def _scores(self, models: Any, X: Any, y_const: np.ndarray) -> np.ndarray:
        """Decision scores (rows x labels); a label constant in training gets +-30."""
        out = np.zeros((X.shape[0], len(y_const)))
        for j, m in enumerate(models):
            if m is not None:
                out[:, j] = m.decision_function(X)
            else:
                out[:, j] = 30.0 if y_const[j] > 0 else -30.0
        return out

    def _cv_score(self, y: np.ndarray, scores: np.ndarray) -> float:
        from sklearn.metrics import average_precision_score, f1_score

        if self.multi_label_:
            aps = [
                average_precision_score(y[:, j], scores[:, j])
                for j in range(y.shape[1])
                if 0 < y[:, j].sum() < len(y)
            ]
            return float(np.mean(aps)) if aps else 0.0
        return float(
            f1_score(y.argmax(axis=1), scores.argmax(axis=1), average="macro", zero_division=0)
        )

    # ------------------------------------------------------------ fit / predict

    def fit(self, train: LabelledTexts, valid: LabelledTexts | None, ctx: FitContext) -> Method:
        from threadpoolctl import threadpool_limits

        # sparse solvers gain nothing from BLAS threads and lose much when cores are busy
        with threadpool_limits(1):
            return self._fit(train, ctx)

    def _fit(self, train: LabelledTexts, ctx: FitContext) -> Method:
        _check_train(train, self.name)
        _note_missing(train, ctx)
        self.multi_label_ = bool(train.multi_label)
        self.n_labels_ = len(train.label_names)
        if self._uses_encoder():
            self._device = ctx.device
            self.encoder_dir_ = _resolve_encoder(self.encoder, ctx)
            ctx.info["encoder"] = self.encoder_dir_
        y = np.asarray(train.y, dtype=np.int64)
        w = _weights(train)
        self.train_rate_ = (y * w[:, None]).sum(axis=0) / max(w.sum(), 1e-12)

        splits, how = _cv_folds(train, self.folds, ctx.seed)
        self._fit_features(train)
        E = self._encode(train.texts)
        X = self._features(train.texts, E)
        ctx.info["features"] = {
            **{n: len(v.vocabulary_) for n, v in self.vectorizers_.items()},
            "total": int(X.shape[1]),
        }
        oof: dict[float, np.ndarray] = {}
        if splits:
            # features from the whole slice's vocabulary (unsupervised, no labels seen);
            # the regression alone is cross-validated
            cv_scores = {}
            for C in self.Cs:
                scores = np.zeros(y.shape, dtype=np.float64)
                for tr, te in splits:
                    models = self._fit_linear(X[tr], y[tr], w[tr], C, ctx.seed)
                    scores[te] = self._scores(models, X[te], y[tr].mean(axis=0))
                oof[C] = scores
                cv_scores[C] = self._cv_score(y, scores)
            best = max(cv_scores.values())
            self.C_ = min(c for c, s in cv_scores.items() if math.isclose(s, best, abs_tol=1e-9))
            ctx.info["C_cv"] = {"folds": how, "scores": {str(c): s for c, s in cv_scores.items()}}
        else:
            self.C_ = self.default_C
            ctx.info["C_cv"] = {"folds": "none", "fallback": f"{how}; C={self.default_C}"}
        ctx.info["C"] = self.C_
        self.models_ = self._fit_linear(X, y, w, self.C_, ctx.seed)
        scores = self._choose_prior(E, y, oof.get(self.C_), ctx)
        self._calibrate(y, scores, how if splits else None, ctx)
        return self

    def _calibrate(
        self, y: np.ndarray, oof: np.ndarray | None, how: str | None, ctx: FitContext
    ) -> None:
        """Platt (per label) or temperature (single-label) on out-of-fold scores."""
        self.platt_: list[tuple[float, float] | None] = [None] * self.n_labels_
        self.temperature_: float | None = None
        if self.calibrate == "none" or oof is None:
            why = "off" if self.calibrate == "none" else "the slice is too small for CV"
            ctx.info["calibration"] = f"logistic regression's own probabilities ({why})"
            return
        if not self.multi_label_:
            self.temperature_ = _temperature(oof, y.argmax(axis=1))
            ctx.info["calibration"] = (
                f"temperature scaling on out-of-fold scores ({how}): T={self.temperature_:.3f}"
            )
            return
        from sklearn.linear_model import LogisticRegression

        done, own = [], []
        for j in range(self.n_labels_):
            pos = int(y[:, j].sum())
            neg = len(y) - pos
            if min(pos, neg) < self.min_calibration_positives or self.models_[j] is None:
                own.append(j)
                continue
            lr = LogisticRegression(C=1e4, max_iter=1000).fit(oof[:, [j]], y[:, j])
            self.platt_[j] = (float(lr.coef_[0, 0]), float(lr.intercept_[0]))
            done.append(j)
        ctx.info["calibration"] = (
            f"Platt scaling on out-of-fold scores ({how}) for {len(done)} label(s); "
            f"the regression's own probabilities for {len(own)} label(s) with fewer than "
            f"{self.min_calibration_positives} positive or negative rows"
            if own
            else f"Platt scaling on out-of-fold scores ({how}) for every label"
        )

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.n_labels_))
        E = self._encode(texts)
        scores = self._scores(self.models_, self._features(texts, E), self.train_rate_)
        if getattr(self, "prior_weight_", 0.0):
            scores = scores + self.prior_weight_ * self._prior(E)
        if not self.multi_label_:
            t = self.temperature_ or 1.0
            return _softmax(scores / t)
        out = _sigmoid(scores)
        for j, ab in enumerate(self.platt_):
            if ab is not None:
                out[:, j] = _sigmoid(ab[0] * scores[:, j] + ab[1])
            elif self.models_[j] is None:
                out[:, j] = float(self.train_rate_[j] > 0)
        return out
