"""Label quality: which labelled rows are probably wrong, and what else disagrees with them.

The labelled rows a user gives are few, and a few wrong labels among them move a few-shot
model more than anything else. This module checks them four ways:

1. **Out-of-fold probabilities** (:func:`out_of_fold_probs`): the labelled rows are split into
   K stratified folds (multi-label: iterative stratification); a fast registered method
   (default ``hybrid``) is fitted on K-1 folds and predicts the held-out one, so no row is
   scored by a model that saw it.
2. **Mislabelled rows** (:func:`find_mislabelled`): cleanlab's confident learning on those
   probabilities (``cleanlab.filter.find_label_issues``; multi-label
   ``cleanlab.multilabel_classification.filter.find_label_issues``), each row's label
   quality score (``cleanlab.rank`` / ``cleanlab.multilabel_classification.rank``: in [0, 1],
   low = the given labels are probably wrong) and a suggested label set (the out-of-fold
   model's prediction).
3. **Conflicting near-duplicates** (:func:`conflict_issues`): copies of one text (exact or
   near, from the clean stage's ``conflicts.json``) that carry different labels.
4. **Label names against their rows** (:func:`label_name_check`): for each label, how well
   its zero-shot score (text against the label's name) separates the rows labelled with it
   from the others (ROC AUC); a label whose rows do not score higher than the rest is either
   badly named for zero-shot use or labelled inconsistently.

:func:`pool_agreement` compares the zero-shot pseudo-labels of the unlabeled pool with the
final model's predictions on it (the report's "Label quality" section).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from label_pipeline.errors import InputDataError
from label_pipeline.methods.base import FitContext, LabelledTexts, get_method
from label_pipeline.store import StageRef

#: issue kinds written to ``label_issues.csv``
MISLABELLED = "mislabelled"
CONFLICT = "conflicting_duplicate"


# ---------------------------------------------------------------- out-of-fold probabilities


def stratified_folds(
    y: np.ndarray, multi_label: bool, folds: int, seed: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Train/held-out index pairs of a stratified K-fold over the rows of ``y`` (0/1 matrix).

    Single-label: ``K = min(folds, rows of the smallest label with at least 2 rows)``; a label
    with a single row cannot be held out and learnt at once, its row is still scored (by
    models that never saw the label). Multi-label: ``K = min(folds, rows // 4)``, iterative
    stratification (``iterstrat``). Returns ``([], reason)`` when not even 2 folds are possible.
    """
    n = int(y.shape[0])
    if multi_label:
        k = min(folds, n // 4)
        if k < 2:
            return [], f"{n} labelled rows are too few for 2-fold cross-validation (need 8)"
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        cv = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return list(cv.split(np.zeros(n), y)), f"{k}-fold multi-label stratified"
    idx = y.argmax(axis=1)
    counts = np.bincount(idx, minlength=y.shape[1])
    usable = counts[counts >= 2]
    if len(usable) < 2 and not (len(usable) == 1 and (counts > 0).sum() > 1):
        return [], (
            f"{n} labelled rows with label counts {counts.tolist()}: cross-validation needs "
            "at least two labels and a label with 2 rows"
        )
    k = min(folds, int(usable.min()))
    if k < 2:
        return [], "too few rows per label for 2-fold cross-validation"
    from sklearn.model_selection import StratifiedKFold

    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # labels with fewer rows than folds: expected, see above
        warnings.simplefilter("ignore", UserWarning)
        return list(cv.split(np.zeros(n), idx)), f"{k}-fold stratified"


@dataclass
class OutOfFold:
    """Out-of-fold probabilities of the labelled rows.

    Attributes:
        probs: (rows x labels) probabilities, row ``i`` from the model that did not see it;
            NaN rows when cross-validation was impossible.
        folds: how the rows were split (``"5-fold stratified"``), or why they were not.
        fit_seconds: time spent fitting and predicting, all folds together.
    """

    probs: np.ndarray
    folds: str
    fit_seconds: float = 0.0
    fold_info: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.probs).all()) and self.probs.size > 0


