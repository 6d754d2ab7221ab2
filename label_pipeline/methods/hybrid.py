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
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from label_pipeline.calibration import _sigmoid, _softmax
from label_pipeline.errors import ConfigError
from label_pipeline.methods.base import FitContext, LabelledTexts, Method, register
from label_pipeline.methods.baselines import (
    _check_train,
    _cv_folds,
    _note_missing,
    _resolve_encoder,
    _SklearnTextMethod,
    _weights,
)

#: inverse regularisation strengths tried by the cross-validation
C_GRID = (1.0, 3.0, 10.0, 30.0)
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


@register
class Hybrid(_SklearnTextMethod):
    """TF-IDF word + character n-grams + sentence embeddings (+ zero-shot scores) →
    class-weighted logistic regression, ``C`` by CV, calibrated on out-of-fold scores.

    Params:
        blocks: feature blocks to use, any of ``word``, ``char``, ``embed``, ``zero_shot``.
        word_ngram_max: longest word n-gram (1–2 or 1–3).
        char_ngram: shortest and longest character n-gram (``char_wb``: inside word
            boundaries).
        max_features: at most this many n-grams per sparse block (most frequent first).
        weights: multiplier of each (row-normalised) block, e.g. ``{"embed": 1.5}``; a block
            not named weighs 1.
        Cs: the grid of inverse regularisation strengths tried by CV.
        default_C: ``C`` when the slice is too small for 2-fold CV.
        folds: at most this many CV folds.
        class_weight: ``balanced`` (inverse label frequency) or ``none``.
        calibrate: ``auto``: calibrate on out-of-fold scores when CV ran (Platt per label
            with at least ``min_calibration_positives`` positive and negative rows;
            temperature for single-label); ``none``: the regression's own probabilities.
        min_calibration_positives: fewest positive (and negative) training rows a label
            needs for its own Platt scaling.
        encoder: sentence encoder reference; default the training context's encoder, else
            all-MiniLM-L6-v2.
        embed_options: how long texts are read, keyword options of
            ``label_pipeline.embeddings.embed_texts`` (``long_text``, ``pooling``,
            ``title_weight``, ...; default: its defaults, shared with ``embed_lr``/``knn``).
        batch_size: texts per encoder forward pass (default: the device's).
        max_iter: iterations of the logistic-regression solver.
    """

    name = "hybrid"

    def __init__(
        self,
        blocks: list[str] | tuple[str, ...] = ("word", "char", "embed", "zero_shot"),
        word_ngram_max: int = 2,
        char_ngram: list[int] | tuple[int, int] = (2, 5),
        max_features: int = 200_000,
        weights: dict[str, float] | None = None,
        Cs: list[float] | tuple[float, ...] = C_GRID,  # noqa: N803 (scikit-learn's name)
        default_C: float = 10.0,  # noqa: N803
        folds: int = 3,
        class_weight: Literal["balanced", "none"] = "balanced",
        calibrate: Literal["auto", "none"] = "auto",
        min_calibration_positives: int = 5,
        encoder: str | None = None,
        embed_options: dict[str, Any] | None = None,
        batch_size: int | None = None,
        max_iter: int = 1000,
    ) -> None:
        bad = sorted(set(blocks) - set(BLOCKS))
        if not blocks or bad:
            raise ConfigError(
                f"train.method_params.hybrid.blocks: {list(blocks)} "
                f"{'has unknown block(s) ' + str(bad) if bad else 'is empty'}; "
                f"use some of {list(BLOCKS)}"
            )
        if word_ngram_max < 1:
            raise ConfigError(
                f"train.method_params.hybrid.word_ngram_max must be >= 1, got {word_ngram_max}"
            )
        lo, hi = (int(v) for v in char_ngram)
        if not 1 <= lo <= hi:
            raise ConfigError(
                f"train.method_params.hybrid.char_ngram must be [min, max] with "
                f"1 <= min <= max, got {list(char_ngram)}"
            )
        if not Cs or min(Cs) <= 0 or default_C <= 0:
            raise ConfigError(
                f"train.method_params.hybrid.Cs and default_C must be > 0, got {list(Cs)} "
                f"and {default_C}"
            )
        if folds < 2:
            raise ConfigError(f"train.method_params.hybrid.folds must be >= 2, got {folds}")
        unknown_w = sorted(set(weights or {}) - set(BLOCKS))
        if unknown_w or any(v < 0 for v in (weights or {}).values()):
            raise ConfigError(
                f"train.method_params.hybrid.weights: {weights} — keys must be blocks "
                f"{list(BLOCKS)} and values >= 0"
            )
        if class_weight not in {"balanced", "none"}:
            raise ConfigError(
                f"train.method_params.hybrid.class_weight must be 'balanced' or 'none', "
                f"got {class_weight!r}"
            )
        if calibrate not in {"auto", "none"}:
            raise ConfigError(
                f"train.method_params.hybrid.calibrate must be 'auto' or 'none', got {calibrate!r}"
            )
        self.blocks = [b for b in BLOCKS if b in blocks]
        self.word_ngram_max = int(word_ngram_max)
        self.char_ngram = [lo, hi]
        self.max_features = int(max_features)
        self.weights = {k: float(v) for k, v in (weights or {}).items()}
        self.Cs = sorted(float(c) for c in Cs)
        self.default_C = float(default_C)
        self.folds = int(folds)
        self.class_weight = class_weight
        self.calibrate = calibrate
        self.min_calibration_positives = int(min_calibration_positives)
        self.encoder = encoder
        self.embed_options = dict(embed_options or {})
        from label_pipeline.embeddings import long_text_options

        long_text_options(**self.embed_options)  # fails early, naming a bad option
        self.batch_size = batch_size
        self.max_iter = int(max_iter)
        self._device = None

    def _params(self) -> dict[str, Any]:
        return {
            "blocks": self.blocks,
            "word_ngram_max": self.word_ngram_max,
            "char_ngram": self.char_ngram,
            "max_features": self.max_features,
            "weights": self.weights,
            "Cs": self.Cs,
            "default_C": self.default_C,
            "folds": self.folds,
            "class_weight": self.class_weight,
            "calibrate": self.calibrate,
            "min_calibration_positives": self.min_calibration_positives,
            "encoder": self.encoder,
            "embed_options": self.embed_options,
            "batch_size": self.batch_size,
            "max_iter": self.max_iter,
        }

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

    def _features(self, texts: list[str]) -> Any:
        from scipy import sparse

        parts = []
        for name in ("word", "char"):
            if name in self.vectorizers_:
                X = self.vectorizers_[name].transform(texts)
                parts.append(_row_normalise(X) * self.weights.get(name, 1.0))
        if self._uses_encoder():
            E = self._embed(texts).astype(np.float64)
            if "embed" in self.blocks:
                parts.append(sparse.csr_matrix(_row_normalise(E) * self.weights.get("embed", 1.0)))
            if "zero_shot" in self.blocks:
                Z = E @ self.label_vectors_.T.astype(np.float64)
                # centred per row: which label the text is closest to, not how long it is
                Z = Z - Z.mean(axis=1, keepdims=True)
                parts.append(
                    sparse.csr_matrix(_row_normalise(Z) * self.weights.get("zero_shot", 1.0))
                )
        return sparse.hstack(parts, format="csr")

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
        X = self._features(train.texts)
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
        self._calibrate(y, oof.get(self.C_), how if splits else None, ctx)
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
        scores = self._scores(self.models_, self._features(texts), self.train_rate_)
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
