"""The report: a view over the stages of one run, written to ``reports/<run>/``.

Not a cached stage: it only reads stage directories (their manifests, summaries, metrics
and figures), so it is cheap and always reflects the refs it is given. Stages that did not
run are left out.

Output: ``report.md``, ``metrics.json`` (the evaluate stage's metrics plus stage facts),
``figures/*.png`` (copied), and the same summary as Prefect markdown and table artifacts
(keys ``report-summary``, ``report-results``).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from label_pipeline.artifacts import md_table, publish_markdown, publish_table
from label_pipeline.artifacts import num as _f
from label_pipeline.choice import (
    calibration_table,
    chosen_table,
    interval_text,
    label_more_lines,
    results_table,
)
from label_pipeline.data import to_jsonable
from label_pipeline.store import StageRef, atomic_directory

STAGE = "report"
VERSION = "2"
STAGE_ORDER = (
    "ingest",
    "clean",
    "split",
    "augment",
    "zero_shot",
    "adapt",
    "quality",
    "train",
    "evaluate",
    "label",
)


class ReportConfig(BaseModel):
    """The run report.

    Attributes:
        enabled: write ``reports/<run>/`` and publish it to the Prefect UI.
        title: heading of ``report.md``.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    title: str = "label-pipeline report"


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _manifest(ref: StageRef) -> dict[str, Any]:
    return _read_json(ref.dir / "manifest.json") or {}


def _stage_rows(stages: dict[str, StageView]) -> list[dict[str, Any]]:
    return [
        {
            "stage": name,
            "fingerprint": stages[name].fingerprint,
            "cache": "hit" if stages[name].cached else "computed",
            "seconds": stages[name].manifest.get("seconds"),
            "directory": stages[name].path,
        }
        for name in _ordered(stages)
    ]


def _ordered(refs: dict[str, Any]) -> list[str]:
    known = [s for s in STAGE_ORDER if s in refs]
    return known + sorted(s for s in refs if s not in STAGE_ORDER)


def _facts(name: str, ref: StageRef) -> list[str]:
    """A few lines of the most useful facts of one stage."""
    man, d = _manifest(ref), ref.dir
    lines: list[str] = []
    if name in {"ingest", "clean", "split"}:
        for key in ("rows", "rows_out", "rows_in", "counts", "splits", "dropped", "labels"):
            if key in man:
                lines.append(f"- {key}: `{json.dumps(to_jsonable(man[key]))[:300]}`")
        if man.get("label_fixes"):  # split: rows relabelled / dropped by ingest.label_fixes
            lines.append(f"- label fixes per split: `{json.dumps(man['label_fixes'])[:300]}`")
    elif name == "augment":
        for key in ("rows", "augmented_rows", "counts", "per_method"):
            if key in man:
                lines.append(f"- {key}: `{json.dumps(to_jsonable(man[key]))[:300]}`")
    elif name == "zero_shot":
        m = _read_json(d / "metrics.json") or {}
        sel = m.get("selection") or man.get("selection")
        if sel:
            lines.append(f"- selection rule: `{json.dumps(to_jsonable(sel))}`")
        if man.get("backend"):
            lines.append(f"- backend: {man.get('backend')} ({man.get('model', '')})")
        if isinstance(m.get("test"), dict):
            t = m["test"]
            lines.append(
                f"- test micro-F1 {_f(t.get('micro_f1'))}, macro-F1 {_f(t.get('macro_f1'))}"
            )
    elif name == "adapt":
        for key in ("perplexity", "perplexity_before", "perplexity_after", "eval_loss", "epochs"):
            if key in man:
                lines.append(f"- {key}: {to_jsonable(man[key])}")
    elif name == "train":
        for key in ("encoder_choice", "device"):
            if man.get(key):
                lines.append(f"- {key.replace('_', ' ')}: {man[key]}")
        for w in man.get("warnings", []) or []:
            lines.append(f"- warning: {w}")
        runs = _read_json(d / "runs.json") or []
        decisions = sorted({f"{r['method']}: {r['decision']}" for r in runs if r["slice"] == "all"})
        if decisions:
            lines.append("- decision rules (slice all): " + "; ".join(decisions))
    elif name == "label":
        lines.append(f"- labelled pool: `{d}`")
        for key in ("rows", "method", "model", "label_counts"):
            if key in man:
                lines.append(f"- {key}: `{json.dumps(to_jsonable(man[key]))[:300]}`")
    return lines


