"""Calibration: make a model's probabilities mean what they say (a 0.9 right 90 % of the time).

A calibrator maps a model's probabilities (rows x labels) to calibrated ones, fitted on the
validation split:

- ``temperature``: single-label, one scalar ``T`` on the log-probabilities
  (``softmax(log p / T)``); multi-label, one ``T`` per label on the logits
  (``sigmoid(logit p / T_j)``);
- ``platt``: a slope and an intercept on the logits (multi-label: per label; single-label: one
  slope and one intercept per label on the log-probabilities, then softmax);
- ``isotonic``: a monotone step function per label (single-label: one-vs-rest, rows renormalised),
  clipped away from 0 and 1 so a log loss stays finite;
- ``none``: the identity.

:func:`fit_calibration` chooses among them by cross-fitted log loss on valid (``folds``-fold:
fit on the other folds, score the held-out one), returns the chosen calibrator refitted on all of
valid (for test and the pool) and the *cross-fitted* valid probabilities (so scores measured on
valid, and a decision rule tuned on them, stay honest). Inputs it cannot calibrate fall back to
the identity with a note that says why and what is needed: fewer than ``min_rows`` valid rows,
probabilities that are all equal; a label with no positive (or no negative) valid row keeps its
probabilities as they are in the per-label calibrators.

Scores: :func:`calibration_scores` — ECE with 15 equal-width bins and its adaptive variant
(15 equal-mass bins), Brier score and log loss. Single-label ECE bins the top-label confidence
against whether the top label is right; multi-label ECE bins every (row, label) probability
against whether the row carries that label. The Brier score is the mean over rows of the summed
squared error over labels (single-label) or the mean over (row, label) pairs (multi-label).
:func:`plot_reliability` draws the reliability diagram.

Calibrators serialise to JSON (:meth:`Calibrator.to_json`, :func:`calibrator_from_json`); a
run's calibrator lives in its model directory as ``calibration.json`` (:func:`save_calibrator`),
and :func:`label_pipeline.methods.base.load_saved` applies it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from label_pipeline.metrics import log_loss_of

#: calibration methods (``train.calibration``)
CalibrationMethod = Literal["auto", "temperature", "platt", "isotonic", "none"]
CANDIDATES = ("none", "temperature", "platt", "isotonic")
#: fewer valid rows than this: no calibration (identity), reported
MIN_CALIBRATION_ROWS = 30
N_BINS = 15
FOLDS = 5
CALIBRATION_FILE = "calibration.json"
_EPS = 1e-6


def _clip(p: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)


def _logit(p: np.ndarray) -> np.ndarray:
    p = _clip(p)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _bce(p: np.ndarray, y: np.ndarray) -> float:
    p = _clip(p)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


# ---------------------------------------------------------------- scores


def _confidence_outcome(
    y: np.ndarray, probs: np.ndarray, multi_label: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The (confidence, outcome) pairs ECE bins: top label vs correct (single-label), every
    (row, label) probability vs gold (multi-label)."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y)
    if multi_label:
        return probs.ravel(), y.astype(np.float64).ravel()
    top = probs.argmax(axis=1)
    rows = np.arange(len(probs))
    return probs[rows, top], (y.argmax(axis=1) == top).astype(np.float64)


def reliability_bins(
    y: np.ndarray,
    probs: np.ndarray,
    multi_label: bool,
    n_bins: int = N_BINS,
    adaptive: bool = False,
) -> list[dict[str, float]]:
    """Non-empty bins: ``{"lo", "hi", "n", "confidence", "accuracy"}`` (mean confidence and
    observed frequency). Equal-width bins over [0, 1], or ``adaptive`` equal-mass bins."""
    conf, hit = _confidence_outcome(y, probs, multi_label)
    if conf.size == 0:
        return []
    if adaptive:
        order = np.argsort(conf, kind="stable")
        groups = [g for g in np.array_split(order, min(n_bins, conf.size)) if g.size]
    else:
        idx = np.minimum((conf * n_bins).astype(int), n_bins - 1)
        groups = [np.flatnonzero(idx == b) for b in range(n_bins)]
        groups = [g for g in groups if g.size]
    return [
        {
            "lo": float(conf[g].min())
            if adaptive
            else float(np.floor(conf[g[0]] * n_bins) / n_bins),
            "hi": float(conf[g].max())
            if adaptive
            else float(min(np.floor(conf[g[0]] * n_bins) + 1, n_bins) / n_bins),
            "n": int(g.size),
            "confidence": float(conf[g].mean()),
            "accuracy": float(hit[g].mean()),
        }
        for g in groups
    ]


def ece(
    y: np.ndarray,
    probs: np.ndarray,
    multi_label: bool,
    n_bins: int = N_BINS,
    adaptive: bool = False,
) -> float:
    """Expected calibration error: the count-weighted mean |accuracy - confidence| over bins."""
    bins = reliability_bins(y, probs, multi_label, n_bins, adaptive)
    total = sum(b["n"] for b in bins)
    if not total:
        return float("nan")
    return float(sum(b["n"] * abs(b["accuracy"] - b["confidence"]) for b in bins) / total)


def brier(y: np.ndarray, probs: np.ndarray, multi_label: bool) -> float:
    """Brier score (see the module docstring for the multi-label convention)."""
    y = np.asarray(y, dtype=np.float64)
    if y.shape[0] == 0:
        return float("nan")
    sq = (np.asarray(probs, dtype=np.float64) - y) ** 2
    return float(sq.mean() if multi_label else sq.sum(axis=1).mean())


def calibration_scores(y: np.ndarray, probs: np.ndarray, multi_label: bool) -> dict[str, float]:
    """``ece`` (15 equal-width bins), ``adaptive_ece`` (15 equal-mass bins), ``brier``,
    ``log_loss`` and ``n`` of probabilities against 0/1 gold labels."""
    return {
        "ece": ece(y, probs, multi_label),
        "adaptive_ece": ece(y, probs, multi_label, adaptive=True),
        "brier": brier(y, probs, multi_label),
        "log_loss": log_loss_of(y, probs, multi_label),
        "n": int(np.asarray(y).shape[0]),
    }


# ---------------------------------------------------------------- calibrators


@dataclass
class Calibrator:
    """A fitted calibrator. ``method`` names it; ``params`` holds what it learned (JSON);
    ``skipped_labels``: labels a per-label calibrator left as they are (no positive or no
    negative valid row)."""

    method: str
    multi_label: bool
    params: dict[str, Any] = field(default_factory=dict)
    skipped_labels: list[int] = field(default_factory=list)

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of the same shape."""
        p = np.asarray(probs, dtype=np.float64)
        if self.method == "none" or p.shape[0] == 0:
            return p
        out = self._apply(p)
        if self.multi_label and self.skipped_labels:
            out[:, self.skipped_labels] = p[:, self.skipped_labels]
        return out

    def _apply(self, p: np.ndarray) -> np.ndarray:
        if self.method == "temperature":
            t = np.asarray(self.params["temperature"], dtype=np.float64)
            if self.multi_label:
                return _sigmoid(_logit(p) / t[None, :])
            return _softmax(np.log(_clip(p)) / float(t[0]))
        if self.method == "platt":
            a = np.asarray(self.params["slope"], dtype=np.float64)
            b = np.asarray(self.params["intercept"], dtype=np.float64)
            if self.multi_label:
                return _sigmoid(a[None, :] * _logit(p) + b[None, :])
            return _softmax(float(a[0]) * np.log(_clip(p)) + b[None, :])
        if self.method == "isotonic":
            out = p.copy()
            for j, (xs, ys) in enumerate(zip(self.params["x"], self.params["y"], strict=True)):
                if xs:
                    out[:, j] = np.interp(p[:, j], xs, ys)
            if not self.multi_label:
                s = out.sum(axis=1, keepdims=True)
                out = np.where(s > 0, out / np.where(s > 0, s, 1.0), p)
            return out
        raise ValueError(f"unknown calibrator {self.method!r}")

    def describe(self) -> str:
        if self.method == "temperature":
            t = self.params["temperature"]
            return (
                f"temperature {t[0]:.3f}"
                if len(t) == 1
                else f"temperature per label ({min(t):.2f}–{max(t):.2f})"
            )
        if self.method == "none":
            return "none (identity)"
        return {"platt": "Platt scaling", "isotonic": "isotonic regression"}[self.method]

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "multi_label": self.multi_label,
            "params": self.params,
            "skipped_labels": self.skipped_labels,
        }


