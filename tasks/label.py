"""The `label` stage: the final model labels every row of the unlabeled pool.

The final model is the evaluate stage's choice (``best.json``: the best method on valid at the
largest training slice) unless ``method`` / ``slice`` name a trained run. The pool is read and
labelled in shards of ``shard_size`` rows, so a big pool never sits in memory.

Output directory:

- ``labelled/``: Dataset with ``id``, ``text``, ``predicted_labels`` (list of str, from the
  run's decision rule), ``prob_<label>`` (probability per label, ``labels.json`` order);
- ``labelled.jsonl`` and ``labelled.parquet``: the same rows as exports;
- ``model/``: the final model (the method's ``save`` output), ``labels.json``,
  ``decision.json`` (argmax or thresholds, and the label-shift reweighting when
  ``train.label_shift`` is on), ``run.json`` (which run it is) and
  ``README.md`` (a model card: data, metrics, intended use, limitations);
- ``expected_precision.json``: per label and over all labels, the expected precision of the
  labels written on the pool and the expected number of wrong ones, from the (calibrated)
  probabilities, with an interval, beside the precision the same rule reaches on the validation
  split (``label_pipeline.expected_precision``);
- ``labels.json``, ``summary.md``, ``sample.json``.

The probabilities are the run's calibrated ones: ``load_saved`` applies the calibrator the
train stage saved with the model, then the decision rule's label-shift reweighting, if any.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from label_pipeline.data import save_dataset
from label_pipeline.devices import DeviceChoice, DeviceConfig, choose_device
from label_pipeline.errors import ConfigError, InputDataError
from label_pipeline.expected_precision import PrecisionAccumulator
from label_pipeline.orchestration import write_summary
from label_pipeline.progress import Progress, stage_logger
from label_pipeline.store import BuildContext, StageRef, StageSpec, StageStore

SPEC = StageSpec("label", "2")
STAGE, VERSION = SPEC.name, SPEC.version


class LabelConfig(BaseModel):
    """Labelling of the unlabeled pool with the final model.

    Attributes:
        enabled: run the stage.
        method: the trained method (as named in ``train.methods``, e.g. ``finetune``) to label
            with; None = the evaluate stage's best method (``best.json``).
        slice: its training slice (e.g. ``"all"``); None = ``best.json``'s slice when
            ``method`` is None, else the largest slice that method was trained on.
        shard_size: pool rows predicted and written per shard (memory bound).
        sample_rows: labelled rows shown in ``sample.json``.
        device: device, precision and batch sizes for prediction.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    method: str | None = None
    slice: str | None = None
    shard_size: int = Field(4096, ge=1)
    sample_rows: int = Field(20, ge=0)
    device: DeviceConfig = Field(default_factory=DeviceConfig)


def prob_columns(labels: list[str]) -> list[str]:
    return [f"prob_{name}" for name in labels]


def choose_run(cfg: LabelConfig, trained_dir: Path, evaluated_dir: Path) -> dict[str, Any]:
    """The ``runs.json`` entry of the final model (with ``run_dir`` added)."""
    runs_path = trained_dir / "runs.json"
    if not runs_path.is_file():
        raise InputDataError(f"{runs_path} is missing; re-run the train stage (refresh train)")
    runs = json.loads(runs_path.read_text())
    if not runs:
        raise InputDataError(f"{runs_path} lists no trained runs; check train.methods")
    method, slice_name = cfg.method, cfg.slice
    source = "label.method / label.slice"
    if method is None:
        best_path = evaluated_dir / "best.json"
        if not best_path.is_file():
            raise InputDataError(
                f"{best_path} is missing: the evaluate stage named no final model. Set "
                "label.method (and label.slice) to a trained run, or re-run evaluate"
            )
        best = json.loads(best_path.read_text())
        method, slice_name = best["method"], slice_name or best["slice"]
        source = f"best on {best.get('metric', 'valid')} ({best_path})"
    candidates = [r for r in runs if r["method"] == method]
    if not candidates:
        raise ConfigError(
            f"label.method={method!r} was not trained; trained methods: "
            f"{sorted({r['method'] for r in runs})} (see {runs_path})"
        )
    if slice_name is None:
        run = max(candidates, key=lambda r: r["slice_size"])
    else:
        match = [r for r in candidates if str(r["slice"]) == str(slice_name)]
        if not match:
            raise ConfigError(
                f"label.slice={slice_name!r}: {method} was trained on slices "
                f"{[r['slice'] for r in candidates]} only (see {runs_path})"
            )
        run = match[0]
    run_dir = trained_dir / run["dir"]
    if not (run_dir / "model").is_dir():
        raise InputDataError(f"{run_dir / 'model'} is missing; re-run the train stage")
    return {**run, "run_dir": str(run_dir), "chosen_by": source}


