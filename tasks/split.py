"""The `split` stage: labelled rows into train/valid/test, nested training slices.

- Rows with a user-provided ``split`` (from ingest's ``split_column``) keep it; rows with
  no label go to ``unlabeled``.
- The other labelled rows are split ``1 - valid - test`` / ``valid`` / ``test`` (default
  50/25/25): by iterative stratification (Sechidis, Tsoumakas & Vlahavas, 2011) for
  multi-label data, by per-label stratified sampling for single-label data.
- Nested training slices (default 8, 16, 32, 64, 128 and ``all``) are drawn from the
  train split, largest first, each a stratified subsample of the previous one, so every
  slice contains all smaller slices. Sizes not smaller than the train split are skipped
  (noted in the summary). A user slice file (ingest's ``slice_file``) overrides them; its
  rows are put into train.
- Rows labelled after the first run (the ``extra_labels`` stage, from ``ingest.extra_labels``)
  leave the unlabeled pool and join train and every training slice, with their provenance
  in train's ``source`` column (``round-<n>``; rows labelled in the input: ``input``). The
  valid/test assignment and the slices drawn from the input's own rows stay as they were,
  so runs before and after a labelling round are scored on the same rows.
- Label fixes (``ingest.label_fixes``, stored by the ``extra_labels`` stage) are applied after
  the assignment: every split and slice is drawn from the rows' original labels, then a
  relabelled row takes its new labels where it is (train's ``source``: ``fixed-<k>``) and a
  dropped row (``DROP``) leaves every split and slice; it does not join the pool. So valid
  and test stay the same rows (less the dropped ones) across fixing rounds. The summary and
  the manifest (``label_fixes``) count the relabelled and dropped rows per split.
- Everything is deterministic for a ``seed``. Labels too rare to appear in every split are
  named in a warning (log and summary).

Output directory: ``splits/`` (DatasetDict ``train``, ``valid``, ``test``, ``unlabeled``;
train rows carry ``min_slice``, the size of the smallest slice holding the row, the train
size for rows only in ``all``, and ``source``: ``input``, ``round-<n>`` or ``fixed-<k>``),
``slices.json`` (``{"8": [ids], ..., "all": [ids]}``), ``labels.json``, ``summary.md``,
``sample.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from label_pipeline.artifacts import md_table
from label_pipeline.data import (
    CANONICAL_FEATURES,
    SPLITS,
    label_matrix,
    load_rows,
    read_label_info,
    save_dataset,
    write_label_info,
)
from label_pipeline.errors import ConfigError, InputDataError
from label_pipeline.orchestration import write_summary
from label_pipeline.progress import stage_logger
from label_pipeline.store import BuildContext, StageRef, StageSpec, StageStore

SPEC = StageSpec("split", "3")
STAGE, VERSION = SPEC.name, SPEC.version
INPUT_SOURCE = "input"
SPLIT_FRACTION_NAMES = ("train", "valid", "test")


class SplitConfig(BaseModel):
    """Settings of the ``split`` stage.

    Attributes:
        valid_fraction: share of the labelled rows (without a user split) for ``valid``.
        test_fraction: share for ``test``; ``train`` gets the rest.
        slice_sizes: nested training slice sizes (rows); ``all`` is always added. Sizes
            not smaller than the train split are skipped with a note.
        method: ``auto`` (iterative stratification for multi-label data, stratified
            sampling for single-label), ``iterative`` or ``stratified`` (single-label only).
        seed: random seed; the same seed and input give the same splits and slices.
        sample_rows: rows in ``sample.json``.
    """

    model_config = ConfigDict(extra="forbid")

    valid_fraction: float = Field(0.25, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.25, ge=0.0, lt=1.0)
    slice_sizes: list[int] = Field(default_factory=lambda: [8, 16, 32, 64, 128])
    method: Literal["auto", "iterative", "stratified"] = "auto"
    seed: int = 0
    sample_rows: int = Field(16, ge=0, le=100)

    @field_validator("slice_sizes")
    @classmethod
    def _positive(cls, sizes: list[int]) -> list[int]:
        if any(s <= 0 for s in sizes):
            raise ValueError(f"split.slice_sizes: sizes must be positive row counts (got {sizes})")
        return sorted(set(sizes))

    @model_validator(mode="after")
    def _fractions(self) -> SplitConfig:
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"split: valid_fraction + test_fraction = {self.valid_fraction + self.test_fraction:g} "
                "leaves no rows for train; make their sum smaller than 1"
            )
        return self

    def fractions(self) -> list[float]:
        return [
            1.0 - self.valid_fraction - self.test_fraction,
            self.valid_fraction,
            self.test_fraction,
        ]


# ---------------------------------------------------------------- assignment algorithms


def _pick(values: np.ndarray, rng: np.random.Generator, tie: np.ndarray | None = None) -> int:
    """Index of the largest value; ties broken by ``tie`` (largest), then at random."""
    best = np.flatnonzero(values == values.max())
    if len(best) > 1 and tie is not None:
        t = tie[best]
        best = best[t == t.max()]
    return int(best[0] if len(best) == 1 else rng.choice(best))


def iterative_stratification(
    y: np.ndarray, fractions: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Assign each row of the multi-hot matrix ``y`` to a split (index into ``fractions``).

    Sechidis et al.'s algorithm: the label with the fewest rows left is distributed first,
    each of its rows going to the split that most wants that label (then the split that
    wants most rows, then at random). Rows without labels fill the splits' remaining demand.
    """
    y = np.asarray(y, dtype=np.int64)
    n, n_labels = y.shape
    fr = np.asarray(fractions, dtype=float)
    out = np.full(n, -1, dtype=np.int64)
    want_rows = fr * n
    want = np.outer(fr, y.sum(axis=0)).astype(float)
    left = y.sum(axis=0).astype(np.int64)
    order = rng.permutation(n)  # random order within a label
    rows_of = [order[y[order, j] > 0] for j in range(n_labels)]
    while (left > 0).any():
        j = int(np.flatnonzero(left == left[left > 0].min())[0])
        for r in rows_of[j]:
            if out[r] >= 0:
                continue
            s = _pick(want[:, j], rng, want_rows)
            out[r] = s
            want[s] -= y[r]
            want_rows[s] -= 1
            left -= y[r]
    for r in order[out[order] < 0]:
        s = _pick(want_rows, rng)
        out[r] = s
        want_rows[s] -= 1
    return out