def calibrator_from_json(data: dict[str, Any]) -> Calibrator:
    return Calibrator(
        method=str(data["method"]),
        multi_label=bool(data["multi_label"]),
        params=dict(data.get("params", {})),
        skipped_labels=[int(j) for j in data.get("skipped_labels", [])],
    )


def _degenerate_labels(y: np.ndarray) -> list[int]:
    """Labels without a positive or without a negative row."""
    pos = y.sum(axis=0)
    return [j for j in range(y.shape[1]) if pos[j] == 0 or pos[j] == y.shape[0]]


def _fit_scalar(loss, lo: float = -4.0, hi: float = 4.0) -> float:
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return float(res.x)


def _fit_temperature(p: np.ndarray, y: np.ndarray, multi_label: bool) -> Calibrator:
    if not multi_label:
        logp = np.log(_clip(p))
        yi = y.argmax(axis=1)
        rows = np.arange(len(y))

        def nll(log_t: float) -> float:
            q = _softmax(logp / np.exp(log_t))
            return float(-np.log(np.maximum(q[rows, yi], 1e-12)).mean())

        return Calibrator("temperature", False, {"temperature": [float(np.exp(_fit_scalar(nll)))]})
    skipped = _degenerate_labels(y)
    z = _logit(p)
    temps = []
    for j in range(y.shape[1]):
        if j in skipped:
            temps.append(1.0)
            continue
        zj, yj = z[:, j], y[:, j]
        temps.append(
            float(np.exp(_fit_scalar(lambda lt, zj=zj, yj=yj: _bce(_sigmoid(zj / np.exp(lt)), yj))))
        )
    return Calibrator("temperature", True, {"temperature": temps}, skipped)