def load_method(run: dict[str, Any], device: DeviceChoice) -> Any:
    """The trained method of ``run`` loaded from its ``model/`` directory."""
    from label_pipeline.methods.base import load_saved

    base = run.get("base_method") or run["method"].split("+")[0]
    return load_saved(base, Path(run["run_dir"]) / "model", device)


def label_rows(
    method: Any, decision: Any, texts: list[str], labels: list[str]
) -> tuple[np.ndarray, list[list[str]]]:
    """Probabilities (rows x labels, label-shift reweighted when the run's decision rule says
    so) and predicted label lists for ``texts``."""
    from label_pipeline.decision import apply_decision

    probs = decision.adjust(np.asarray(method.predict_proba(texts), dtype=np.float64))
    if probs.shape != (len(texts), len(labels)):
        raise InputDataError(
            f"the final model returned probabilities of shape {probs.shape} for "
            f"{len(texts)} rows and {len(labels)} labels; retrain it (refresh train)"
        )
    pred = apply_decision(probs, decision)
    names = [[labels[j] for j in np.flatnonzero(row)] for row in pred]
    return probs, names


def _features(labels: list[str]) -> Any:
    import datasets

    feats = {
        "id": datasets.Value("string"),
        "text": datasets.Value("string"),
        "predicted_labels": datasets.Sequence(datasets.Value("string")),
    }
    feats.update({c: datasets.Value("float32") for c in prob_columns(labels)})
    return datasets.Features(feats)


def _model_card(
    run: dict[str, Any],
    labels: list[str],
    multi_label: bool,
    decision: Any,
    metrics: dict[str, Any],
    fit: dict[str, Any],
    n_pool: int,
) -> str:
    """The model card (``model/README.md``); ``metrics``: the run's entry in the evaluate
    stage's ``metrics.json``, ``fit``: the run's ``fit.json``."""

    def fmt(split: str, key: str) -> str:
        v = (metrics.get(split) or {}).get(key)
        return "n/a" if v is None else f"{v:.3f}"

    kind = "multi-label (sigmoid per label)" if multi_label else "single-label (softmax)"
    lines = [
        f"# Model card: {run['method']} (training slice {run['slice']})",
        "",
        f"A {kind} text classifier over {len(labels)} labels: {', '.join(labels)}.",
        "",
        "## Data",
        f"- trained on {run.get('train_rows', '?')} rows (slice `{run['slice']}`, "
        f"{run.get('slice_size', '?')} gold rows); augmented rows: "
        f"{fit.get('augmented_rows', 0)}, pseudo-labelled rows: {fit.get('pseudo_rows', 0)}",
        f"- encoder: {(fit.get('info') or {}).get('encoder', 'n/a')}",
        f"- chosen by: {run['chosen_by']}",
        f"- labelled pool: {n_pool} rows",
        "",
        "## Metrics (evaluate stage)",
        "| split | micro-F1 | macro-F1 |",
        "|---|---|---|",
        f"| valid | {fmt('valid', 'micro_f1')} | {fmt('valid', 'macro_f1')} |",
        f"| test | {fmt('test', 'micro_f1')} | {fmt('test', 'macro_f1')} |",
        "",
        f"Decision rule: {decision.describe()}" + (f" ({decision.note})" if decision.note else ""),
        *_label_shift_lines(decision, labels),
        "",
        "## Intended use",
        "Labelling texts of the same source and label set as the training data, and ranking "
        "rows for review by their `prob_<label>` columns. Load it with "
        f"`label_pipeline.methods.base.load_saved({(run.get('base_method') or run['method'])!r}, "
        "'model')` (it applies the calibrator in `calibration.json`, when there is one); "
        "`predict_proba` returns probabilities, `decision.json` turns them into "
        "labels (`Decision.adjust` first applies its label-shift reweighting, if any).",
        "",
        "## Limitations",
        "- trained on few labelled rows: expect errors on rare labels and on texts unlike the "
        "training data; check the per-label scores in the evaluate stage before relying on it;",
        "- the test split is small, so the metrics above carry wide uncertainty;",
        f"- probabilities are calibrated on the validation split ({_calibration_of(fit)}); "
        "a calibration holds for texts like the validation rows;",
        "- pseudo-labels it writes inherit its biases; review them before training on them.",
        "",
    ]
    return "\n".join(lines)