def out_of_fold_probs(
    rows: LabelledTexts,
    method: str,
    params: dict[str, Any],
    folds: int,
    seed: int,
    context: Callable[[], FitContext],
    valid: LabelledTexts | None = None,
    on_fold: Callable[[], None] | None = None,
    extra: LabelledTexts | None = None,
) -> OutOfFold:
    """Probabilities of every row of ``rows`` from a ``method`` model fitted without it.

    ``context`` makes a fresh :class:`FitContext` for each fold (device, encoder, seed);
    ``valid`` (never the rows themselves) is handed to the method for early stopping or
    tuning; ``extra`` rows (never the rows themselves) join every fold's training rows and
    are not scored; ``on_fold`` is called after each fold (progress).
    """
    splits, how = stratified_folds(rows.y, rows.multi_label, folds, seed)
    n_labels = rows.y.shape[1]
    probs = np.full((len(rows), n_labels), np.nan)
    if not splits:
        return OutOfFold(probs, how)
    cls = get_method(method)
    texts = np.asarray(rows.texts, dtype=object)
    w = None if rows.sample_weight is None else np.asarray(rows.sample_weight)
    started = time.time()
    info: list[dict[str, Any]] = []
    for tr, te in splits:
        part = LabelledTexts(
            texts=list(texts[tr]),
            y=rows.y[tr],
            label_names=rows.label_names,
            multi_label=rows.multi_label,
            sample_weight=None if w is None else w[tr],
        )
        if extra is not None and len(extra):
            part = _joined(part, extra)
        ctx = context()
        with np.errstate(all="ignore"):
            model = cls(**params).fit(part, valid, ctx)
            p = np.asarray(model.predict_proba(list(texts[te])), dtype=np.float64)
        if p.shape != (len(te), n_labels):
            raise ValueError(
                f"quality: {method}.predict_proba returned shape {p.shape}, "
                f"expected {(len(te), n_labels)}"
            )
        probs[te] = p
        info.append({"train_rows": len(part), "held_out": len(te), **ctx.info})
        if on_fold is not None:
            on_fold()
    if not np.isfinite(probs).all():
        bad = int((~np.isfinite(probs).any(axis=1)).sum())
        raise FloatingPointError(
            f"quality: {method} gave NaN/inf probabilities for {bad} held-out row(s); "
            "choose another quality.method (e.g. embed_lr)"
        )
    probs = np.clip(probs, 0.0, 1.0)
    if not rows.multi_label:
        probs = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
    return OutOfFold(probs, how, round(time.time() - started, 3), info)


def _joined(a: LabelledTexts, b: LabelledTexts) -> LabelledTexts:
    """The rows of ``a`` followed by those of ``b`` (weights 1 where a side has none)."""
    weights = None
    if a.sample_weight is not None or b.sample_weight is not None:
        weights = np.concatenate(
            [
                np.ones(len(x)) if x.sample_weight is None else np.asarray(x.sample_weight)
                for x in (a, b)
            ]
        )
    return LabelledTexts(
        texts=list(a.texts) + list(b.texts),
        y=np.concatenate([a.y, b.y]),
        label_names=a.label_names,
        multi_label=a.multi_label,
        sample_weight=weights,
    )


# ---------------------------------------------------------------- mislabelled rows


@dataclass
class Mislabelled:
    """cleanlab's verdict on each row.

    Attributes:
        flagged: bool per row, True where the given labels are probably wrong.
        quality: label quality score per row in [0, 1] (low = probably wrong).
        suggested: suggested label indices per row (the out-of-fold prediction).
        estimated_issues: rows cleanlab flagged, before ``min_margin`` and ``max_share``.
        agreement: share of rows whose suggested labels equal the given ones (how far the
            out-of-fold model agrees with the labels at all: a weak model disagrees with
            many correct labels, and its flags are then mostly its own errors).
    """

    flagged: np.ndarray
    quality: np.ndarray
    suggested: list[list[int]]
    estimated_issues: int = 0
    agreement: float | None = None


def suggested_labels(
    probs: np.ndarray, multi_label: bool, threshold: float = 0.5
) -> list[list[int]]:
    """The out-of-fold model's label set per row: argmax (single-label), else every label
    with probability >= ``threshold`` and the most probable one when none reaches it."""
    if not multi_label:
        return [[int(j)] for j in probs.argmax(axis=1)]
    out = []
    for row in probs:
        chosen = [int(j) for j in np.flatnonzero(row >= threshold)]
        out.append(chosen or [int(row.argmax())])
    return out