def _fit_platt(p: np.ndarray, y: np.ndarray, multi_label: bool) -> Calibrator:
    from scipy.optimize import minimize

    if multi_label:
        skipped = _degenerate_labels(y)
        z = _logit(p)
        slopes, intercepts = [], []
        for j in range(y.shape[1]):
            if j in skipped:
                slopes.append(1.0)
                intercepts.append(0.0)
                continue
            zj, yj = z[:, j], y[:, j]
            # Platt's smoothed targets keep a separable label from driving the slope to infinity
            n_pos, n_neg = yj.sum(), len(yj) - yj.sum()
            t = np.where(yj > 0, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

            def loss(w: np.ndarray, zj=zj, t=t) -> float:
                return _bce(_sigmoid(w[0] * zj + w[1]), t)

            res = minimize(loss, np.array([1.0, 0.0]), method="L-BFGS-B")
            slopes.append(float(res.x[0]))
            intercepts.append(float(res.x[1]))
        return Calibrator("platt", True, {"slope": slopes, "intercept": intercepts}, skipped)
    logp = np.log(_clip(p))
    yi = y.argmax(axis=1)
    rows = np.arange(len(y))
    k = y.shape[1]

    onehot = np.eye(k)[yi]

    def nll(w: np.ndarray) -> tuple[float, np.ndarray]:
        q = _softmax(w[0] * logp + w[1:][None, :])
        # a small ridge on the intercepts: a label rare or absent in valid keeps a finite one
        loss = -np.log(np.maximum(q[rows, yi], 1e-12)).mean() + 1e-2 * (w[1:] ** 2).mean()
        err = q - onehot
        grad = np.concatenate(
            [[(err * logp).sum(axis=1).mean()], err.mean(axis=0) + 2e-2 * w[1:] / k]
        )
        return float(loss), grad

    res = minimize(nll, np.concatenate([[1.0], np.zeros(k)]), jac=True, method="L-BFGS-B")
    b = res.x[1:] - res.x[1:].mean()
    return Calibrator(
        "platt", False, {"slope": [float(res.x[0])], "intercept": [float(v) for v in b]}
    )


def _fit_isotonic(p: np.ndarray, y: np.ndarray, multi_label: bool) -> Calibrator:
    from sklearn.isotonic import IsotonicRegression

    skipped = _degenerate_labels(y)
    n = len(y)
    lo, hi = 0.5 / (n + 1), 1 - 0.5 / (n + 1)  # away from 0 and 1: a finite log loss
    xs, ys = [], []
    for j in range(y.shape[1]):
        if j in skipped:
            xs.append([])
            ys.append([])
            continue
        iso = IsotonicRegression(y_min=lo, y_max=hi, out_of_bounds="clip").fit(p[:, j], y[:, j])
        xs.append([float(v) for v in iso.X_thresholds_])
        ys.append([float(v) for v in iso.y_thresholds_])
    return Calibrator("isotonic", multi_label, {"x": xs, "y": ys}, skipped)


def fit_calibrator(method: str, probs: np.ndarray, y: np.ndarray, multi_label: bool) -> Calibrator:
    """Fit one calibrator (``temperature``, ``platt``, ``isotonic`` or ``none``) on all rows."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if method == "none":
        return Calibrator("none", multi_label)
    fit = {"temperature": _fit_temperature, "platt": _fit_platt, "isotonic": _fit_isotonic}
    if method not in fit:
        raise ValueError(f"unknown calibration method {method!r}; use one of {CANDIDATES}")
    return fit[method](p, y, multi_label)


# ---------------------------------------------------------------- choosing by cross-fitting


@dataclass
class CalibrationFit:
    """What :func:`fit_calibration` chose and measured.

    Attributes:
        calibrator: the chosen calibrator fitted on all valid rows (apply it to test / pool).
        valid_probs: the valid probabilities cross-fitted (each fold calibrated by a calibrator
            fitted on the other folds).
        cv_log_loss: cross-fitted valid log loss per candidate (``none`` = uncalibrated).
        requested: the configured method (``auto`` = chosen by ``cv_log_loss``).
        fallback: True when calibration was not possible (see ``notes``); identity applied.
        notes: what was special (fallbacks, labels left as they are), for summaries.
    """

    calibrator: Calibrator
    valid_probs: np.ndarray
    cv_log_loss: dict[str, float]
    requested: str
    fallback: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.calibrator.method

    def facts(self) -> dict[str, Any]:
        """Plain-JSON summary (for fit.json, runs.json, summaries)."""
        return {
            "method": self.method,
            "requested": self.requested,
            "describe": self.calibrator.describe(),
            "cv_log_loss": {k: round(v, 5) for k, v in self.cv_log_loss.items()},
            "fallback": self.fallback,
            "notes": self.notes,
        }


def _folds(n: int, k: int, seed: int) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return [f for f in np.array_split(perm, k) if f.size]


def fit_calibration(
    probs: np.ndarray,
    y: np.ndarray,
    multi_label: bool,
    method: str = "auto",
    folds: int = FOLDS,
    min_rows: int = MIN_CALIBRATION_ROWS,
    seed: int = 0,
    labels: list[str] | None = None,
    what: str = "valid",
    min_rows_param: str = "train.calibration_min_rows",
) -> CalibrationFit:
    """Choose and fit a calibrator on ``probs`` / ``y`` (valid); see the module docstring.

    ``method``: ``auto`` (the candidate with the lowest cross-fitted log loss, ``none``
    included), or one of ``temperature``, ``platt``, ``isotonic``, ``none``.
    ``what``: how the rows are named in the notes (e.g. ``valid``); ``min_rows_param``: the
    config parameter that sets ``min_rows`` (named in the fallback note).
    """
    p = np.asarray(probs, dtype=np.float64)
    yy = np.asarray(y, dtype=np.float64)
    if p.shape != yy.shape:
        raise ValueError(f"probabilities {p.shape} and labels {yy.shape} differ in shape")
    n = p.shape[0]
    names = labels or [str(j) for j in range(p.shape[1])]
    identity = Calibrator("none", multi_label)
    raw_loss = log_loss_of(yy, p, multi_label) if n else float("nan")
    if method == "none":
        return CalibrationFit(identity, p, {"none": raw_loss}, method)
    if n < min_rows:
        note = (
            f"{what} has {n} rows; calibration needs at least {min_rows} ({min_rows_param}): "
            "probabilities are not calibrated (identity); label more validation rows"
        )
        return CalibrationFit(identity, p, {"none": raw_loss}, method, True, [note])
    if n and np.ptp(p, axis=0).max() == 0:
        note = (
            f"every {what} row has the same probabilities (the model does not tell rows apart): "
            "nothing to calibrate, probabilities left as they are (identity)"
        )
        return CalibrationFit(identity, p, {"none": raw_loss}, method, True, [note])
    notes = []
    degenerate = _degenerate_labels(yy)
    if degenerate and multi_label:
        no_pos = [names[j] for j in degenerate if yy[:, j].sum() == 0]
        all_pos = [names[j] for j in degenerate if yy[:, j].sum() > 0]
        if no_pos:
            notes.append(
                f"label(s) {no_pos} have no positive {what} row: their probabilities are not "
                "calibrated (identity); label more rows of them"
            )
        if all_pos:
            notes.append(
                f"label(s) {all_pos} are on every {what} row: their probabilities are not "
                "calibrated (identity)"
            )
    elif degenerate:
        notes.append(
            f"label(s) {[names[j] for j in degenerate if yy[:, j].sum() == 0]} have no {what} "
            "row: the calibrator learns nothing about them"
        )
    candidates = list(CANDIDATES) if method == "auto" else ["none", method]
    parts = _folds(n, min(folds, n), seed)
    cross: dict[str, np.ndarray] = {"none": p}
    losses: dict[str, float] = {"none": raw_loss}
    for cand in candidates:
        if cand == "none":
            continue
        out = np.empty_like(p)
        for held in parts:
            rest = np.setdiff1d(np.arange(n), held)
            out[held] = fit_calibrator(cand, p[rest], yy[rest], multi_label).apply(p[held])
        cross[cand] = out
        losses[cand] = log_loss_of(yy, out, multi_label)
    chosen = (
        min(losses, key=lambda c: (losses[c], CANDIDATES.index(c))) if method == "auto" else method
    )
    calibrator = fit_calibrator(chosen, p, yy, multi_label)
    if method == "auto" and chosen == "none":
        notes.append(
            "no calibrator lowered the cross-fitted log loss: probabilities left as they are"
        )
    return CalibrationFit(calibrator, cross[chosen], losses, method, False, notes)


# ---------------------------------------------------------------- saving


def save_calibrator(
    calibrator: Calibrator, model_dir: str | Path, facts: dict[str, Any] | None = None
) -> None:
    """Write ``calibration.json`` into a saved model's directory."""
    data = {**calibrator.to_json(), "facts": facts or {}}
    (Path(model_dir) / CALIBRATION_FILE).write_text(json.dumps(data, indent=2))


def load_calibrator(model_dir: str | Path) -> Calibrator | None:
    """The calibrator saved with a model, or None when it has none."""
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    return calibrator_from_json(json.loads(path.read_text()))


class CalibratedMethod:
    """A loaded method whose ``predict_proba`` returns calibrated probabilities; every other
    attribute is the wrapped method's (``model``)."""

    def __init__(self, model: Any, calibrator: Calibrator) -> None:
        self.model = model
        self.calibrator = calibrator

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        raw = np.asarray(self.model.predict_proba(texts), dtype=np.float64)
        return self.calibrator.apply(raw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["model"], name)


# ---------------------------------------------------------------- the reliability diagram


def plot_reliability(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    multi_label: bool,
    path: str | Path,
    title: str,
    n_bins: int = N_BINS,
) -> None:
    """Reliability diagram: observed frequency vs mean confidence per equal-width bin, one line
    per entry of ``curves`` (name -> (gold 0/1, probabilities)), ECE in the legend; below, how
    many predictions fall in each bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(5.5, 6.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    width = 1.0 / n_bins
    for i, (name, (y, probs)) in enumerate(curves.items()):
        bins = reliability_bins(y, probs, multi_label, n_bins)
        if not bins:
            continue
        e = ece(y, probs, multi_label, n_bins)
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            marker="o",
            label=f"{name} (ECE {e:.3f})",
        )
        off = (i - (len(curves) - 1) / 2) * width / max(len(curves), 1)
        hist.bar(
            [(b["lo"] + b["hi"]) / 2 + off for b in bins],
            [b["n"] for b in bins],
            width=width / max(len(curves), 1),
            alpha=0.7,
            label=name,
        )
    what = "P(label) per row and label" if multi_label else "top-label confidence"
    ax.set_ylabel("observed frequency" if multi_label else "accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title, fontsize=10)
    hist.set_xlabel(what)
    hist.set_ylabel("count")
    hist.set_yscale("log")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