def _calibration_of(fit: dict[str, Any]) -> str:
    cal = fit.get("calibration")
    return cal["describe"] if cal else "no calibrator: as trained"


def _label_shift_lines(decision: Any, labels: list[str]) -> list[str]:
    if not decision.label_shift:
        return []
    shift = decision.label_shift
    rows = [
        f"| {name} | {src:.3f} | {tgt:.3f} |"
        for name, src, tgt in zip(labels, shift["source_prior"], shift["target_prior"], strict=True)
    ]
    return [
        "",
        f"Label shift: the model's probabilities are reweighted from its training label "
        f"frequencies to the pool's, estimated on {shift['pool_rows']} pool rows "
        "(train.label_shift: pool); the exported probabilities are the reweighted ones.",
        "",
        "| label | training frequency | estimated pool frequency |",
        "|---|---|---|",
        *rows,
    ]


def _precision_section(expected: dict[str, Any]) -> str:
    from label_pipeline.expected_precision import precision_summary

    lines = ["## Expected precision of the labels", ""]
    if expected["overall"]["expected_precision"] is not None:
        lines.append(
            f"Calibration: {expected['calibration']}."
            + "".join(f" {n}." for n in expected["calibration_notes"])
        )
    return "\n".join(lines + precision_summary(expected, "label"))


# ---------------------------------------------------------------- labelling (no store, no Prefect)


@dataclass
class LabelledShard:
    """One shard of the pool as labelled: ``probs`` (rows x labels, float64) and the
    predicted label names of every row."""

    ids: list[str]
    texts: list[str]
    names: list[list[str]]
    probs: np.ndarray


@dataclass
class PoolLabels:
    """What :func:`label_pool` reports about the labelled pool.

    Attributes:
        rows: pool rows labelled.
        shards: shards they came in.
        counts: per label, the rows that got it.
        no_label: rows that got no label.
        top_prob_sum: the sum over the rows of their highest probability.
        sample: the first rows as written (probabilities as float32 values).
        expected: the expected precision of the labels (``expected_precision.json``).
    """

    rows: int
    shards: int
    counts: np.ndarray
    no_label: int
    top_prob_sum: float
    sample: list[dict[str, Any]]
    expected: dict[str, Any]

    def mean_top_prob(self) -> float:
        return self.top_prob_sum / self.rows if self.rows else 0.0