def find_mislabelled(
    y: np.ndarray,
    probs: np.ndarray,
    multi_label: bool,
    filter_by: str = "prune_by_noise_rate",
    min_margin: float = 0.0,
    max_share: float | None = None,
) -> Mislabelled:
    """Rows whose given labels (0/1 matrix ``y``) are probably wrong, by cleanlab on the
    out-of-fold ``probs``.

    ``filter_by`` is cleanlab's rule (``prune_by_noise_rate``, ``prune_by_class``, ``both``,
    ``confident_learning``, ``predicted_neq_given``). ``min_margin`` additionally requires
    the suggested labels to differ from the given ones and, single-label, the suggested
    label's probability to exceed the given label's by at least that much (0 = cleanlab's
    verdict as is). ``max_share`` keeps at most that share of the rows flagged, those with
    the lowest label quality score (None = no cap): with a weak out-of-fold model cleanlab's
    noise estimate counts the model's own errors as label noise.
    """
    n, k = y.shape
    suggested = suggested_labels(probs, multi_label)
    if n == 0:
        return Mislabelled(np.zeros(0, bool), np.zeros(0), suggested)  # nothing to check
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if multi_label:
            from cleanlab.multilabel_classification.filter import find_label_issues
            from cleanlab.multilabel_classification.rank import get_label_quality_scores

            given = [[int(j) for j in np.flatnonzero(row)] for row in y]
            # n_jobs=1: a few hundred rows; forked workers would inherit Prefect's
            # signal handlers and print spurious termination tracebacks
            flagged = find_label_issues(given, probs, filter_by=filter_by, n_jobs=1)
            quality = get_label_quality_scores(given, probs)
        else:
            from cleanlab.filter import find_label_issues
            from cleanlab.rank import get_label_quality_scores

            given_idx = y.argmax(axis=1)
            flagged = _single_label_issues(given_idx, probs, filter_by, find_label_issues)
            quality = get_label_quality_scores(given_idx, probs)
    flagged = np.asarray(flagged, dtype=bool)
    estimated = int(flagged.sum())
    for i in np.flatnonzero(flagged):
        given_set = set(np.flatnonzero(y[i]).tolist())
        if set(suggested[i]) == given_set:
            flagged[i] = False
        elif min_margin > 0 and not multi_label:
            g = int(y[i].argmax())
            if probs[i, suggested[i][0]] - probs[i, g] < min_margin:
                flagged[i] = False
    quality = np.asarray(quality, dtype=np.float64)
    if max_share is not None:
        cap = int(round(max_share * n))
        idx = np.flatnonzero(flagged)
        if len(idx) > cap:
            flagged[:] = False
            flagged[idx[np.argsort(quality[idx], kind="stable")[:cap]]] = True
    agreement = float(
        np.mean([set(suggested[i]) == set(np.flatnonzero(y[i]).tolist()) for i in range(n)])
    )
    return Mislabelled(flagged, quality, suggested, estimated, agreement)


def _single_label_issues(
    given: np.ndarray, probs: np.ndarray, filter_by: str, find: Callable[..., Any]
) -> np.ndarray:
    """cleanlab's single-label filter; labels no row carries are left out of the columns
    (cleanlab wants every class among the given labels)."""
    present = np.flatnonzero(np.bincount(given, minlength=probs.shape[1]) > 0)
    if len(present) < 2:
        return np.zeros(len(given), dtype=bool)
    if len(present) < probs.shape[1]:
        remap = {int(c): i for i, c in enumerate(present)}
        sub = probs[:, present]
        sub = sub / np.maximum(sub.sum(axis=1, keepdims=True), 1e-12)
        return find(np.array([remap[int(g)] for g in given]), sub, filter_by=filter_by, n_jobs=1)
    return find(given, probs, filter_by=filter_by, n_jobs=1)


# ---------------------------------------------------------------- conflicting duplicates


def conflict_issues(conflicts: list[dict[str, Any]], labelled_ids: set[str]) -> dict[str, str]:
    """Row id -> description, for the labelled rows in the clean stage's ``conflicts.json``
    (copies of one text with different labels: ``kind`` exact or near, ``ids``, ``labels``,
    ``similarity``) that are still among ``labelled_ids``."""
    out: dict[str, str] = {}
    for c in conflicts:
        ids = [str(i) for i in c.get("ids", [])]
        labels = [list(x) for x in c.get("labels", [])]
        sim = c.get("similarity")
        what = "same text" if c.get("kind") == "exact" else "near duplicate"
        if sim is not None:
            what += f" (similarity {float(sim):.2f})"
        for i, row_id in enumerate(ids):
            if row_id not in labelled_ids:
                continue
            others = [
                f"{other} [{';'.join(labels[j]) if j < len(labels) else '?'}]"
                for j, other in enumerate(ids)
                if j != i
            ]
            text = f"{what} of {', '.join(others)}"
            out[row_id] = f"{out[row_id]}; {text}" if row_id in out else text
    return out


