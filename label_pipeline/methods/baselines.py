"""Baselines: bag-of-words Naive Bayes, TF-IDF Naive Bayes, frozen-embedding logistic
regression and embedding nearest neighbours.

Multi-label tasks are one binary classifier per label (one-vs-rest); single-label tasks
one multi-class classifier with softmax-like probabilities that sum to 1. A label with no
positive training row gets probability 0 (single-label) or its constant training rate
(multi-label) and is listed in ``ctx.info["labels_without_examples"]``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import joblib
import numpy as np
from pydantic import AfterValidator, Field, ValidationError, field_validator

from label_pipeline.methods.base import (
    FitContext,
    LabelledTexts,
    Method,
    MethodSettings,
    register,
)
from label_pipeline.models import DEFAULT_ENCODER, resolve_model
from label_pipeline.registry import relocated, setting_error

STATE_FILE = "state.joblib"
PARAMS_FILE = "params.json"


def _weights(train: LabelledTexts) -> np.ndarray:
    if train.sample_weight is None:
        return np.ones(len(train), dtype=np.float64)
    return np.asarray(train.sample_weight, dtype=np.float64)


def _check_train(train: LabelledTexts, name: str) -> None:
    if len(train) == 0:
        from label_pipeline.errors import EmptyPoolError

        raise EmptyPoolError(f"{name}: the training slice has no rows")


class _PerLabelOrMulticlass:
    """One binary estimator per label (multi-label) or one multi-class estimator.

    ``make()`` returns a fresh scikit-learn estimator with ``fit(X, y, sample_weight)`` and
    ``predict_proba``. Labels that are constant in training get a constant probability.
    """

    def __init__(self, make: Any, multi_label: bool, n_labels: int) -> None:
        self.make = make
        self.multi_label = multi_label
        self.n_labels = n_labels
        self.estimators_: list[Any] = []
        self.constant_: list[float | None] = []
        self.classes_: np.ndarray | None = None
        self.single_: Any = None

    def fit(self, X: Any, y: np.ndarray, w: np.ndarray) -> _PerLabelOrMulticlass:
        try:
            return self._fit(X, y, w)
        finally:
            self.make = None  # a factory (often a lambda) does not pickle; fitted state does

    def _fit(self, X: Any, y: np.ndarray, w: np.ndarray) -> _PerLabelOrMulticlass:
        if self.multi_label:
            for j in range(self.n_labels):
                col = y[:, j]
                if col.min() == col.max():  # nothing to learn: constant rate
                    self.estimators_.append(None)
                    self.constant_.append(float(col[0]))
                else:
                    self.estimators_.append(self.make().fit(X, col, sample_weight=w))
                    self.constant_.append(None)
            return self
        idx = y.argmax(axis=1)
        self.classes_ = np.unique(idx)
        if len(self.classes_) > 1:
            self.single_ = self.make().fit(X, idx, sample_weight=w)
        return self

    def predict_proba(self, X: Any, n_rows: int) -> np.ndarray:
        out = np.zeros((n_rows, self.n_labels), dtype=np.float64)
        if self.multi_label:
            for j, (est, const) in enumerate(zip(self.estimators_, self.constant_, strict=True)):
                if est is None:
                    out[:, j] = const
                else:
                    pos = list(est.classes_).index(1)
                    out[:, j] = est.predict_proba(X)[:, pos]
            return out
        if self.single_ is None:  # one class seen in training
            out[:, int(self.classes_[0])] = 1.0
            return out
        out[:, self.single_.classes_.astype(int)] = self.single_.predict_proba(X)
        return out


def _missing_labels(train: LabelledTexts) -> list[str]:
    return [n for n, c in zip(train.label_names, train.y.sum(axis=0), strict=True) if c == 0]


def _note_missing(train: LabelledTexts, ctx: FitContext) -> None:
    missing = _missing_labels(train)
    if missing:
        ctx.info["labels_without_examples"] = missing


class _SklearnTextMethod(Method):
    """Shared save/load for methods whose whole state pickles with joblib."""

    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / PARAMS_FILE).write_text(json.dumps({"method": self.name, **self.get_params()}))
        joblib.dump(self._state(), path / STATE_FILE)

    def _state(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k.endswith("_")}

    @classmethod
    def load(cls, path: Path) -> Method:
        params = json.loads((Path(path) / PARAMS_FILE).read_text())
        params.pop("method", None)
        obj = cls(**params)
        for k, v in joblib.load(Path(path) / STATE_FILE).items():
            setattr(obj, k, v)
        return obj


class NaiveBayesSettings(MethodSettings):
    """Settings of ``naive_bayes`` (``train.method_params.naive_bayes``)."""

    alpha: float = Field(1.0, gt=0.0, description="additive smoothing")
    lowercase: bool = Field(True, description="lowercase before counting tokens")


@register
class NaiveBayes(_SklearnTextMethod):
    """Token counts + multinomial Naive Bayes (the classic few-label baseline).

    Settings: :class:`NaiveBayesSettings`.
    """

    name = "naive_bayes"
    Settings = NaiveBayesSettings

    def fit(self, train: LabelledTexts, valid: LabelledTexts | None, ctx: FitContext) -> Method:
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.naive_bayes import MultinomialNB

        _check_train(train, self.name)
        _note_missing(train, ctx)
        self.vectorizer_ = CountVectorizer(lowercase=self.lowercase)
        X = self.vectorizer_.fit_transform(train.texts)
        self.clf_ = _PerLabelOrMulticlass(
            lambda: MultinomialNB(alpha=self.alpha), train.multi_label, len(train.label_names)
        ).fit(X, train.y, _weights(train))
        ctx.info["vocabulary"] = len(self.vectorizer_.vocabulary_)
        return self

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self.clf_.predict_proba(self.vectorizer_.transform(texts), len(texts))


#: smoothing values tried by the cross-validation of ``tfidf_nb``
ALPHA_GRID = (0.001, 0.01, 0.03, 0.1, 0.3, 1.0)


def _cv_folds(train: LabelledTexts, folds: int, seed: int) -> tuple[list[Any], str]:
    """Train/test index pairs for k-fold CV, or [] with the reason when the slice is too small."""
    n = len(train)
    if train.multi_label:
        k = min(folds, n // 4)  # at least ~4 rows per held-out fold
        if k < 2:
            return [], f"{n} rows are too few for 2-fold cross-validation"
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        cv = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(cv.split(np.zeros(n), train.y)), f"{k}-fold multi-label stratified"
    counts = np.bincount(train.y_index, minlength=train.y.shape[1])
    present = counts[counts > 0]
    k = min(folds, int(present.min()) if len(present) else 0)
    if k < 2 or len(present) < 2:
        return [], (
            f"the smallest class has {int(present.min()) if len(present) else 0} row(s): "
            "too few for 2-fold stratified cross-validation"
        )
    from sklearn.model_selection import StratifiedKFold

    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(cv.split(np.zeros(n), train.y_index)), f"{k}-fold stratified"


class TfidfNaiveBayesSettings(MethodSettings):
    """Settings of ``tfidf_nb`` (``train.method_params.tfidf_nb``)."""

    alphas: list[float] = Field(
        default_factory=lambda: list(ALPHA_GRID),
        description="the smoothing grid tried by cross-validation (each > 0)",
    )
    folds: int = Field(
        5,
        ge=2,
        description="at most this many CV folds (fewer when the slice is small; when even 2 "
        "folds are impossible, ``default_alpha`` is used and the fit facts say why)",
    )
    default_alpha: float = Field(0.1, description="smoothing when CV is impossible")
    ngram_max: int = Field(3, description="longest n-gram")
    min_df: int = Field(1, description="minimum document frequency of an n-gram")

    @field_validator("alphas")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if not value or min(value) <= 0:
            raise setting_error(f"alphas must be > 0, got {value}")
        return value


@register
class TfidfNaiveBayes(_SklearnTextMethod):
    """TF-IDF of word 1-3-grams + multinomial Naive Bayes, smoothing tuned by k-fold CV on
    the training rows (micro-F1 at threshold 0.5, or accuracy for single-label).

    Settings: :class:`TfidfNaiveBayesSettings`.
    """

    name = "tfidf_nb"
    Settings = TfidfNaiveBayesSettings

    def _vectorizer(self) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(
            ngram_range=(1, self.ngram_max), min_df=self.min_df, sublinear_tf=True
        )

    def _fit_one(self, texts: list[str], y: np.ndarray, w: np.ndarray, alpha: float, ml: bool):
        from sklearn.naive_bayes import MultinomialNB

        vec = self._vectorizer()
        X = vec.fit_transform(texts)
        clf = _PerLabelOrMulticlass(lambda: MultinomialNB(alpha=alpha), ml, y.shape[1])
        return vec, clf.fit(X, y, w)

    def cv_scores(self, train: LabelledTexts, seed: int = 0) -> tuple[dict[float, float], str]:
        """Mean held-out score of every alpha ({} when the slice is too small) and the CV used."""
        from label_pipeline.metrics import f1_micro_macro

        splits, how = _cv_folds(train, self.folds, seed)
        if not splits:
            return {}, how
        w = _weights(train)
        texts = np.asarray(train.texts, dtype=object)
        scores: dict[float, float] = {}
        for alpha in self.alphas:
            fold_scores = []
            for tr, te in splits:
                vec, clf = self._fit_one(
                    list(texts[tr]), train.y[tr], w[tr], alpha, train.multi_label
                )
                probs = clf.predict_proba(vec.transform(list(texts[te])), len(te))
                if train.multi_label:
                    pred = (probs >= 0.5).astype(int)
                else:
                    pred = np.eye(train.y.shape[1], dtype=int)[probs.argmax(axis=1)]
                fold_scores.append(f1_micro_macro(train.y[te], pred)["micro_f1"])
            scores[alpha] = float(np.mean(fold_scores))
        return scores, how

    def fit(self, train: LabelledTexts, valid: LabelledTexts | None, ctx: FitContext) -> Method:
        _check_train(train, self.name)
        _note_missing(train, ctx)
        scores, how = self.cv_scores(train, ctx.seed)
        if scores:
            best = max(scores.values())
            # ties: the largest alpha (smoother, less overfit on tiny slices)
            self.alpha_ = max(a for a, s in scores.items() if math.isclose(s, best))
            ctx.info["alpha_cv"] = {"folds": how, "scores": {str(a): s for a, s in scores.items()}}
        else:
            self.alpha_ = self.default_alpha
            ctx.info["alpha_cv"] = {
                "folds": "none",
                "fallback": f"{how}; alpha={self.default_alpha}",
            }
        ctx.info["alpha"] = self.alpha_
        self.vectorizer_, self.clf_ = self._fit_one(
            train.texts, train.y, _weights(train), self.alpha_, train.multi_label
        )
        return self

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self.clf_.predict_proba(self.vectorizer_.transform(texts), len(texts))


def _resolve_encoder(explicit: str | None, ctx: FitContext | None) -> str:
    ref = explicit or (ctx.encoder if ctx is not None else None) or DEFAULT_ENCODER
    return str(resolve_model(ref, purpose="train.encoder"))


def _long_text_options(value: dict[str, Any]) -> dict[str, Any]:
    from label_pipeline.embeddings import LongText

    try:
        LongText.model_validate(value)
    except ValidationError as exc:
        raise ValidationError.from_exception_data(
            "embed_options", relocated(exc, model=LongText)
        ) from None
    return value


#: how long texts are read by the frozen-encoder methods: options of ``LongText``
EmbedOptions = Annotated[
    dict[str, Any],
    AfterValidator(_long_text_options),
    Field(
        description="how long texts are read, keyword options of "
        "``label_pipeline.embeddings.embed_texts`` (``long_text``, ``pooling``, "
        "``title_weight``, ...; default: its defaults)"
    ),
]
Encoder = Annotated[
    str | None,
    Field(
        description="sentence encoder reference; default the training context's encoder, else "
        "all-MiniLM-L6-v2"
    ),
]
BatchSize = Annotated[
    int | None, Field(description="texts per encoder forward pass (default: the device's)")
]


class _EmbeddingMethod(_SklearnTextMethod):
    """Methods on frozen, mean-pooled encoder embeddings (``label_pipeline.embeddings``)."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._device = None

    def _embed(self, texts: list[str]) -> np.ndarray:
        from label_pipeline.embeddings import embed_texts

        return embed_texts(
            self.encoder_dir_, texts, self._device, self.batch_size, **self.embed_options
        )

    def _start(self, train: LabelledTexts, ctx: FitContext) -> np.ndarray:
        _check_train(train, self.name)
        _note_missing(train, ctx)
        self._device = ctx.device
        self.encoder_dir_ = _resolve_encoder(self.encoder, ctx)
        ctx.info["encoder"] = self.encoder_dir_
        return self._embed(train.texts)