def calibration_section(refs: dict[str, StageRef]) -> tuple[list[str], dict[str, Any]]:
    """Report lines on calibration (the evaluate stage's table, before → after on test) and
    on the expected precision of the zero-shot pseudo-labels and the pool labels; and the
    same as plain values for ``metrics.json``."""
    from label_pipeline.expected_precision import precision_rows

    lines: list[str] = []
    out: dict[str, Any] = {}
    evaluated = refs.get("evaluate")
    if evaluated is not None:
        ev = _read_json(evaluated.dir / "metrics.json") or {}
        table = calibration_table(ev.get("runs", []))
        best = _read_json(evaluated.dir / "best.json") or {}
        if table:
            out["final"] = best.get("calibration")
            lines += [
                "",
                "## Calibration",
                "",
                "Each run's probabilities are calibrated on valid (calibrator chosen by "
                "cross-fitted log loss); test scores before → after (ECE: 15 equal-width bins, "
                "adaptive ECE: 15 equal-mass bins). Reliability diagram of the final model: "
                "`evaluate-reliability.png` below.",
                "",
                md_table(table),
            ]
    for stage, what in (("zero_shot", "zero-shot pseudo-labels"), ("label", "pool labels")):
        ref = refs.get(stage)
        est = _read_json(ref.dir / "expected_precision.json") if ref is not None else None
        if not est:
            continue
        out[stage] = est["overall"]
        o = est["overall"]
        if o.get("expected_precision") is None:
            lines += ["", f"## Expected precision of the {what}", "", "No label was written."]
            continue
        picked = (_read_json(ref.dir / "calibration.json") or {}).get("picked") or {}
        how = (
            f" (the top-k rule's picks calibrated once more on the {picked['cells']} labels it "
            "picks on valid)"
            if picked and not picked.get("fallback")
            else ""
        )
        lines += [
            "",
            f"## Expected precision of the {what}",
            "",
            f"{o['assigned']} labels, about {o['expected_wrong']:.0f} expected to be wrong: "
            f"expected precision {100 * o['expected_precision']:.1f} % (95 % interval "
            f"{100 * o['interval'][0]:.1f}–{100 * o['interval'][1]:.1f} %), from the calibrated "
            f"probabilities{how}; `valid precision` is the same rule measured on the validation "
            "split.",
            "",
            md_table(precision_rows(est)),
        ]
    return lines, out


def _pool_agreement(refs: dict[str, StageRef]) -> dict[str, Any] | None:
    """Zero-shot pseudo-labels (zero_shot ``unlabeled/``) against the final model's labels
    (label ``labelled/``) on the pool rows both wrote, matched by id."""
    import datasets

    from label_pipeline.data import read_label_info
    from label_pipeline.label_quality import pool_agreement

    zs, lab = refs.get("zero_shot"), refs.get("label")
    if zs is None or lab is None:
        return None
    if not (zs.dir / "unlabeled").is_dir() or not (lab.dir / "labelled").is_dir():
        return None
    pseudo_ds = datasets.load_from_disk(str(zs.dir / "unlabeled")).select_columns(["id", "labels"])
    pred_ds = datasets.load_from_disk(str(lab.dir / "labelled"))
    predicted = dict(
        zip(
            pred_ds["id"],
            pred_ds.select_columns(["predicted_labels"])["predicted_labels"],
            strict=True,
        )
    )
    pairs = [
        (list(p), list(predicted[i]))
        for i, p in zip(pseudo_ds["id"], pseudo_ds["labels"], strict=True)
        if i in predicted
    ]
    labels, _ = read_label_info(lab.dir)
    return pool_agreement([a for a, _ in pairs], [b for _, b in pairs], labels)


def label_quality_section(refs: dict[str, StageRef]) -> tuple[list[str], dict[str, Any]]:
    """Report lines on the labelled rows (the quality stage: probably mislabelled rows,
    conflicting duplicates, labels against their names, what train did with them) and on
    the agreement of the zero-shot pseudo-labels with the final model on the pool; and the
    same as plain values for ``metrics.json``. Also publishes the most suspicious rows as
    the ``report-label-issues`` table."""
    lines, out, sample = _label_quality(refs)
    _publish_issues(sample)
    return lines, out


def _publish_issues(sample: list[dict[str, Any]]) -> None:
    if sample:
        publish_table(
            STAGE, "label-issues", sample, description="labelled rows that are probably wrong"
        )