def label_pool(
    method: Any,
    decision: Any,
    labels: list[str],
    shards: Iterable[tuple[list[str], list[str]]],
    *,
    valid_probs: np.ndarray | None = None,
    valid_y: np.ndarray | None = None,
    calibration: dict[str, Any] | None = None,
    sample_rows: int = 20,
    on_shard: Callable[[LabelledShard], None] | None = None,
) -> PoolLabels:
    """Label the pool, one shard of (ids, texts) at a time, with ``method`` (``predict_proba``)
    and the run's ``decision`` rule; ``on_shard`` gets every labelled shard (to write it).

    The expected precision of the labels is checked against the run's valid probabilities
    (``valid_probs`` against ``valid_y``) under the same rule; ``calibration`` is the
    calibrator the train stage recorded (its ``describe`` and ``notes``), if any."""
    from label_pipeline.decision import apply_decision

    counts = np.zeros(len(labels), dtype=np.int64)
    n = n_shards = no_label = 0
    conf_sum = 0.0
    precision = PrecisionAccumulator(len(labels))
    sample: list[dict[str, Any]] = []
    cols = prob_columns(labels)
    for ids, texts in shards:
        probs, names = label_rows(method, decision, texts, labels)
        precision.add(probs, apply_decision(probs, decision))
        shard = LabelledShard(ids, texts, names, probs)
        if on_shard is not None:
            on_shard(shard)
        for row in names:
            for name in row:
                counts[labels.index(name)] += 1
        no_label += sum(1 for row in names if not row)
        conf_sum += float(probs.max(axis=1).sum())
        for i in range(min(sample_rows - len(sample), len(ids))):
            p32 = probs[i].astype(np.float32)
            row = {"id": ids[i], "text": texts[i], "predicted_labels": names[i]}
            sample.append({**row, **{c: float(p32[j]) for j, c in enumerate(cols)}})
        n, n_shards = n + len(texts), n_shards + 1
    valid_pred = None if valid_probs is None else apply_decision(valid_probs, decision)
    expected = precision.result(labels, valid_probs, valid_pred, valid_y)
    expected["calibration"] = (calibration or {}).get(
        "describe", "none (the train stage did not calibrate)"
    )
    expected["calibration_notes"] = (calibration or {}).get("notes", [])
    return PoolLabels(n, n_shards, counts, no_label, conf_sum, sample, expected)


# ---------------------------------------------------------------- the stage


@dataclass
class _Inputs:
    """What the label stage reads: the labels, the final run and its model, the pool."""

    labels: list[str]
    multi_label: bool
    run: dict[str, Any]
    decision: Any
    device: DeviceChoice
    method: Any
    pool: Any
    rows: int
    valid_probs: np.ndarray | None
    valid_y: np.ndarray | None
    fit: dict[str, Any]
    metrics: dict[str, Any]


def _read_inputs(
    cfg: LabelConfig, splits: StageRef, trained: StageRef, evaluated: StageRef
) -> _Inputs:
    from label_pipeline.data import load_splits, read_label_info
    from label_pipeline.decision import load_decision

    labels, multi_label = read_label_info(splits.dir)
    run = choose_run(cfg, trained.dir, evaluated.dir)
    run_dir = Path(run["run_dir"])
    decision = load_decision(run_dir)
    run_labels = labels
    if (trained.dir / "labels.json").is_file():
        run_labels, _ = read_label_info(trained.dir)
    if list(run_labels) != list(labels):
        raise InputDataError(
            f"{trained.dir / 'labels.json'} lists labels {run_labels}, the split stage "
            f"{labels}; re-run train on these splits"
        )
    device = choose_device(cfg.device)
    method = load_method(run, device)
    dd = load_splits(splits.dir)
    pool = dd["unlabeled"] if "unlabeled" in dd else None
    n = len(pool) if pool is not None else 0
    if n == 0:
        stage_logger().warning("label: the unlabeled pool is empty; nothing to label")
    valid_probs, valid_y = _read_valid(run_dir, dd, labels)
    fit_path = run_dir / "fit.json"
    fit = json.loads(fit_path.read_text()) if fit_path.is_file() else {}
    return _Inputs(
        labels,
        multi_label,
        run,
        decision,
        device,
        method,
        pool,
        n,
        valid_probs,
        valid_y,
        fit,
        _read_metrics(run, evaluated.dir),
    )