class EmbeddingLogRegSettings(MethodSettings):
    """Settings of ``embed_lr`` (``train.method_params.embed_lr``)."""

    encoder: Encoder = None
    C: float = Field(
        10.0,
        gt=0.0,
        description="inverse regularisation strength (embeddings are unit-length, so the "
        "default is larger than scikit-learn's)",
    )
    class_weight: Literal["balanced"] | dict[int, float] | None = Field(
        None, description="``None`` or ``balanced`` (or a weight per class index)"
    )
    max_iter: int = Field(2000, description="iterations of the logistic-regression solver")
    batch_size: BatchSize = None
    embed_options: EmbedOptions = Field(default_factory=dict)


@register
class EmbeddingLogReg(_EmbeddingMethod):
    """Frozen encoder embeddings + logistic regression ("feature extraction").

    Settings: :class:`EmbeddingLogRegSettings`.
    """

    name = "embed_lr"
    Settings = EmbeddingLogRegSettings

    def balances_labels(self) -> bool:
        return self.class_weight == "balanced"

    def fit(self, train: LabelledTexts, valid: LabelledTexts | None, ctx: FitContext) -> Method:
        from sklearn.linear_model import LogisticRegression

        X = self._start(train, ctx)
        self.clf_ = _PerLabelOrMulticlass(
            lambda: LogisticRegression(
                C=self.C,
                class_weight=self.class_weight,
                max_iter=self.max_iter,
                random_state=ctx.seed,
            ),
            train.multi_label,
            len(train.label_names),
        ).fit(X, train.y, _weights(train))
        return self

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self.clf_.predict_proba(self._embed(texts), len(texts))