def _label_quality(
    refs: dict[str, StageRef],
) -> tuple[list[str], dict[str, Any], list[dict[str, Any]]]:
    """:func:`label_quality_section`'s lines and values, and the rows it publishes."""
    lines: list[str] = []
    sample: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    quality = refs.get("quality")
    if quality is not None:
        facts = _read_json(quality.dir / "quality.json") or {}
        checks = _read_json(quality.dir / "label_checks.json") or []
        sample = _read_json(quality.dir / "sample.json") or []
        out["quality"] = facts
        kinds = facts.get("issues_by_kind", {})
        trained = refs.get("train")
        policy = "keep"
        if trained is not None:
            policy = (_manifest(trained).get("config") or {}).get("label_issues", "keep")
        acted = {
            "keep": "trained on as labelled",
            "drop": "left out of training",
            "relabel": "trained with the suggested labels",
        }.get(policy, policy)
        lines += [
            "",
            "## Label quality",
            "",
            f"{facts.get('rows_checked', 0)} labelled rows checked by out-of-fold "
            f"`{facts.get('method')}` ({facts.get('folds')}): "
            f"**{kinds.get('mislabelled', 0)}** probably mislabelled "
            f"(train.label_issues `{policy}`: {acted}), "
            f"{kinds.get('conflicting_duplicate', 0)} in conflicting duplicates. Fix them in "
            f"`{quality.dir / 'label_issues.csv'}` (the `labels` column).",
            "",
        ]
        if sample:
            lines.append(
                md_table([{**r, "text": str(r.get("text", ""))[:80]} for r in sample[:10]])
            )
        bad = [c for c in checks if c.get("disagrees")]
        if bad:
            lines += [
                "Labels whose rows do not score higher on the label's name (zero-shot) than "
                "the other rows: "
                + ", ".join(f"{c['label']} (AUC {_f(c['auc'])})" for c in bad)
                + ".",
                "",
            ]
    agreement = _pool_agreement(refs)
    if agreement is not None:
        out["pool_agreement"] = agreement
        if agreement["rows"]:
            kappa = agreement["cohen_kappa"]
            lines += [
                "",
                "### Zero-shot pseudo-labels against the final model on the pool",
                "",
                f"On the {agreement['rows']} of {agreement['pool_rows']} pool rows with a "
                f"zero-shot pseudo-label, the final model gives the same labels on "
                f"{100 * agreement['exact_agreement']:.1f} % (mean overlap "
                f"{_f(agreement['overlap'])}"
                + (f", Cohen's kappa {_f(kappa)}" if kappa is not None else "")
                + ").",
                "",
                md_table([{**p, "agreement": _f(p["agreement"])} for p in agreement["per_label"]]),
            ]
    return lines, out, sample


@dataclass
class StageView:
    """What the report reads of one stage: its reference, manifest, a few facts (see
    :func:`_facts`) and its figures."""

    fingerprint: str
    cached: bool
    path: str
    manifest: dict[str, Any]
    facts: list[str]
    figures: list[Path]


@dataclass
class ReportInputs:
    """Everything the report reads of the stages of one run (:func:`read_report_inputs`)."""

    stages: dict[str, StageView]
    #: the evaluate stage's ``metrics.json`` and ``best.json`` (None: evaluate did not run)
    evaluation: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    #: :func:`calibration_section` and :func:`label_quality_section` (lines, values)
    calibration: tuple[list[str], dict[str, Any]] = field(default_factory=lambda: ([], {}))
    label_quality: tuple[list[str], dict[str, Any]] = field(default_factory=lambda: ([], {}))
    #: the quality stage's most suspicious rows (published as ``report-label-issues``)
    issue_sample: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Report:
    """The report of one run: ``report.md``, ``metrics.json``, the rows of the results table
    and the figures to copy (name in ``figures/`` -> source)."""

    markdown: str
    metrics: dict[str, Any]
    results: list[dict[str, Any]]
    figures: dict[str, Path]


def read_report_inputs(refs: dict[str, StageRef]) -> ReportInputs:
    """Read the manifests, facts, figures and evaluation files of the stages in ``refs``."""
    stages = {
        n: StageView(
            fingerprint=r.fingerprint,
            cached=r.cached,
            path=r.path,
            manifest=_manifest(r),
            facts=_facts(n, r),
            figures=sorted((r.dir / "figures").glob("*.png")),
        )
        for n, r in refs.items()
    }
    inputs = ReportInputs(stages=stages, calibration=calibration_section(refs))
    evaluated = refs.get("evaluate")
    if evaluated is not None:
        inputs.evaluation = _read_json(evaluated.dir / "metrics.json") or {}
        inputs.best = _read_json(evaluated.dir / "best.json")
    lines, values, inputs.issue_sample = _label_quality(refs)
    inputs.label_quality = (lines, values)
    return inputs