def largest_remainder(total: int, weights: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Integer counts summing to ``total`` in proportion to ``weights`` (ties at random)."""
    w = np.asarray(weights, dtype=float)
    raw = total * w / w.sum() if w.sum() > 0 else np.zeros_like(w)
    counts = np.floor(raw).astype(np.int64)
    short = total - int(counts.sum())
    if short > 0:
        rema = raw - counts
        order = np.lexsort((rng.random(len(w)), -rema))
        counts[order[:short]] += 1
    return counts


def stratified_assignment(
    classes: np.ndarray, fractions: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Single-label stratified sampling: each class's rows are shuffled and cut in the
    proportions ``fractions``; the rows left over by rounding go to the splits furthest
    below their overall share, so the split sizes stay proportional too."""
    classes = np.asarray(classes)
    fr = np.asarray(fractions, dtype=float)
    out = np.full(len(classes), -1, dtype=np.int64)
    assigned = np.zeros(len(fr))
    seen = 0
    for c in np.unique(classes):
        idx = rng.permutation(np.flatnonzero(classes == c))
        seen += len(idx)
        counts = np.floor(len(idx) * fr).astype(np.int64)
        for _ in range(len(idx) - int(counts.sum())):
            deficit = seen * fr - assigned - counts
            counts[_pick(deficit, rng)] += 1
        assigned += counts
        out[idx] = np.repeat(np.arange(len(fr)), counts)
    return out


def subsample(y: np.ndarray, size: int, multi_label: bool, rng: np.random.Generator) -> np.ndarray:
    """Row positions of a stratified subsample of exactly ``size`` rows of ``y``."""
    n = len(y)
    if multi_label:
        side = iterative_stratification(y, [size / n, 1.0 - size / n], rng)
        chosen = np.flatnonzero(side == 0)
        if len(chosen) > size:  # the algorithm meets label demands, not the total exactly
            chosen = rng.choice(chosen, size, replace=False)
        elif len(chosen) < size:
            rest = np.flatnonzero(side != 0)
            chosen = np.concatenate([chosen, rng.choice(rest, size - len(chosen), replace=False)])
        return np.sort(chosen)
    classes = y.argmax(axis=1)
    uniq, counts = np.unique(classes, return_counts=True)
    take = largest_remainder(size, counts, rng)
    picks = [
        rng.choice(np.flatnonzero(classes == c), k, replace=False)
        for c, k in zip(uniq, take, strict=True)
    ]
    return np.sort(np.concatenate(picks)) if picks else np.array([], dtype=np.int64)


def nested_slices(
    y: np.ndarray, sizes: Sequence[int], multi_label: bool, rng: np.random.Generator
) -> tuple[dict[int, np.ndarray], list[int]]:
    """Nested slices of the rows of ``y``: ``{size: row positions}``, each a stratified
    subsample of the next larger one. Returns (slices, sizes skipped as too large)."""
    n = len(y)
    skipped = [s for s in sizes if s >= n]
    current = np.arange(n)
    out: dict[int, np.ndarray] = {}
    for size in sorted((s for s in sizes if s < n), reverse=True):
        current = current[subsample(y[current], size, multi_label, rng)]
        out[size] = current
    return dict(sorted(out.items())), skipped


# ---------------------------------------------------------------- the stage


def resolve_method(cfg: SplitConfig, multi_label: bool) -> str:
    """The split method ``cfg`` asks for on this data (``auto``: iterative for multi-label,
    stratified for single-label)."""
    method = cfg.method
    if method == "auto":
        method = "iterative" if multi_label else "stratified"
    if method == "stratified" and multi_label:
        raise ConfigError(
            "split.method='stratified' needs single-label data but the rows are multi-label; "
            "use 'iterative' or 'auto'"
        )
    return method


def _given_splits(
    ids: list[str],
    labels: list[list[str]],
    given: list[str],
    user_slices: dict[str, list[str]] | None,
    extra_ids: set[str] | None,
    warnings: list[str],
) -> list[str]:
    """Each row's split before the draw: unlabeled rows, extra-labelled rows (train), the
    user's splits and the rows of the user's slices (train); "" = to be drawn."""
    n = len(ids)
    split = ["" for _ in range(n)]
    labelled = [bool(x) for x in labels]
    if not any(labelled):
        raise InputDataError("split: no labelled rows; the ingest stage's label column is empty")
    bad_given = []
    for i in range(n):
        g = given[i] if i < len(given) else ""
        if not labelled[i]:
            split[i] = "unlabeled"
            if g and g != "unlabeled":
                bad_given.append(ids[i])
        elif extra_ids and ids[i] in extra_ids:
            split[i] = "train"
        elif g:
            split[i] = g
    if bad_given:
        warnings.append(
            f"{len(bad_given)} row(s) marked train/valid/test carry no label and go to "
            f"unlabeled (e.g. {bad_given[:5]})"
        )
    if user_slices:
        forced = {i for k, v in user_slices.items() if k != "all" for i in v}
        for i in range(n):
            if ids[i] in forced and split[i] == "" and labelled[i]:
                split[i] = "train"
        elsewhere = [ids[i] for i in range(n) if ids[i] in forced and split[i] != "train"]
        if elsewhere:
            warnings.append(
                f"{len(elsewhere)} id(s) of the user slice file are not training rows (user split or "
                f"no label) and are left out of the slices (e.g. {elsewhere[:5]})"
            )
    return split


def _training_slices(
    ids: list[str],
    split: list[str],
    y: np.ndarray,
    multi_label: bool,
    cfg: SplitConfig,
    rng: np.random.Generator,
    user_slices: dict[str, list[str]] | None,
    extra_ids: set[str] | None,
    warnings: list[str],
    notes: list[str],
) -> dict[str, list[str]]:
    """The nested training slices (drawn, or the user's), extra-labelled rows in every one."""
    train_all = np.flatnonzero(np.array([s == "train" for s in split]))
    train_ids = [ids[i] for i in train_all]
    added = [i for i in train_ids if extra_ids and i in extra_ids]
    train = np.array([i for i in train_all if not (extra_ids and ids[i] in extra_ids)], dtype=int)
    if not len(train):
        raise InputDataError(
            "split: the train split is empty (every labelled row has a user split other than "
            "train); mark some rows train or leave their split empty"
        )
    slices: dict[str, list[str]] = {}
    if user_slices:
        in_train = set(train_ids)
        for k in sorted((k for k in user_slices if k != "all"), key=int):
            slices[k] = [i for i in user_slices[k] if i in in_train]
            missing = len(user_slices[k]) - len(slices[k])
            if missing:
                warnings.append(
                    f"user slice {k}: {missing} id(s) not in train (dropped by clean or moved)"
                )
        notes.append("training slices from the user slice file")
    else:
        chosen, skipped = nested_slices(y[train], cfg.slice_sizes, multi_label, rng)
        for size, pos in chosen.items():
            slices[str(size)] = [ids[i] for i in train[pos]]
        if skipped:
            notes.append(
                f"slice sizes {skipped} skipped: not smaller than the train split ({len(train)} rows)"
            )
    if added:
        for k in slices:
            slices[k] = slices[k] + added
        notes.append(
            f"{len(added)} row(s) labelled after the first run (extra labels) joined train and "
            "every slice"
        )
    slices["all"] = train_ids
    return slices


def _coverage_warnings(
    split: list[str], kept: np.ndarray, y: np.ndarray, names: list[str]
) -> list[str]:
    """Empty splits, and labels too rare to appear in every split."""
    warnings = []
    for part in SPLIT_FRACTION_NAMES:
        if not any(s == part and k for s, k in zip(split, kept, strict=True)):
            warnings.append(f"the {part} split is empty")
    rare: dict[str, list[str]] = {}
    for part in SPLIT_FRACTION_NAMES:
        rows = np.array([s == part for s in split]) & kept
        if rows.any():
            counts = y[rows].sum(axis=0)
            for j, name in enumerate(names):
                if counts[j] == 0 and y[:, j].any():
                    rare.setdefault(name, []).append(part)
    for name, parts in rare.items():
        warnings.append(
            f"label {name!r} ({int(y[:, names.index(name)].sum())} labelled rows) is too rare to "
            f"appear in every split: none in {', '.join(parts)}; its scores there are undefined "
            "(label more rows of it, or merge/drop the label with ingest.label_map)"
        )
    return warnings


def split_rows(
    ids: list[str],
    labels: list[list[str]],
    given: list[str],
    names: list[str],
    multi_label: bool,
    cfg: SplitConfig,
    user_slices: dict[str, list[str]] | None = None,
    extra_ids: set[str] | None = None,
    fixes: dict[str, list[str]] | None = None,
) -> tuple[list[str], dict[str, list[str]], list[str], list[str]]:
    """Decide each row's split and the training slices.

    ``extra_ids``: labelled rows added after the first run (their labels already in
    ``labels``); they go to train and into every slice, outside the draws, so the other
    rows' splits and slices are those a run without them gets.

    ``fixes``: label fixes, row id -> new labels (empty: the row is dropped). The splits
    and slices are decided on ``labels`` (the original labels), so they are those a run
    without the fixes gets; dropped rows then leave every slice, and the warnings count
    the fixed labels of the rows kept. A dropped row keeps its split name in the returned
    list (so the caller can count it) and the caller leaves it out of the output.

    Returns (split of each row, slices ``{"8": ids, ..., "all": ids}``, warnings, notes).
    """
    rng = np.random.default_rng(cfg.seed)
    warnings: list[str] = []
    notes: list[str] = []
    method = resolve_method(cfg, multi_label)
    split = _given_splits(ids, labels, given, user_slices, extra_ids, warnings)
    y = label_matrix(labels, names)
    pool = np.flatnonzero(np.array([s == "" for s in split]))
    if len(pool):
        if method == "iterative":
            assign = iterative_stratification(y[pool], cfg.fractions(), rng)
        else:
            assign = stratified_assignment(y[pool].argmax(axis=1), cfg.fractions(), rng)
        for p, s in zip(pool, assign, strict=True):
            split[p] = SPLIT_FRACTION_NAMES[s]
    slices = _training_slices(
        ids, split, y, multi_label, cfg, rng, user_slices, extra_ids, warnings, notes
    )
    kept = np.ones(len(ids), dtype=bool)
    if fixes:
        gone = {i for i, new in fixes.items() if not new}
        kept = np.array([i not in gone for i in ids])
        slices = {k: [i for i in v if i not in gone] for k, v in slices.items()}
        y = label_matrix([fixes.get(i) or lab for i, lab in zip(ids, labels, strict=True)], names)
        y[~kept] = 0
    warnings += _coverage_warnings(split, kept, y, names)
    return split, slices, warnings, notes


def _summary(
    split: list[str],
    labels: list[list[str]],
    names: list[str],
    slices: dict[str, list[str]],
    ids: list[str],
    warnings: list[str],
    notes: list[str],
    method: str,
    fixed: dict[str, dict[str, int]] | None = None,
) -> str:
    parts = [*SPLIT_FRACTION_NAMES, "unlabeled"]
    size = {p: sum(1 for s in split if s == p) for p in parts}
    per = {p: {name: 0 for name in names} for p in parts}
    for s, row in zip(split, labels, strict=True):
        for lab in row:
            if lab in per[s]:
                per[s][lab] += 1
    label_of = dict(zip(ids, labels, strict=True))
    slice_rows = []
    for name in names:
        row = {"label": name}
        for k, v in slices.items():
            row[k] = sum(1 for i in v if name in label_of[i])
        slice_rows.append(row)
    slice_rows.append({"label": "**rows**", **{k: len(v) for k, v in slices.items()}})
    lines = [
        f"Rows: **{len(split)}** — "
        + ", ".join(f"{p} **{size[p]}**" for p in parts)
        + f" (method: {method}).\n",
        "### Split sizes per label\n",
        md_table(
            [{"label": name, **{p: per[p][name] for p in parts[:3]}} for name in names]
            + [{"label": "**rows**", **{p: size[p] for p in parts[:3]}}]
        ),
        "### Training slices per label (nested: each holds every smaller one)\n",
        md_table(slice_rows, ["label", *slices]),
    ]
    if fixed:
        lines += [
            "### Label fixes (ingest.label_fixes) per split\n",
            md_table(
                [{"rows": kind, **{p: fixed[kind].get(p, 0) for p in parts}} for kind in fixed]
            ),
        ]
    if notes:
        lines += ["### Notes\n", "\n".join(f"- {x}" for x in notes) + "\n"]
    if warnings:
        lines += ["### Warnings\n", "\n".join(f"- {x}" for x in warnings) + "\n"]
    return "\n".join(lines)


@dataclass
class SplitResult:
    """The split stage's decision, rows in input order (rows dropped by label fixes gone)."""

    ids: list[str]
    texts: list[str]
    labels: list[list[str]]
    split: list[str]
    slices: dict[str, list[str]]
    #: row id -> where its labels came from (extra labels, label fixes); others: the input
    source_of: dict[str, str]
    warnings: list[str]
    notes: list[str]
    #: label fixes per split: {"relabelled": {split: n}, "dropped": {split: n}}
    fixed: dict[str, dict[str, int]]
    method: str
    #: rows whose labels only a label fix gave (not counted as extra labels)
    fix_source: dict[str, str] = field(default_factory=dict)


def assign_splits(
    cols: dict[str, list],
    names: list[str],
    multi_label: bool,
    cfg: SplitConfig,
    user_slices: dict[str, list[str]] | None = None,
    extra: tuple[list[list[str]], dict[str, str], list[str]] | None = None,
    fixes: tuple[dict[str, list[str]], dict[str, str], list[str]] | None = None,
) -> SplitResult:
    """The split of the clean stage's rows ``cols`` (``id``, ``text``, ``labels``, ``split``):
    :func:`split_rows`, then the label fixes applied to the rows it decided.

    ``extra``: (labels with the extra labels in, row id -> source, warnings) from the
    extra_labels stage; ``fixes``: (row id -> new labels, row id -> source, warnings)."""
    ids, labels = list(cols["id"]), list(cols["labels"])
    given = cols.get("split") or [""] * len(ids)
    source_of: dict[str, str] = {}
    extra_warnings: list[str] = []
    fix_to, fix_source = {}, {}
    if extra is not None:
        labels, source_of, extra_warnings = extra
    if fixes is not None:
        fix_to, fix_source, fix_warnings = fixes
        extra_warnings = extra_warnings + fix_warnings
    split, slices, warnings, notes = split_rows(
        ids, labels, given, names, multi_label, cfg, user_slices, set(source_of), fix_to
    )
    texts = list(cols["text"])
    fixed: dict[str, dict[str, int]] = {}
    if fix_to:  # the splits are decided: now the fixed labels, without the dropped rows
        fixed, keep = _fix_counts(ids, split, fix_to), []
        for n, rid in enumerate(ids):
            if rid in fix_to and not fix_to[rid]:
                continue
            keep.append(n)
            if rid in fix_to:
                labels[n] = list(fix_to[rid])
                source_of[rid] = fix_source[rid]
        ids, labels, split = (
            [ids[n] for n in keep],
            [labels[n] for n in keep],
            [split[n] for n in keep],
        )
        texts = [texts[n] for n in keep]
        notes.append(_fix_note(fixed))
    return SplitResult(
        ids,
        texts,
        labels,
        split,
        slices,
        source_of,
        extra_warnings + warnings,
        notes,
        fixed,
        resolve_method(cfg, multi_label),
        fix_source,
    )


def _split_datasets(res: SplitResult) -> dict[str, datasets.Dataset]:
    """One dataset per split; train rows carry ``min_slice`` (the smallest slice holding
    them) and ``source``."""
    min_slice: dict[str, int] = {}
    for k in reversed(list(res.slices)):
        value = len(res.slices["all"]) if k == "all" else int(k)
        for i in res.slices[k]:
            min_slice[i] = value
    dd = {}
    for part in SPLITS:
        idx = [i for i, s in enumerate(res.split) if s == part]
        data = {
            "id": [res.ids[i] for i in idx],
            "text": [res.texts[i] for i in idx],
            "labels": [res.labels[i] for i in idx],
            "split": [part] * len(idx),
        }
        features = CANONICAL_FEATURES.copy()
        if part == "train":
            data["min_slice"] = [min_slice[res.ids[i]] for i in idx]
            features["min_slice"] = datasets.Value("int64")
            data["source"] = [res.source_of.get(res.ids[i], INPUT_SOURCE) for i in idx]
            features["source"] = datasets.Value("string")
        dd[part] = datasets.Dataset.from_dict(data, features=features)
    return dd


def _write_split(
    directory: Path, res: SplitResult, names: list[str], multi_label: bool, cfg: SplitConfig
) -> dict[str, Any]:
    """Write ``splits/``, ``slices.json``, ``labels.json`` and the summary; return the facts."""
    dd = _split_datasets(res)
    save_dataset(datasets.DatasetDict(dd), directory / "splits")
    (directory / "slices.json").write_text(json.dumps(res.slices))
    write_label_info(directory, names, multi_label)
    rng = np.random.default_rng(cfg.seed)
    sample = []
    per_part = max(1, cfg.sample_rows // 4) if cfg.sample_rows else 0
    for part in SPLITS:
        ds = dd[part]
        for r in rng.permutation(len(ds))[:per_part]:
            sample.append(ds[int(r)])
    summary = _summary(
        res.split,
        res.labels,
        names,
        res.slices,
        res.ids,
        res.warnings,
        res.notes,
        res.method,
        res.fixed,
    )
    write_summary(directory, summary, sample)
    n_dropped = sum(res.fixed.get("dropped", {}).values())
    extra_rows = Counter(s for i, s in res.source_of.items() if i not in res.fix_source)
    return {
        "rows_in": len(res.ids) + n_dropped,
        "rows_out": len(res.ids),
        **{f"{p}_rows": len(dd[p]) for p in SPLITS},
        "slices": {k: len(v) for k, v in res.slices.items()},
        "method": res.method,
        "extra_labelled_rows": dict(sorted(extra_rows.items())),
        "label_fixes": res.fixed,
        "warnings": res.warnings,
    }


def run_split(
    store: StageStore,
    cfg: SplitConfig,
    rows: StageRef,
    refresh: bool = False,
    extra: StageRef | None = None,
) -> StageRef:
    """Split the clean stage's ``rows/`` (``rows`` is its StageRef) into ``splits/``;
    ``extra`` (the extra_labels stage) moves later-labelled pool rows into train."""

    def builder(ctx: BuildContext) -> dict[str, Any]:
        if not (rows.dir / "rows").is_dir():
            raise InputDataError(f"{rows.dir}: no rows/ dataset; re-run the clean stage")
        cols = load_rows(rows.dir).to_dict()
        names, multi_label = read_label_info(rows.dir)
        user_slices = None
        if (rows.dir / "user_slices.json").is_file():
            user_slices = json.loads((rows.dir / "user_slices.json").read_text())
        given_extra = given_fixes = None
        if extra is not None:
            given_extra = _apply_extra_labels(extra, list(cols["id"]), list(cols["labels"]))
            given_fixes = _read_label_fixes(extra, list(cols["id"]))
        res = assign_splits(cols, names, multi_label, cfg, user_slices, given_extra, given_fixes)
        for w in res.warnings:
            stage_logger().warning("split: %s", w)
        return _write_split(ctx.dir, res, names, multi_label, cfg)

    return store.build_stage(SPEC, cfg, {"rows": rows, "extra": extra}, builder, refresh)


def _labels_by_id(
    extra: StageRef, name: str, what: str, ids: list[str]
) -> tuple[dict[str, list[str]], dict[str, str], list[str]]:
    """The extra_labels stage's ``name`` dataset (``extra_labels`` or ``fixes``) for the rows
    in ``ids``: (row id -> labels, row id -> source, a warning for ids the clean stage
    dropped, naming them as ``what``)."""
    path = extra.dir / name
    if not path.is_dir():
        raise InputDataError(f"{extra.dir}: no {name}/ dataset; re-run extra_labels")
    ds = datasets.load_from_disk(str(path))
    known = set(ids)
    labels: dict[str, list[str]] = {}
    source: dict[str, str] = {}
    missing = []
    for rid, labs, src in zip(ds["id"], ds["labels"], ds["source"], strict=True):
        if str(rid) not in known:
            missing.append(str(rid))
            continue
        labels[str(rid)] = list(labs)
        source[str(rid)] = str(src)
    warnings = []
    if missing:
        warnings.append(
            f"{len(missing)} {what} are not among the clean rows (dropped by the clean stage as "
            f"empty or duplicates; see its dropped/): {missing[:10]}"
        )
    return labels, source, warnings


def _apply_extra_labels(
    extra: StageRef, ids: list[str], labels: list[list[str]]
) -> tuple[list[list[str]], dict[str, str], list[str]]:
    """The rows' labels with the extra labels filled in, each added row's source, and
    warnings for extra-labelled ids the clean stage dropped."""
    added, source_of, warnings = _labels_by_id(extra, "extra_labels", "extra-labelled id(s)", ids)
    labels = [added.get(i, lab) for i, lab in zip(ids, labels, strict=True)]
    return labels, source_of, warnings


def _read_label_fixes(
    extra: StageRef, ids: list[str]
) -> tuple[dict[str, list[str]], dict[str, str], list[str]]:
    """The extra_labels stage's label fixes: (row id -> new labels, empty = drop; row id ->
    source; warnings for fixed ids the clean stage dropped)."""
    return _labels_by_id(extra, "fixes", "id(s) of ingest.label_fixes", ids)


def _fix_counts(
    ids: list[str], split: list[str], fixes: dict[str, list[str]]
) -> dict[str, dict[str, int]]:
    """Rows relabelled and dropped by the label fixes, per split (the row's split before)."""
    out: dict[str, Counter] = {"relabelled": Counter(), "dropped": Counter()}
    for rid, part in zip(ids, split, strict=True):
        if rid in fixes:
            out["relabelled" if fixes[rid] else "dropped"][part] += 1
    return {k: {p: v[p] for p in SPLITS if v[p]} for k, v in out.items()}


def _fix_note(fixed: dict[str, dict[str, int]]) -> str:
    def per(kind: str, what: str) -> str:
        counts = fixed[kind]
        total = sum(counts.values())
        return f"{total} {what}" + (
            f" ({', '.join(f'{p} {v}' for p, v in counts.items())})" if total else ""
        )

    return (
        f"label fixes (ingest.label_fixes): {per('relabelled', 'row(s) relabelled')}, "
        f"{per('dropped', 'dropped')}; the splits and slices were drawn on the original labels, "
        "so every row kept its split (valid/test are the same rows, less the dropped ones); "
        "relabelled training rows carry source `fixed-<k>`, dropped rows left every split and slice"
    )