def knn_votes(sims: np.ndarray, y: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """Weighted share of the ``k`` most similar training rows carrying each label.

    sims: (queries x train) similarities; y: (train x labels) 0/1; w: (train,) weights.
    Returns (queries x labels) in [0, 1].
    """
    k = min(k, sims.shape[1])
    top = np.argpartition(-sims, kth=k - 1, axis=1)[:, :k] if k < sims.shape[1] else None
    if top is None:
        top = np.tile(np.arange(sims.shape[1]), (sims.shape[0], 1))
    wt = w[top]  # (queries x k)
    votes = np.einsum("qk,qkl->ql", wt, y[top].astype(np.float64))
    return votes / np.maximum(wt.sum(axis=1, keepdims=True), 1e-12)


class EmbeddingKNNSettings(MethodSettings):
    """Settings of ``knn`` (``train.method_params.knn``)."""

    encoder: Encoder = None
    max_k: int = Field(15, ge=1, description="largest ``k`` tried on the validation split")
    default_k: int = Field(5, ge=1, description="``k`` when there is nothing to tune on")
    batch_size: BatchSize = None
    embed_options: EmbedOptions = Field(default_factory=dict)


@register
class EmbeddingKNN(_EmbeddingMethod):
    """Nearest neighbours in embedding space (cosine): a label is predicted when at least
    ``m`` of the ``k`` nearest training rows carry it; probability = votes / k.

    ``k`` (and ``m``, multi-label) are tuned on the validation split for micro-F1. Without
    a usable validation split, ``k = min(default_k, rows)`` and ``m = ceil(k / 2)``.

    Settings: :class:`EmbeddingKNNSettings`.
    """

    name = "knn"
    Settings = EmbeddingKNNSettings

    def fit(self, train: LabelledTexts, valid: LabelledTexts | None, ctx: FitContext) -> Method:
        from label_pipeline.metrics import f1_micro_macro

        self.X_ = self._start(train, ctx)
        self.y_ = np.asarray(train.y, dtype=np.int64)
        self.w_ = _weights(train)
        n = len(train)
        if valid is None or len(valid) == 0 or not np.asarray(valid.y).any():
            self.k_ = min(self.default_k, n)
            self.m_ = math.ceil(self.k_ / 2)
            ctx.info["knn_tuning"] = f"no usable validation split: k={self.k_}, m={self.m_}"
            return self
        sims = self._embed(valid.texts) @ self.X_.T
        best: tuple[float, int, int] = (-1.0, 0, 0)
        for k in range(1, min(self.max_k, n) + 1):
            votes = knn_votes(sims, self.y_, self.w_, k)
            ms = range(1, k + 1) if train.multi_label else [0]
            for m in ms:
                if train.multi_label:
                    pred = (votes >= m / k - 1e-9).astype(int)
                else:
                    pred = np.eye(votes.shape[1], dtype=int)[votes.argmax(axis=1)]
                score = f1_micro_macro(valid.y, pred)["micro_f1"]
                if score > best[0] + 1e-12:
                    best = (score, k, m)
        _, self.k_, m = best
        self.m_ = m if train.multi_label else None
        ctx.info["knn_tuning"] = {"k": self.k_, "m": self.m_, "valid_micro_f1": best[0]}
        return self

    @property
    def vote_threshold(self) -> float | None:
        """``m / k``: the probability at which the lookup table predicts a label."""
        return self.m_ / self.k_ if getattr(self, "m_", None) else None

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.y_.shape[1]))
        return knn_votes(self._embed(texts) @ self.X_.T, self.y_, self.w_, self.k_)