def _results_section(
    ev: dict[str, Any], best: dict[str, Any] | None
) -> tuple[list[str], list[dict[str, Any]]]:
    """The "Results (test split)" lines of the evaluate stage's metrics, and the table rows."""
    multi_label = bool(ev.get("multi_label", True))
    results = results_table(ev.get("runs", []), multi_label)
    lines = ["", "## Results (test split)", ""]
    if best:
        lines.append(
            f"Final model: **{best['method']}** trained on slice `{best['slice']}` "
            f"(chosen on {best['metric']} {_f(best['valid'].get('micro_f1'))} micro / "
            f"{_f(best['valid'].get('macro_f1'))} macro); test micro-F1 "
            f"{_f(best['test']['micro_f1'])}{interval_text(best['test'], 'micro_f1')}, "
            f"macro-F1 {_f(best['test']['macro_f1'])}{interval_text(best['test'], 'macro_f1')}"
            " (95 % bootstrap intervals over the test rows: how far the score could move on"
            " another draw of as many rows)."
        )
        if best.get("reason"):
            lines += ["", f"Why: {best['reason']}."]
        lines.append("")
    if ev.get("unlearnable"):
        lines.append(
            "**Unlearnable labels** (no training example in the slice; no model can predict "
            "them from data — label some rows of them): "
            + "; ".join(f"slice `{s}`: {', '.join(v)}" for s, v in ev["unlearnable"].items())
        )
        lines.append("")
    per_slice = ev.get("chosen_per_slice") or []
    if len(per_slice) > 1:
        lines += ["Chosen per slice (on valid):", ""]
        lines += [md_table(chosen_table(per_slice, multi_label)), ""]
        more = label_more_lines(ev.get("label_more") or [], multi_label)
        lines += [*more, ""] if more else []
    zero = ev.get("zero_shot")
    if zero:
        lines.append(
            f"Zero-shot on test: micro-F1 {_f(zero['test'].get('micro_f1'))}, macro-F1 "
            f"{_f(zero['test'].get('macro_f1'))}."
        )
        lines.append("")
    lines.append(md_table(results))
    return lines, results


def compose_report(
    title: str, name: str, generated: str, inputs: ReportInputs, notes: list[str] | None = None
) -> Report:
    """The report of the run ``name`` (``generated``: when, as text) from what was read;
    ``notes``: facts of the run itself (e.g. which encoder ran and why), one line each."""
    lines = [f"# {title}: {name}", "", f"Generated {generated}."]
    lines += ["", *(f"- {n}" for n in notes)] if notes else []
    lines += ["", "## Stages", "", md_table(_stage_rows(inputs.stages))]
    metrics: dict[str, Any] = {
        "run": name,
        "stages": {
            n: {"fingerprint": v.fingerprint, "cached": v.cached, "path": v.path, **v.manifest}
            for n, v in inputs.stages.items()
        },
    }
    figures: dict[str, Path] = {}
    for stage in _ordered(inputs.stages):
        view = inputs.stages[stage]
        figures.update({f"{stage}-{png.name}": png for png in view.figures})
        if view.facts:
            lines += ["", f"## {stage}", "", *view.facts]
    results: list[dict[str, Any]] = []
    if inputs.evaluation is not None:
        metrics["evaluation"] = inputs.evaluation
        metrics["best"] = inputs.best
        section, results = _results_section(inputs.evaluation, inputs.best)
        lines += section
    lines += inputs.calibration[0]
    metrics["calibration"] = inputs.calibration[1]
    lines += inputs.label_quality[0]
    metrics["label_quality"] = inputs.label_quality[1]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f}](figures/{f})" for f in figures]
    return Report("\n".join(lines) + "\n", metrics, results, figures)


def write_report(out_dir: Path, report: Report, issue_sample: list[dict[str, Any]]) -> None:
    """Write ``report.md``, ``metrics.json`` and ``figures/`` into ``out_dir`` and publish
    the report to the Prefect UI."""
    for target, png in report.figures.items():
        (out_dir / "figures").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, out_dir / "figures" / target)
    _publish_issues(issue_sample)
    (out_dir / "report.md").write_text(report.markdown)
    (out_dir / "metrics.json").write_text(json.dumps(to_jsonable(report.metrics), indent=1))
    summary = report.markdown.split("## Figures")[0]
    publish_markdown(STAGE, "summary", summary, description="run report")
    if report.results:
        publish_table(
            STAGE, "results", report.results, description="test metrics per method and slice"
        )


def build_report(
    cfg: ReportConfig,
    refs: dict[str, StageRef],
    out_dir: Path,
    name: str | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Write ``report.md``, ``metrics.json`` and figures into ``out_dir``; return metrics.

    ``name`` is the run's name (default: the directory's name)."""
    name = name or out_dir.name
    out_dir.mkdir(parents=True, exist_ok=True)
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    inputs = read_report_inputs(refs)
    report = compose_report(cfg.title, name, generated, inputs, notes)
    write_report(out_dir, report, inputs.issue_sample)
    return report.metrics


def run_report(
    cfg: ReportConfig,
    refs: dict[str, StageRef],
    out: str | Path,
    notes: list[str] | None = None,
) -> Path:
    """Write the report of the stage refs into the directory ``out`` (the run's name is its
    name; ``notes``: facts of the run, see :func:`compose_report`); returns it."""
    out = Path(out)
    # write next to the target, then swap, so a failure never leaves a half report
    with atomic_directory(out) as tmp:
        refs = {k: v for k, v in refs.items() if v is not None}
        build_report(cfg, refs, tmp, name=out.name, notes=notes)
    return out