# ---------------------------------------------------------------- label names


def label_name_check(
    y: np.ndarray, scores: np.ndarray, label_names: list[str], min_auc: float = 0.6
) -> list[dict[str, Any]]:
    """Per label: does its zero-shot score (text against the label name) rank the rows
    labelled with it above the others?

    Returns one dict per label: ``label``, ``rows`` (labelled with it), ``auc`` (ROC AUC of
    the label's score for its rows against the rest; None without both), ``top_share``
    (share of its rows whose highest zero-shot score is this label), ``mean_score_own`` /
    ``mean_score_other``, and ``disagrees`` (AUC below ``min_auc``).
    """
    from sklearn.metrics import roc_auc_score

    top = scores.argmax(axis=1) if scores.size else np.zeros(0, int)
    out = []
    for j, name in enumerate(label_names):
        own = y[:, j].astype(bool)
        auc = None
        if 0 < own.sum() < len(own):
            auc = float(roc_auc_score(own, scores[:, j]))
        out.append(
            {
                "label": name,
                "rows": int(own.sum()),
                "auc": auc,
                "top_share": float((top[own] == j).mean()) if own.any() else None,
                "mean_score_own": float(scores[own, j].mean()) if own.any() else None,
                "mean_score_other": float(scores[~own, j].mean()) if (~own).any() else None,
                "disagrees": auc is not None and auc < min_auc,
            }
        )
    return out


# ---------------------------------------------------------------- the pool


def pool_agreement(
    pseudo: list[list[str]], predicted: list[list[str]], label_names: list[str]
) -> dict[str, Any]:
    """How often the zero-shot pseudo-labels and the final model's predicted labels agree on
    the pool rows (same order in both lists). Rows without a pseudo-label are not compared.

    Returns ``rows`` (compared), ``pool_rows``, ``exact_agreement`` (same label set),
    ``overlap`` (mean Jaccard of the two sets), ``cohen_kappa`` (on the first label of each
    set, for single-label pools; None when undefined) and ``per_label`` (pseudo, predicted,
    both, agreement = both / either).
    """
    if len(pseudo) != len(predicted):
        raise ValueError(
            f"pool_agreement: {len(pseudo)} pseudo-label rows but {len(predicted)} predictions"
        )
    pairs = [(set(a), set(b)) for a, b in zip(pseudo, predicted, strict=True) if len(a) > 0]
    out: dict[str, Any] = {"pool_rows": len(pseudo), "rows": len(pairs)}
    if not pairs:
        out.update({"exact_agreement": None, "overlap": None, "cohen_kappa": None})
        out["per_label"] = []
        return out
    out["exact_agreement"] = float(np.mean([a == b for a, b in pairs]))
    out["overlap"] = float(np.mean([len(a & b) / max(len(a | b), 1) for a, b in pairs]))
    single = all(len(a) == 1 and len(b) <= 1 for a, b in pairs)
    kappa = None
    if single:
        from sklearn.metrics import cohen_kappa_score

        first_a = [next(iter(a)) for a, _ in pairs]
        first_b = [next(iter(b)) if b else "" for _, b in pairs]
        if len(set(first_a) | set(first_b)) > 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                k = cohen_kappa_score(first_a, first_b)
            kappa = None if k != k else float(k)
    out["cohen_kappa"] = kappa
    per = []
    for name in label_names:
        a = sum(name in p for p, _ in pairs)
        b = sum(name in q for _, q in pairs)
        both = sum(name in p and name in q for p, q in pairs)
        either = a + b - both
        per.append(
            {
                "label": name,
                "pseudo": a,
                "predicted": b,
                "both": both,
                "agreement": both / either if either else None,
            }
        )
    out["per_label"] = per
    return out


def load_issues(ref: StageRef) -> Any:
    """The quality stage's ``issues/`` dataset."""
    import datasets

    path = ref.dir / "issues"
    if not path.is_dir():
        raise InputDataError(f"{path} is missing; re-run the quality stage (refresh quality)")
    return datasets.load_from_disk(str(path))