def _read_valid(
    run_dir: Path, dd: Any, labels: list[str]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The run's valid probabilities (calibrated and cross-fitted by the train stage) and the
    valid split's label matrix; (None, None) without them."""
    from label_pipeline.data import label_matrix

    path = run_dir / "valid_probs.npy"
    if not (path.is_file() and "valid" in dd and len(dd["valid"])):
        return None, None
    valid_y = label_matrix([list(x) for x in dd["valid"]["labels"]], labels)
    valid_probs = np.load(path).astype(np.float64)
    if valid_probs.shape != valid_y.shape:
        raise InputDataError(
            f"{path} has shape {valid_probs.shape} but the valid split has {valid_y.shape}; "
            "re-run train on these splits"
        )
    return valid_probs, valid_y


def _read_metrics(run: dict[str, Any], evaluated_dir: Path) -> dict[str, Any]:
    """The run's entry in the evaluate stage's ``metrics.json`` (empty when it has none)."""
    metrics: dict[str, Any] = {}
    path = evaluated_dir / "metrics.json"
    if path.is_file():
        for r in json.loads(path.read_text()).get("runs", []):
            if r.get("method") == run["method"] and str(r.get("slice")) == str(run["slice"]):
                metrics = r
    return metrics


def _shards(pool: Any, size: int) -> Iterator[tuple[list[str], list[str]]]:
    """The pool's (ids, texts), ``size`` rows at a time: one shard in memory at a time."""
    n = len(pool) if pool is not None else 0
    for start in range(0, n, size):
        part = pool[start : start + size]
        yield [str(i) for i in part["id"]], [str(t) for t in part["text"]]


class _ShardWriter:
    """Writes each labelled shard to ``labelled.parquet``, ``labelled.jsonl`` and a shard
    dataset; :meth:`finish` joins the shard datasets into ``labelled/``."""

    def __init__(self, out: Path, labels: list[str]) -> None:
        self.out, self.labels = out, labels
        self.features = _features(labels)
        self.root = out / ".shards"
        self.dirs: list[Path] = []

    def __enter__(self) -> _ShardWriter:
        import pyarrow.parquet as pq

        self.parquet = pq.ParquetWriter(self.out / "labelled.parquet", self.features.arrow_schema)
        self.jsonl = open(self.out / "labelled.jsonl", "w", encoding="utf-8")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.parquet.close()
        self.jsonl.close()

    def write(self, shard: LabelledShard) -> None:
        import datasets
        import pyarrow as pa

        cols: dict[str, Any] = {
            "id": shard.ids,
            "text": shard.texts,
            "predicted_labels": shard.names,
        }
        for j, c in enumerate(prob_columns(self.labels)):
            cols[c] = shard.probs[:, j].astype(np.float32)
        table = pa.Table.from_pydict(cols, schema=self.features.arrow_schema)
        self.parquet.write_table(table)
        for row in table.to_pylist():
            self.jsonl.write(json.dumps(row, ensure_ascii=False) + "\n")
        shard_dir = self.root / f"shard-{len(self.dirs):05d}"
        datasets.Dataset(table).save_to_disk(str(shard_dir))
        self.dirs.append(shard_dir)

    def finish(self) -> None:
        import datasets

        if self.dirs:
            parts = [datasets.load_from_disk(str(d)) for d in self.dirs]  # memory-mapped
            datasets.concatenate_datasets(parts).save_to_disk(str(self.out / "labelled"))
            del parts
        else:
            empty = datasets.Dataset.from_dict(
                {k: [] for k in self.features}, features=self.features
            )
            save_dataset(empty, self.out / "labelled")
        shutil.rmtree(self.root, ignore_errors=True)


def _builder(cfg: LabelConfig, splits: StageRef, trained: StageRef, evaluated: StageRef):
    def build(ctx: BuildContext) -> dict[str, Any]:
        inp = _read_inputs(cfg, splits, trained, evaluated)
        started = time.time()
        with (
            Progress(inp.rows, STAGE, desc="label the unlabeled pool") as progress,
            _ShardWriter(ctx.dir, inp.labels) as writer,
        ):

            def on_shard(shard: LabelledShard) -> None:
                writer.write(shard)
                progress.update(len(shard.texts))

            result = label_pool(
                inp.method,
                inp.decision,
                inp.labels,
                _shards(inp.pool, cfg.shard_size),
                valid_probs=inp.valid_probs,
                valid_y=inp.valid_y,
                calibration=inp.fit.get("calibration"),
                sample_rows=cfg.sample_rows,
                on_shard=on_shard,
            )
        writer.finish()
        seconds = time.time() - started
        return _write(ctx, cfg, inp, result, seconds)

    return build


# ---------------------------------------------------------------- outputs


def _write(
    ctx: BuildContext, cfg: LabelConfig, inp: _Inputs, result: PoolLabels, seconds: float
) -> dict[str, Any]:
    from label_pipeline.data import write_label_info

    run, decision, labels, n = inp.run, inp.decision, inp.labels, result.rows
    model_dir = ctx.dir / "model"
    shutil.copytree(Path(run["run_dir"]) / "model", model_dir)
    write_label_info(model_dir, labels, inp.multi_label)
    (model_dir / "decision.json").write_text(json.dumps(decision.to_json(), indent=2))
    (model_dir / "run.json").write_text(
        json.dumps({k: run[k] for k in ("method", "slice", "chosen_by") if k in run}, indent=2)
    )
    (model_dir / "README.md").write_text(
        _model_card(run, labels, inp.multi_label, decision, inp.metrics, inp.fit, n)
    )
    write_label_info(ctx.dir, labels, inp.multi_label)
    expected = result.expected
    (ctx.dir / "expected_precision.json").write_text(json.dumps(expected, indent=2))
    share = {
        name: (int(c), round(100.0 * c / n, 1) if n else 0.0)
        for name, c in zip(labels, result.counts, strict=True)
    }
    write_summary(ctx.dir, _summary(cfg, inp, result, share, seconds), result.sample)
    return {
        "rows": n,
        "method": run["method"],
        "slice": run["slice"],
        "decision": decision.describe(),
        "predicted_per_label": {k: c for k, (c, _) in share.items()},
        "rows_without_label": result.no_label,
        "label_seconds": round(seconds, 2),
        "calibration": expected["calibration"],
        "expected_precision": expected["overall"]["expected_precision"],
        "expected_precision_interval": expected["overall"]["interval"],
        "expected_wrong": expected["overall"]["expected_wrong"],
        "valid_precision": expected["overall"]["valid_precision"],
        "expected_precision_per_label": {
            r["label"]: r["expected_precision"] for r in expected["per_label"]
        },
    }


def _summary(
    cfg: LabelConfig,
    inp: _Inputs,
    result: PoolLabels,
    share: dict[str, tuple[int, float]],
    seconds: float,
) -> str:
    run, n = inp.run, result.rows
    table_md = "\n".join(f"| {k} | {c} | {p} |" for k, (c, p) in share.items())
    return (
        f"# label\n\n"
        f"- final model: **{run['method']}** on slice `{run['slice']}` "
        f"(chosen by {run['chosen_by']})\n"
        f"- decision rule: {inp.decision.describe()}\n"
        f"- labelled {n} unlabeled rows in {result.shards} shard(s) of at most "
        f"{cfg.shard_size} rows, {seconds:.1f}s on {inp.device.describe()}\n"
        f"- rows with no predicted label: {result.no_label}\n"
        f"- mean top probability: {result.mean_top_prob():.3f}\n\n"
        f"| label | rows | % of pool |\n|---|---|---|\n{table_md}\n\n"
        "Exports: `labelled/` (Arrow), `labelled.jsonl`, `labelled.parquet`; "
        "the model with its card in `model/`.\n\n" + _precision_section(expected=result.expected)
    )


def run_label(
    store: StageStore,
    cfg: LabelConfig,
    splits: StageRef,
    trained: StageRef,
    evaluated: StageRef,
    refresh: bool = False,
) -> StageRef:
    """Label the unlabeled pool with the final model; returns the label stage directory."""
    splits, trained, evaluated = (store.localize(r) for r in (splits, trained, evaluated))
    inputs = {"splits": splits, "trained": trained, "evaluated": evaluated}
    return store.build_stage(SPEC, cfg, inputs, _builder(cfg, splits, trained, evaluated), refresh)
